//! Every kernel's forward and backward, the MLP and the optimisers against PyTorch.
//! References come from `tools/gen_fixtures.py` (committed; CI never needs PyTorch).

mod common;

use common::assert_close;
use largo::backend::*;
use largo::io::TensorFile;
use largo::models::{Mlp, MlpConfig};
use largo::nn::{Activation, Embedding, Forward, LayerNorm, Linear, Module, Param};
use largo::tensor::Tensor;
use largo::train::optim::{clip_grad_norm, OptimConfig, Optimizer};
use largo::train::schedule::ScheduleConfig;
use std::path::Path;

fn fixtures(name: &str) -> TensorFile {
    TensorFile::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture file")
}

fn t<'a>(f: &'a TensorFile, name: &str) -> &'a [f32] {
    &f.get(name).expect(name).data
}

const TOL: f64 = 1e-5;

#[test]
fn linear_forward_and_backward_match_pytorch() {
    let f = fixtures("layers.safetensors");
    let mut lin = Linear::new(5, 3, true);
    lin.weight.value.data = t(&f, "linear.weight").to_vec();
    lin.bias.as_mut().unwrap().value.data = t(&f, "linear.bias").to_vec();
    let x = t(&f, "linear.x");
    let mut y = vec![0.0; 12];
    lin.forward(x, 4, &mut y);
    assert_close("linear.y", &y, t(&f, "linear.y"), TOL);
    let mut dx = vec![0.0; 20];
    lin.backward(x, t(&f, "linear.dy"), 4, Some(&mut dx));
    assert_close("linear.dx", &dx, t(&f, "linear.dx"), TOL);
    assert_close(
        "linear.dweight",
        &lin.weight.grad,
        t(&f, "linear.dweight"),
        TOL,
    );
    assert_close(
        "linear.dbias",
        &lin.bias.as_ref().unwrap().grad,
        t(&f, "linear.dbias"),
        TOL,
    );
}

#[test]
fn activations_match_pytorch() {
    let f = fixtures("layers.safetensors");
    for (name, act) in [
        ("relu", Activation::Relu),
        ("gelu_tanh", Activation::GeluTanh),
        ("gelu_erf", Activation::Gelu),
    ] {
        let x = t(&f, &format!("{name}.x"));
        let mut y = vec![0.0; x.len()];
        act.forward(x, &mut y);
        assert_close(&format!("{name}.y"), &y, t(&f, &format!("{name}.y")), TOL);
        let mut dx = vec![0.0; x.len()];
        act.backward(x, t(&f, &format!("{name}.dy")), &mut dx);
        assert_close(
            &format!("{name}.dx"),
            &dx,
            t(&f, &format!("{name}.dx")),
            TOL,
        );
    }
}

#[test]
fn layernorm_matches_pytorch() {
    let f = fixtures("layers.safetensors");
    let mut ln = LayerNorm::new(8, 1e-5);
    ln.weight.value.data = t(&f, "layernorm.weight").to_vec();
    ln.bias.value.data = t(&f, "layernorm.bias").to_vec();
    let x = t(&f, "layernorm.x");
    let mut y = vec![0.0; 32];
    ln.forward(x, 4, &mut y);
    assert_close("layernorm.y", &y, t(&f, "layernorm.y"), TOL);
    let mut dx = vec![0.0; 32];
    ln.backward(x, t(&f, "layernorm.dy"), 4, &mut dx);
    assert_close("layernorm.dx", &dx, t(&f, "layernorm.dx"), TOL);
    assert_close(
        "layernorm.dweight",
        &ln.weight.grad,
        t(&f, "layernorm.dweight"),
        TOL,
    );
    assert_close(
        "layernorm.dbias",
        &ln.bias.grad,
        t(&f, "layernorm.dbias"),
        TOL,
    );
}

#[test]
fn embedding_matches_pytorch_including_repeated_ids() {
    let f = fixtures("layers.safetensors");
    let mut emb = Embedding::new(10, 4);
    emb.weight.value.data = t(&f, "embedding.weight").to_vec();
    let ids: Vec<u32> = t(&f, "embedding.ids").iter().map(|&v| v as u32).collect();
    let mut y = vec![0.0; 24];
    emb.forward(&ids, &mut y).unwrap();
    assert_close("embedding.y", &y, t(&f, "embedding.y"), TOL);
    emb.backward(&ids, t(&f, "embedding.dy"));
    assert_close(
        "embedding.dweight",
        &emb.weight.grad,
        t(&f, "embedding.dweight"),
        TOL,
    );
    let e = emb.forward(&[10], &mut [0.0; 4]).unwrap_err().to_string();
    assert!(
        e.contains("token id 10 is outside the embedding table of 10 rows"),
        "{e}"
    );
}

