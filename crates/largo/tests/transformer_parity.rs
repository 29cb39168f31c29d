//! Attention, rotary and sinusoidal positions, the GPT and the `nn.TransformerEncoder` LM against
//! PyTorch (references from `tools/gen_transformer_fixtures.py`).

mod common;

use common::assert_close;
use largo::backend::*;
use largo::io::TensorFile;
use largo::models::{EncoderLmConfig, GptConfig, Positions, TransformerLm};
use largo::nn::{Activation, Forward, Module};
use largo::train::optim::{OptimConfig, Optimizer};
use std::path::Path;

fn fixtures() -> TensorFile {
    TensorFile::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transformer.safetensors"),
    )
    .unwrap()
}

fn t<'a>(f: &'a TensorFile, name: &str) -> &'a [f32] {
    &f.get(name)
        .unwrap_or_else(|_| panic!("fixture {name}"))
        .data
}

#[test]
fn attention_with_each_mask_matches_pytorch_forward_and_backward() {
    let f = fixtures();
    let s = AttnShape::new(2, 2, 5, 4);
    let qkv = t(&f, "attn.qkv");
    let pad: Vec<u8> = t(&f, "attn.key_padding").iter().map(|&v| v as u8).collect();
    for (variant, causal, padding) in [
        ("none", false, false),
        ("causal", true, false),
        ("padding", false, true),
        ("causal_padding", true, true),
    ] {
        let n = 2 * 5 * 8;
        let (mut q, mut k, mut v) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        split_qkv_heads(qkv, s, &mut q, &mut k, &mut v);
        let mut att = vec![0.0; 2 * 2 * 25];
        let mut o = vec![0.0; n];
        let kp = padding.then_some(pad.as_slice());
        attention_forward(
            &q,
            &k,
            &v,
            s,
            causal,
            kp,
            AttnDropout::NONE,
            &mut att,
            &mut o,
        );
        let mut y = vec![0.0; n];
        merge_heads(&o, s, &mut y);
        assert_close(
            &format!("attn.{variant}.y"),
            &y,
            t(&f, &format!("attn.{variant}.y")),
            1e-5,
        );
        let mut d_o = vec![0.0; n];
        split_heads(t(&f, "attn.dy"), s, &mut d_o);
        let mut datt = vec![0.0; att.len()];
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        attention_backward(
            &q,
            &k,
            &v,
            &att,
            &d_o,
            s,
            AttnDropout::NONE,
            &mut datt,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let mut dqkv = vec![0.0; 3 * n];
        merge_qkv_heads(&dq, &dk, &dv, s, &mut dqkv);
        assert_close(
            &format!("attn.{variant}.dqkv"),
            &dqkv,
            t(&f, &format!("attn.{variant}.dqkv")),
            1e-5,
        );

        // The tiled kernel, with tiles smaller than T so the running max and sum are exercised.
        let tiles = FlashTiles { q: 2, k: 3 };
        let mut lse = vec![0.0; 2 * 2 * 5];
        let none = AttnDropout::NONE;
        flash_attention_forward(&q, &k, &v, s, causal, kp, none, tiles, &mut lse, &mut o);
        merge_heads(&o, s, &mut y);
        let want = t(&f, &format!("attn.{variant}.y"));
        assert_close(&format!("flash attn.{variant}.y"), &y, want, 1e-5);
        flash_attention_backward(
            &q, &k, &v, &o, &lse, &d_o, s, causal, kp, none, tiles, &mut dq, &mut dk, &mut dv,
        );
        merge_qkv_heads(&dq, &dk, &dv, s, &mut dqkv);
        let want = t(&f, &format!("attn.{variant}.dqkv"));
        assert_close(&format!("flash attn.{variant}.dqkv"), &dqkv, want, 1e-5);
    }
}

#[test]
fn rotary_and_sinusoidal_positions_match_pytorch() {
    let f = fixtures();
    let (cos, sin) = rope_tables(0, 5, 4, 10_000.0);
    let mut x = t(&f, "rope.x").to_vec();
    rope_forward(&mut x, 5, 4, &cos, &sin);
    assert_close("rope.y", &x, t(&f, "rope.y"), 1e-5);
    let mut dx = t(&f, "rope.dy").to_vec();
    rope_backward(&mut dx, 5, 4, &cos, &sin);
    assert_close("rope.dx", &dx, t(&f, "rope.dx"), 1e-5);
    assert_close(
        "sinusoidal.pe",
        &sinusoidal_table(10, 8),
        t(&f, "sinusoidal.pe"),
        1e-5,
    );
}

fn tiny_gpt(f: &TensorFile) -> TransformerLm {
    let cfg = GptConfig {
        vocab_size: 11,
        block_size: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        ff: 32,
        dropout: 0.0,
        positions: Positions::Learned,
        activation: Activation::Gelu,
        tie_weights: true,
    };
    let mut m = TransformerLm::new(cfg.spec()).unwrap();
    for (name, p) in m.params_mut() {
        p.value.data = t(f, &format!("gpt.param.{name}")).to_vec();
    }
    m
}

fn ids(f: &TensorFile, name: &str) -> Vec<u32> {
    t(f, name).iter().map(|&v| v as u32).collect()
}

fn targets(f: &TensorFile, name: &str) -> Vec<i64> {
    t(f, name).iter().map(|&v| v as i64).collect()
}

/// Forward, loss, backward; returns the loss.
fn step(m: &mut TransformerLm, x: &[u32], y: &[i64], b: usize, tt: usize, v: usize) -> f32 {
    let logits = m.forward(x, Forward::train(b, tt, 0)).unwrap().to_vec();
    let loss = cross_entropy_forward(&logits, y, v, -100, 0.0, &mut vec![0.0; b * tt]).unwrap();
    let mut d = vec![0.0; logits.len()];
    cross_entropy_backward(&logits, y, v, -100, 0.0, 1.0, &mut d).unwrap();
    m.backward(&d);
    loss
}

#[test]
fn gpt_logits_loss_and_every_parameter_gradient_match_pytorch() {
    let f = fixtures();
    let mut m = tiny_gpt(&f);
    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"transformer.h.1.attn.c_attn.weight".to_string()));
    let (x, y) = (ids(&f, "gpt.idx"), targets(&f, "gpt.targets"));
    let logits = m.forward(&x, Forward::eval(2, 8)).unwrap().to_vec();
    assert_close("gpt.logits", &logits, t(&f, "gpt.logits"), 1e-4);
    let loss = step(&mut m, &x, &y, 2, 8, 11);
    assert_close("gpt.loss", &[loss], t(&f, "gpt.loss"), 1e-4);
    for (name, p) in m.params() {
        assert_close(
            &format!("grad {name}"),
            &p.grad,
            t(&f, &format!("gpt.grad.{name}")),
            1e-4,
        );
        assert!(
            p.grad.iter().any(|&g| g != 0.0),
            "{name} received no gradient"
        );
    }
}

