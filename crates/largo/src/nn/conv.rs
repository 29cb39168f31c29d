//! Convolutional layers over NCHW activations: `Conv2d`, `BatchNorm2d`, `MaxPool2d`,
//! `AvgPool2d`, `AdaptiveAvgPool2d`. Shapes travel with the data as [`Nchw`]; a shape the layer
//! cannot take is an error, never a panic.

use super::{params, Module, Param};
use crate::backend::{
    adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, avg_pool2d_backward,
    avg_pool2d_forward, batch_norm2d_backward, batch_norm2d_backward_in_place,
    batch_norm2d_forward_eval, batch_norm2d_forward_train, conv2d_backward_prepared,
    conv2d_forward_prepared, max_pool2d_backward, max_pool2d_forward, Conv2dShape, Nchw,
    Pool2dShape, PreparedWeight,
};
use crate::rng::Rng;
use crate::{bail, Result};

/// Everything of a `Conv2d` but its channels and kernel: PyTorch's keyword arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }
}

/// y = W ⋆ x + b with W: [C_out, C_in/groups, KH, KW] (PyTorch's `nn.Conv2d`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Read with `weight()`, written with `weight_mut()` or the parameter walk, both of which
    /// drop `prepared`.
    weight: Param,
    pub bias: Option<Param>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub options: Conv2dOptions,
    /// The kernel cut to its live taps on small maps, kept while the weight is unchanged.
    prepared: PreparedWeight,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        options: Conv2dOptions,
    ) -> Result<Self> {
        let o = &options;
        if in_channels == 0 || out_channels == 0 || kernel.contains(&0) {
            bail!("Conv2d: channels and kernel must be ≥ 1, got {in_channels} → {out_channels}, kernel {kernel:?}");
        }
        if o.stride.contains(&0) || o.dilation.contains(&0) {
            bail!(
                "Conv2d: stride and dilation must be ≥ 1, got {:?} and {:?}",
                o.stride,
                o.dilation
            );
        }
        if o.groups == 0
            || !in_channels.is_multiple_of(o.groups)
            || !out_channels.is_multiple_of(o.groups)
        {
            bail!(
                "Conv2d: in_channels {in_channels} and out_channels {out_channels} must both be \
                 divisible by groups {}",
                o.groups
            );
        }
        let [kh, kw] = kernel;
        Ok(Conv2d {
            weight: Param::zeros(&[out_channels, in_channels / o.groups, kh, kw]),
            bias: o.bias.then(|| Param::zeros(&[out_channels])),
            in_channels,
            out_channels,
            kernel,
            options,
            prepared: PreparedWeight::default(),
        })
    }

    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// The weight for writing; what the forward kept of the old one is dropped.
    pub fn weight_mut(&mut self) -> &mut Param {
        self.prepared.clear();
        &mut self.weight
    }

    /// PyTorch's default: weight and bias uniform in ±1/√fan_in, fan_in = C_in/groups·KH·KW
    /// (kaiming_uniform with a=√5).
    pub fn init_pytorch(&mut self, rng: &mut Rng) {
        let fan_in = self.in_channels / self.options.groups * self.kernel[0] * self.kernel[1];
        let bound = 1.0 / (fan_in as f32).sqrt();
        self.prepared.clear();
        let params = std::iter::once(&mut self.weight).chain(self.bias.as_mut());
        for v in params.flat_map(|p| p.value.data.iter_mut()) {
            *v = (2.0 * rng.uniform() - 1.0) * bound;
        }
    }

    /// The kernel's view of one call on `input`; an error if the input does not fit.
    pub fn shape(&self, input: Nchw) -> Result<Conv2dShape> {
        if input.c != self.in_channels {
            bail!(
                "Conv2d: the input has {} channels, the layer takes {}",
                input.c,
                self.in_channels
            );
        }
        let o = &self.options;
        let s = Conv2dShape {
            input,
            out_channels: self.out_channels,
            kernel: self.kernel,
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
            groups: o.groups,
        };
        s.output()?;
        Ok(s)
    }

    pub fn output_shape(&self, input: Nchw) -> Result<Nchw> {
        self.shape(input)?.output()
    }

    /// x: `input` → y: the returned shape.
    pub fn forward(&mut self, x: &[f32], input: Nchw, y: &mut [f32]) -> Result<Nchw> {
        let s = self.shape(input)?;
        let bias = self.bias.as_ref().map(|b| b.value.data.as_slice());
        let w = &self.weight.value.data;
        conv2d_forward_prepared(&s, x, w, bias, y, &mut self.prepared)?;
        s.output()
    }

    /// Adds dW and db; writes dx when asked. `x` is the input forward saw.
    pub fn backward(
        &mut self,
        x: &[f32],
        input: Nchw,
        dy: &[f32],
        dx: Option<&mut [f32]>,
    ) -> Result<()> {
        let s = self.shape(input)?;
        let dbias = self.bias.as_mut().map(|b| b.grad.as_mut_slice());
        // The forward's cut kernel, when it made one: the weight has not changed since.
        conv2d_backward_prepared(
            &s,
            x,
            &self.weight.value.data,
            dy,
            dx,
            &mut self.weight.grad,
            dbias,
            &self.prepared,
        )
    }
}

