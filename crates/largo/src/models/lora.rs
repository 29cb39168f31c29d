//! LoRA (Hu et al. 2021), as PEFT's `lora.Linear`: a frozen base matrix W [out, in] plus a
//! trainable low-rank update,
//!
//! ```text
//! y = x·Wᵀ + (alpha/r) · dropout(x)·Aᵀ·Bᵀ,   A: [r, in] (`lora_A.weight`), B: [out, r] (`lora_B.weight`)
//! ```
//!
//! A starts as PEFT's (kaiming-uniform with a = √5: uniform in ±1/√in), B at zero, so training
//! starts from the base model. The base stays as loaded, f32 or quantised ([`Matrix`]); only A
//! and B get gradients, but the input's gradient goes through W too (dx = dy·W + …).

use super::llama::Matrix;
use crate::backend::{dropout_backward, dropout_forward, Gemm};
use crate::nn::{params, Module, Param};
use crate::rng::Rng;
use crate::{bail, Result};

/// A projection of a Llama layer that LoRA can adapt, in PEFT's module order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The short name in configs: `q`, …, `down`.
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
            LoraTarget::Gate => "gate",
            LoraTarget::Up => "up",
            LoraTarget::Down => "down",
        }
    }

    /// PEFT's `target_modules` name: `q_proj`, …
    pub fn proj(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The module's path inside a Hugging Face layer: `self_attn.q_proj`, `mlp.up_proj`, …
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

    /// `q` or PEFT's `q_proj` (and so on); anything else is an error naming the valid ones.
    pub fn parse(name: &str) -> Result<Self> {
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.name() == name || t.proj() == name)
            .ok_or_else(|| {
                let valid: Vec<&str> = LoraTarget::ALL.iter().map(|t| t.name()).collect();
                crate::Error::Invalid(format!(
                    "unknown LoRA target module {name:?}: valid are {} (or PEFT's q_proj, …, \
                     down_proj)",
                    valid.join(" ")
                ))
            })
    }
}

/// A fine-tuning run's model: a pretrained Llama-family base (a GGUF file or a Hugging Face
/// directory, kept frozen as loaded) and the adapters trained on it. In a training config:
/// `model.base` and the `[lora]` section; in a model directory's `config.json`: the `llama`
/// section, next to PEFT's `adapter_config.json` and `adapter_model.safetensors`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaAdapterConfig {
    /// The base model's path.
    pub base: String,
    pub lora: LoraSettings,
}

impl LlamaAdapterConfig {
    pub fn validate(&self) -> Result<()> {
        if self.base.is_empty() {
            bail!("model.base is empty: name the pretrained model to fine-tune (a .gguf file or a Hugging Face directory)");
        }
        self.lora.to_config().map(|_| ())
    }
}

/// The `[lora]` section of a config: what [`LoraConfig`] is made from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank of each update.
    pub r: usize,
    /// The update is scaled by alpha / r.
    pub alpha: f64,
    /// Dropout on each adapter's input during training.
    pub dropout: f64,
    /// Projections adapted in every layer, among q k v o gate up down.
    pub targets: Vec<String>,
}

impl Default for LoraSettings {
    /// r 8, alpha 16, dropout 0.05 on all seven projections (QLoRA's choice of modules).
    fn default() -> Self {
        LoraSettings {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: LoraTarget::ALL.iter().map(|t| t.name().into()).collect(),
        }
    }
}

impl LoraSettings {
    /// The checked configuration (`lora.*` named in errors).
    pub fn to_config(&self) -> Result<LoraConfig> {
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        LoraConfig::new(self.r, self.alpha as f32, self.dropout as f32, &targets)
            .map_err(|e| crate::Error::Config(format!("lora: {e}")))
    }
}