#[test]
fn cross_entropy_matches_pytorch_with_ignore_index_and_label_smoothing() {
    let f = fixtures("layers.safetensors");
    let logits = t(&f, "xent.logits");
    let targets: Vec<i64> = t(&f, "xent.targets").iter().map(|&v| v as i64).collect();
    for (name, smoothing) in [("xent", 0.1f32), ("xent_plain", 0.0)] {
        let mut rows = vec![0.0; 6];
        let loss = cross_entropy_forward(logits, &targets, 5, -100, smoothing, &mut rows).unwrap();
        assert_close(
            &format!("{name}.loss"),
            &[loss],
            t(&f, &format!("{name}.loss")),
            TOL,
        );
        let mut d = vec![0.0; 30];
        cross_entropy_backward(logits, &targets, 5, -100, smoothing, 1.0, &mut d).unwrap();
        assert_close(
            &format!("{name}.dlogits"),
            &d,
            t(&f, &format!("{name}.dlogits")),
            TOL,
        );
    }
    let e = cross_entropy_forward(logits, &[7, 0, 0, 0, 0, 0], 5, -100, 0.0, &mut [0.0; 6])
        .unwrap_err()
        .to_string();
    assert!(e.contains("target 7 at position 0 is outside 0..5"), "{e}");
}

#[test]
fn mlp_logits_loss_and_every_gradient_match_pytorch() {
    let f = fixtures("layers.safetensors");
    let mut mlp = Mlp::new(MlpConfig {
        input: 6,
        hidden: vec![5],
        classes: 3,
        dropout: 0.0,
        activation: Activation::Relu,
    })
    .unwrap();
    for (name, p) in mlp.params_mut() {
        p.value.data = t(&f, &format!("mlp.{name}")).to_vec();
    }
    let targets: Vec<i64> = t(&f, "mlp.targets").iter().map(|&v| v as i64).collect();
    let logits = mlp
        .forward(t(&f, "mlp.x"), Forward::train(4, 1, 0))
        .to_vec();
    assert_close("mlp.logits", &logits, t(&f, "mlp.logits"), TOL);
    let loss = cross_entropy_forward(&logits, &targets, 3, -100, 0.0, &mut [0.0; 4]).unwrap();
    assert_close("mlp.loss", &[loss], t(&f, "mlp.loss"), TOL);
    let mut d = vec![0.0; 12];
    cross_entropy_backward(&logits, &targets, 3, -100, 0.0, 1.0, &mut d).unwrap();
    mlp.backward(&d, true);
    for (name, p) in mlp.params() {
        assert_close(&name, &p.grad, t(&f, &format!("mlp.grad.{name}")), TOL);
        assert!(
            p.grad.iter().any(|&g| g != 0.0),
            "{name} received no gradient"
        );
    }
}

fn run_optimizer(f: &TensorFile, cfg: OptimConfig, name: &str) {
    let mut p0 = Param::zeros(&[5, 3]);
    let mut p1 = Param::zeros(&[3]);
    p0.value.data = t(f, "init.p0").to_vec();
    p1.value.data = t(f, "init.p1").to_vec();
    let lr = cfg.lr as f32;
    let mut opt = Optimizer::new(cfg);
    for step in 0..5 {
        p0.grad = t(f, &format!("grad.{step}.p0")).to_vec();
        p1.grad = t(f, &format!("grad.{step}.p1")).to_vec();
        opt.step(vec![("p0".into(), &mut p0), ("p1".into(), &mut p1)], lr);
        assert_close(
            &format!("{name} step {step} p0"),
            &p0.value.data,
            t(f, &format!("{name}.{step}.p0")),
            TOL,
        );
        assert_close(
            &format!("{name} step {step} p1"),
            &p1.value.data,
            t(f, &format!("{name}.{step}.p1")),
            TOL,
        );
    }
}

#[test]
fn optimizers_match_torch_optim_over_five_steps() {
    let f = fixtures("optim.safetensors");
    let sgd = |momentum: f64, nesterov: bool, wd: f64| OptimConfig {
        kind: "sgd".into(),
        lr: 0.1,
        momentum,
        nesterov,
        weight_decay: wd,
        ..OptimConfig::default()
    };
    run_optimizer(&f, sgd(0.0, false, 0.0), "sgd");
    run_optimizer(&f, sgd(0.9, false, 0.01), "sgd_momentum");
    run_optimizer(&f, sgd(0.9, true, 0.01), "sgd_nesterov");
    let adamw = OptimConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    run_optimizer(&f, adamw, "adamw");
}

