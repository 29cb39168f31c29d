use super::{Activation, KvCache, LayerNorm, Linear, Module, MultiHeadAttention, Param};
use crate::backend::{add_assign, dropout_backward, dropout_forward};
use crate::tensor::ensure_len;

/// Which parameter names a block uses (and so which PyTorch module it mirrors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStyle {
    /// nanoGPT: `ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`.
    Gpt,
    /// `nn.TransformerEncoderLayer`: `self_attn.in_proj_weight`, `self_attn.out_proj`, `norm1`,
    /// `linear1`, `linear2`, `norm2`.
    TorchEncoder,
}

/// A Transformer block: attention and an MLP, each in a residual branch.
/// Pre-norm (`norm_first`): x + attn(ln1(x)), then + mlp(ln2(·)).
/// Post-norm: ln1(x + attn(x)), then ln2(· + mlp(·)).
#[derive(Clone, Debug)]
pub struct Block {
    pub ln1: LayerNorm,
    pub attn: MultiHeadAttention,
    pub ln2: LayerNorm,
    pub fc: Linear,
    pub proj: Linear,
    pub activation: Activation,
    pub norm_first: bool,
    /// Dropout on each branch's output before it joins the residual stream.
    pub dropout: f32,
    pub style: BlockStyle,
    s: Saved,
}

#[derive(Clone, Debug, Default)]
struct Saved {
    rows: usize,
    /// Input of attention (ln1(x) in pre-norm, x in post-norm is `x` itself).
    h1: Vec<f32>,
    attn_out: Vec<f32>,
    /// Residual stream between the branches (before ln1 in post-norm).
    mid: Vec<f32>,
    /// Post-norm: ln1(mid), the MLP's input and the second residual's base.
    mid_norm: Vec<f32>,
    h2: Vec<f32>,
    pre_act: Vec<f32>,
    act: Vec<f32>,
    mlp_out: Vec<f32>,
    /// Post-norm: the sum before ln2.
    r2: Vec<f32>,
    seeds: (u64, u64),
    train: bool,
    // backward scratch
    g1: Vec<f32>,
    g2: Vec<f32>,
    g_wide: Vec<f32>,
    g_wide2: Vec<f32>,
}

impl Block {
    pub fn new(
        c: usize,
        heads: usize,
        ff: usize,
        causal: bool,
        rotary: bool,
        norm_first: bool,
        style: BlockStyle,
    ) -> Self {
        Block {
            ln1: LayerNorm::new(c, 1e-5),
            attn: MultiHeadAttention::new(c, heads, causal, rotary),
            ln2: LayerNorm::new(c, 1e-5),
            fc: Linear::new(c, ff, true),
            proj: Linear::new(ff, c, true),
            activation: Activation::Gelu,
            norm_first,
            dropout: 0.0,
            style,
            s: Saved::default(),
        }
    }

    /// Dropout on the feed-forward hidden layer: `nn.TransformerEncoderLayer` has it, nanoGPT not.
    fn hidden_dropout(&self) -> f32 {
        match (self.style, self.s.train) {
            (BlockStyle::TorchEncoder, true) => self.dropout,
            _ => 0.0,
        }
    }

    fn mlp_forward(&mut self, x: &[f32], rows: usize, out: &mut [f32]) {
        let p = self.hidden_dropout();
        let s = &mut self.s;
        let f = self.fc.out_features;
        ensure_len(&mut s.pre_act, rows * f);
        ensure_len(&mut s.act, rows * f);
        self.fc.forward(x, rows, &mut s.pre_act);
        self.activation.forward(&s.pre_act, &mut s.act);
        dropout_forward(&mut s.act, p, s.seeds.1 ^ HIDDEN_SEED);
        self.proj.forward(&s.act, rows, out);
    }

    /// Adds into parameter grads; writes dx of the MLP's input into `dx`.
    fn mlp_backward(&mut self, x: &[f32], dout: &[f32], rows: usize, dx: &mut [f32]) {
        let p = self.hidden_dropout();
        let s = &mut self.s;
        ensure_len(&mut s.g_wide, s.act.len());
        ensure_len(&mut s.g_wide2, s.act.len());
        self.proj.backward(&s.act, dout, rows, Some(&mut s.g_wide));
        dropout_backward(&mut s.g_wide, p, s.seeds.1 ^ HIDDEN_SEED);
        self.activation
            .backward(&s.pre_act, &s.g_wide, &mut s.g_wide2);
        self.fc.backward(x, &s.g_wide2, rows, Some(dx));
    }