/// Rank, scaling, dropout and target modules of a set of adapters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// Dropout on the adapter's input (PEFT's `lora_dropout`).
    pub dropout: f32,
    /// Sorted, without repeats.
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    /// Checks the values; `targets` as [`LoraTarget::parse`] reads them.
    pub fn new(r: usize, alpha: f32, dropout: f32, targets: &[&str]) -> Result<Self> {
        if r == 0 {
            bail!("lora.r must be ≥ 1");
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            bail!("lora.alpha = {alpha} must be > 0");
        }
        if !(0.0..1.0).contains(&dropout) {
            bail!("lora.dropout = {dropout} must be in [0, 1)");
        }
        if targets.is_empty() {
            bail!("lora.targets is empty: name some of q k v o gate up down");
        }
        let mut ts = targets
            .iter()
            .map(|t| LoraTarget::parse(t))
            .collect::<Result<Vec<_>>>()?;
        ts.sort();
        ts.dedup();
        Ok(LoraConfig {
            r,
            alpha,
            dropout,
            targets: ts,
        })
    }

    /// Reads PEFT's `adapter_config.json`: `r`, `lora_alpha`, `lora_dropout`,
    /// `target_modules`. Variants largo does not implement (DoRA, rsLoRA, per-module ranks or
    /// alphas, LoRA biases) are refused by name.
    pub fn from_peft_config(path: &std::path::Path) -> Result<Self> {
        use crate::Error;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        let bad = |msg: String| Error::format(path, msg);
        let r = v["r"]
            .as_u64()
            .ok_or_else(|| bad("r: expected a positive integer".into()))?;
        let alpha = v["lora_alpha"]
            .as_f64()
            .ok_or_else(|| bad("lora_alpha: expected a number".into()))?;
        let dropout = v["lora_dropout"].as_f64().unwrap_or(0.0);
        for (key, off) in [
            ("use_dora", serde_json::json!(false)),
            ("use_rslora", serde_json::json!(false)),
            ("lora_bias", serde_json::json!(false)),
        ] {
            if !(v[key].is_null() || v[key] == off) {
                return Err(bad(format!("{key} = {}: not supported", v[key])));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v[key].as_object().is_some_and(|m| !m.is_empty()) {
                return Err(bad(format!(
                    "{key}: per-module ranks and alphas are not supported"
                )));
            }
        }
        if !(v["bias"].is_null() || v["bias"] == "none") {
            return Err(bad(format!(
                "bias = {}: only \"none\" is supported",
                v["bias"]
            )));
        }
        let targets: Vec<&str> = v["target_modules"]
            .as_array()
            .ok_or_else(|| bad("target_modules: expected a list of module names".into()))?
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| bad(format!("target_modules: {t} is not a name")))
            })
            .collect::<Result<_>>()?;
        LoraConfig::new(r as usize, alpha as f32, dropout as f32, &targets)
            .map_err(|e| bad(e.to_string()))
    }

    /// PEFT's `adapter_config.json` for these adapters on the base `base_model`.
    pub fn to_peft_config(&self, base_model: Option<&str>) -> serde_json::Value {
        // An f32 as the decimal it was written as (0.05, not 0.05000000074505806).
        let decimal = |v: f32| v.to_string().parse::<f64>().unwrap_or(v as f64);
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": decimal(self.alpha),
            "lora_dropout": decimal(self.dropout),
            "target_modules": self.targets.iter().map(|t| t.proj()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
            "inference_mode": true,
        })
    }

    /// What multiplies the adapter's output: alpha / r (PEFT without rsLoRA).
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }
}

/// The trainable part of a LoRA-adapted projection; the base [`Matrix`] it adapts is passed to
/// `forward` and `backward` (it belongs to the frozen model).
#[derive(Clone, Debug)]
pub struct LoraLinear {
    /// `lora_A.weight` [r, in].
    pub a: Param,
    /// `lora_B.weight` [out, r].
    pub b: Param,
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
    /// alpha / r.
    pub scale: f32,
    pub dropout: f32,
    /// Saved by forward: scale · dropout(x)·Aᵀ [rows, r] (B's input) and the dropout seed.
    xa: Vec<f32>,
    seed: u64,
}