#[test]
fn ten_adamw_steps_of_the_gpt_follow_pytorchs_losses() {
    let f = fixtures();
    let mut m = tiny_gpt(&f);
    let (x, y) = (ids(&f, "gpt.idx"), targets(&f, "gpt.targets"));
    let cfg = OptimConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        no_decay_1d: true,
        ..OptimConfig::default()
    };
    let mut opt = Optimizer::new(cfg);
    let want = t(&f, "gpt_train.losses");
    for (i, &w) in want.iter().enumerate() {
        m.zero_grad();
        let loss = step(&mut m, &x, &y, 2, 8, 11);
        assert!(
            ((loss - w) / w).abs() <= 1e-4,
            "step {i}: loss {loss} vs PyTorch {w}"
        );
        opt.step(m.params_mut(), 1e-2);
    }
}

#[test]
fn encoder_lm_matches_pytorch_with_and_without_key_padding() {
    let f = fixtures();
    let cfg = EncoderLmConfig {
        ntoken: 11,
        d_model: 8,
        nhead: 2,
        d_hid: 16,
        nlayers: 2,
        dropout: 0.0,
        max_len: 64,
        causal: true,
    };
    let mut m = TransformerLm::new(cfg.spec()).unwrap();
    for (name, p) in m.params_mut() {
        p.value.data = t(&f, &format!("seed.param.{name}")).to_vec();
    }
    let (x, y) = (ids(&f, "seed.src"), targets(&f, "seed.targets"));
    let logits = m.forward(&x, Forward::eval(2, 6)).unwrap().to_vec();
    assert_close("seed.logits", &logits, t(&f, "seed.logits"), 1e-4);
    let pad: Vec<u8> = t(&f, "seed.key_padding").iter().map(|&v| v as u8).collect();
    let padded = m
        .forward(&x, Forward::eval(2, 6).padded(&pad))
        .unwrap()
        .to_vec();
    assert_close("seed.pad.logits", &padded, t(&f, "seed.pad.logits"), 1e-4);
    let loss = step(&mut m, &x, &y, 2, 6, 11);
    assert_close("seed.loss", &[loss], t(&f, "seed.loss"), 1e-4);
    for (name, p) in m.params() {
        assert_close(
            &format!("grad {name}"),
            &p.grad,
            t(&f, &format!("seed.grad.{name}")),
            1e-4,
        );
    }
}

