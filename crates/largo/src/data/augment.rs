//! Training-time augmentation of image batches, torchvision's `RandomCrop(size, padding)` then
//! `RandomHorizontalFlip()`, seeded: each sample's shift and flip are a hash of (run seed,
//! epoch, its position in the training split), so a resumed run draws the same ones.

use crate::rng::{hash_uniform, Rng};

/// `data.augment_padding` and `data.augment_flip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Pad by this many pixels (the fill: a black pixel, normalised) and crop back at a random
    /// offset; 0: no crop.
    pub padding: usize,
    /// Mirror left–right with probability ½.
    pub flip: bool,
}

impl Augment {
    pub fn is_off(&self) -> bool {
        self.padding == 0 && !self.flip
    }

    /// The (row shift, column shift, flip) of the sample at training position `position` in
    /// epoch `epoch`: shifts in −padding..=padding.
    pub fn draw(&self, seed: u64, epoch: usize, position: usize) -> (isize, isize, bool) {
        let key = Rng::for_stream(seed, crate::rng::stream::AUGMENT + epoch as u64).next_u64();
        let u = |k: u64| hash_uniform(key, 3 * position as u64 + k);
        let span = 2 * self.padding + 1;
        let shift =
            |r: f32| ((r * span as f32) as usize).min(span - 1) as isize - self.padding as isize;
        (shift(u(0)), shift(u(1)), self.flip && u(2) < 0.5)
    }

    /// Augments each image of `x` ([N, C, H, W], normalised) in place; `positions[i]` is image
    /// i's position in the training split, `fill` the normalised value of padding.
    pub fn apply(
        &self,
        x: &mut [f32],
        [c, h, w]: [usize; 3],
        fill: f32,
        seed: u64,
        epoch: usize,
        positions: &[usize],
    ) {
        if self.is_off() {
            return;
        }
        let mut src = vec![0.0; c * h * w];
        for (img, &position) in x.chunks_exact_mut(c * h * w).zip(positions) {
            let (dy, dx, flip) = self.draw(seed, epoch, position);
            src.copy_from_slice(img);
            for ch in 0..c {
                for y in 0..h {
                    for xo in 0..w {
                        // flip after crop: output column xo shows crop column w−1−xo
                        let xc = if flip { w - 1 - xo } else { xo };
                        let (sy, sx) = (y as isize + dy, xc as isize + dx);
                        let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                        img[(ch * h + y) * w + xo] = if inside {
                            src[(ch * h + sy as usize) * w + sx as usize]
                        } else {
                            fill
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_image_is_a_shifted_and_maybe_mirrored_copy_drawn_from_the_seed() {
        let (c, h, w) = (2, 3, 4);
        let n = 64;
        let base: Vec<f32> = (0..n * c * h * w).map(|i| i as f32).collect();
        let aug = Augment {
            padding: 1,
            flip: true,
        };
        let positions: Vec<usize> = (100..100 + n).collect();
        let mut x = base.clone();
        aug.apply(&mut x, [c, h, w], -1.0, 7, 2, &positions);
        let (mut flips, mut shifts) = (0, std::collections::HashSet::new());
        for i in 0..n {
            let (dy, dx, flip) = aug.draw(7, 2, positions[i]);
            assert!(dy.abs() <= 1 && dx.abs() <= 1);
            flips += flip as usize;
            shifts.insert((dy, dx));
            let img = &x[i * c * h * w..(i + 1) * c * h * w];
            let src = &base[i * c * h * w..(i + 1) * c * h * w];
            for ch in 0..c {
                for y in 0..h as isize {
                    for xo in 0..w as isize {
                        let xc = if flip { w as isize - 1 - xo } else { xo };
                        let (sy, sx) = (y + dy, xc + dx);
                        let want = if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                            -1.0
                        } else {
                            src[ch * h * w + (sy * w as isize + sx) as usize]
                        };
                        assert_eq!(img[ch * h * w + (y * w as isize + xo) as usize], want);
                    }
                }
            }
        }
        assert!((16..48).contains(&flips), "{flips} of {n} flipped");
        assert_eq!(shifts.len(), 9, "every shift in −1..=1 × −1..=1 is drawn");
        // Same seed, epoch and positions: the same batch; another epoch: another one.
        let mut again = base.clone();
        aug.apply(&mut again, [c, h, w], -1.0, 7, 2, &positions);
        assert_eq!(again, x);
        let mut other = base.clone();
        aug.apply(&mut other, [c, h, w], -1.0, 7, 3, &positions);
        assert_ne!(other, x);
        // Off: untouched.
        let mut off = base.clone();
        Augment {
            padding: 0,
            flip: false,
        }
        .apply(&mut off, [c, h, w], -1.0, 7, 2, &positions);
        assert_eq!(off, base);
    }
}