    /// x [B,T,C] → y [B,T,C].
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        x: &[f32],
        b: usize,
        t: usize,
        key_padding: Option<&[u8]>,
        train: bool,
        seed: u64,
        y: &mut [f32],
    ) {
        let c = self.ln1.dim();
        let rows = b * t;
        let n = rows * c;
        let p = if train { self.dropout } else { 0.0 };
        let mut s = std::mem::take(&mut self.s);
        s.rows = rows;
        s.train = train;
        s.seeds = (seed, seed ^ 0x5851_F42D_4C95_7F2D);
        for buf in [
            &mut s.h1,
            &mut s.attn_out,
            &mut s.mid,
            &mut s.mid_norm,
            &mut s.h2,
            &mut s.mlp_out,
            &mut s.r2,
        ] {
            ensure_len(buf, n);
        }
        if self.norm_first {
            self.ln1.forward(&x[..n], rows, &mut s.h1);
            self.attn.forward(
                &s.h1,
                b,
                t,
                key_padding,
                train,
                s.seeds.0 ^ ATTN_SEED,
                &mut s.attn_out,
            );
            dropout_forward(&mut s.attn_out, p, s.seeds.0);
            add(&x[..n], &s.attn_out, &mut s.mid);
            self.ln2.forward(&s.mid, rows, &mut s.h2);
            self.s = s;
            let mut out = std::mem::take(&mut self.s.mlp_out);
            let h2 = std::mem::take(&mut self.s.h2);
            self.mlp_forward(&h2, rows, &mut out);
            dropout_forward(&mut out, p, self.s.seeds.1);
            add(&self.s.mid, &out, &mut y[..n]);
            self.s.h2 = h2;
            self.s.mlp_out = out;
        } else {
            self.attn.forward(
                &x[..n],
                b,
                t,
                key_padding,
                train,
                s.seeds.0 ^ ATTN_SEED,
                &mut s.attn_out,
            );
            dropout_forward(&mut s.attn_out, p, s.seeds.0);
            add(&x[..n], &s.attn_out, &mut s.mid);
            self.ln1.forward(&s.mid, rows, &mut s.mid_norm);
            self.s = s;
            let mut out = std::mem::take(&mut self.s.mlp_out);
            let h = std::mem::take(&mut self.s.mid_norm);
            self.mlp_forward(&h, rows, &mut out);
            dropout_forward(&mut out, p, self.s.seeds.1);
            let mut r2 = std::mem::take(&mut self.s.r2);
            add(&h, &out, &mut r2);
            self.ln2.forward(&r2, rows, &mut y[..n]);
            self.s.r2 = r2;
            self.s.mid_norm = h;
            self.s.mlp_out = out;
        }
    }

    /// dy [B,T,C] → dx [B,T,C], adding into every parameter's grad. `x` is forward's input
    /// (the model keeps the residual stream, so the block does not copy it).
    pub fn backward(&mut self, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let rows = self.s.rows;
        let n = self.s.mid.len();
        let p = if self.s.train { self.dropout } else { 0.0 };
        let (seed_attn, seed_mlp) = self.s.seeds;
        let mut g1 = std::mem::take(&mut self.s.g1);
        let mut g2 = std::mem::take(&mut self.s.g2);
        ensure_len(&mut g1, n);
        ensure_len(&mut g2, n);
        if self.norm_first {
            // y = mid + drop(mlp(ln2(mid))); mid = x + drop(attn(ln1(x))).
            g1.copy_from_slice(&dy[..n]);
            dropout_backward(&mut g1, p, seed_mlp);
            let h2 = std::mem::take(&mut self.s.h2);
            self.mlp_backward(&h2, &g1, rows, &mut g2);
            self.s.h2 = h2;
            // g1 = d mid = dy + ln2ᵀ(g2)
            let mid = std::mem::take(&mut self.s.mid);
            self.ln2.backward(&mid, &g2, rows, &mut g1);
            self.s.mid = mid;
            add_assign(&mut g1, &dy[..n]);
            // attention branch
            g2.copy_from_slice(&g1);
            dropout_backward(&mut g2, p, seed_attn);
            let h1 = std::mem::take(&mut self.s.h1);
            let mut d_h1 = std::mem::take(&mut self.s.mid_norm);
            ensure_len(&mut d_h1, n);
            self.attn.backward(&h1, &g2, &mut d_h1);
            self.ln1.backward(&x[..n], &d_h1, rows, &mut dx[..n]);
            add_assign(&mut dx[..n], &g1);
            self.s.h1 = h1;
            self.s.mid_norm = d_h1;
        } else {
            // y = ln2(r2), r2 = h + drop(mlp(h)), h = ln1(mid), mid = x + drop(attn(x)).
            let r2 = std::mem::take(&mut self.s.r2);
            self.ln2.backward(&r2, dy, rows, &mut g1);
            self.s.r2 = r2;
            g2.copy_from_slice(&g1);
            dropout_backward(&mut g2, p, seed_mlp);
            let h = std::mem::take(&mut self.s.mid_norm);
            let mut d_h = std::mem::take(&mut self.s.h2);
            ensure_len(&mut d_h, n);
            self.mlp_backward(&h, &g2, rows, &mut d_h);
            add_assign(&mut d_h, &g1);
            self.s.mid_norm = h;
            let mid = std::mem::take(&mut self.s.mid);
            self.ln1.backward(&mid, &d_h, rows, &mut g1);
            self.s.mid = mid;
            self.s.h2 = d_h;
            g2.copy_from_slice(&g1);
            dropout_backward(&mut g2, p, seed_attn);
            self.attn.backward(&x[..n], &g2, &mut dx[..n]);
            add_assign(&mut dx[..n], &g1);
        }
        self.s.g1 = g1;
        self.s.g2 = g2;
    }

    /// Inference on new positions of several sequences, each with its own KV cache:
    /// x [N,C] (`lens[i]` rows of sequence i, in order) → y [N,C].
    pub fn forward_cached(
        &self,
        x: &[f32],
        lens: &[usize],
        caches: &mut [&mut KvCache],
        y: &mut [f32],
    ) {
        let n = x.len();
        let rows: usize = lens.iter().sum();
        let mut a = vec![0.0; n];
        let mut h = vec![0.0; n];
        let mut wide = vec![0.0; rows * self.fc.out_features];
        let mut wide_act = vec![0.0; wide.len()];
        let mut mlp = |inp: &[f32], out: &mut [f32]| {
            self.fc.forward(inp, rows, &mut wide);
            self.activation.forward(&wide, &mut wide_act);
            self.proj.forward(&wide_act, rows, out);
        };
        if self.norm_first {
            self.ln1.infer(x, rows, &mut h);
            self.attn.forward_cached(&h, lens, caches, &mut a);
            let mid: Vec<f32> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
            self.ln2.infer(&mid, rows, &mut h);
            mlp(&h, &mut a);
            add(&mid, &a, y);
        } else {
            self.attn.forward_cached(x, lens, caches, &mut a);
            let mid: Vec<f32> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
            self.ln1.infer(&mid, rows, &mut h);
            mlp(&h, &mut a);
            let r2: Vec<f32> = h.iter().zip(&a).map(|(p, q)| p + q).collect();
            self.ln2.infer(&r2, rows, y);
        }
    }
}

