use super::Activation;
use super::{params, Module, Param};
use crate::backend::{apply_epilogue, linear_packed, Epilogue, Gemm, PackedWeight};
use crate::rng::Rng;
use std::sync::Arc;

/// y = x·Wᵀ + b with W: [out, in] (PyTorch's layout).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub in_features: usize,
    pub out_features: usize,
    /// The weight packed for the AMX kernels (`pack_for_inference`); dropped by `backward` and
    /// by a mutable walk of the parameters (`params_mut`, …), the ways training changes it.
    packed: Option<Arc<PackedWeight>>,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Self {
        Linear {
            weight: Param::zeros(&[out_features, in_features]),
            bias: bias.then(|| Param::zeros(&[out_features])),
            in_features,
            out_features,
            packed: None,
        }
    }

    /// Packs the weight once for the matmul precision in force (high or medium on a CPU with
    /// AMX; nothing at f32), so `forward` stops repacking it on every call. For inference:
    /// call it after the weights are final, and again after changing `weight` directly.
    pub fn pack_for_inference(&mut self) {
        let (i, o) = (self.in_features, self.out_features);
        self.packed =
            PackedWeight::for_active_provider(&self.weight.value.data, o, i).map(Arc::new);
    }

    /// PyTorch's default: weight and bias uniform in ±1/√fan_in (kaiming_uniform with a=√5).
    pub fn init_pytorch(&mut self, rng: &mut Rng) {
        let bound = 1.0 / (self.in_features as f32).sqrt();
        for v in self.weight.value.data.iter_mut() {
            *v = (2.0 * rng.uniform() - 1.0) * bound;
        }
        if let Some(b) = &mut self.bias {
            for v in b.value.data.iter_mut() {
                *v = (2.0 * rng.uniform() - 1.0) * bound;
            }
        }
    }

    /// x: [rows, in] → y: [rows, out].
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        self.forward_epilogue(x, rows, y, None);
    }

    /// y = act(x·Wᵀ + b). With packed weights the activation runs on each block of y as soon
    /// as the GEMM finishes it (still in L1), not in a second pass over y.
    pub fn forward_act(&self, x: &[f32], rows: usize, y: &mut [f32], act: Activation) {
        let f =
            |block: &mut [f32], cols: usize, stride: usize| act.rows_in_place(block, cols, stride);
        self.forward_epilogue(x, rows, y, Some(&f));
    }

    fn forward_epilogue(&self, x: &[f32], rows: usize, y: &mut [f32], epilogue: Epilogue) {
        let (i, o) = (self.in_features, self.out_features);
        let y = &mut y[..rows * o];
        let w = &self.weight.value.data;
        let bias = self.bias.as_ref().map(|b| b.value.data.as_slice());
        match (&self.packed, bias) {
            (Some(p), _) => return linear_packed(rows, o, i, x, w, p, bias, y, epilogue),
            (None, Some(b)) => Gemm::nt(rows, o, i).run_bias(x, w, b, y),
            (None, None) => Gemm::nt(rows, o, i).run(x, w, y),
        }
        apply_epilogue(rows, o, y, epilogue);
    }

    /// Adds dW += dyᵀ·x and db += Σ dy; writes dx = dy·W when asked.
    pub fn backward(&mut self, x: &[f32], dy: &[f32], rows: usize, dx: Option<&mut [f32]>) {
        self.packed = None;
        let (i, o) = (self.in_features, self.out_features);
        if let Some(dx) = dx {
            // dx [rows, in] = dy [rows, out] · W [out, in]
            Gemm::nn(rows, i, o).run(dy, &self.weight.value.data, dx);
        }
        // dW [out, in] += dyᵀ · x [rows, in]
        Gemm::tn(o, i, rows)
            .accumulate()
            .run(dy, x, &mut self.weight.grad);
        if let Some(b) = &mut self.bias {
            crate::backend::add_bias_grad(&dy[..rows * o], o, &mut b.grad);
        }
    }
}

impl Module for Linear {
    params!(Self { weight, bias, packed, .. }, v => {
        v.derived(packed);
        v.param("weight", weight);
        if let Some(b) = bias {
            v.param("bias", b);
        }
    });
}
