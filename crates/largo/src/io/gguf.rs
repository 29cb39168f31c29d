//! GGUF (versions 2 and 3, little-endian), llama.cpp's model file: a header, typed metadata,
//! tensor infos, then the aligned tensor data, which stays memory-mapped: a tensor is a slice
//! of the map, dequantised only when asked.
//!
//! The file is untrusted. Every count, length and offset is checked against the bytes the file
//! has left before anything is allocated or read, so a corrupted file gives an error naming
//! the file, the key or tensor and the offset, never a panic or a giant allocation.

use crate::backend::cpu::quant::dequantize;
pub use crate::backend::cpu::quant::GgmlType;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (real files nest at most once), so that a
/// crafted file cannot recurse the reader off its stack.
const MAX_ARRAY_DEPTH: usize = 4;
const DEFAULT_ALIGNMENT: u32 = 32;

/// Room reserved up front for a list whose count the file gives: the count is already checked
/// against the bytes left, but a String or a tensor info takes several times its file bytes in
/// memory, so beyond this the list grows only as entries actually parse.
fn initial_capacity(count: usize) -> usize {
    count.min(1 << 16)
}

/// A metadata value, with GGUF's value types.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// An array's items, all of one type, stored as that type: a u8 array takes one byte per item
/// in memory as in the file, so a corrupted count cannot make the reader allocate many times
/// the file's size.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufArray {
    pub fn item_type(&self) -> ValueType {
        match self {
            GgufArray::U8(_) => ValueType::U8,
            GgufArray::I8(_) => ValueType::I8,
            GgufArray::U16(_) => ValueType::U16,
            GgufArray::I16(_) => ValueType::I16,
            GgufArray::U32(_) => ValueType::U32,
            GgufArray::I32(_) => ValueType::I32,
            GgufArray::U64(_) => ValueType::U64,
            GgufArray::I64(_) => ValueType::I64,
            GgufArray::F32(_) => ValueType::F32,
            GgufArray::F64(_) => ValueType::F64,
            GgufArray::Bool(_) => ValueType::Bool,
            GgufArray::String(_) => ValueType::String,
            GgufArray::Array(_) => ValueType::Array,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `array of 3 string`.
    pub fn type_description(&self) -> String {
        format!("array of {} {}", self.len(), self.item_type().name())
    }

    /// The type and length plus the first `max_items` items.
    pub fn summary(&self, max_items: usize, max_chars: usize) -> String {
        fn first<T>(v: &[T], n: usize, show: impl Fn(&T) -> String) -> Vec<String> {
            v.iter().take(n).map(show).collect()
        }
        let n = max_items;
        let shown = match self {
            GgufArray::U8(v) => first(v, n, |x| x.to_string()),
            GgufArray::I8(v) => first(v, n, |x| x.to_string()),
            GgufArray::U16(v) => first(v, n, |x| x.to_string()),
            GgufArray::I16(v) => first(v, n, |x| x.to_string()),
            GgufArray::U32(v) => first(v, n, |x| x.to_string()),
            GgufArray::I32(v) => first(v, n, |x| x.to_string()),
            GgufArray::U64(v) => first(v, n, |x| x.to_string()),
            GgufArray::I64(v) => first(v, n, |x| x.to_string()),
            GgufArray::F32(v) => first(v, n, |x| format!("{x:?}")),
            GgufArray::F64(v) => first(v, n, |x| format!("{x:?}")),
            GgufArray::Bool(v) => first(v, n, |x| x.to_string()),
            GgufArray::String(v) => first(v, n, |x| quote_cut(x, max_chars)),
            GgufArray::Array(v) => first(v, n, |x| x.summary(max_items, max_chars)),
        };
        let more = if self.len() > max_items { ", …" } else { "" };
        format!("{}: [{}{more}]", self.type_description(), shown.join(", "))
    }
}

/// A string quoted, cut after `max_chars` characters.
fn quote_cut(s: &str, max_chars: usize) -> String {
    let n = s.chars().count();
    if n <= max_chars {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(max_chars).collect();
        format!("{head:?}… ({n} chars)")
    }
}

/// GGUF's value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes: a string or array is at least its length
    /// field (plus an array's item type).
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl GgufValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            GgufValue::U8(_) => ValueType::U8,
            GgufValue::I8(_) => ValueType::I8,
            GgufValue::U16(_) => ValueType::U16,
            GgufValue::I16(_) => ValueType::I16,
            GgufValue::U32(_) => ValueType::U32,
            GgufValue::I32(_) => ValueType::I32,
            GgufValue::U64(_) => ValueType::U64,
            GgufValue::I64(_) => ValueType::I64,
            GgufValue::F32(_) => ValueType::F32,
            GgufValue::F64(_) => ValueType::F64,
            GgufValue::Bool(_) => ValueType::Bool,
            GgufValue::String(_) => ValueType::String,
            GgufValue::Array(_) => ValueType::Array,
        }
    }

    /// The type as a reader would name it: `u32`, `string`, `array of 3 string`.
    pub fn type_description(&self) -> String {
        match self {
            GgufValue::Array(a) => a.type_description(),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A one-line rendering: strings quoted and cut after `max_chars` characters, arrays
    /// as their type and length plus the first `max_items` items.
    pub fn summary(&self, max_items: usize, max_chars: usize) -> String {
        match self {
            GgufValue::U8(v) => v.to_string(),
            GgufValue::I8(v) => v.to_string(),
            GgufValue::U16(v) => v.to_string(),
            GgufValue::I16(v) => v.to_string(),
            GgufValue::U32(v) => v.to_string(),
            GgufValue::I32(v) => v.to_string(),
            GgufValue::U64(v) => v.to_string(),
            GgufValue::I64(v) => v.to_string(),
            GgufValue::F32(v) => format!("{v:?}"),
            GgufValue::F64(v) => format!("{v:?}"),
            GgufValue::Bool(v) => v.to_string(),
            GgufValue::String(s) => quote_cut(s, max_chars),
            GgufValue::Array(a) => a.summary(max_items, max_chars),
        }
    }
}

/// Where a tensor lies and what it holds, as listed in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// As in the file: innermost (contiguous) dimension first.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn num_elements(&self) -> u64 {
        // Checked at open: no partial product overflows.
        self.dims.iter().product()
    }

    /// Outermost dimension first, as Hugging Face and largo write shapes: a GGUF `[in, out]`
    /// matrix is `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        // The product of the nonzero dimensions fits in usize (checked at open).
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A tensor's bytes, borrowed from the map.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: GgmlType,
    /// Outermost dimension first (the file's dims reversed).
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// All values as f32.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.num_elements()];
        dequantize(self.dtype, self.bytes, &mut out)
            .map_err(|e| Error::Invalid(format!("tensor {}: {e}", self.name)))?;
        Ok(out)
    }

    pub fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(&self.shape, self.dequantize()?)
    }
}

