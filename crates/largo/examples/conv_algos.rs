//! conv2d forward and backward milliseconds (median of 12, all threads) on the 3×3 stride-1
//! shapes of the MNIST net and ResNet-18, and the im2col-equivalent GFLOP/s; run it with
//! `LARGO_WINOGRAD=off` and without to compare im2col with Winograd:
//! `cargo run --release -p largo --example conv_algos`.
use largo::backend::cpu::conv::*;
use std::time::Instant;
fn main() {
    let shapes = [
        ("mnist conv2", 64, 32, 64, 26, 26, 0),
        ("r18-224 l1", 16, 64, 64, 56, 56, 1),
        ("r18-224 l2", 16, 128, 128, 28, 28, 1),
        ("r18-224 l3", 16, 256, 256, 14, 14, 1),
        ("r18-224 l4", 16, 512, 512, 7, 7, 1),
        ("r18-32 l1", 16, 64, 64, 8, 8, 1),
        ("r18-32 l2", 16, 128, 128, 4, 4, 1),
        ("r18-32 l3", 16, 256, 256, 2, 2, 1),
        ("r18-32 l4", 16, 512, 512, 1, 1, 1),
    ];
    for (label, n, c, k, h, w, p) in shapes {
        let s = Conv2dShape {
            input: Nchw::new(n, c, h, w),
            out_channels: k,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [p, p],
            dilation: [1, 1],
            groups: 1,
        };
        let out = s.output().unwrap();
        let x: Vec<f32> = (0..s.input.len())
            .map(|i| (i % 97) as f32 / 97.0 - 0.5)
            .collect();
        let wt: Vec<f32> = (0..s.weight_len())
            .map(|i| (i % 89) as f32 / 890.0)
            .collect();
        let dy: Vec<f32> = (0..out.len())
            .map(|i| (i % 83) as f32 / 83.0 - 0.5)
            .collect();
        let mut y = vec![0f32; out.len()];
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; wt.len()];
        let (mut tf, mut tb) = (vec![], vec![]);
        for _ in 0..12 {
            let t = Instant::now();
            conv2d_forward(&s, &x, &wt, None, &mut y).unwrap();
            tf.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            conv2d_backward(&s, &x, &wt, &dy, Some(&mut dx), &mut dw, None).unwrap();
            tb.push(t.elapsed().as_secs_f64() * 1e3);
        }
        tf.sort_by(|a, b| a.partial_cmp(b).unwrap());
        tb.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let gf = 2.0 * (n * k * c * 9 * out.h * out.w) as f64 / 1e6;
        println!(
            "{label:<12} fwd {:>7.2} ms ({:>5.0} eff GFLOP/s)  bwd {:>7.2} ms ({:>5.0})",
            tf[6],
            gf / tf[6],
            tb[6],
            2.0 * gf / tb[6]
        );
    }
}