#[test]
fn kv_cache_logits_equal_full_forward_logits() {
    let f = fixtures();
    for positions in [Positions::Learned, Positions::Rotary] {
        let mut m = tiny_gpt(&f);
        if positions == Positions::Rotary {
            let mut spec = m.spec.clone();
            spec.positions = Positions::Rotary;
            let params: Vec<(String, Vec<f32>)> = m
                .params()
                .into_iter()
                .map(|(n, p)| (n, p.value.data.clone()))
                .collect();
            m = TransformerLm::new(spec).unwrap();
            for (name, p) in m.params_mut() {
                p.value.data = params.iter().find(|(n, _)| *n == name).unwrap().1.clone();
            }
        }
        let x = &ids(&f, "gpt.idx")[..8];
        let full = m.forward(x, Forward::eval(1, 8)).unwrap().to_vec();
        let mut cache = m.new_cache();
        // A 3-token prefill, then one token at a time.
        let mut got = m.forward_cached(&x[..3], &mut cache).unwrap();
        assert_close("prefill", &got, &full[2 * 11..3 * 11], 1e-4);
        for i in 3..8 {
            got = m.forward_cached(&x[i..i + 1], &mut cache).unwrap();
            assert_close(
                &format!("{positions:?} position {i}"),
                &got,
                &full[i * 11..(i + 1) * 11],
                1e-4,
            );
        }
        assert!(
            m.forward_cached(&x[..1], &mut cache).is_err(),
            "cache is full at block_size"
        );
    }
}

/// Continuous batching: sequences at different stages (one prefilling, two decoding from
/// caches of different lengths) fed in one batched call give each sequence's own logits.
#[test]
fn batched_kv_cache_steps_equal_single_sequence_steps() {
    let f = fixtures();
    let m = tiny_gpt(&f);
    let x = &ids(&f, "gpt.idx")[..8];
    let (a, b, c) = (&x[..5], &x[2..4], &x[1..8]);
    let (mut ca, mut cb, mut cc) = (m.new_cache(), m.new_cache(), m.new_cache());
    m.forward_cached(&a[..4], &mut ca).unwrap();
    m.forward_cached(&c[..3], &mut cc).unwrap();
    let batched = m
        .forward_cached_batch(&[&a[4..5], b, &c[3..4]], &mut [&mut ca, &mut cb, &mut cc])
        .unwrap();
    let single = |seq: &[u32]| m.forward_cached(seq, &mut m.new_cache()).unwrap();
    assert_close("decoding a", &batched[0], &single(a), 1e-5);
    assert_close("prefilling b", &batched[1], &single(b), 1e-5);
    assert_close("decoding c", &batched[2], &single(&c[..4]), 1e-5);
    assert_eq!((ca[0].len, cb[0].len, cc[0].len), (5, 2, 4));
    assert!(
        m.forward_cached_batch(&[&[], b], &mut [&mut m.new_cache(), &mut m.new_cache()])
            .is_err(),
        "an empty step is refused"
    );
}

