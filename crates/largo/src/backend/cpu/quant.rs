//! ggml's block formats (what GGUF files store) and their dequantisation to f32, one function
//! per block type after llama.cpp's `dequantize_row_*` (and Q8_0's quantisation). Portable
//! scalar code: the integer matmuls over packed blocks are in `qmatmul.rs`.
//!
//! A block holds `block_values` consecutive values of a row in `block_bytes` bytes; every
//! scale is an IEEE f16 except the 6-bit sub-block scales of the K-quants and the int8 ones
//! of Q6_K. Arithmetic follows `gguf.quants.dequantize` operation for operation (scale times
//! scale first, no fused multiply-add), so the results equal it bit for bit.

use super::half::{f16_to_f32, f32_to_f16};
use crate::{Error, Result};
use rayon::prelude::*;

/// The tensor types largo reads, with ggml's numeric ids.
#[allow(non_camel_case_types)] // ggml's names: Q4_K and Q4K would be different things to a reader
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Values per K-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The type with ggml id `id`; an unsupported one is refused by its ggml name.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => {
                return Err(match unsupported_ggml_type_name(id) {
                    Some(name) => format!(
                        "tensor type {name} (ggml type {id}) is not supported; supported: {}",
                        supported_names()
                    ),
                    None => format!("unknown tensor type {id}; supported: {}", supported_names()),
                })
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// Values per block (1 for the plain float types).
    pub fn block_values(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q4_K => 2 + 2 + 12 + QK_K / 2,
            GgmlType::Q5_K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            GgmlType::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Bytes that `values` values take, or None when they are not whole blocks (or overflow).
    pub fn bytes_for(self, values: u64) -> Option<u64> {
        let bv = self.block_values() as u64;
        if !values.is_multiple_of(bv) {
            return None;
        }
        (values / bv).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn supported_names() -> String {
    GgmlType::ALL.map(|t| t.name()).join(", ")
}

/// ggml's names of the types largo does not read, so that a refusal can name them.
fn unsupported_ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31..=33 => "Q4_0_4_4/Q4_0_4_8/Q4_0_8_8 (removed from ggml)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36..=38 => "IQ4_NL_4_4/IQ4_NL_4_8/IQ4_NL_8_8 (removed from ggml)",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        _ => return None,
    })
}

/// Blocks per parallel task: big enough that the split costs nothing next to the work.
const BLOCKS_PER_TASK: usize = 1024;

/// Expands `bytes` (whole blocks of `dtype`) into `out`, which must hold exactly their values.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (bv, bb) = (dtype.block_values(), dtype.block_bytes());
    if !out.len().is_multiple_of(bv) || bytes.len() != out.len() / bv * bb {
        return Err(Error::Invalid(format!(
            "dequantize {dtype}: {} bytes do not hold {} values ({} bytes per {} values)",
            bytes.len(),
            out.len(),
            bb,
            bv
        )));
    }
    let row: fn(&[u8], &mut [f32]) = match dtype {
        GgmlType::F32 => dequantize_row_f32,
        GgmlType::F16 => dequantize_row_f16,
        GgmlType::BF16 => dequantize_row_bf16,
        GgmlType::Q4_0 => dequantize_row_q4_0,
        GgmlType::Q4_1 => dequantize_row_q4_1,
        GgmlType::Q5_0 => dequantize_row_q5_0,
        GgmlType::Q5_1 => dequantize_row_q5_1,
        GgmlType::Q8_0 => dequantize_row_q8_0,
        GgmlType::Q4_K => dequantize_row_q4_k,
        GgmlType::Q5_K => dequantize_row_q5_k,
        GgmlType::Q6_K => dequantize_row_q6_k,
    };
    // Float types have 1-value "blocks": give each task as many values as a quantised one.
    let per_task = BLOCKS_PER_TASK * if bv == 1 { 32 } else { 1 };
    if out.len() <= per_task * bv {
        row(bytes, out);
        return Ok(());
    }
    bytes
        .par_chunks(per_task * bb)
        .zip(out.par_chunks_mut(per_task * bv))
        .for_each(|(b, o)| row(b, o));
    Ok(())
}

/// An f16 at `b[at..at + 2]`, little-endian.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

