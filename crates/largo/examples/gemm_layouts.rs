//! GFLOP/s of the operand layouts the models use (NN, NT, TN) on their shapes, one thread, by
//! thread CPU time (fastest of 20): `cargo run --release -p largo --example gemm_layouts [highest|high|medium]`.
mod common;

use common::cpu_now;
use largo::backend::cpu::*;
fn main() {
    let precision = std::env::args().nth(1).unwrap_or("highest".into());
    set_matmul_precision(precision.parse().expect("highest, high or medium"));
    println!("matmul precision {precision}, 1 thread, GFLOP/s");
    let shapes = [
        ("bert q/k/v", 1700, 384, 384),
        ("bert ffn up", 1700, 1536, 384),
        ("bert ffn down", 1700, 384, 1536),
        ("gpt qkv", 2048, 768, 256),
        ("gpt up", 2048, 1024, 256),
        ("gpt down", 2048, 256, 1024),
        ("gpt dW qkv", 768, 256, 2048),
        ("gpt dW down", 256, 1024, 2048),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        // About a second of products first: the first AMX runs of a process are slow.
        let (a, b) = (vec![0.5f32; 512 * 512], vec![0.25f32; 512 * 512]);
        let mut c = vec![0f32; 512 * 512];
        for _ in 0..200 {
            Gemm::nn(512, 512, 512).run(&a, &b, &mut c);
        }
        for (label, m, n, k) in shapes {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let mut c = vec![0f32; m * n];
            let mut line = format!("{label:<14} {m:>5} {n:>5} {k:>5}");
            for (ta, tb, name) in [
                (Trans::N, Trans::N, "NN"),
                (Trans::N, Trans::T, "NT"),
                (Trans::T, Trans::N, "TN"),
            ] {
                let mut run = || Gemm::new(ta, tb, m, n, k).run(&a, &b, &mut c);
                run();
                // The fastest of 20: this machine's neighbours slow single runs by up to 2×.
                let mut s = f64::MAX;
                for _ in 0..20 {
                    let t0 = cpu_now();
                    run();
                    s = s.min(cpu_now() - t0);
                }
                line += &format!("  {name} {:>6.1}", 2.0 * (m * n * k) as f64 / s / 1e9);
            }
            println!("{line}");
        }
    });
}