/// An open GGUF file: metadata and tensor infos parsed, tensor data mapped.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl GgufFile {
    /// Drops the resident pages under `bytes` (a slice of this file's data, e.g. a tensor
    /// already copied out): a loader that repacks tensor by tensor then holds one copy of the
    /// weights at a time, not the mapped file and its copy. Anything read again is read from
    /// the file; a slice from elsewhere is ignored.
    pub fn release_pages(&self, bytes: &[u8]) {
        let start = bytes.as_ptr() as usize;
        let base = self.map.as_ptr() as usize;
        if start < base || start + bytes.len() > base + self.map.len() {
            return;
        }
        #[cfg(unix)]
        {
            // SAFETY: `map` is a read-only shared file mapping (`Mmap::map`). MADV_DONTNEED on
            // it only drops resident pages; the next access reads the same bytes back from the
            // file, so every slice into the map stays valid and unchanged. The range lies
            // inside the map (checked above). Failure only means the pages stay resident.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start - base,
                    bytes.len(),
                )
            };
        }
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Reads little-endian fields off the file's bytes; every read is bounds-checked and a short
/// read names the offset. Errors are messages, which callers prefix with the key or tensor.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "{what} at offset {} needs {n} bytes, the file has {} left",
                self.pos,
                self.left()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_bytes` each, refused when they cannot fit in what is
    /// left of the file: this is what keeps a corrupted count from sizing an allocation.
    fn count(&mut self, min_bytes: u64, what: &str) -> std::result::Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > self.left() / min_bytes {
            return Err(format!(
                "{what} {n} at offset {at} is larger than the file allows ({} bytes left, \
                 at least {min_bytes} per item)",
                self.left()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.left() {
            return Err(format!(
                "{what} length {len} at offset {at} runs past the end of the file ({} bytes left)",
                self.left()
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{what} at offset {at} is not UTF-8: {e}"))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            ValueType::U8 => GgufValue::U8(self.array::<1>("u8")?[0]),
            ValueType::I8 => GgufValue::I8(self.array::<1>("i8")?[0] as i8),
            ValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => GgufValue::U32(self.u32("u32")?),
            ValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::U64 => GgufValue::U64(self.u64("u64")?),
            ValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>("bool")?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(format!("bool at offset {at} is {b}, not 0 or 1")),
                }
            }
            ValueType::String => GgufValue::String(self.string("string")?),
            ValueType::Array => GgufValue::Array(self.array_value(depth)?),
        })
    }

    /// `n` fixed-size items decoded by `decode`, the bytes bounds-checked in one go.
    fn items<T, const N: usize>(
        &mut self,
        n: usize,
        what: &str,
        decode: fn([u8; N]) -> T,
    ) -> std::result::Result<Vec<T>, String> {
        // n ≤ bytes left / N (checked by `count`), so this cannot overflow.
        let bytes = self.take((n * N) as u64, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| decode(c.try_into().expect("N bytes")))
            .collect())
    }

    fn array_value(&mut self, depth: usize) -> std::result::Result<GgufArray, String> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!(
                "array at offset {at} nests deeper than {MAX_ARRAY_DEPTH} levels"
            ));
        }
        let type_id = self.u32("array item type")?;
        let item_type = ValueType::from_id(type_id)
            .ok_or_else(|| format!("array at offset {at} has unknown item type {type_id}"))?;
        let n = self.count(
            item_type.min_bytes(),
            &format!("array of {}: item count", item_type.name()),
        )?;
        let what = item_type.name();
        Ok(match item_type {
            ValueType::U8 => GgufArray::U8(self.items(n, what, |b: [u8; 1]| b[0])?),
            ValueType::I8 => GgufArray::I8(self.items(n, what, i8::from_le_bytes)?),
            ValueType::U16 => GgufArray::U16(self.items(n, what, u16::from_le_bytes)?),
            ValueType::I16 => GgufArray::I16(self.items(n, what, i16::from_le_bytes)?),
            ValueType::U32 => GgufArray::U32(self.items(n, what, u32::from_le_bytes)?),
            ValueType::I32 => GgufArray::I32(self.items(n, what, i32::from_le_bytes)?),
            ValueType::U64 => GgufArray::U64(self.items(n, what, u64::from_le_bytes)?),
            ValueType::I64 => GgufArray::I64(self.items(n, what, i64::from_le_bytes)?),
            ValueType::F32 => GgufArray::F32(self.items(n, what, f32::from_le_bytes)?),
            ValueType::F64 => GgufArray::F64(self.items(n, what, f64::from_le_bytes)?),
            ValueType::Bool => {
                let bytes = self.take(n as u64, what)?;
                let mut v = Vec::with_capacity(n);
                for (i, &b) in bytes.iter().enumerate() {
                    match b {
                        0 | 1 => v.push(b == 1),
                        _ => {
                            return Err(format!(
                                "item {i}: bool at offset {} is {b}, not 0 or 1",
                                at + 12 + i
                            ))
                        }
                    }
                }
                GgufArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(initial_capacity(n));
                for i in 0..n {
                    v.push(
                        self.string("string")
                            .map_err(|m| format!("item {i}: {m}"))?,
                    );
                }
                GgufArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(initial_capacity(n));
                for i in 0..n {
                    v.push(
                        self.array_value(depth + 1)
                            .map_err(|m| format!("item {i}: {m}"))?,
                    );
                }
                GgufArray::Array(v)
            }
        })
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_add(alignment - 1)
        .map(|v| v / alignment * alignment)
}

impl GgufFile {
    /// Maps `path` and parses its header, metadata and tensor infos.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // The fixed header: magic, version, tensor count, metadata count.
        if len < 24 {
            return Err(Error::format(
                path,
                format!("GGUF: file is {len} bytes, shorter than the 24-byte header"),
            ));
        }
        // SAFETY: the map is read-only and lives as long as this GgufFile. Nothing in largo
        // writes model files while they are open; another process truncating or rewriting
        // the file while it is mapped is outside what we can guard against (as for every
        // mmap-based model loader). We only ever read through the map.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: memmap2::Mmap) -> Result<GgufFile> {
        let fail = |msg: String| Error::format(path, format!("GGUF: {msg}"));
        let mut r = Reader {
            bytes: &map,
            pos: 0,
        };
        let magic = r.array::<4>("magic").map_err(fail)?;
        if &magic != MAGIC {
            return Err(fail(format!(
                "not a GGUF file: starts with {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = r.u32("version").map_err(fail)?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(fail(
                    "version 1 is not supported (only 2 and 3): convert the model again with a \
                     current llama.cpp"
                        .into(),
                ))
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(fail(format!(
                    "big-endian GGUF (version {}) is not supported",
                    v.swap_bytes()
                )))
            }
            v => return Err(fail(format!("unsupported version {v} (supported: 2, 3)"))),
        }
        // At least a name length, n_dims, type and offset per tensor.
        let n_tensors = r.count(24, "tensor count").map_err(fail)?;
        // At least a key length, a value type and one byte of value per key.
        let n_kv = r.count(13, "metadata count").map_err(fail)?;

        let mut metadata = Vec::with_capacity(initial_capacity(n_kv));
        let mut metadata_index = HashMap::with_capacity(initial_capacity(n_kv));
        for i in 0..n_kv {
            let at = r.pos;
            let key = r
                .string("key")
                .map_err(|m| fail(format!("metadata entry {i}: {m}")))?;
            let type_at = r.pos;
            let type_id = r
                .u32("value type")
                .map_err(|m| fail(format!("metadata key {key}: {m}")))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| {
                fail(format!(
                    "metadata key {key}: unknown value type {type_id} at offset {type_at}"
                ))
            })?;
            let value = r
                .value(ty, 0)
                .map_err(|m| fail(format!("metadata key {key}: {m}")))?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(fail(format!(
                    "metadata key {key} appears twice (again at offset {at})"
                )));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                GgufValue::U32(a) if a != 0 && a.is_power_of_two() => a,
                ref v => {
                    return Err(fail(format!(
                        "metadata key general.alignment is {} ({}), expected a u32 power of two",
                        v.summary(4, 40),
                        v.type_description()
                    )))
                }
            },
        } as u64;

        if n_tensors as u64 > r.left() / 24 {
            return Err(fail(format!(
                "tensor count {n_tensors} is larger than the file allows ({} bytes left after \
                 the metadata)",
                r.left()
            )));
        }
        let mut infos = Vec::with_capacity(initial_capacity(n_tensors));
        for i in 0..n_tensors {
            let name = r
                .string("tensor name")
                .map_err(|m| fail(format!("tensor info {i}: {m}")))?;
            let named = |m: String| fail(format!("tensor {name}: {m}"));
            let dims_at = r.pos;
            let n_dims = r.u32("n_dims").map_err(named)?;
            if n_dims > MAX_DIMS {
                return Err(named(format!(
                    "n_dims {n_dims} at offset {dims_at}: ggml tensors have at most {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("dimension").map_err(named)?);
            }
            let type_at = r.pos;
            let type_id = r.u32("tensor type").map_err(named)?;
            let dtype = GgmlType::from_id(type_id)
                .map_err(|m| named(format!("{m} (at offset {type_at})")))?;
            let offset_at = r.pos;
            let offset = r.u64("data offset").map_err(named)?;
            infos.push((name, dims, dtype, offset, dims_at, offset_at));
        }
        let data_start = align_up(r.pos as u64, alignment)
            .ok_or_else(|| fail("the data section's start overflows".to_string()))?;

        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = HashMap::with_capacity(infos.len());
        for (name, dims, dtype, offset, dims_at, offset_at) in infos {
            let named = |m: String| fail(format!("tensor {name}: {m}"));
            // Every partial product must fit too (shape products run in any order), so the
            // product is taken with zeros counted as ones.
            let span = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)))
                .filter(|&span| usize::try_from(span).is_ok())
                .ok_or_else(|| {
                    named(format!(
                        "dimensions {dims:?} (at offset {dims_at}) overflow 64 bits"
                    ))
                })?;
            let elements = if dims.contains(&0) { 0 } else { span };
            let row = dims.first().copied().unwrap_or(1);
            if !row.is_multiple_of(dtype.block_values() as u64) {
                return Err(named(format!(
                    "row length {row} (at offset {dims_at}) is not a multiple of {dtype}'s \
                     block of {} values",
                    dtype.block_values()
                )));
            }
            let n_bytes = dtype
                .bytes_for(elements)
                .ok_or_else(|| named(format!("{elements} {dtype} values overflow 64 bits")))?;
            if !offset.is_multiple_of(alignment) {
                return Err(named(format!(
                    "data offset {offset} (at offset {offset_at}) is not a multiple of the \
                     alignment {alignment}"
                )));
            }
            let end = data_start
                .checked_add(offset)
                .and_then(|s| s.checked_add(n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(named(format!(
                        "data offset {offset} (at offset {offset_at}) plus {n_bytes} bytes of \
                         {dims:?} {dtype} runs past the end of the file ({file_len} bytes, data \
                         section from {data_start})"
                    )))
                }
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(named("appears twice in the tensor infos".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
                n_bytes,
            });
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The file offset where tensor data begins.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// All keys and values, in file order.
    pub fn metadata_entries(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn required(&self, key: &str) -> Result<&GgufValue> {
        self.metadata(key)
            .ok_or_else(|| Error::format(&self.path, format!("GGUF: missing metadata key {key}")))
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> Error {
        Error::format(
            &self.path,
            format!(
                "GGUF: metadata key {key} is {} ({}), expected {expected}",
                v.summary(3, 40),
                v.type_description()
            ),
        )
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        match self.required(key)? {
            GgufValue::U32(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "u32")),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        match self.required(key)? {
            GgufValue::U64(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "u64")),
        }
    }

    pub fn get_i32(&self, key: &str) -> Result<i32> {
        match self.required(key)? {
            GgufValue::I32(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "i32")),
        }
    }

    /// A size or count stored as any integer type (converters differ), which must be
    /// non-negative and fit in usize.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.required(key)? {
            GgufValue::F32(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "f32")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.required(key)? {
            GgufValue::Bool(v) => Ok(*v),
            v => Err(self.wrong_type(key, v, "bool")),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.required(key)? {
            GgufValue::String(v) => Ok(v),
            v => Err(self.wrong_type(key, v, "string")),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        match self.required(key)? {
            GgufValue::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, v, "an array")),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.required(key)? {
            GgufValue::Array(GgufArray::String(v)) => Ok(v),
            v => Err(self.wrong_type(key, v, "an array of string")),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.required(key)? {
            GgufValue::Array(GgufArray::F32(v)) => Ok(v),
            v => Err(self.wrong_type(key, v, "an array of f32")),
        }
    }

    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.required(key)? {
            GgufValue::Array(GgufArray::I32(v)) => Ok(v),
            v => Err(self.wrong_type(key, v, "an array of i32")),
        }
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::format(&self.path, format!("GGUF: missing tensor {name}")))?;
        Ok(self.view(info))
    }

    /// Every tensor's bytes, in file order.
    pub fn tensor_views(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.tensors.iter().map(|t| self.view(t))
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        // In range: checked against the file length at open.
        let start = (self.data_start + info.offset) as usize;
        TensorView {
            name: &info.name,
            dtype: info.dtype,
            shape: info.shape(),
            bytes: &self.map[start..start + info.n_bytes as usize],
        }
    }

    /// All tensors' elements.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.num_elements()).sum()
    }

    /// Tensor count and bytes per type.
    pub fn type_histogram(&self) -> BTreeMap<GgmlType, (usize, u64)> {
        let mut h = BTreeMap::new();
        for t in &self.tensors {
            let e = h.entry(t.dtype).or_insert((0, 0));
            e.0 += 1;
            e.1 += t.n_bytes;
        }
        h
    }
}