impl LoraLinear {
    /// An adapter of `base` with PEFT's initialisation: A uniform in ±1/√in, B zero.
    pub fn new(base: &Matrix, config: &LoraConfig, rng: &mut Rng) -> Self {
        let (i, o, r) = (base.cols, base.rows, config.r);
        let mut a = Param::zeros(&[r, i]);
        let bound = 1.0 / (i as f32).sqrt();
        for v in a.value.data.iter_mut() {
            *v = (2.0 * rng.uniform() - 1.0) * bound;
        }
        LoraLinear {
            a,
            b: Param::zeros(&[o, r]),
            in_features: i,
            out_features: o,
            rank: r,
            scale: config.scale(),
            dropout: config.dropout,
            xa: Vec::new(),
            seed: 0,
        }
    }

    /// dropout(x) with this pass's mask, or x itself without dropout.
    fn dropped<'x>(&self, x: &'x [f32]) -> std::borrow::Cow<'x, [f32]> {
        if self.dropout > 0.0 {
            let mut xd = x.to_vec();
            dropout_forward(&mut xd, self.dropout, self.seed);
            xd.into()
        } else {
            x.into()
        }
    }

    /// y [rows, out] = x [rows, in] · Wᵀ + scale · dropout(x)·Aᵀ·Bᵀ; keeps B's input for
    /// backward. `seed` draws the dropout mask (backward redraws it).
    pub fn forward(&mut self, base: &Matrix, x: &[f32], rows: usize, seed: u64, y: &mut [f32]) {
        let (i, o, r) = (self.in_features, self.out_features, self.rank);
        base.forward_f32(x, rows, y);
        self.seed = seed;
        let xd = self.dropped(&x[..rows * i]);
        // xa [rows, r] = scale · xd · Aᵀ
        self.xa.resize(rows * r, 0.0);
        Gemm::nt(rows, r, i).run(&xd, &self.a.value.data, &mut self.xa);
        self.xa.iter_mut().for_each(|v| *v *= self.scale);
        // y [rows, out] += xa · Bᵀ
        Gemm::nt(rows, o, r)
            .accumulate()
            .run(&self.xa, &self.b.value.data, &mut y[..rows * o]);
    }

    /// With forward's input x and dy [rows, out]: dB += dyᵀ·xa, dA += scale·(dy·B)ᵀ·dropout(x),
    /// and dx [rows, in] = dy·W + dropout_backward(scale·(dy·B)·A), added into dx with
    /// `accumulate` (projections sharing an input).
    pub fn backward(
        &mut self,
        base: &Matrix,
        x: &[f32],
        dy: &[f32],
        rows: usize,
        dx: &mut [f32],
        accumulate: bool,
    ) {
        let (i, o, r) = (self.in_features, self.out_features, self.rank);
        let dy = &dy[..rows * o];
        // dB [out, r] += dyᵀ · xa
        Gemm::tn(o, r, rows)
            .accumulate()
            .run(dy, &self.xa, &mut self.b.grad);
        // dxa [rows, r] = scale · dy · B
        let mut dxa = vec![0f32; rows * r];
        Gemm::nn(rows, r, o).run(dy, &self.b.value.data, &mut dxa);
        dxa.iter_mut().for_each(|v| *v *= self.scale);
        // dA [r, in] += dxaᵀ · dropout(x)
        let xd = self.dropped(&x[..rows * i]);
        Gemm::tn(r, i, rows)
            .accumulate()
            .run(&dxa, &xd, &mut self.a.grad);
        // dx = dy · W (+ dx), then += dropout_backward(dxa · A)
        base.backward_input(dy, rows, dx, accumulate);
        let dx = &mut dx[..rows * i];
        if self.dropout > 0.0 {
            let mut dxd = vec![0f32; rows * i];
            Gemm::nn(rows, i, r).run(&dxa, &self.a.value.data, &mut dxd);
            dropout_backward(&mut dxd, self.dropout, self.seed);
            crate::backend::add_assign(dx, &dxd);
        } else {
            Gemm::nn(rows, i, r)
                .accumulate()
                .run(&dxa, &self.a.value.data, dx);
        }
    }
}

