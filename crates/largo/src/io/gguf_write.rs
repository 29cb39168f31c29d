//! Writing GGUF version 3 (little-endian): the header, typed metadata (every value type the
//! reader knows), tensor infos, then each tensor's data at an aligned offset. The tensor data
//! is streamed one tensor at a time, so a writer holds one encoded tensor, not the file.
//!
//! The file appears whole or not at all: it is written under a temporary name beside the
//! destination, synced, then renamed; on any error the temporary file is removed.

use super::gguf::{GgmlType, GgufArray, GgufValue};
use crate::backend::cpu::half::f32_slice_to_f16;
use crate::backend::cpu::quant::quantize_q8_0;
use crate::{Error, Result};
use std::collections::HashSet;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: usize = 4;

/// A tensor to write: its name, shape and type. Its bytes come later, from the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorSpec {
    pub name: String,
    /// Outermost dimension first, as [`super::gguf::TensorInfo::shape`] gives it: a
    /// [out, in] matrix is stored with GGUF dims [in, out].
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
}

impl GgufTensorSpec {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The bytes this tensor's data takes, or an error naming it when its rows are not whole
    /// blocks of its type.
    pub fn n_bytes(&self) -> Result<u64> {
        let row = self.shape.last().copied().unwrap_or(1);
        let block = self.dtype.block_values();
        if !row.is_multiple_of(block) {
            return Err(Error::Invalid(format!(
                "tensor {}: row length {row} is not a multiple of {}'s block of {block} values",
                self.name, self.dtype
            )));
        }
        self.dtype
            .bytes_for(self.num_elements() as u64)
            .ok_or_else(|| Error::Invalid(format!("tensor {}: size overflows", self.name)))
    }
}

/// f32 values encoded as `dtype`'s bytes (F32, F16, BF16 or Q8_0; Q8_0 needs whole blocks of
/// 32 values).
pub fn encode_values(dtype: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    Ok(match dtype {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => {
            let mut halves = vec![0u16; values.len()];
            f32_slice_to_f16(values, &mut halves);
            halves.iter().flat_map(|h| h.to_le_bytes()).collect()
        }
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| f32_to_bf16(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => quantize_q8_0(values)?,
        other => {
            return Err(Error::Invalid(format!(
                "writing {other} tensors is not supported (supported: F32, F16, BF16, Q8_0)"
            )))
        }
    })
}

/// f32 to bfloat16 bits, rounded to nearest even (PyTorch's and ggml's rounding); NaN stays a
/// quiet NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Writes a GGUF file at `path`: `metadata` in order, then `tensors` in order, tensor i's
/// bytes given by `data(i)` (called once per tensor, in order; a wrong length is an error
/// naming the tensor). The alignment is `general.alignment` when the metadata has it (a u32
/// power of two), else GGUF's default of 32. Returns the file's size in bytes.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorSpec],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let alignment = alignment_of(metadata)?;
    let (header, sizes) = header(metadata, tensors, alignment)?;
    let mut total = header.len() as u64;
    super::write_atomic_with(path, |out| {
        let io = |e| Error::io(path, e);
        out.write_all(&header).map_err(io)?;
        let zeros = vec![0u8; alignment as usize];
        for (i, (spec, &size)) in tensors.iter().zip(&sizes).enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != size {
                return Err(Error::Invalid(format!(
                    "tensor {}: {} bytes of data given, {:?} {} needs {size}",
                    spec.name,
                    bytes.len(),
                    spec.shape,
                    spec.dtype
                )));
            }
            out.write_all(&bytes).map_err(io)?;
            let pad = padding(size, alignment);
            out.write_all(&zeros[..pad as usize]).map_err(io)?;
            total += size + pad;
        }
        Ok(())
    })?;
    Ok(total)
}

