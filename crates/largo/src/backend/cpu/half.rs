//! IEEE half precision (f16) to and from f32.

/// IEEE half to single precision, including subnormals, infinities and NaN.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f · 2^-24.
            return if sign != 0 { -(f as f32) } else { f as f32 } * (1.0 / (1u32 << 24) as f32);
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Single to IEEE half precision, rounded to nearest even (overflow to infinity, subnormals
/// kept, NaN stays NaN).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // Drops `shift` low bits of `m`, rounding to nearest even; a carry may move into the
    // exponent, which is the right answer.
    let round = |m: u32, shift: u32| -> u16 {
        let (h, rem, half) = (m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1));
        (if rem > half || (rem == half && h & 1 == 1) {
            h + 1
        } else {
            h
        }) as u16
    };
    if e <= 0 {
        // A half subnormal (units of 2⁻²⁴), or zero below half of the smallest.
        if e < -10 {
            return sign;
        }
        return sign | round(man | 0x80_0000, (14 - e) as u32);
    }
    sign | round(((e as u32) << 23) | man, 13)
}

/// `src` (f16 bits) widened into `dst` (as long), with F16C where the CPU has it.
pub fn f16_slice_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16 → f32 over slices of one length");
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: isa::avx2 checked the CPU for F16C (and AVX, which comes with it).
        return unsafe { f16_slice_to_f32_f16c(src, dst) };
    }
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(h);
    }
}

/// `src` rounded to f16 (to nearest even) into `dst` (as long), with F16C where the CPU has it.
pub fn f32_slice_to_f16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32 → f16 over slices of one length");
    #[cfg(target_arch = "x86_64")]
    if super::isa::avx2() {
        // SAFETY: isa::avx2 checked the CPU for F16C (and AVX, which comes with it).
        return unsafe { f32_slice_to_f16_f16c(src, dst) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = f32_to_f16(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn f16_slice_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let (s8, d8) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
    let (s_tail, d_tail) = (s8.remainder(), d8.into_remainder());
    for (d, &h) in d_tail.iter_mut().zip(s_tail) {
        *d = f16_to_f32(h);
    }
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        // SAFETY: both chunks hold 8 values: 16 bytes read, 32 written.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr() as *const __m128i);
            _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn f32_slice_to_f16_f16c(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let (s8, d8) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
    let (s_tail, d_tail) = (s8.remainder(), d8.into_remainder());
    for (d, &x) in d_tail.iter_mut().zip(s_tail) {
        *d = f32_to_f16(x);
    }
    for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        // SAFETY: both chunks hold 8 values: 32 bytes read, 16 written.
        unsafe {
            let x = _mm256_loadu_ps(s.as_ptr());
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_to_f16_round_trips_every_half_and_rounds_to_even() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if !x.is_nan() {
                assert_eq!(f32_to_f16(x), h, "{h:#06x} ({x})");
            }
        }
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        // 1 + 2⁻¹¹ is halfway between 1 and the next half: to even (1); 1 + 3·2⁻¹¹ up.
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(-1e-9), 0x8000);
    }

    #[test]
    fn slice_conversions_equal_the_scalar_ones() {
        let halves: Vec<u16> = (0..=u16::MAX).collect();
        let mut wide = vec![0f32; halves.len()];
        f16_slice_to_f32(&halves, &mut wide);
        for (&h, &x) in halves.iter().zip(&wide) {
            // F16C quiets a signalling NaN: NaN stays NaN, its payload may differ.
            if x.is_nan() {
                assert!(f16_to_f32(h).is_nan(), "{h:#06x}");
            } else {
                assert_eq!(x.to_bits(), f16_to_f32(h).to_bits(), "{h:#06x}");
            }
        }
        // Values between halves, halfway cases, overflow and subnormals; 13 is not a multiple
        // of the 8 lanes, so the tail runs too.
        let xs: Vec<f32> = (0..100_013)
            .map(|i| {
                f32::from_bits(0x3300_0000u32.wrapping_add(i * 40_009)) * (-1f32).powi(i as i32)
            })
            .collect();
        let mut narrow = vec![0u16; xs.len()];
        f32_slice_to_f16(&xs, &mut narrow);
        for (&x, &h) in xs.iter().zip(&narrow) {
            if !x.is_nan() {
                assert_eq!(h, f32_to_f16(x), "{x:e}");
            }
        }
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