impl Module for Conv2d {
    params!(Self { weight, bias, .. }, v => {
        v.param("weight", weight);
        if let Some(b) = bias {
            v.param("bias", b);
        }
    }, before_mut: |conv| conv.prepared.clear());
}

/// Batch norm over the channels of NCHW activations (PyTorch's `nn.BatchNorm2d`, affine, with
/// running statistics). `running_mean`, `running_var` and `num_batches_tracked` are buffers,
/// not parameters: the optimiser never sees them.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub num_batches_tracked: u64,
    pub eps: f32,
    /// None: the running statistics are the plain average of every batch so far (PyTorch's
    /// `momentum=None`).
    pub momentum: Option<f32>,
    /// What the last forward normalised with, for backward.
    mean: Vec<f32>,
    rstd: Vec<f32>,
    batch_stats: bool,
}

impl BatchNorm2d {
    /// PyTorch's defaults: weight 1, bias 0, running mean 0 and variance 1, eps 1e-5, momentum 0.1.
    pub fn new(channels: usize) -> Self {
        let mut weight = Param::zeros(&[channels]);
        weight.value.data.fill(1.0);
        BatchNorm2d {
            weight,
            bias: Param::zeros(&[channels]),
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            num_batches_tracked: 0,
            eps: 1e-5,
            momentum: Some(0.1),
            mean: vec![0.0; channels],
            rstd: vec![0.0; channels],
            batch_stats: false,
        }
    }

    pub fn channels(&self) -> usize {
        self.running_mean.len()
    }

    /// Training normalises with the batch's statistics and moves the running ones; evaluation
    /// uses the running ones. x and y: `input`'s shape.
    pub fn forward(&mut self, x: &[f32], input: Nchw, train: bool, y: &mut [f32]) -> Result<()> {
        self.forward_then(x, input, train, false, y)
    }

    /// `forward` followed by a ReLU when `relu`, in the same pass over y.
    pub fn forward_then(
        &mut self,
        x: &[f32],
        input: Nchw,
        train: bool,
        relu: bool,
        y: &mut [f32],
    ) -> Result<()> {
        let c = self.channels();
        if input.c != c {
            bail!(
                "BatchNorm2d: the input has {} channels, the layer takes {c}",
                input.c
            );
        }
        let (w, b) = (&self.weight.value.data, &self.bias.value.data);
        let (mean, rstd) = (&mut self.mean, &mut self.rstd);
        mean.resize(c, 0.0);
        rstd.resize(c, 0.0);
        if train {
            let tracked = self.num_batches_tracked + 1;
            let factor = self.momentum.unwrap_or(1.0 / tracked as f32);
            let (rm, rv) = (&mut self.running_mean, &mut self.running_var);
            batch_norm2d_forward_train(
                input, x, w, b, self.eps, factor, rm, rv, y, mean, rstd, relu,
            )?;
            self.num_batches_tracked = tracked;
        } else {
            let (rm, rv) = (&self.running_mean, &self.running_var);
            batch_norm2d_forward_eval(input, x, w, b, self.eps, rm, rv, y, mean, rstd, relu)?;
        }
        self.batch_stats = train;
        Ok(())
    }

