//! Branch-free exp and erf that the compiler vectorises inside element-wise loops. libm's
//! scalar `erff`/`expf` were 16 % of a GPT training step (perf, `largo bench gpt`).

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in a high part exact in f32 and a small correction (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding and subtracting it rounds an f32 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// Σ f(x) kept in 16 partial sums (one AVX-512 register): a single running sum is a serial
/// chain the compiler must not reorder, which would leave the loop scalar.
#[inline(always)]
pub fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    tail + acc.iter().sum::<f32>()
}

/// e^x with about 2e-7 relative error; 0 below −87, saturates at 88.7.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    // min/max rather than clamp, and integer bit tricks rather than `as i32` (which saturates
    // and checks for NaN): both keep the loop vectorisable.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.7);
    // x = n·ln2 + r with |r| ≤ ln2/2, so e^x = 2ⁿ·e^r. Adding 1.5·2²³ rounds x·log2(e) to an
    // integer n that also sits in the low mantissa bits of `k`.
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r to degree 7 (error below 1e-8 on |r| ≤ 0.35).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ: n + 127 in the exponent field. bits(k) = bits(ROUND) + n.
    let n_bits = k.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    erf_given_exp(x, exp_fast(-x * x))
}

/// [`erf_fast`] with e^(−x²) already computed (GELU's backward needs that exponential too).
#[inline(always)]
pub fn erf_given_exp(x: f32, exp_neg_x2: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_neg_x2;
    y.copysign(x)
}

/// Σ a·b accumulated in 16 lanes (as [`lanes_sum`]), over the shorter of the two.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&a, &b)| a * b)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((acc, &a), &b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += a * b;
        }
    }
    // Halves added pairwise (a tree of 4 vector adds): a running sum over the 16 lanes would
    // be a chain of 15 dependent adds, which dominates a short (head-sized) dot product.
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    tail + acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_the_reference_functions() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -40_000..=40_000 {
            let x = i as f32 * 0.002; // −80 … 80
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((exp_fast(x) as f64 - want) / want).abs());
            let xe = i as f32 * 0.0002; // −8 … 8
            worst_erf = worst_erf.max((erf_fast(xe) as f64 - libm::erf(xe as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp:e}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf:e}");
        assert_eq!(exp_fast(-200.0), f32::from_bits(0) + exp_fast(-200.0)); // finite, no NaN
        assert!(exp_fast(-200.0) < 1e-37);
    }
}