/// Separates the hidden-layer mask from the residual one drawn from the same seed.
const HIDDEN_SEED: u64 = 0x2545_F491_4F6C_DD1D;
/// Separates the attention-probability mask from the residual one.
const ATTN_SEED: u64 = 0x9E6C_63D0_676A_9A99;

fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

impl Module for Block {
    fn params(&self) -> Vec<(String, &Param)> {
        use super::prefixed;
        match self.style {
            BlockStyle::Gpt => {
                let mut v = prefixed("ln_1", self.ln1.params());
                v.extend(
                    self.attn
                        .named("attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj"),
                );
                v.extend(prefixed("ln_2", self.ln2.params()));
                v.extend(prefixed("mlp.c_fc", self.fc.params()));
                v.extend(prefixed("mlp.c_proj", self.proj.params()));
                v
            }
            BlockStyle::TorchEncoder => {
                let mut v = self.attn.named(
                    "self_attn.in_proj_weight",
                    "self_attn.in_proj_bias",
                    "self_attn.out_proj",
                );
                v.extend(prefixed("linear1", self.fc.params()));
                v.extend(prefixed("linear2", self.proj.params()));
                v.extend(prefixed("norm1", self.ln1.params()));
                v.extend(prefixed("norm2", self.ln2.params()));
                v
            }
        }
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        use super::prefixed;
        match self.style {
            BlockStyle::Gpt => {
                let mut v = prefixed("ln_1", self.ln1.params_mut());
                v.extend(self.attn.named_mut(
                    "attn.c_attn.weight",
                    "attn.c_attn.bias",
                    "attn.c_proj",
                ));
                v.extend(prefixed("ln_2", self.ln2.params_mut()));
                v.extend(prefixed("mlp.c_fc", self.fc.params_mut()));
                v.extend(prefixed("mlp.c_proj", self.proj.params_mut()));
                v
            }
            BlockStyle::TorchEncoder => {
                let mut v = self.attn.named_mut(
                    "self_attn.in_proj_weight",
                    "self_attn.in_proj_bias",
                    "self_attn.out_proj",
                );
                v.extend(prefixed("linear1", self.fc.params_mut()));
                v.extend(prefixed("linear2", self.proj.params_mut()));
                v.extend(prefixed("norm1", self.ln1.params_mut()));
                v.extend(prefixed("norm2", self.ln2.params_mut()));
                v
            }
        }
    }
}
