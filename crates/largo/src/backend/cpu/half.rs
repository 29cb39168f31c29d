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
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