fn alignment_of(metadata: &[(String, GgufValue)]) -> Result<u64> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, GgufValue::U32(a))) if *a != 0 && a.is_power_of_two() => Ok(*a as u64),
        Some((_, v)) => Err(Error::Invalid(format!(
            "GGUF metadata general.alignment is {} ({}), expected a u32 power of two",
            v.summary(4, 40),
            v.type_description()
        ))),
    }
}

/// Zero bytes after `len` bytes to reach the next multiple of `alignment`.
fn padding(len: u64, alignment: u64) -> u64 {
    (alignment - len % alignment) % alignment
}

/// The header up to the (aligned) start of the data, and each tensor's data size.
fn header(
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorSpec],
    alignment: u64,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, VERSION);
    put_u64(&mut out, tensors.len() as u64);
    put_u64(&mut out, metadata.len() as u64);
    let mut keys = HashSet::new();
    for (key, value) in metadata {
        if !keys.insert(key.as_str()) {
            return Err(Error::Invalid(format!(
                "GGUF metadata key {key} is given twice"
            )));
        }
        put_str(&mut out, key);
        put_u32(&mut out, value.value_type() as u32);
        put_value(&mut out, value);
    }
    let mut names = HashSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for spec in tensors {
        if !names.insert(spec.name.as_str()) {
            return Err(Error::Invalid(format!(
                "tensor {} is given twice",
                spec.name
            )));
        }
        if spec.shape.is_empty() || spec.shape.len() > MAX_DIMS {
            return Err(Error::Invalid(format!(
                "tensor {}: shape {:?} has {} dimensions, GGUF takes 1 to {MAX_DIMS}",
                spec.name,
                spec.shape,
                spec.shape.len()
            )));
        }
        let size = spec.n_bytes()?;
        put_str(&mut out, &spec.name);
        put_u32(&mut out, spec.shape.len() as u32);
        for &d in spec.shape.iter().rev() {
            put_u64(&mut out, d as u64);
        }
        put_u32(&mut out, spec.dtype.id());
        put_u64(&mut out, offset);
        offset += size + padding(size, alignment);
        sizes.push(size);
    }
    let pad = padding(out.len() as u64, alignment);
    out.resize(out.len() + pad as usize, 0);
    Ok((out, sizes))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A value without its type id (the caller wrote it: a key's, or an array's item type).
fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => put_array(out, a),
    }
}