impl Module for LoraLinear {
    params!(Self { a, b, .. }, v => {
        v.param("lora_A.weight", a);
        v.param("lora_B.weight", b);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::qmatmul::QMatrix;
    use crate::backend::cpu::quant::{quantize_q8_0, GgmlType};

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * k).sin()).collect()
    }

    /// L = Σ g ⊙ y for fixed g: the gradients backward gives against finite differences of the
    /// f64 formula, for A, B and x.
    #[test]
    fn gradients_match_finite_differences() {
        let (rows, i, o, r) = (3, 32, 5, 2);
        let config = LoraConfig::new(r, 4.0, 0.0, &["q"]).unwrap();
        let base = Matrix::new(o, i, values(o * i, 0.37)).unwrap();
        let mut lora = LoraLinear::new(&base, &config, &mut Rng::new(1));
        lora.b.value.data = values(o * r, 0.91);
        let x = values(rows * i, 0.13);
        let g = values(rows * o, 0.53);
        let mut y = vec![0f32; rows * o];
        lora.forward(&base, &x, rows, 0, &mut y);
        let mut dx = vec![0f32; rows * i];
        lora.backward(&base, &x, &g, rows, &mut dx, false);

        let w = match &base.weights {
            crate::models::llama::Weights::F32(d) => d.clone(),
            _ => unreachable!(),
        };
        let loss = |x: &[f32], a: &[f32], b: &[f32]| -> f64 {
            let mut total = 0.0;
            for n in 0..rows {
                let xr = &x[n * i..(n + 1) * i];
                let xa: Vec<f64> = (0..r)
                    .map(|k| (0..i).map(|j| a[k * i + j] as f64 * xr[j] as f64).sum())
                    .collect();
                for m in 0..o {
                    let base: f64 = (0..i).map(|j| w[m * i + j] as f64 * xr[j] as f64).sum();
                    let low: f64 = (0..r).map(|k| b[m * r + k] as f64 * xa[k]).sum();
                    total += g[n * o + m] as f64 * (base + 2.0 * low);
                }
            }
            total
        };
        let (a, b) = (lora.a.value.data.clone(), lora.b.value.data.clone());
        let h = 1e-2f32;
        let check = |got: f32, up: f64, down: f64, what: &str| {
            let numeric = (up - down) / (2.0 * h as f64);
            assert!(
                (got as f64 - numeric).abs() < 1e-3,
                "{what}: {got} vs {numeric}"
            );
        };
        for k in 0..a.len() {
            let (mut up, mut down) = (a.clone(), a.clone());
            up[k] += h;
            down[k] -= h;
            check(lora.a.grad[k], loss(&x, &up, &b), loss(&x, &down, &b), "dA");
        }
        for k in 0..b.len() {
            let (mut up, mut down) = (b.clone(), b.clone());
            up[k] += h;
            down[k] -= h;
            check(lora.b.grad[k], loss(&x, &a, &up), loss(&x, &a, &down), "dB");
        }
        for k in 0..x.len() {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[k] += h;
            down[k] -= h;
            check(dx[k], loss(&up, &a, &b), loss(&down, &a, &b), "dx");
        }
    }

    /// A quantised base gives the products of its dequantised f32 copy.
    #[test]
    fn a_q8_0_base_gives_the_dequantised_base_s_products() {
        let (rows, i, o, r) = (4, 64, 9, 3);
        let config = LoraConfig::new(r, 8.0, 0.0, &["v"]).unwrap();
        let bytes = quantize_q8_0(&values(o * i, 0.29)).unwrap();
        let quant = Matrix::quantized(QMatrix::from_ggml(GgmlType::Q8_0, o, i, &bytes).unwrap());
        let mut deq = vec![0f32; o * i];
        for (m, row) in deq.chunks_exact_mut(i).enumerate() {
            quant.row(m, row);
        }
        let plain = Matrix::new(o, i, deq).unwrap();
        let x = values(rows * i, 0.11);
        let dy = values(rows * o, 0.7);
        let run = |base: &Matrix| {
            let mut lora = LoraLinear::new(base, &config, &mut Rng::new(3));
            lora.b.value.data = values(o * r, 0.5);
            let mut y = vec![0f32; rows * o];
            lora.forward(base, &x, rows, 0, &mut y);
            let mut dx = vec![1f32; rows * i];
            lora.backward(base, &x, &dy, rows, &mut dx, true);
            (y, dx, lora.a.grad, lora.b.grad)
        };
        let (q, p) = (run(&quant), run(&plain));
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&q.0, &p.0) && close(&q.1, &p.1) && close(&q.2, &p.2) && close(&q.3, &p.3));
    }

    #[test]
    fn dropout_masks_the_adapter_s_input_in_forward_and_backward_alike() {
        let (rows, i, o, r) = (2, 32, 4, 2);
        let config = LoraConfig::new(r, 2.0, 0.5, &["o"]).unwrap();
        // A zero base: y is the adapter's output alone.
        let base = Matrix::new(o, i, vec![0.0; o * i]).unwrap();
        let mut lora = LoraLinear::new(&base, &config, &mut Rng::new(5));
        lora.b.value.data = values(o * r, 0.3);
        let x = values(rows * i, 0.17);
        let mut y = vec![0f32; rows * o];
        lora.forward(&base, &x, rows, 42, &mut y);
        // The same x with the dropped entries zeroed and the kept ones doubled, no dropout.
        let mut xd = x.clone();
        dropout_forward(&mut xd, 0.5, 42);
        assert!(xd.contains(&0.0));
        let mut plain = lora.clone();
        plain.dropout = 0.0;
        let mut want = vec![0f32; rows * o];
        plain.forward(&base, &xd, rows, 0, &mut want);
        assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
        let dy = values(rows * o, 0.9);
        let mut dx = vec![0f32; rows * i];
        lora.backward(&base, &x, &dy, rows, &mut dx, false);
        let mut dx_plain = vec![0f32; rows * i];
        plain.backward(&base, &xd, &dy, rows, &mut dx_plain, false);
        assert!(lora
            .a
            .grad
            .iter()
            .zip(&plain.a.grad)
            .all(|(a, b)| (a - b).abs() < 1e-6));
        // dx is zero where the mask dropped x, twice the undropped gradient elsewhere.
        for (k, (&got, &v)) in dx.iter().zip(&dx_plain).enumerate() {
            let want = if xd[k] == 0.0 { 0.0 } else { 2.0 * v };
            assert!((got - want).abs() < 1e-6, "dx[{k}] {got} vs {want}");
        }
    }

    #[test]
    fn unknown_targets_name_the_valid_ones_and_names_follow_peft() {
        let e = LoraConfig::new(4, 8.0, 0.0, &["q", "qkv"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"qkv\"") && e.contains("q k v o gate up down"),
            "{e}"
        );
        let c = LoraConfig::new(4, 8.0, 0.0, &["v_proj", "q", "v"]).unwrap();
        assert_eq!(c.targets, vec![LoraTarget::Q, LoraTarget::V]);
        assert_eq!(c.scale(), 2.0);
        let base = Matrix::new(3, 32, vec![0.0; 96]).unwrap();
        let lora = LoraLinear::new(&base, &c, &mut Rng::new(0));
        let names: Vec<String> = lora.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["lora_A.weight", "lora_B.weight"]);
        assert!(lora
            .a
            .value
            .data
            .iter()
            .all(|v| v.abs() <= 1.0 / 32f32.sqrt()));
        assert!(lora.b.value.data.iter().all(|&v| v == 0.0));
    }
}