pub fn dequantize_row_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn dequantize_row_f16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// bf16 is the upper half of an f32: the conversion is exact.
pub fn dequantize_row_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// Q4_0: scale d; 32 4-bit values stored with 8 subtracted, low nibbles first (values 0..16),
/// then the high nibbles (values 16..32).
pub fn dequantize_row_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            y[j] = d * ((qs[j] & 0x0f) as i32 - 8) as f32;
            y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: scale d and minimum m; 32 unsigned 4-bit values laid out as in Q4_0.
pub fn dequantize_row_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qs = &b[4..20];
        for j in 0..16 {
            y[j] = d * (qs[j] & 0x0f) as f32 + m;
            y[j + 16] = d * (qs[j] >> 4) as f32 + m;
        }
    }
}

/// Q5_0: scale d; a u32 of fifth bits (bit i belongs to value i), then nibbles as in Q4_0;
/// 16 is subtracted from each 5-bit value.
pub fn dequantize_row_q5_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let lo = (qs[j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
            let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (lo as i32 - 16) as f32;
            y[j + 16] = d * (hi as i32 - 16) as f32;
        }
    }
}

/// Q5_1: scale d and minimum m; unsigned 5-bit values laid out as in Q5_0.
pub fn dequantize_row_q5_1(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        for j in 0..16 {
            let lo = (qs[j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
            let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
            y[j] = d * lo as f32 + m;
            y[j + 16] = d * hi as f32 + m;
        }
    }
}

/// Q8_0: scale d; 32 signed bytes.
pub fn dequantize_row_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (v, &q) in y.iter_mut().zip(&b[2..34]) {
            *v = q as i8 as f32 * d;
        }
    }
}

/// Quantises `values` (a whole number of 32-value blocks) to Q8_0 as llama.cpp's
/// `quantize_row_q8_0_ref` does: per block d = max|x|/127 (stored as f16), q = round(x/d),
/// ties away from zero.
pub fn quantize_q8_0(values: &[f32]) -> Result<Vec<u8>> {
    if !values.len().is_multiple_of(32) {
        return Err(Error::Invalid(format!(
            "quantize Q8_0: {} values are not whole blocks of 32",
            values.len()
        )));
    }
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend(block.iter().map(|&x| (x * inv).round() as i8 as u8));
    }
    Ok(out)
}

