//! Inverted dropout with a counter-based mask: element i is kept when hash(seed, i) ≥ p.
//! Backward regenerates the same mask from the seed, so no mask buffer is stored.

use crate::rng::hash_uniform;
use rayon::prelude::*;

const CHUNK: usize = 16 * 1024;

/// Scales kept elements by 1/(1−p) and zeroes the rest, in place.
pub fn dropout_forward(x: &mut [f32], p: f32, seed: u64) {
    let _span = crate::backend::profile::span("dropout forward");
    apply_mask(x, p, seed);
}

/// The gradient passes exactly where the forward kept the value, with the same scale.
pub fn dropout_backward(dy: &mut [f32], p: f32, seed: u64) {
    let _span = crate::backend::profile::span("dropout backward");
    apply_mask(dy, p, seed);
}

fn apply_mask(x: &mut [f32], p: f32, seed: u64) {
    if p <= 0.0 {
        return;
    }
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xs)| {
        let base = (c * CHUNK) as u64;
        for (i, v) in xs.iter_mut().enumerate() {
            // A bit mask instead of a branch: which elements survive is random, so a branch
            // mispredicts on a large share of them.
            let keep = hash_uniform(seed, base + i as u64) >= p;
            let mask = (keep as u32).wrapping_neg();
            *v = f32::from_bits((*v * scale).to_bits() & mask);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_keeps_about_1_minus_p_scaled_and_backward_uses_the_same_mask() {
        let n = 100_000;
        let mut x = vec![1.0f32; n];
        dropout_forward(&mut x, 0.25, 9);
        let kept = x.iter().filter(|&&v| v != 0.0).count() as f32 / n as f32;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(x.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let mut g = vec![1.0f32; n];
        dropout_backward(&mut g, 0.25, 9);
        assert_eq!(x, g);
        let mut other = vec![1.0f32; n];
        dropout_forward(&mut other, 0.25, 10);
        assert_ne!(x, other);
    }
}