/// With dropout on (attention probabilities, hidden layer, residuals) and a fixed mask seed the
/// loss is a deterministic function of the parameters: backward must match finite differences.
#[test]
fn dropout_paths_backpropagate_exactly() {
    let cases = [
        GptConfig {
            vocab_size: 7,
            block_size: 6,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            ff: 16,
            dropout: 0.3,
            positions: Positions::Learned,
            activation: Activation::GeluTanh,
            tie_weights: true,
        }
        .spec(),
        EncoderLmConfig {
            ntoken: 7,
            d_model: 8,
            nhead: 2,
            d_hid: 16,
            nlayers: 1,
            dropout: 0.3,
            max_len: 6,
            causal: true,
        }
        .spec(),
    ];
    for spec in cases {
        let mut m = TransformerLm::new(spec.clone()).unwrap();
        m.init(&mut largo::rng::Rng::new(3));
        // Larger weights than the init, so the check is not dominated by rounding.
        for (_, p) in m.params_mut() {
            let mut r = largo::rng::Rng::new(p.value.numel() as u64);
            p.value.data.iter_mut().for_each(|v| *v += 0.3 * r.normal());
        }
        let x: Vec<u32> = vec![1, 3, 5, 0, 2, 6, 4, 4, 1, 0, 3, 2];
        let y: Vec<i64> = vec![3, 5, 0, 2, 6, 4, 4, 1, 0, 3, 2, 1];
        let loss = |m: &mut TransformerLm| -> f64 {
            let logits = m.forward(&x, Forward::train(2, 6, 99)).unwrap().to_vec();
            cross_entropy_forward(&logits, &y, 7, -100, 0.0, &mut [0.0; 12]).unwrap() as f64
        };
        m.zero_grad();
        let logits = m.forward(&x, Forward::train(2, 6, 99)).unwrap().to_vec();
        let mut d = vec![0.0; logits.len()];
        cross_entropy_backward(&logits, &y, 7, -100, 0.0, 1.0, &mut d).unwrap();
        m.backward(&d);
        let grads: Vec<(String, Vec<f32>)> = m
            .params()
            .into_iter()
            .map(|(n, p)| (n, p.grad.clone()))
            .collect();
        let mut checked = 0;
        for (name, grad) in &grads {
            for i in [0, grad.len() / 2, grad.len() - 1] {
                let eps = 1e-2f32;
                let bump = |m: &mut TransformerLm, delta: f32| {
                    for (n, p) in m.params_mut() {
                        if &n == name {
                            p.value.data[i] += delta;
                        }
                    }
                };
                bump(&mut m, eps);
                let up = loss(&mut m);
                bump(&mut m, -2.0 * eps);
                let down = loss(&mut m);
                bump(&mut m, eps);
                let numeric = (up - down) / (2.0 * eps as f64);
                let analytic = grad[i] as f64;
                assert!(
                    (numeric - analytic).abs() <= 5e-3 * (1.0 + analytic.abs()),
                    "{name}[{i}]: numeric {numeric} vs analytic {analytic}"
                );
                checked += 1;
            }
        }
        assert!(checked > 30);
        // Dropout really is on: a different seed gives a different loss.
        let a = loss(&mut m);
        let logits = m.forward(&x, Forward::train(2, 6, 100)).unwrap().to_vec();
        let b = cross_entropy_forward(&logits, &y, 7, -100, 0.0, &mut [0.0; 12]).unwrap() as f64;
        assert!((a - b).abs() > 1e-4, "dropout had no effect");
    }
}