/// Quantises `values` (a whole number of 32-value blocks) to Q4_0 as llama.cpp's
/// `quantize_row_q4_0_ref` does: per block, the value of largest magnitude m gives
/// d = m / −8 (stored as f16) and q = min(15, trunc(x/d + 8.5)); the first 16 values go to
/// the low nibbles, the last 16 to the high ones.
pub fn quantize_q4_0(values: &[f32]) -> Result<Vec<u8>> {
    if !values.len().is_multiple_of(32) {
        return Err(Error::Invalid(format!(
            "quantize Q4_0: {} values are not whole blocks of 32",
            values.len()
        )));
    }
    let mut out = Vec::with_capacity(values.len() / 32 * 18);
    for block in values.chunks_exact(32) {
        let max = block
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        let q = |x: f32| ((x * inv + 8.5) as u8).min(15);
        out.extend((0..16).map(|j| q(block[j]) | q(block[j + 16]) << 4));
    }
    Ok(out)
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K block, packed in 12
/// bytes: sub-blocks 0..4 in the low 6 bits of bytes j and j + 4, sub-blocks 4..8 in the
/// nibbles of bytes j + 4 with their top two bits in the top bits of bytes j - 4 and j.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: super-scale d and super-minimum dmin; 8 sub-blocks of 32 values, each with a 6-bit
/// scale and minimum; 128 bytes of nibbles, 32 bytes per pair of sub-blocks (the low nibbles
/// are the first sub-block of the pair, the high nibbles the second).
pub fn dequantize_row_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let qs = &b[16..144];
        for pair in 0..4 {
            let q = &qs[32 * pair..32 * pair + 32];
            for half in 0..2 {
                let (sc, m) = scale_min_k4(2 * pair + half, scales);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                let shift = 4 * half;
                let ys = &mut y[64 * pair + 32 * half..64 * pair + 32 * half + 32];
                for (v, &byte) in ys.iter_mut().zip(q) {
                    *v = dl * ((byte >> shift) & 0x0f) as f32 - ml;
                }
            }
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit per value: 32 bytes `qh` whose bit j of byte l belongs to
/// value l of sub-block j.
pub fn dequantize_row_q5_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for pair in 0..4 {
            let q = &qs[32 * pair..32 * pair + 32];
            for half in 0..2 {
                let j = 2 * pair + half;
                let (sc, m) = scale_min_k4(j, scales);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                let shift = 4 * half;
                let ys = &mut y[32 * j..32 * j + 32];
                for l in 0..32 {
                    let v = ((q[l] >> shift) & 0x0f) | ((qh[l] >> j) & 1) << 4;
                    ys[l] = dl * v as f32 - ml;
                }
            }
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one per
/// 16 values), super-scale d; 32 is subtracted from each 6-bit value. Each half (128 values)
/// takes 64 nibble bytes and 32 `qh` bytes: value l + 32·k of the half has the low or high
/// nibble of `ql[l]` (k = 0, 2) or `ql[l + 32]` (k = 1, 3) and bits 2k, 2k + 1 of `qh[l]`.
pub fn dequantize_row_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (b, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        let scales = &b[192..208];
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            for k in 0..4 {
                for l in 0..32 {
                    let low = (ql[l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f;
                    let high = (qh[l] >> (2 * k)) & 3;
                    let q = (low | high << 4) as i32 - 32;
                    let i = 128 * half + 32 * k + l;
                    y[i] = d * scales[i / 16] as i8 as f32 * q as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_ggmls() {
        // GGML_QUANT_SIZES in gguf-py: (values, bytes) per block.
        let sizes: Vec<(usize, usize)> = GgmlType::ALL
            .iter()
            .map(|t| (t.block_values(), t.block_bytes()))
            .collect();
        assert_eq!(
            sizes,
            [
                (1, 4),
                (1, 2),
                (1, 2),
                (32, 18),
                (32, 20),
                (32, 22),
                (32, 24),
                (32, 34),
                (256, 144),
                (256, 176),
                (256, 210)
            ]
        );
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Ok(t));
        }
        assert!(GgmlType::from_id(20).unwrap_err().contains("IQ4_NL"));
        assert!(GgmlType::from_id(1234)
            .unwrap_err()
            .contains("unknown tensor type 1234"));
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }

    #[test]
    fn q4_0_puts_low_nibbles_first_and_subtracts_eight() {
        let mut block = vec![0x00, 0x40]; // d = 2.0 as f16
        block.extend((0..16u8).map(|j| j | (15 - j) << 4));
        let mut out = [0.0; 32];
        dequantize(GgmlType::Q4_0, &block, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 2.0 * (7.0 - j as f32));
        }
    }

    #[test]
    fn q8_0_quantisation_moves_each_value_by_at_most_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let bytes = quantize_q8_0(&x).unwrap();
        assert_eq!(bytes.len(), 3 * 34);
        let mut back = vec![0f32; 96];
        dequantize(GgmlType::Q8_0, &bytes, &mut back).unwrap();
        for (block, got) in x.chunks_exact(32).zip(back.chunks_exact(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in block.iter().zip(got) {
                // Half a step, plus the f16 rounding of the scale (2⁻¹¹ of up to 127 steps).
                assert!((a - b).abs() <= step * (0.5 + 127.0 / 2048.0), "{a} → {b}");
            }
        }
        assert!(quantize_q8_0(&x[..40])
            .unwrap_err()
            .to_string()
            .contains("40 values"));
    }

    #[test]
    fn q4_0_quantisation_moves_each_value_by_at_most_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let bytes = quantize_q4_0(&x).unwrap();
        assert_eq!(bytes.len(), 3 * 18);
        let mut back = vec![0f32; 96];
        dequantize(GgmlType::Q4_0, &bytes, &mut back).unwrap();
        for (block, got) in x.chunks_exact(32).zip(back.chunks_exact(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 8.0;
            for (a, b) in block.iter().zip(got) {
                // Half a step (the top of the range, +8 steps, is clamped to 7: one step),
                // plus the f16 rounding of the scale.
                assert!((a - b).abs() <= step * (1.0 + 8.0 / 2048.0), "{a} → {b}");
            }
            // The value of largest magnitude is exact (−8 steps), up to the f16 scale.
            let m = block
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let i = block.iter().position(|&v| v == m).unwrap();
            assert!((got[i] - m).abs() <= m.abs() / 1024.0, "{m} → {}", got[i]);
        }
        assert!(quantize_q4_0(&x[..40]).is_err());
    }

    #[test]
    fn a_length_mismatch_is_an_error_not_a_panic() {
        let mut out = [0.0; 32];
        let e = dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
        assert!(
            e.to_string().contains("33 bytes do not hold 32 values"),
            "{e}"
        );
        let mut out = [0.0; 31];
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out).is_err());
    }
}