/// An array: item type, count, items.
fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    put_u32(out, a.item_type() as u32);
    put_u64(out, a.len() as u64);
    fn each<T: Copy, const N: usize>(out: &mut Vec<u8>, v: &[T], bytes: fn(T) -> [u8; N]) {
        v.iter().for_each(|&x| out.extend_from_slice(&bytes(x)));
    }
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => each(out, v, i8::to_le_bytes),
        GgufArray::U16(v) => each(out, v, u16::to_le_bytes),
        GgufArray::I16(v) => each(out, v, i16::to_le_bytes),
        GgufArray::U32(v) => each(out, v, u32::to_le_bytes),
        GgufArray::I32(v) => each(out, v, i32::to_le_bytes),
        GgufArray::U64(v) => each(out, v, u64::to_le_bytes),
        GgufArray::I64(v) => each(out, v, i64::to_le_bytes),
        GgufArray::F32(v) => each(out, v, f32::to_le_bytes),
        GgufArray::F64(v) => each(out, v, f64::to_le_bytes),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::GgufFile;
    use crate::rng::Rng;

    fn every_value_type() -> Vec<(String, GgufValue)> {
        let s = |x: &str| x.to_string();
        vec![
            (s("general.architecture"), GgufValue::String(s("llama"))),
            (s("t.u8"), GgufValue::U8(200)),
            (s("t.i8"), GgufValue::I8(-100)),
            (s("t.u16"), GgufValue::U16(60_000)),
            (s("t.i16"), GgufValue::I16(-30_000)),
            (s("t.u32"), GgufValue::U32(4_000_000_000)),
            (s("t.i32"), GgufValue::I32(-2_000_000_000)),
            (s("t.u64"), GgufValue::U64(u64::MAX - 1)),
            (s("t.i64"), GgufValue::I64(i64::MIN + 1)),
            (s("t.f32"), GgufValue::F32(-1.25e-3)),
            (s("t.f64"), GgufValue::F64(std::f64::consts::PI)),
            (s("t.bool"), GgufValue::Bool(true)),
            (s("t.str"), GgufValue::String(s("héllo ▁world"))),
            (s("t.empty"), GgufValue::Array(GgufArray::F32(vec![]))),
            (
                s("t.a_u8"),
                GgufValue::Array(GgufArray::U8(vec![1, 2, 255])),
            ),
            (s("t.a_i8"), GgufValue::Array(GgufArray::I8(vec![-1, 2]))),
            (
                s("t.a_u16"),
                GgufValue::Array(GgufArray::U16(vec![7, 65535])),
            ),
            (s("t.a_i16"), GgufValue::Array(GgufArray::I16(vec![-7]))),
            (
                s("t.a_u32"),
                GgufValue::Array(GgufArray::U32(vec![1, 2, 3])),
            ),
            (s("t.a_i32"), GgufValue::Array(GgufArray::I32(vec![-1, 5]))),
            (
                s("t.a_u64"),
                GgufValue::Array(GgufArray::U64(vec![1 << 40])),
            ),
            (
                s("t.a_i64"),
                GgufValue::Array(GgufArray::I64(vec![-(1 << 40)])),
            ),
            (
                s("t.a_f32"),
                GgufValue::Array(GgufArray::F32(vec![0.5, -2.0])),
            ),
            (s("t.a_f64"), GgufValue::Array(GgufArray::F64(vec![1e300]))),
            (
                s("t.a_bool"),
                GgufValue::Array(GgufArray::Bool(vec![true, false])),
            ),
            (
                s("t.a_str"),
                GgufValue::Array(GgufArray::String(vec![s("a"), s(""), s("<s>")])),
            ),
            (
                s("t.a_arr"),
                GgufValue::Array(GgufArray::Array(vec![
                    GgufArray::U32(vec![1, 2]),
                    GgufArray::String(vec![s("x")]),
                ])),
            ),
            (s("general.alignment"), GgufValue::U32(64)),
        ]
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.normal() * 0.5).collect()
    }

    /// max |a − b| / max |b|.
    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        diff / scale
    }

    #[test]
    fn metadata_and_tensors_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let metadata = every_value_type();
        let spec = |name: &str, shape: &[usize], dtype| GgufTensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
        };
        let tensors = [
            spec("w.f32", &[3, 5], GgmlType::F32),
            spec("w.f16", &[4, 7], GgmlType::F16),
            spec("w.bf16", &[2, 9], GgmlType::BF16),
            spec("w.q8_0", &[3, 64], GgmlType::Q8_0),
            spec("norm", &[5], GgmlType::F32),
        ];
        let values: Vec<Vec<f32>> = (0..tensors.len())
            .map(|i| random(tensors[i].num_elements(), i as u64))
            .collect();
        let size = write_gguf(&path, &metadata, &tensors, |i| {
            encode_values(tensors[i].dtype, &values[i])
        })
        .unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());

        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.alignment(), 64);
        assert_eq!(file.metadata_entries(), &metadata[..]);
        assert_eq!(file.tensors().len(), tensors.len());
        for (i, (spec, view)) in tensors.iter().zip(file.tensor_views()).enumerate() {
            assert_eq!(view.name, spec.name);
            assert_eq!(view.shape, spec.shape);
            assert_eq!(view.dtype, spec.dtype);
            assert_eq!(file.tensors()[i].offset % 64, 0, "{} aligned", spec.name);
            let got = view.dequantize().unwrap();
            let err = relative_error(&got, &values[i]);
            // f16 keeps 11 significant bits, bf16 8; Q8_0 a step of max|x|/127 per block.
            let tolerance = match spec.dtype {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1.0 / 2048.0,
                GgmlType::BF16 => 1.0 / 256.0,
                _ => 1.0 / 127.0,
            };
            assert!(err <= tolerance, "{}: error {err} > {tolerance}", spec.name);
        }
        // F32 exactly, and F16 as the round-to-nearest conversion.
        let f32_back = file.tensor("w.f32").unwrap().dequantize().unwrap();
        assert_eq!(f32_back, values[0]);
        let f16_back = file.tensor("w.f16").unwrap().dequantize().unwrap();
        for (&g, &v) in f16_back.iter().zip(&values[1]) {
            let h = crate::backend::cpu::half::f32_to_f16(v);
            assert_eq!(g, crate::backend::cpu::half::f16_to_f32(h));
        }
        // Q8_0 bytes are llama.cpp's quantisation, as written.
        let q = file.tensor("w.q8_0").unwrap();
        assert_eq!(q.bytes, &quantize_q8_0(&values[3]).unwrap()[..]);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_to_bf16(-2.0), 0xc000);
        assert!(f32::from_bits((f32_to_bf16(f32::NAN) as u32) << 16).is_nan());
    }

    #[test]
    fn bad_input_is_refused_by_name_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let spec = |name: &str, shape: &[usize], dtype| GgufTensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
        };
        // Metadata, tensors, and what the error says.
        type Case = (Vec<(String, GgufValue)>, Vec<GgufTensorSpec>, &'static str);
        let cases: Vec<Case> = vec![
            (
                vec![],
                vec![spec("a", &[2, 3], GgmlType::F32)],
                "tensor a: 20 bytes of data given",
            ),
            (
                vec![],
                vec![spec("q", &[2, 48], GgmlType::Q8_0)],
                "tensor q: row length 48 is not a multiple of Q8_0's block of 32",
            ),
            (
                vec![],
                vec![
                    spec("a", &[1], GgmlType::F32),
                    spec("a", &[1], GgmlType::F32),
                ],
                "tensor a is given twice",
            ),
            (
                vec![("general.alignment".into(), GgufValue::U32(12))],
                vec![],
                "general.alignment is 12 (u32), expected a u32 power of two",
            ),
            (
                vec![
                    ("k".into(), GgufValue::U8(1)),
                    ("k".into(), GgufValue::U8(2)),
                ],
                vec![],
                "metadata key k is given twice",
            ),
        ];
        for (metadata, tensors, needle) in cases {
            let e = write_gguf(&path, &metadata, &tensors, |_| Ok(vec![0u8; 20]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e} lacks {needle:?}");
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{needle}: left behind {left:?}");
        }
        // An error from the data source, after the header went out: nothing stays either.
        let tensors = [
            spec("a", &[4], GgmlType::F32),
            spec("b", &[4], GgmlType::F32),
        ];
        let e = write_gguf(&path, &[], &tensors, |i| match i {
            0 => Ok(vec![0u8; 16]),
            _ => Err(Error::Invalid("tensor b: no values".into())),
        })
        .unwrap_err();
        assert!(e.to_string().contains("tensor b: no values"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Writing a type largo cannot encode is refused by name.
        let e = encode_values(GgmlType::Q4_K, &[0.0; 256]).unwrap_err();
        assert!(
            e.to_string()
                .contains("writing Q4_K tensors is not supported"),
            "{e}"
        );
    }

    #[test]
    fn an_existing_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"old").unwrap();
        let tensors = [GgufTensorSpec {
            name: "a".into(),
            shape: vec![2],
            dtype: GgmlType::F32,
        }];
        // A failed write keeps the old file.
        let e = write_gguf(&path, &[], &tensors, |_| Ok(vec![]));
        assert!(e.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        write_gguf(&path, &[], &tensors, |_| {
            encode_values(GgmlType::F32, &[1.0, 2.0])
        })
        .unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.tensor("a").unwrap().dequantize().unwrap(), [1.0, 2.0]);
    }
}
