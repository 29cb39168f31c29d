//! Quantised matrix products per kernel, thread count and shape (SmolLM2's and a large one):
//! µs per product, weight GB/s and GMAC/s.
//!
//! `cargo run --release -p largo --example qmatmul_speed`

use largo::backend::cpu::qmatmul::{qmatmul_with, QKernel, QMatrix};
use largo::backend::cpu::quant::GgmlType;

fn main() {
    for (dtype, rows, cols) in [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q8_0, 1536, 576),
        (GgmlType::Q4_1, 16384, 2048),
        (GgmlType::Q8_0, 49152, 576),
    ] {
        let bytes: Vec<u8> = (0..rows * cols / 32 * dtype.block_bytes())
            .map(|i| {
                if i % dtype.block_bytes() < 4 {
                    0x10
                } else {
                    (i * 7) as u8
                }
            })
            .collect();
        let w = QMatrix::from_ggml(dtype, rows, cols, &bytes).unwrap();
        for n in [1usize, 512] {
            if n > 1 && rows > 2000 {
                continue;
            }
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
                .collect();
            let mut y = vec![0f32; n * rows];
            let reps = if n > 1 {
                10
            } else if rows > 2000 {
                100
            } else {
                2000
            };
            for (threads, kernel) in QKernel::available()
                .into_iter()
                .skip(1)
                .flat_map(|k| [(1, k), (2, k)])
            {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    qmatmul_with(kernel, &w, &x, n, &mut y).unwrap();
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        qmatmul_with(kernel, &w, &x, n, &mut y).unwrap();
                    }
                    let s = t.elapsed().as_secs_f64() / reps as f64;
                    println!(
                        "{kernel:?} {dtype} [{rows},{cols}] n={n} threads={threads}: {:.1} µs, {:.1} GB/s, {:.1} GMAC/s",
                        s * 1e6,
                        w.bytes() as f64 / s / 1e9,
                        (n * rows * cols) as f64 / s / 1e9
                    );
                });
            }
        }
    }
}