    /// `backward` with dy in `d`, overwritten with dx.
    pub fn backward_in_place(&mut self, x: &[f32], input: Nchw, d: &mut [f32]) -> Result<()> {
        batch_norm2d_backward_in_place(
            input,
            x,
            &self.weight.value.data,
            &self.mean,
            &self.rstd,
            d,
            self.batch_stats,
            &mut self.weight.grad,
            &mut self.bias.grad,
        )
    }

    /// Adds dweight and dbias, writes dx; `x` is the input the last forward saw.
    pub fn backward(&mut self, x: &[f32], input: Nchw, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        batch_norm2d_backward(
            input,
            x,
            &self.weight.value.data,
            &self.mean,
            &self.rstd,
            dy,
            self.batch_stats,
            dx,
            &mut self.weight.grad,
            &mut self.bias.grad,
        )
    }
}

impl Module for BatchNorm2d {
    params!(Self { weight, bias, running_mean, running_var, num_batches_tracked, .. }, v => {
        v.param("weight", weight);
        v.param("bias", bias);
        v.buffer("running_mean", running_mean);
        v.buffer("running_var", running_var);
        v.count("num_batches_tracked", num_batches_tracked);
    });
}

/// Max pooling (PyTorch's `nn.MaxPool2d`); keeps the argmax of each window for backward.
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    indices: Vec<u32>,
}

impl MaxPool2d {
    /// `stride` None is the kernel size, as PyTorch.
    pub fn new(kernel: [usize; 2], stride: Option<[usize; 2]>, padding: [usize; 2]) -> Self {
        MaxPool2d {
            kernel,
            stride: stride.unwrap_or(kernel),
            padding,
            indices: Vec::new(),
        }
    }

