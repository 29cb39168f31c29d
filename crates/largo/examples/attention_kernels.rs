//! Plain vs tiled (flash) attention, forward and backward, for the benchmark GPT's shapes
//! (batch 16, 8 heads, T 128, head size 32, causal) and several tile sizes, on one thread timed
//! by its CPU time, so a busy machine moves the numbers less:
//! `cargo run --release -p largo --example attention_kernels`.
mod common;

use common::cpu_now;
use largo::backend::cpu::*;
fn main() {
    let (b, h, t, d) = (16, 8, 128, 32);
    let s = AttnShape::new(b, h, t, d);
    let n = b * h * t * d;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let mut att = vec![0.0; b * h * t * t];
        let mut datt = att.clone();
        let (mut o, mut dq, mut dk, mut dv) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut lse = vec![0.0; b * h * t];
        let none = AttnDropout::NONE;
        let time = |f: &mut dyn FnMut()| {
            f();
            let t0 = cpu_now();
            for _ in 0..10 {
                f();
            }
            (cpu_now() - t0) / 10.0 * 1e3
        };
        let fwd =
            time(&mut || attention_forward(&x, &x, &x, s, true, None, none, &mut att, &mut o));
        let bwd = time(&mut || {
            attention_backward(
                &x, &x, &x, &att, &x, s, none, &mut datt, &mut dq, &mut dk, &mut dv,
            )
        });
        println!("plain (keeps T×T) fwd {fwd:.2} ms  bwd {bwd:.2} ms");
        for (tq, tk) in [(32, 32), (64, 64), (32, 128), (64, 128), (128, 128)] {
            let tiles = FlashTiles { q: tq, k: tk };
            let fwd = time(&mut || {
                flash_attention_forward(&x, &x, &x, s, true, None, none, tiles, &mut lse, &mut o)
            });
            let bwd = time(&mut || {
                flash_attention_backward(
                    &x, &x, &x, &o, &lse, &x, s, true, None, none, tiles, &mut dq, &mut dk, &mut dv,
                )
            });
            println!("tiled {tq:>3}x{tk:<3}      fwd {fwd:.2} ms  bwd {bwd:.2} ms");
        }
    });
}