#[test]
fn schedules_match_torch_lr_schedulers() {
    let f = fixtures("optim.safetensors");
    let cases = [
        (
            "sched.step",
            ScheduleConfig {
                kind: "step".into(),
                step_size: 3,
                gamma: 0.5,
                ..Default::default()
            },
        ),
        (
            "sched.cosine",
            ScheduleConfig {
                kind: "cosine".into(),
                min_lr: 0.1,
                ..Default::default()
            },
        ),
        (
            "sched.linear",
            ScheduleConfig {
                kind: "linear".into(),
                min_lr: 0.0,
                ..Default::default()
            },
        ),
    ];
    for (name, s) in cases {
        let lrs: Vec<f32> = (0..12).map(|i| s.lr_at(1.0, i, 12) as f32).collect();
        let want = t(&f, name);
        for (i, (&g, &w)) in lrs.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-6, "{name} step {i}: {g} vs {w}");
        }
    }
    let warm = ScheduleConfig {
        kind: "cosine".into(),
        warmup_steps: 4,
        ..Default::default()
    };
    assert_eq!(warm.lr_at(1.0, 0, 10), 0.25);
    assert_eq!(warm.lr_at(1.0, 3, 10), 1.0);
    assert!(warm.lr_at(1.0, 9, 10) < 0.1);
}

#[test]
fn gradient_clipping_matches_clip_grad_norm() {
    let f = fixtures("optim.safetensors");
    let mut g0 = Param::zeros(&[4, 3]);
    let mut g1 = Param::zeros(&[5]);
    g0.grad = t(&f, "clip.g0").to_vec();
    g1.grad = t(&f, "clip.g1").to_vec();
    let norm = clip_grad_norm(&mut [("g0".into(), &mut g0), ("g1".into(), &mut g1)], 1.0);
    assert_close(
        "clip.total_norm",
        &[norm as f32],
        t(&f, "clip.total_norm"),
        TOL,
    );
    assert_close("clip.out.g0", &g0.grad, t(&f, "clip.out.g0"), TOL);
    assert_close("clip.out.g1", &g1.grad, t(&f, "clip.out.g1"), TOL);
}

/// Central differences of L = Σ r·f(x) against the analytic backward, on tiny sizes.
fn finite_difference_check(
    what: &str,
    x: &[f32],
    r: &[f32],
    f: impl Fn(&[f32]) -> Vec<f32>,
    analytic: &[f32],
) {
    let loss = |x: &[f32]| -> f64 { f(x).iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum() };
    let eps = 1e-2f32;
    for i in 0..x.len() {
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[i] += eps;
        xm[i] -= eps;
        let num = (loss(&xp) - loss(&xm)) / (2.0 * eps as f64);
        let a = analytic[i] as f64;
        assert!(
            (num - a).abs() <= 2e-3 * (1.0 + a.abs()),
            "{what}[{i}]: numeric {num} vs analytic {a}"
        );
    }
}

#[test]
fn backward_kernels_agree_with_finite_differences() {
    let mut rng = largo::rng::Rng::new(5);
    let x: Vec<f32> = (0..24).map(|_| rng.normal()).collect();
    let r: Vec<f32> = (0..24).map(|_| rng.normal()).collect();
    for act in [Activation::Gelu, Activation::GeluTanh] {
        let mut dx = vec![0.0; 24];
        act.backward(&x, &r, &mut dx);
        let fwd = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            act.forward(x, &mut y);
            y
        };
        finite_difference_check(&format!("{act:?}"), &x, &r, fwd, &dx);
    }
    // Layer norm over rows of 6, with a non-trivial affine.
    let mut ln = LayerNorm::new(6, 1e-5);
    ln.weight.value.data = (0..6).map(|i| 0.5 + 0.1 * i as f32).collect();
    let mut y = vec![0.0; 24];
    ln.forward(&x, 4, &mut y);
    let mut dx = vec![0.0; 24];
    ln.backward(&x, &r, 4, &mut dx);
    let ln_ref = ln.clone();
    let fwd = |x: &[f32]| {
        let mut l = ln_ref.clone();
        let mut y = vec![0.0; 24];
        l.forward(x, 4, &mut y);
        y
    };
    finite_difference_check("layernorm", &x, &r, fwd, &dx);
    // Cross-entropy with smoothing: L is the loss itself (r = 1 on a scalar).
    let targets = [1i64, 5, -100, 0];
    let mut d = vec![0.0; 24];
    cross_entropy_backward(&x, &targets, 6, -100, 0.2, 1.0, &mut d).unwrap();
    let fwd =
        |x: &[f32]| vec![cross_entropy_forward(x, &targets, 6, -100, 0.2, &mut [0.0; 4]).unwrap()];
    finite_difference_check("cross_entropy", &x, &[1.0], fwd, &d);
}

#[test]
fn tensor_shapes_are_checked() {
    assert!(Tensor::from_vec(&[2, 3], vec![0.0; 5]).is_err());
}