    fn shape(&self, input: Nchw) -> Pool2dShape {
        Pool2dShape {
            input,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    pub fn output_shape(&self, input: Nchw) -> Result<Nchw> {
        self.shape(input).output("MaxPool2d")
    }

    pub fn forward(&mut self, x: &[f32], input: Nchw, y: &mut [f32]) -> Result<Nchw> {
        let out = self.output_shape(input)?;
        self.indices.resize(out.len(), 0);
        max_pool2d_forward(&self.shape(input), x, y, &mut self.indices)?;
        Ok(out)
    }

    /// dx = dy routed to each window's maximum in the last forward (whose input was `input`).
    pub fn backward(&self, input: Nchw, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        max_pool2d_backward(&self.shape(input), dy, &self.indices, dx)
    }
}

/// Average pooling with padding counted as zeros (PyTorch's `nn.AvgPool2d` defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl AvgPool2d {
    /// `stride` None is the kernel size, as PyTorch.
    pub fn new(kernel: [usize; 2], stride: Option<[usize; 2]>, padding: [usize; 2]) -> Self {
        AvgPool2d {
            kernel,
            stride: stride.unwrap_or(kernel),
            padding,
        }
    }

    fn shape(&self, input: Nchw) -> Pool2dShape {
        Pool2dShape {
            input,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    pub fn output_shape(&self, input: Nchw) -> Result<Nchw> {
        self.shape(input).output("AvgPool2d")
    }

    pub fn forward(&self, x: &[f32], input: Nchw, y: &mut [f32]) -> Result<Nchw> {
        avg_pool2d_forward(&self.shape(input), x, y)?;
        self.output_shape(input)
    }

    pub fn backward(&self, input: Nchw, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        avg_pool2d_backward(&self.shape(input), dy, dx)
    }
}

/// Average pooling to a fixed output size whatever the input's (PyTorch's
/// `nn.AdaptiveAvgPool2d`; [1, 1] is global average pooling, ResNet's last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    pub output: [usize; 2],
}

impl AdaptiveAvgPool2d {
    pub fn new(output: [usize; 2]) -> Self {
        AdaptiveAvgPool2d { output }
    }

    pub fn output_shape(&self, input: Nchw) -> Nchw {
        Nchw::new(input.n, input.c, self.output[0], self.output[1])
    }

    pub fn forward(&self, x: &[f32], input: Nchw, y: &mut [f32]) -> Result<Nchw> {
        adaptive_avg_pool2d_forward(input, self.output, x, y)?;
        Ok(self.output_shape(input))
    }

    pub fn backward(&self, input: Nchw, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        adaptive_avg_pool2d_backward(input, self.output, dy, dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::{assert_close, fixtures};

    /// On a 1×1 map the layer keeps its 3×3 kernel cut to the centre between forwards, and
    /// every way of writing the weight drops it: the next forward sees the new weight.
    #[test]
    fn conv2d_keeps_the_cut_kernel_only_while_the_weight_is_unchanged() {
        let opts = Conv2dOptions {
            padding: [1, 1],
            ..Conv2dOptions::default()
        };
        let mut conv = Conv2d::new(3, 4, [3, 3], opts).unwrap();
        conv.init_pytorch(&mut Rng::new(7));
        let input = Nchw::new(2, 3, 1, 1);
        let x = [0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
        let fresh = |conv: &Conv2d| {
            let s = conv.shape(input).unwrap();
            let bias = conv.bias.as_ref().map(|b| b.value.data.as_slice());
            let mut y = vec![0f32; 8];
            crate::backend::conv2d_forward(&s, &x, &conv.weight().value.data, bias, &mut y)
                .unwrap();
            y
        };
        let mut y = vec![0f32; 8];
        conv.forward(&x, input, &mut y).unwrap();
        assert!(!conv.prepared.is_empty(), "the cut kernel is kept");
        assert_eq!(y, fresh(&conv));
        // Written through weight_mut: the centre taps change.
        conv.weight_mut()
            .value
            .data
            .iter_mut()
            .for_each(|w| *w *= -2.0);
        assert!(conv.prepared.is_empty());
        conv.forward(&x, input, &mut y).unwrap();
        assert_eq!(y, fresh(&conv));
        // Written through the parameter walk, as an optimizer step or a checkpoint load does.
        conv.forward(&x, input, &mut y).unwrap();
        conv.visit_params_mut(&mut |name, p| {
            if name == "weight" {
                p.value.data.iter_mut().for_each(|w| *w += 0.5);
            }
        });
        assert!(conv.prepared.is_empty());
        conv.forward(&x, input, &mut y).unwrap();
        assert_eq!(y, fresh(&conv));
        // The backward takes the forward's cut: the gradients of a fresh backward.
        let s = conv.shape(input).unwrap();
        let dy = [1.0, -0.5, 0.25, 2.0, -1.5, 0.75, 0.5, -0.25];
        let (mut dx, mut dx_want) = (vec![0f32; 6], vec![0f32; 6]);
        let mut dw_want = vec![0f32; conv.weight().grad.len()];
        let mut db_want = vec![0f32; 4];
        let w = conv.weight().value.data.clone();
        crate::backend::conv2d_backward(
            &s,
            &x,
            &w,
            &dy,
            Some(&mut dx_want),
            &mut dw_want,
            Some(&mut db_want),
        )
        .unwrap();
        conv.backward(&x, input, &dy, Some(&mut dx)).unwrap();
        assert_eq!(dx, dx_want);
        assert_eq!(conv.weight().grad, dw_want);
        assert_eq!(conv.bias.as_ref().unwrap().grad, db_want);
        // A map the kernel covers whole needs no cut; the 1×1 map's cut still serves after it.
        let wide = Nchw::new(1, 3, 4, 4);
        let mut y_wide = vec![0f32; 64];
        conv.forward(&[0.1; 48], wide, &mut y_wide).unwrap();
        let s = conv.shape(wide).unwrap();
        let mut want = vec![0f32; 64];
        let bias = conv.bias.as_ref().map(|b| b.value.data.as_slice());
        crate::backend::conv2d_forward(&s, &[0.1; 48], &conv.weight().value.data, bias, &mut want)
            .unwrap();
        assert_eq!(y_wide, want);
        conv.forward(&x, input, &mut y).unwrap();
        assert_eq!(y, fresh(&conv));
    }

    #[test]
    fn conv2d_layer_runs_the_groups_fixture_and_names_its_parameters() {
        let f = fixtures("conv.safetensors");
        let t = |what: &str| f.get(&format!("conv.groups2.{what}")).expect(what);
        let opts = Conv2dOptions {
            stride: [2, 2],
            padding: [1, 1],
            groups: 2,
            ..Conv2dOptions::default()
        };
        let mut conv = Conv2d::new(4, 6, [3, 3], opts).unwrap();
        assert_eq!(conv.weight.value.shape, t("weight").shape);
        conv.weight.value.data = t("weight").data.clone();
        conv.bias.as_mut().unwrap().value.data = t("bias").data.clone();
        let names: Vec<String> = conv.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight", "bias"]);

        let input = Nchw::new(2, 4, 7, 9);
        let out = conv.output_shape(input).unwrap();
        let mut y = vec![0.0; out.len()];
        assert_eq!(conv.forward(&t("x").data, input, &mut y).unwrap(), out);
        assert_close("y", &y, &t("y").data, 1e-5);
        let mut dx = vec![0.0; input.len()];
        conv.backward(&t("x").data, input, &t("dy").data, Some(&mut dx))
            .unwrap();
        assert_close("dx", &dx, &t("dx").data, 1e-5);
        assert_close("dweight", &conv.weight.grad, &t("dweight").data, 1e-5);
        assert_close(
            "dbias",
            &conv.bias.as_ref().unwrap().grad,
            &t("dbias").data,
            1e-5,
        );

        let e = conv
            .forward(&t("x").data, Nchw::new(2, 3, 7, 9), &mut y)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the input has 3 channels, the layer takes 4"),
            "{e}"
        );
    }

    #[test]
    fn conv2d_new_rejects_bad_hyper_parameters_and_init_draws_within_the_bound() {
        let opts = |groups, stride| Conv2dOptions {
            groups,
            stride,
            ..Conv2dOptions::default()
        };
        let e = Conv2d::new(6, 4, [3, 3], opts(4, [1, 1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("divisible by groups 4"), "{e}");
        let e = Conv2d::new(6, 4, [3, 3], opts(1, [0, 1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride and dilation must be ≥ 1"), "{e}");
        let mut conv = Conv2d::new(6, 4, [3, 3], opts(2, [1, 1])).unwrap();
        assert_eq!(conv.weight.value.shape, [4, 3, 3, 3]);
        conv.init_pytorch(&mut Rng::new(1));
        let bound = 1.0 / 27f32.sqrt();
        let w = &conv.weight.value.data;
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
        let b = &conv.bias.as_ref().unwrap().value.data;
        assert!(b.iter().all(|v| v.abs() <= bound) && b.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn batch_norm2d_layer_tracks_batches_and_switches_to_running_statistics() {
        let f = fixtures("batchnorm.safetensors");
        // momentum=None after two batches: the third uses factor 1/3.
        let t = |what: &str| f.get(&format!("bn.train_cma.{what}")).expect(what);
        let mut bn = BatchNorm2d::new(4);
        bn.momentum = None;
        bn.num_batches_tracked = 2;
        bn.weight.value.data = t("weight").data.clone();
        bn.bias.value.data = t("bias").data.clone();
        bn.running_mean = t("running_mean_in").data.clone();
        bn.running_var = t("running_var_in").data.clone();
        let input = Nchw::new(3, 4, 5, 6);
        let mut y = vec![0.0; input.len()];
        let mut y_relu = vec![f32::NAN; input.len()];
        bn.clone()
            .forward_then(&t("x").data, input, true, true, &mut y_relu)
            .unwrap();
        let want: Vec<f32> = t("y").data.iter().map(|v| v.max(0.0)).collect();
        assert_close("y, ReLU'd", &y_relu, &want, 1e-5);
        bn.forward(&t("x").data, input, true, &mut y).unwrap();
        assert_eq!(bn.num_batches_tracked, 3);
        assert_close("y", &y, &t("y").data, 1e-5);
        assert_close(
            "running_mean",
            &bn.running_mean,
            &t("running_mean").data,
            1e-6,
        );
        assert_close("running_var", &bn.running_var, &t("running_var").data, 1e-6);
        let mut dx = vec![0.0; input.len()];
        bn.backward(&t("x").data, input, &t("dy").data, &mut dx)
            .unwrap();
        assert_close("dx", &dx, &t("dx").data, 1e-5);

        let t = |what: &str| f.get(&format!("bn.eval.{what}")).expect(what);
        let mut bn = BatchNorm2d::new(4);
        bn.weight.value.data = t("weight").data.clone();
        bn.bias.value.data = t("bias").data.clone();
        bn.running_mean = t("running_mean").data.clone();
        bn.running_var = t("running_var").data.clone();
        bn.forward(&t("x").data, input, false, &mut y).unwrap();
        assert_eq!(bn.num_batches_tracked, 0);
        assert_close("eval y", &y, &t("y").data, 1e-5);
        // With the ReLU in the same pass: PyTorch's y through max(0, ·).
        let mut y_relu = vec![f32::NAN; input.len()];
        bn.forward_then(&t("x").data, input, false, true, &mut y_relu)
            .unwrap();
        let want: Vec<f32> = t("y").data.iter().map(|v| v.max(0.0)).collect();
        assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
        assert_close("eval y, ReLU'd", &y_relu, &want, 1e-5);
        bn.backward(&t("x").data, input, &t("dy").data, &mut dx)
            .unwrap();
        assert_close("eval dx", &dx, &t("dx").data, 1e-5);

        // A failed training step leaves the counter alone.
        let one = Nchw::new(1, 4, 1, 1);
        assert!(bn.forward(&[0.0; 4], one, true, &mut [0.0; 4]).is_err());
        assert_eq!(bn.num_batches_tracked, 0);
        let names: Vec<String> = bn.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight", "bias"]);
    }

    #[test]
    fn pool_layers_match_pytorch() {
        let f = fixtures("pool.safetensors");
        let t = |what: &str| &f.get(what).expect(what).data;
        let input = Nchw::new(2, 3, 7, 9);
        let mut pool = MaxPool2d::new([3, 3], Some([2, 2]), [1, 1]);
        let out = pool.output_shape(input).unwrap();
        assert_eq!([out.h, out.w], [4, 5]);
        let (mut y, mut dx) = (vec![0.0; out.len()], vec![0.0; input.len()]);
        pool.forward(t("maxpool.k3s2p1.x"), input, &mut y).unwrap();
        assert_close("max y", &y, t("maxpool.k3s2p1.y"), 0.0);
        pool.backward(input, t("maxpool.k3s2p1.dy"), &mut dx)
            .unwrap();
        assert_close("max dx", &dx, t("maxpool.k3s2p1.dx"), 1e-6);

        let avg = AvgPool2d::new([2, 2], None, [0, 0]);
        let out = avg.output_shape(input).unwrap();
        let mut y = vec![0.0; out.len()];
        avg.forward(t("avgpool.k2s2.x"), input, &mut y).unwrap();
        assert_close("avg y", &y, t("avgpool.k2s2.y"), 1e-6);
        avg.backward(input, t("avgpool.k2s2.dy"), &mut dx).unwrap();
        assert_close("avg dx", &dx, t("avgpool.k2s2.dx"), 1e-6);

        let gap = AdaptiveAvgPool2d::new([1, 1]);
        let mut y = vec![0.0; 6];
        assert_eq!(
            gap.forward(t("adaptive.1x1.x"), input, &mut y).unwrap(),
            Nchw::new(2, 3, 1, 1)
        );
        assert_close("gap y", &y, t("adaptive.1x1.y"), 1e-6);
        gap.backward(input, t("adaptive.1x1.dy"), &mut dx).unwrap();
        assert_close("gap dx", &dx, t("adaptive.1x1.dx"), 1e-6);
    }
}
