//! Safe reader for `torch.save(model.state_dict(), path)` files (the zip format of torch ≥ 1.6).
//!
//! Such a file is a zip holding `<prefix>/data.pkl`, a pickle that describes the dict and each
//! tensor (dtype, shape, strides, storage key), and `<prefix>/data/<key>`, the raw little-endian
//! storages. Unpickling with Python runs whatever callables the pickle names, so a .pt file from
//! the internet can run code. This module instead interprets the pickle with a small stack
//! machine that knows only the opcodes torch.save emits and an allow-list of globals; any other
//! global is refused at the opcode that names it, before a single storage byte is read.

use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

/// A `torch.save(state_dict)` file converted for largo.
#[derive(Debug)]
pub struct StateDict {
    /// Tensor name → contiguous row-major f32 copy.
    pub tensors: BTreeMap<String, Tensor>,
    /// Tensor name → the dtype it had in the file ("float32", "bfloat16", "int64", ...).
    pub dtypes: BTreeMap<String, String>,
}

/// Reads a `torch.save(state_dict)` file: tensor name → tensor converted to f32 (row-major,
/// contiguous), plus the original dtype name of each ("float32", "float16", "bfloat16",
/// "float64", "int64", "int32", ...).
pub fn load_state_dict(path: &Path) -> Result<StateDict> {
    let fail = |msg: String| Error::format(path, msg);
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    check_zip_magic(&mut file).map_err(fail)?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        fail(format!(
            "truncated or corrupt zip archive ({e}); torch.save writes a complete zip"
        ))
    })?;
    let pickle_name = find_data_pkl(&archive).map_err(fail)?;
    let prefix = pickle_name
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_string();
    check_byteorder(&mut archive, &prefix).map_err(fail)?;
    let pickle = read_entry(&mut archive, &pickle_name).map_err(fail)?;
    let root = Unpickler::new(&pickle, &pickle_name).run().map_err(fail)?;
    let views = state_dict_views(root).map_err(fail)?;

    // Tensors that view one storage (tied weights, slices) share one read of it, kept only
    // until its last view is converted, so a large file is never all in memory twice.
    let entry_of = |view: &TensorView| format!("{prefix}data/{}", view.storage.key);
    let mut views_left: HashMap<String, usize> = HashMap::new();
    for view in views.values() {
        *views_left.entry(entry_of(view)).or_default() += 1;
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut stored_bytes, mut produced_elements) = (0usize, 0usize);
    let mut state = StateDict {
        tensors: BTreeMap::new(),
        dtypes: BTreeMap::new(),
    };
    for (name, view) in views {
        let entry = entry_of(&view);
        if !storages.contains_key(&entry) {
            let bytes = read_entry(&mut archive, &entry)
                .map_err(|m| fail(format!("tensor {name}: {m}")))?;
            stored_bytes = stored_bytes.saturating_add(bytes.len());
            storages.insert(entry.clone(), bytes);
        }
        let bytes = storages.get(&entry).map(Vec::as_slice).unwrap_or_default();
        let tensor =
            materialize(&view, &entry, bytes).map_err(|m| fail(format!("tensor {name}: {m}")))?;
        // Each view is bounded by its storage, but many views of one storage could still
        // multiply it without end; tied weights and slices stay far below this.
        produced_elements = produced_elements.saturating_add(tensor.data.len());
        let allowed = stored_bytes
            .saturating_mul(MAX_VIEW_AMPLIFICATION)
            .saturating_add(MAX_REPEATED_ELEMENTS);
        if produced_elements > allowed {
            return Err(fail(format!(
                "tensor {name}: the tensors so far copy {produced_elements} elements from \
                 {stored_bytes} bytes of storage; refusing views that repeat their storages \
                 more than {MAX_VIEW_AMPLIFICATION} times over"
            )));
        }
        if let Some(left) = views_left.get_mut(&entry) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                storages.remove(&entry);
            }
        }
        state
            .dtypes
            .insert(name.clone(), view.dtype.name().to_string());
        state.tensors.insert(name, tensor);
    }
    Ok(state)
}

/// Tells a legacy (pre-1.6) or unrelated file apart from a zip before the zip reader sees it,
/// so the message says what the file is rather than "no end of central directory".
fn check_zip_magic(file: &mut std::fs::File) -> std::result::Result<(), String> {
    let mut head = Vec::new();
    Read::take(&mut *file, 4)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    file.rewind().map_err(|e| format!("cannot read: {e}"))?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(());
    }
    if head.first() == Some(&0x80) {
        // Pickle PROTO opcode: torch.save before 1.6, or with _use_new_zipfile_serialization=False.
        return Err(
            "not a PyTorch zip checkpoint (torch.save since 1.6 writes a zip archive); \
            this is the legacy format, which is not supported: re-save it with a current torch"
                .into(),
        );
    }
    let shown: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let found = if shown.is_empty() {
        "this file is empty".to_string()
    } else {
        format!("this file starts with {}", shown.join(" "))
    };
    Err(format!(
        "not a PyTorch zip checkpoint (torch.save since 1.6 writes a zip archive, starting \
         with 50 4b 03 04; {found})"
    ))
}

/// The archive's `<prefix>/data.pkl`; torch names the prefix after the file, or "archive".
fn find_data_pkl<R: Read + Seek>(
    archive: &zip::ZipArchive<R>,
) -> std::result::Result<String, String> {
    let mut found: Vec<&str> = archive
        .file_names()
        .filter(|n| n.strip_suffix("data.pkl").is_some_and(is_top_folder))
        .collect();
    found.sort_unstable();
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err("zip archive has no <folder>/data.pkl, so it is not a torch.save file".into()),
        many => Err(format!(
            "zip archive holds several data.pkl files ({}), not one torch.save file",
            many.join(", ")
        )),
    }
}

/// "" or "name/": the prefix torch.save puts in front of every entry.
fn is_top_folder(prefix: &str) -> bool {
    prefix.is_empty() || prefix.find('/') == Some(prefix.len() - 1)
}

/// Storages are read as little-endian; a file from a big-endian machine would load as garbage.
fn check_byteorder<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    prefix: &str,
) -> std::result::Result<(), String> {
    let name = format!("{prefix}byteorder");
    let Ok(entry) = archive.by_name(&name) else {
        return Ok(()); // torch before 1.9 did not write it, and only ran little-endian then
    };
    let mut order = Vec::new();
    entry
        .take(16)
        .read_to_end(&mut order)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    match order.trim_ascii() {
        b"little" => Ok(()),
        b"big" => Err(format!(
            "{name} says \"big\": the checkpoint was saved on a big-endian machine; only \
             little-endian storages are supported: re-save it on a little-endian machine"
        )),
        other => Err(format!(
            "{name} holds {:?}, expected \"little\"",
            String::from_utf8_lossy(other)
        )),
    }
}

/// One whole entry. The declared size only caps the read (real bytes decide the length),
/// so a lying header cannot make this allocate more than the entry really holds.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut entry = archive.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => format!("{name} is missing from the archive"),
        e => format!("cannot read {name}: {e}"),
    })?;
    let declared = entry.size();
    let mut bytes = Vec::new();
    Read::take(&mut entry, declared)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 != declared {
        return Err(format!(
            "{name} is truncated: it holds {} of its {declared} bytes",
            bytes.len()
        ));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Dtypes

/// Element types a torch storage can hold. Complex types are known only to name them in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    U16,
    U32,
    U64,
    F8E4M3,
    F8E5M2,
    Complex64,
    Complex128,
}

/// dtype, torch's name for it (`torch.<name>`), and its legacy storage class (`torch.<class>`).
const DTYPES: &[(DType, &str, Option<&str>)] = &[
    (DType::F32, "float32", Some("FloatStorage")),
    (DType::F64, "float64", Some("DoubleStorage")),
    (DType::F16, "float16", Some("HalfStorage")),
    (DType::BF16, "bfloat16", Some("BFloat16Storage")),
    (DType::I64, "int64", Some("LongStorage")),
    (DType::I32, "int32", Some("IntStorage")),
    (DType::I16, "int16", Some("ShortStorage")),
    (DType::I8, "int8", Some("CharStorage")),
    (DType::U8, "uint8", Some("ByteStorage")),
    (DType::Bool, "bool", Some("BoolStorage")),
    (DType::U16, "uint16", None),
    (DType::U32, "uint32", None),
    (DType::U64, "uint64", None),
    (DType::F8E4M3, "float8_e4m3fn", None),
    (DType::F8E5M2, "float8_e5m2", None),
    (DType::Complex64, "complex64", Some("ComplexFloatStorage")),
    (
        DType::Complex128,
        "complex128",
        Some("ComplexDoubleStorage"),
    ),
];

/// Converts the bytes of one element (exactly `size()` of them) to f32.
type Converter = fn(&[u8]) -> f32;

impl DType {
    fn from_name(name: &str) -> Option<Self> {
        DTYPES.iter().find(|d| d.1 == name).map(|d| d.0)
    }

    fn from_storage_class(class: &str) -> Option<Self> {
        DTYPES.iter().find(|d| d.2 == Some(class)).map(|d| d.0)
    }

    fn name(self) -> &'static str {
        DTYPES
            .iter()
            .find(|d| d.0 == self)
            .map_or("unknown", |d| d.1)
    }

    fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool | DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
        }
    }

    fn converter(self) -> Option<Converter> {
        let convert: Converter = match self {
            DType::F32 => |b| f32::from_le_bytes(le(b)),
            DType::F64 => |b| f64::from_le_bytes(le(b)) as f32,
            DType::F16 => |b| crate::io::f16_to_f32(u16::from_le_bytes(le(b))),
            DType::BF16 => |b| f32::from_bits(u32::from(u16::from_le_bytes(le(b))) << 16),
            DType::I64 => |b| i64::from_le_bytes(le(b)) as f32,
            DType::I32 => |b| i32::from_le_bytes(le(b)) as f32,
            DType::I16 => |b| f32::from(i16::from_le_bytes(le(b))),
            DType::I8 => |b| f32::from(i8::from_le_bytes(le(b))),
            DType::U8 => |b| f32::from(u8::from_le_bytes(le(b))),
            DType::Bool => |b| if le::<1>(b) == [0] { 0.0 } else { 1.0 },
            DType::U16 => |b| f32::from(u16::from_le_bytes(le(b))),
            DType::U32 => |b| u32::from_le_bytes(le(b)) as f32,
            DType::U64 => |b| u64::from_le_bytes(le(b)) as f32,
            DType::F8E4M3 => |b| f8e4m3fn_to_f32(le::<1>(b)[0]),
            // e5m2 is the top byte of an IEEE half.
            DType::F8E5M2 => |b| crate::io::f16_to_f32(u16::from(le::<1>(b)[0]) << 8),
            DType::Complex64 | DType::Complex128 => return None,
        };
        Some(convert)
    }
}

/// The first N bytes as an array; callers pass exactly N (chunks of `DType::size`).
fn le<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes
        .get(..N)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; N])
}

/// float8 e4m3fn: bias 7, no infinities, S.1111.111 is NaN.
fn f8e4m3fn_to_f32(bits: u8) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 3) & 0xf);
    let mantissa = f32::from(bits & 0x7);
    match exp {
        0 => sign * mantissa * (2f32).powi(-9),
        15 if bits & 0x7 == 7 => f32::NAN,
        _ => sign * (1.0 + mantissa / 8.0) * (2f32).powi(exp - 7),
    }
}

fn supported_dtypes() -> String {
    let names: Vec<&str> = DTYPES
        .iter()
        .filter(|d| d.0.converter().is_some())
        .map(|d| d.1)
        .collect();
    names.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Pickle values

/// Nesting deeper than this is refused: torch.save never nests more than a few levels, and a
/// bound keeps the recursive drop of a hostile, deeply nested pickle off the end of the stack.
const MAX_DEPTH: usize = 64;

/// Elements copied by copy-on-write of shared containers before the pickle is refused, so a
/// memo-then-mutate loop cannot make parsing quadratic.
const COPY_BUDGET: usize = 1 << 24;

/// A view may repeat its storage (stride 0, as `expand` saves) up to this many elements.
const MAX_REPEATED_ELEMENTS: usize = 1 << 24;

/// All tensors together may hold this many elements per stored byte (plus
/// `MAX_REPEATED_ELEMENTS`), so views cannot turn a small file into unbounded memory.
const MAX_VIEW_AMPLIFICATION: usize = 8;

/// The pickle objects a state_dict is made of. Containers are shared (`Rc`) and copied on
/// write, so memo lookups are cheap and no object can contain itself. Bools, floats and bytes
/// only ever appear in arguments that are ignored (requires_grad, hooks, metadata), so only
/// their type is kept, for messages.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Items>),
    List(Rc<Items>),
    Dict(Rc<Entries>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorView>),
}

#[derive(Clone, Debug)]
struct Items {
    values: Vec<Value>,
    depth: usize,
}

#[derive(Clone, Debug)]
struct Entries {
    /// In insertion order, duplicates included: later pairs win, as in Python.
    pairs: Vec<(Value, Value)>,
    depth: usize,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Containers nest 1 + their deepest element; everything else is a leaf.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(items) | Value::List(items) => items.depth,
            Value::Dict(entries) => entries.depth,
            _ => 0,
        }
    }
}

fn nest(depth: usize, child: &Value) -> std::result::Result<usize, String> {
    let depth = depth.max(child.depth() + 1);
    if depth > MAX_DEPTH {
        return Err(format!(
            "containers nest deeper than {MAX_DEPTH} levels, which no state_dict does"
        ));
    }
    Ok(depth)
}

fn items(values: Vec<Value>) -> std::result::Result<Rc<Items>, String> {
    let mut depth = 1;
    for value in &values {
        depth = nest(depth, value)?;
    }
    Ok(Rc::new(Items { values, depth }))
}

/// The globals a state_dict pickle may name; everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    /// Used for dtypes without a legacy storage class (uint16, float8, ...).
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends: name a storage's dtype inside a persistent id.
    StorageClass(DType),
    /// Raw bytes; the tensor's dtype comes as a separate `torch.<dtype>` argument.
    UntypedStorage,
    Dtype(DType),
}

const ALLOWED_GLOBALS: &str = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, \
    torch._utils._rebuild_tensor_v3, torch._utils._rebuild_parameter, \
    torch._utils._rebuild_parameter_with_state, torch.storage.UntypedStorage, \
    the storage classes torch.FloatStorage, torch.HalfStorage, ... and the dtypes \
    torch.float32, torch.bfloat16, ...";

impl Global {
    fn resolve(module: &str, name: &str) -> std::result::Result<Self, String> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch._utils", "_rebuild_parameter_with_state") => {
                Some(Global::RebuildParameterWithState)
            }
            ("torch.storage" | "torch", "UntypedStorage") => Some(Global::UntypedStorage),
            ("torch", name) => DType::from_storage_class(name)
                .map(Global::StorageClass)
                .or_else(|| DType::from_name(name).map(Global::Dtype)),
            _ => None,
        };
        global.ok_or_else(|| {
            format!(
                "refusing to load: the pickle calls {module}.{name}, which is not a tensor \
                 constructor (allowed: {ALLOWED_GLOBALS}); unpickling this file with Python \
                 would run it"
            )
        })
    }

    fn qualified_name(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".into()
            }
            Global::StorageClass(dtype) => format!("the {} storage class", dtype.name()),
            Global::UntypedStorage => "torch.storage.UntypedStorage".into(),
            Global::Dtype(dtype) => format!("torch.{}", dtype.name()),
        }
    }
}

/// A persistent id `('storage', storage_type, key, location, numel)`: the bytes live in the
/// zip entry `data/<key>`.
#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: DType,
}

/// A tensor as the pickle describes it: a strided view into a storage, not yet read.
#[derive(Debug)]
struct TensorView {
    storage: Rc<StorageRef>,
    dtype: DType,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

/// Interprets pickle opcodes without executing anything: allow-listed globals are data, and
/// "calling" one builds a `Value` by the rules of the matching torch function.
struct Unpickler<'a> {
    data: &'a [u8],
    /// Entry name, for error messages.
    name: &'a str,
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copies_left: usize,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], name: &'a str) -> Self {
        Unpickler {
            data,
            name,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copies_left: COPY_BUDGET,
        }
    }

    /// Runs to STOP and returns the pickled object.
    fn run(mut self) -> Step<Value> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(at) else {
                return Err(format!(
                    "{} is truncated: it ends at byte {at} without a STOP opcode",
                    self.name
                ));
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(msg) => {
                    return Err(format!(
                        "{msg} (opcode {} at byte {at} of {})",
                        opcode_name(op),
                        self.name
                    ))
                }
            }
        }
    }

    /// Executes one opcode; `Some` at STOP.
    fn step(&mut self, op: u8) -> Step<Option<Value>> {
        match op {
            0x80 => {
                let protocol = self.read_u8()?;
                if protocol > 5 {
                    return Err(format!("pickle protocol {protocol} is not supported"));
                }
            }
            0x95 => {
                self.read_u64()?; // FRAME: a length hint for buffered readers
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.marks.push(self.stack.len()),
            b'}' => self.stack.push(Value::Dict(Rc::new(Entries {
                pairs: Vec::new(),
                depth: 1,
            }))),
            b']' => self.stack.push(Value::List(items(Vec::new())?)),
            b')' => self.stack.push(Value::Tuple(items(Vec::new())?)),
            b't' => {
                let values = self.pop_mark()?;
                self.stack.push(Value::Tuple(items(values)?));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let floor = self.marks.last().copied().unwrap_or(0);
                let split = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .filter(|&split| split >= floor)
                    .ok_or("the stack (above the last MARK) has too few items for this tuple")?;
                let values = self.stack.split_off(split);
                self.stack.push(Value::Tuple(items(values)?));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.read_array()?);
                self.stack.push(Value::Int(i64::from(v)));
            }
            b'K' => {
                let v = self.read_u8()?;
                self.stack.push(Value::Int(i64::from(v)));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.read_array()?);
                self.stack.push(Value::Int(i64::from(v)));
            }
            0x8a => {
                let n = usize::from(self.read_u8()?);
                let bytes = self.read_bytes(n)?;
                self.stack.push(Value::Int(long_from_le(bytes)?));
            }
            b'G' => {
                self.read_bytes(8)?;
                self.stack.push(Value::Float);
            }
            b'N' => self.stack.push(Value::None),
            0x88 | 0x89 => self.stack.push(Value::Bool),
            b'X' => {
                let n = u64::from(u32::from_le_bytes(self.read_array()?));
                self.push_str(n)?;
            }
            0x8c => {
                let n = u64::from(self.read_u8()?);
                self.push_str(n)?;
            }
            0x8d => {
                let n = self.read_u64()?;
                self.push_str(n)?;
            }
            b'C' => {
                let n = u64::from(self.read_u8()?);
                self.push_bytes(n)?;
            }
            b'B' => {
                let n = u64::from(u32::from_le_bytes(self.read_array()?));
                self.push_bytes(n)?;
            }
            0x8e => {
                let n = self.read_u64()?;
                self.push_bytes(n)?;
            }
            b'c' => {
                let module = self.read_line()?;
                let name = self.read_line()?;
                self.stack
                    .push(Value::Global(Global::resolve(module, name)?));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err(format!(
                        "STACK_GLOBAL needs two str, got {} and {}",
                        module.kind(),
                        name.kind()
                    ));
                };
                self.stack
                    .push(Value::Global(Global::resolve(module, name)?));
            }
            b'q' => {
                let slot = u32::from(self.read_u8()?);
                self.memoize(slot)?;
            }
            b'r' => {
                let slot = u32::from_le_bytes(self.read_array()?);
                self.memoize(slot)?;
            }
            0x94 => {
                let slot = u32::try_from(self.memo.len()).map_err(|_| "memo is full")?;
                self.memoize(slot)?;
            }
            b'h' => {
                let slot = u32::from(self.read_u8()?);
                self.recall(slot)?;
            }
            b'j' => {
                let slot = u32::from_le_bytes(self.read_array()?);
                self.recall(slot)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.extend_dict(vec![(key, value)])?;
            }
            b'u' => {
                let flat = self.pop_mark()?;
                if flat.len() % 2 != 0 {
                    return Err(format!(
                        "SETITEMS got an odd number ({}) of items",
                        flat.len()
                    ));
                }
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
                    pairs.push((key, value));
                }
                self.extend_dict(pairs)?;
            }
            b'a' => {
                let value = self.pop()?;
                self.extend_list(vec![value])?;
            }
            b'e' => {
                let values = self.pop_mark()?;
                self.extend_list(values)?;
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.stack.last().ok_or("BUILD on an empty stack")?;
                // torch.save sets `_metadata` (module versions) on the OrderedDict; a tensor's
                // state is hooks/attributes. Neither changes the weights, so both are dropped.
                if !matches!(target, Value::Dict(_) | Value::Tensor(_)) {
                    return Err(format!(
                        "BUILD sets {} state on a {}; torch.save only does that to dicts",
                        state.kind(),
                        target.kind()
                    ));
                }
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let (Value::Global(func), Value::Tuple(args)) = (&func, &args) else {
                    return Err(format!(
                        "REDUCE calls a {} with a {}; only allow-listed globals may be called \
                         with a tuple",
                        func.kind(),
                        args.kind()
                    ));
                };
                let result = call(*func, &args.values)?;
                self.stack.push(result);
            }
            b'Q' => {
                let pid = self.pop()?;
                self.stack.push(persistent_load(&pid)?);
            }
            0x81 => {
                let args = self.pop()?;
                let class = self.pop()?;
                match (&class, &args) {
                    (Value::Global(Global::OrderedDict), Value::Tuple(t))
                        if t.values.is_empty() =>
                    {
                        self.stack.push(Value::Dict(Rc::new(Entries {
                            pairs: Vec::new(),
                            depth: 1,
                        })))
                    }
                    (Value::Global(g), _) => {
                        return Err(format!(
                            "NEWOBJ of {} is not allowed: torch.save never creates it that way",
                            g.qualified_name()
                        ))
                    }
                    _ => return Err(format!("NEWOBJ of a {}", class.kind())),
                }
            }
            _ => {
                return Err(
                    "unsupported pickle opcode: a torch.save state_dict uses only the \
                     protocol-2 opcodes that build dicts, tuples, ints, strings and tensors"
                        .into(),
                )
            }
        }
        Ok(None)
    }

    fn read_bytes(&mut self, n: usize) -> Step<&'a [u8]> {
        let data = self.data;
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
            .ok_or_else(|| {
                format!(
                    "{} is truncated: the opcode needs {n} more bytes, {} are left",
                    self.name,
                    data.len().saturating_sub(self.pos)
                )
            })?;
        self.pos += n;
        Ok(bytes)
    }

    fn read_array<const N: usize>(&mut self) -> Step<[u8; N]> {
        Ok(le(self.read_bytes(N)?))
    }

    fn read_u8(&mut self) -> Step<u8> {
        Ok(self.read_array::<1>()?[0])
    }

    fn read_u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(self.read_array()?))
    }

    /// A length read from the file, usable only if that many bytes are really there.
    fn read_sized(&mut self, n: u64) -> Step<&'a [u8]> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.read_bytes(n)
    }

    /// GLOBAL's newline-terminated module or name.
    fn read_line(&mut self) -> Step<&'a str> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("{} is truncated inside a GLOBAL name", self.name))?;
        let line = self.read_bytes(len)?;
        self.pos += 1; // the newline
        std::str::from_utf8(line).map_err(|_| "GLOBAL name is not UTF-8".into())
    }

    fn push_str(&mut self, n: u64) -> Step<()> {
        let bytes = self.read_sized(n)?;
        let text = std::str::from_utf8(bytes).map_err(|e| format!("string is not UTF-8: {e}"))?;
        self.stack.push(Value::Str(Rc::from(text)));
        Ok(())
    }

    fn push_bytes(&mut self, n: u64) -> Step<()> {
        self.read_sized(n)?;
        self.stack.push(Value::Bytes);
        Ok(())
    }

    fn pop(&mut self) -> Step<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(
                "the opcode needs a value but the stack (above the last MARK) is empty".into(),
            );
        }
        self.stack.pop().ok_or_else(|| "the stack is empty".into())
    }

    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK before this opcode")?;
        if mark > self.stack.len() {
            return Err("MARK points above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn memoize(&mut self, slot: u32) -> Step<()> {
        let top = self.stack.last().ok_or("memoizing from an empty stack")?;
        self.memo.insert(slot, top.clone());
        Ok(())
    }

    fn recall(&mut self, slot: u32) -> Step<()> {
        let value = self
            .memo
            .get(&slot)
            .ok_or_else(|| format!("memo slot {slot} is read before it is written"))?;
        self.stack.push(value.clone());
        Ok(())
    }

    /// Charges the copy a copy-on-write of a shared container makes.
    fn charge_copy(copies_left: &mut usize, len: usize) -> Step<()> {
        *copies_left = copies_left.checked_sub(len).ok_or(
            "the pickle mutates memoized containers over and over, which torch.save never does",
        )?;
        Ok(())
    }

    fn extend_dict(&mut self, pairs: Vec<(Value, Value)>) -> Step<()> {
        let top = self.stack.last_mut().ok_or("SETITEM on an empty stack")?;
        let Value::Dict(dict) = top else {
            return Err(format!("SETITEM on a {}, which is not a dict", top.kind()));
        };
        if Rc::strong_count(dict) > 1 {
            Self::charge_copy(&mut self.copies_left, dict.pairs.len())?;
        }
        let dict = Rc::make_mut(dict);
        for (key, value) in pairs {
            dict.depth = nest(nest(dict.depth, &key)?, &value)?;
            dict.pairs.push((key, value));
        }
        Ok(())
    }

    fn extend_list(&mut self, values: Vec<Value>) -> Step<()> {
        let top = self.stack.last_mut().ok_or("APPEND on an empty stack")?;
        let Value::List(list) = top else {
            return Err(format!("APPEND on a {}, which is not a list", top.kind()));
        };
        if Rc::strong_count(list) > 1 {
            Self::charge_copy(&mut self.copies_left, list.values.len())?;
        }
        let list = Rc::make_mut(list);
        for value in values {
            list.depth = nest(list.depth, &value)?;
            list.values.push(value);
        }
        Ok(())
    }
}

/// LONG1's little-endian two's-complement bytes; torch's ints (sizes, numels) fit in i64.
fn long_from_le(bytes: &[u8]) -> Step<i64> {
    if bytes.len() > 8 {
        return Err(format!(
            "a {}-byte integer is too large for a tensor size",
            bytes.len()
        ));
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut full = if negative { [0xff; 8] } else { [0; 8] };
    for (slot, byte) in full.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    Ok(i64::from_le_bytes(full))
}

fn opcode_name(op: u8) -> String {
    let name = match op {
        0x80 => "PROTO",
        0x95 => "FRAME",
        b'.' => "STOP",
        b'(' => "MARK",
        b'}' => "EMPTY_DICT",
        b']' => "EMPTY_LIST",
        b')' => "EMPTY_TUPLE",
        b't' => "TUPLE",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'M' => "BININT2",
        0x8a => "LONG1",
        b'G' => "BINFLOAT",
        b'N' => "NONE",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        b'X' => "BINUNICODE",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        b'C' => "SHORT_BINBYTES",
        b'B' => "BINBYTES",
        0x8e => "BINBYTES8",
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        0x94 => "MEMOIZE",
        b'h' => "BINGET",
        b'j' => "LONG_BINGET",
        b's' => "SETITEM",
        b'u' => "SETITEMS",
        b'a' => "APPEND",
        b'e' => "APPENDS",
        b'b' => "BUILD",
        b'R' => "REDUCE",
        b'Q' => "BINPERSID",
        0x81 => "NEWOBJ",
        _ if op.is_ascii_graphic() => return format!("0x{op:02x} ({:?})", char::from(op)),
        _ => return format!("0x{op:02x}"),
    };
    format!("0x{op:02x} {name}")
}

/// "Calls" an allow-listed global by building the value the torch function would return.
fn call(func: Global, args: &[Value]) -> Step<Value> {
    match func {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Rc::new(Entries {
            pairs: Vec::new(),
            depth: 1,
        }))),
        Global::OrderedDict => Err(format!(
            "collections.OrderedDict is called with {} arguments; torch.save calls it with none",
            args.len()
        )),
        Global::RebuildTensorV2 => rebuild_tensor(args, false),
        Global::RebuildTensorV3 => rebuild_tensor(args, true),
        // (data, requires_grad, backward_hooks[, state]): a Parameter is its data for us.
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            let arity = if func == Global::RebuildParameter {
                3
            } else {
                4
            };
            match args {
                [Value::Tensor(t), ..] if args.len() == arity => Ok(Value::Tensor(t.clone())),
                _ => Err(format!(
                    "{} expects (tensor, requires_grad, hooks{}), got {}",
                    func.qualified_name(),
                    if arity == 4 { ", state" } else { "" },
                    describe_args(args)
                )),
            }
        }
        Global::StorageClass(_) | Global::UntypedStorage | Global::Dtype(_) => Err(format!(
            "{} is called; torch.save only uses it as a name",
            func.qualified_name()
        )),
    }
}

fn describe_args(args: &[Value]) -> String {
    let kinds: Vec<&str> = args.iter().map(Value::kind).collect();
    format!("({})", kinds.join(", "))
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
/// [, metadata])`, or v3 with a dtype after the hooks (the storage is then untyped bytes).
fn rebuild_tensor(args: &[Value], v3: bool) -> Step<Value> {
    let name = if v3 {
        Global::RebuildTensorV3
    } else {
        Global::RebuildTensorV2
    }
    .qualified_name();
    let arity = if v3 { 7..=8 } else { 6..=7 };
    let (storage, offset, size, stride, dtype) = match args {
        [Value::Storage(s), offset, size, stride, _, _, rest @ ..]
            if arity.contains(&args.len()) =>
        {
            let dtype = match (v3, rest.first()) {
                (false, _) => s.dtype,
                (true, Some(Value::Global(Global::Dtype(d)))) => *d,
                (true, other) => {
                    return Err(format!(
                        "{name} expects a torch dtype after the hooks, got {}",
                        other.map_or("nothing", Value::kind)
                    ))
                }
            };
            (s, offset, size, stride, dtype)
        }
        _ => {
            return Err(format!(
                "{name} expects (storage, storage_offset, size, stride, requires_grad, \
                 backward_hooks{}[, metadata]), got {}",
                if v3 { ", dtype" } else { "" },
                describe_args(args)
            ))
        }
    };
    let offset = match offset {
        Value::Int(v) => usize::try_from(*v).ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{name}: storage_offset must be an int ≥ 0"))?;
    let shape = sizes(size).ok_or_else(|| format!("{name}: size must be a tuple of ints ≥ 0"))?;
    let strides =
        sizes(stride).ok_or_else(|| format!("{name}: stride must be a tuple of ints ≥ 0"))?;
    if shape.len() != strides.len() {
        return Err(format!(
            "{name}: size {shape:?} and stride {strides:?} have different lengths"
        ));
    }
    Ok(Value::Tensor(Rc::new(TensorView {
        storage: storage.clone(),
        dtype,
        offset,
        shape,
        strides,
    })))
}

fn sizes(value: &Value) -> Option<Vec<usize>> {
    let Value::Tuple(items) = value else {
        return None;
    };
    items
        .values
        .iter()
        .map(|v| match v {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        })
        .collect()
}

/// BINPERSID: `('storage', storage_type, key, location, numel)` → a reference to `data/<key>`.
fn persistent_load(pid: &Value) -> Step<Value> {
    let shape = "a ('storage', storage_type, key, location, numel) tuple";
    let Value::Tuple(fields) = pid else {
        return Err(format!(
            "persistent id is a {}, expected {shape}",
            pid.kind()
        ));
    };
    match fields.values.as_slice() {
        [Value::Str(tag), Value::Global(kind), Value::Str(key), _location, Value::Int(numel)]
            if &**tag == "storage" && *numel >= 0 =>
        {
            let dtype = match kind {
                Global::StorageClass(dtype) => *dtype,
                Global::UntypedStorage => DType::U8,
                other => {
                    return Err(format!(
                        "persistent id names {} as its storage type",
                        other.qualified_name()
                    ))
                }
            };
            Ok(Value::Storage(Rc::new(StorageRef {
                key: key.to_string(),
                dtype,
            })))
        }
        other => Err(format!(
            "persistent id is {}, expected {shape}",
            describe_args(other)
        )),
    }
}

/// The top-level dict as name → tensor view, or why it is not a state_dict.
fn state_dict_views(root: Value) -> Step<BTreeMap<String, Rc<TensorView>>> {
    let Value::Dict(entries) = root else {
        return Err(format!(
            "the file holds a {}, not a dict of name → tensor; save model.state_dict()",
            root.kind()
        ));
    };
    // Later duplicates win, as in the Python dict the pickle describes.
    let mut by_name = BTreeMap::new();
    for (key, value) in &entries.pairs {
        let Value::Str(name) = key else {
            return Err(format!(
                "the top-level dict has a {} key; a state_dict maps str names to tensors",
                key.kind()
            ));
        };
        by_name.insert(name.to_string(), value);
    }
    let others: Vec<String> = by_name
        .iter()
        .filter(|(_, value)| !matches!(value, Value::Tensor(_)))
        .map(|(name, value)| format!("{name:?}: {}", value.kind()))
        .collect();
    if !others.is_empty() {
        let what = if others.len() == by_name.len() {
            "a dict of non-tensors"
        } else {
            "a dict that mixes tensors with non-tensors"
        };
        let more = match others.len() {
            0..=5 => String::new(),
            n => format!(", and {} more", n - 5),
        };
        let listed = others
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "the file holds {what} ({listed}{more}), not a state_dict (a dict of name → \
             tensor); if it is a training checkpoint, save the weights alone with \
             torch.save(model.state_dict(), path)"
        ));
    }
    Ok(by_name
        .into_iter()
        .filter_map(|(name, value)| match value {
            Value::Tensor(t) => Some((name, t.clone())),
            _ => None,
        })
        .collect())
}

/// Copies a strided view of `bytes` (the storage entry `entry`) into a contiguous f32 tensor,
/// after checking that every element it addresses is really in the storage.
fn materialize(view: &TensorView, entry: &str, bytes: &[u8]) -> Step<Tensor> {
    let convert = view.dtype.converter().ok_or_else(|| {
        format!(
            "unsupported dtype {} (supported: {})",
            view.dtype.name(),
            supported_dtypes()
        )
    })?;
    let element_size = view.dtype.size();
    let TensorView {
        offset,
        shape,
        strides,
        ..
    } = view;
    let too_big = || {
        format!(
            "storage {entry} holds {} bytes, but shape {shape:?} with strides {strides:?} \
             addresses more elements than fit in memory",
            bytes.len()
        )
    };
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(too_big)?;
    // One past the highest element the view touches.
    let end = if numel == 0 {
        0
    } else {
        shape
            .iter()
            .zip(strides)
            .try_fold(
                offset.checked_add(1).ok_or_else(too_big)?,
                |end, (&d, &s)| end.checked_add((d - 1).checked_mul(s)?),
            )
            .ok_or_else(too_big)?
    };
    let needed = end.checked_mul(element_size).ok_or_else(too_big)?;
    if needed > bytes.len() {
        return Err(format!(
            "storage {entry} holds {} bytes, the tensor needs {needed} ({} × {} bytes for \
             shape {shape:?}, strides {strides:?}, storage offset {offset})",
            bytes.len(),
            end,
            element_size
        ));
    }
    if numel == 0 {
        return Ok(Tensor {
            shape: shape.clone(),
            data: Vec::new(),
        });
    }
    let storage_elements = bytes.len() / element_size;
    if numel > storage_elements.max(MAX_REPEATED_ELEMENTS) {
        return Err(format!(
            "shape {shape:?} with strides {strides:?} repeats the {storage_elements} elements \
             of storage {entry} into {numel}; refusing to expand a view beyond \
             {MAX_REPEATED_ELEMENTS} elements"
        ));
    }
    let element = |index: usize| {
        let start = index * element_size;
        bytes
            .get(start..start + element_size)
            .map_or(f32::NAN, convert)
    };

    let mut contiguous_stride = 1;
    let mut contiguous = true;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        contiguous &= d == 1 || s == contiguous_stride;
        contiguous_stride *= d;
    }
    let data: Vec<f32> = if contiguous {
        let start = offset * element_size;
        bytes
            .get(start..start + numel * element_size)
            .unwrap_or_default()
            .chunks_exact(element_size)
            .map(convert)
            .collect()
    } else {
        // Row-major walk: an odometer over the indices, tracking the storage position.
        let mut data = Vec::with_capacity(numel);
        let mut index = vec![0usize; shape.len()];
        let mut position = *offset;
        for _ in 0..numel {
            data.push(element(position));
            // Wrapping: a size-1 dimension may carry any stride, and the true position
            // always lands back inside the checked range.
            for ((i, &d), &s) in index.iter_mut().zip(shape).zip(strides).rev() {
                *i += 1;
                position = position.wrapping_add(s);
                if *i < d {
                    break;
                }
                position = position.wrapping_sub(s.wrapping_mul(d));
                *i = 0;
            }
        }
        data
    };
    Ok(Tensor {
        shape: shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::TensorFile;
    use std::io::Write;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pickle/"
        ))
        .join(name)
    }

    fn reference() -> TensorFile {
        TensorFile::load(&fixture("reference.safetensors")).unwrap()
    }

    fn load_err(name: &str) -> String {
        match load_state_dict(&fixture(name)) {
            Ok(sd) => panic!("{name} loaded: {:?}", sd.dtypes),
            Err(e) => e.to_string(),
        }
    }

    fn assert_contains(msg: &str, words: &[&str]) {
        for word in words {
            assert!(msg.contains(word), "{word:?} not in: {msg}");
        }
    }

    /// Every tensor equals the reference `<group>/<name>` bit for bit.
    fn assert_matches_reference(sd: &StateDict, group: &str, names: &[&str]) {
        let refs = reference();
        let mut keys: Vec<&str> = sd.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = names.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        for (name, tensor) in &sd.tensors {
            let want = refs.get(&format!("{group}/{name}")).unwrap();
            assert_eq!(tensor.shape, want.shape, "{name}");
            let got: Vec<u32> = tensor.data.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = want.data.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    const TINY: &[&str] = &[
        "emb.weight",
        "fc.weight",
        "fc.bias",
        "norm.weight",
        "norm.bias",
    ];

    #[test]
    fn float32_state_dict_matches_reference() {
        let sd = load_state_dict(&fixture("tiny_f32.pt")).unwrap();
        assert_matches_reference(&sd, "f32", TINY);
        assert_eq!(sd.tensors["emb.weight"].shape, vec![5, 4]);
        assert_eq!(sd.tensors["fc.weight"].shape, vec![3, 4]);
        assert_eq!(sd.tensors["norm.bias"].shape, vec![3]);
        assert!(sd.dtypes.values().all(|d| d == "float32"));
        assert_eq!(sd.dtypes.len(), TINY.len());
    }

    #[test]
    fn half_precision_state_dicts_convert_exactly() {
        for (file, group, dtype) in [
            ("tiny_f16.pt", "f16", "float16"),
            ("tiny_bf16.pt", "bf16", "bfloat16"),
        ] {
            let sd = load_state_dict(&fixture(file)).unwrap();
            assert_matches_reference(&sd, group, TINY);
            assert!(sd.dtypes.values().all(|d| d == dtype), "{file}");
        }
    }

    #[test]
    fn strided_views_and_storage_offsets_are_gathered() {
        let sd = load_state_dict(&fixture("views.pt")).unwrap();
        assert_matches_reference(
            &sd,
            "views",
            &["base", "transposed", "slice", "row", "expanded"],
        );
        assert_eq!(sd.tensors["transposed"].shape, vec![4, 3]);
        assert_eq!(sd.tensors["slice"].shape, vec![2, 2]);
        assert_eq!(sd.tensors["slice"].data, vec![1.5, 2.0, 3.5, 4.0]);
        assert_eq!(sd.tensors["expanded"].shape, vec![2, 3]);
    }

    #[test]
    fn every_dtype_converts_and_is_reported() {
        let sd = load_state_dict(&fixture("dtypes.pt")).unwrap();
        let names = [
            "float64", "int64", "int32", "int16", "int8", "uint8", "bool", "uint16", "scalar",
            "param",
        ];
        assert_matches_reference(&sd, "dtypes", &names);
        for name in &names[..8] {
            assert_eq!(sd.dtypes[*name], *name);
        }
        assert_eq!(sd.dtypes["scalar"], "float32");
        assert_eq!(sd.dtypes["param"], "float32");
        assert_eq!(sd.tensors["scalar"].shape, Vec::<usize>::new());
        assert_eq!(sd.tensors["scalar"].data, vec![2.75]);
        assert_eq!(sd.tensors["int64"].data[0], -(2f32.powi(40)));
    }

    /// The marker file a malicious fixture's command would create.
    fn assert_refused_without_running(file: &str, global: &str, marker: &str) {
        let _ = std::fs::remove_file(marker);
        let msg = load_err(file);
        assert_contains(
            &msg,
            &["refusing to load", global, "not a tensor constructor"],
        );
        assert!(!Path::new(marker).exists(), "{marker} was created");
    }

    #[test]
    fn malicious_globals_are_refused() {
        assert_refused_without_running(
            "evil_os_system.pt",
            "os.system",
            "/tmp/largo-torch-pickle-marker-os-system-5b1e",
        );
        assert_refused_without_running(
            "evil_eval.pt",
            "builtins.eval",
            "/tmp/largo-torch-pickle-marker-eval-5b1e",
        );
        // A real torch.save whose dict also holds an object reducing to os.system.
        assert_refused_without_running(
            "evil_in_state_dict.pt",
            "posix.system",
            "/tmp/largo-torch-pickle-marker-state-dict-5b1e",
        );
    }

    #[test]
    fn other_dangerous_globals_are_refused_by_name() {
        for (module, name) in [
            ("__builtin__", "getattr"),
            ("subprocess", "Popen"),
            ("torch", "load"),
            ("torch._tensor", "_rebuild_from_type_v2"),
            ("numpy.core.multiarray", "_reconstruct"),
        ] {
            let mut pickle = b"\x80\x02c".to_vec();
            pickle.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            pickle.extend_from_slice(b")R.");
            let msg = Unpickler::new(&pickle, "archive/data.pkl")
                .run()
                .unwrap_err();
            assert_contains(&msg, &["refusing to load", &format!("{module}.{name}")]);
        }
    }

    #[test]
    fn checkpoint_dict_is_explained() {
        let msg = load_err("checkpoint.pt");
        assert_contains(
            &msg,
            &[
                "dict of non-tensors",
                "\"model\": dict",
                "\"step\": int",
                "model.state_dict()",
            ],
        );
    }

    #[test]
    fn short_storage_names_tensor_and_sizes() {
        let msg = load_err("short_storage.pt");
        assert_contains(
            &msg,
            &[
                "tensor fc.weight",
                "storage tiny_f32/data/1",
                "holds 8 bytes",
                "needs 48",
            ],
        );
    }

    #[test]
    fn unusable_files_say_what_they_are() {
        assert_contains(&load_err("big_endian.pt"), &["big-endian"]);
        assert_contains(
            &load_err("legacy.pt"),
            &["not a PyTorch zip checkpoint", "legacy format", "re-save"],
        );
        assert_contains(
            &load_err("not_a_zip.pt"),
            &["not a PyTorch zip checkpoint", "starts with 74 68 69 73"],
        );
        assert_contains(&load_err("truncated.pt"), &["truncated or corrupt zip"]);
        let missing = load_state_dict(&fixture("no_such_file.pt")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing}");
    }

    fn data_pkl(file: &str) -> Vec<u8> {
        let f = std::fs::File::open(fixture(file)).unwrap();
        let mut archive = zip::ZipArchive::new(f).unwrap();
        let name = find_data_pkl(&archive).unwrap();
        read_entry(&mut archive, &name).unwrap()
    }

    #[test]
    fn truncated_and_corrupted_pickles_fail_without_panicking() {
        for file in ["tiny_f32.pt", "views.pt", "dtypes.pt", "checkpoint.pt"] {
            let pickle = data_pkl(file);
            assert!(Unpickler::new(&pickle, "p").run().is_ok());
            for len in 0..pickle.len() {
                let msg = Unpickler::new(&pickle[..len], "p").run().unwrap_err();
                assert!(!msg.is_empty());
            }
            // Random byte changes: any outcome but a panic is fine.
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for _ in 0..3000 {
                let mut bad = pickle.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % bad.len() as u64) as usize;
                    bad[at] = next() as u8;
                }
                if let Ok(root) = Unpickler::new(&bad, "p").run() {
                    let _ = state_dict_views(root);
                }
            }
        }
    }

    #[test]
    fn unsupported_opcodes_and_hostile_structures_are_refused() {
        let run = |p: &[u8]| Unpickler::new(p, "archive/data.pkl").run().unwrap_err();
        // INT (text protocol 0) is not something torch.save writes.
        assert_contains(
            &run(b"\x80\x02I1\n."),
            &["unsupported pickle opcode", "0x49", "byte 2"],
        );
        assert_contains(&run(b"\x80\x02X\xff\xff\xff\xffab."), &["truncated"]);
        assert_contains(&run(b"\x80\x02K\x01"), &["without a STOP"]);
        assert_contains(&run(b"\x80\x02h\x07."), &["memo slot 7"]);
        assert_contains(&run(b"\x80\x02s."), &["stack"]);
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b"]q\x00", 100).flatten());
        deep.extend(std::iter::repeat_n(b'a', 99));
        deep.push(b'.');
        assert_contains(&run(&deep), &["nest deeper"]);
        // Doubling a tuple through the memo: shared, so memory stays linear until the depth cap.
        let mut laughs = b"\x80\x02]q\x00".to_vec();
        for _ in 0..80 {
            laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        laughs.push(b'.');
        assert_contains(&run(&laughs), &["nest deeper"]);
        let top_int = Unpickler::new(b"\x80\x02K\x05.", "p").run().unwrap();
        assert_contains(
            &state_dict_views(top_int).unwrap_err(),
            &["holds a int", "model.state_dict()"],
        );
    }

    #[test]
    fn float8_conversions() {
        assert_eq!(f8e4m3fn_to_f32(0x38), 1.0);
        assert_eq!(f8e4m3fn_to_f32(0x7e), 448.0);
        assert_eq!(f8e4m3fn_to_f32(0xb8), -1.0);
        assert_eq!(f8e4m3fn_to_f32(0x01), 2f32.powi(-9));
        assert!(f8e4m3fn_to_f32(0x7f).is_nan());
        let e5m2 = DType::F8E5M2.converter().unwrap();
        assert_eq!(e5m2(&[0x3c]), 1.0);
        assert_eq!(long_from_le(&[0xff]).unwrap(), -1);
        assert_eq!(long_from_le(&[0x00, 0x01]).unwrap(), 256);
        assert_eq!(long_from_le(&[]).unwrap(), 0);
    }

    /// A view for `views_file`: name, storage offset, size, stride.
    type ViewSpec<'a> = (&'a str, i64, &'a [i64], &'a [i64]);

    /// A zip with torch's layout whose tensors, built from raw opcodes, all view one storage.
    fn views_file(dir: &Path, storage_class: &str, views: &[ViewSpec], storage: &[u8]) -> PathBuf {
        let long = |v: i64| {
            let mut b = vec![0x8a, 8];
            b.extend_from_slice(&v.to_le_bytes());
            b
        };
        let tuple = |vals: &[i64]| {
            let mut b = vec![b'('];
            vals.iter().for_each(|&v| b.extend(long(v)));
            b.push(b't');
            b
        };
        let mut p = b"\x80\x02}(".to_vec();
        for (name, offset, size, stride) in views {
            p.push(b'X');
            p.extend_from_slice(&(name.len() as u32).to_le_bytes());
            p.extend_from_slice(name.as_bytes());
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            p.extend_from_slice(b"X\x07\x00\x00\x00storagectorch\n");
            p.extend_from_slice(storage_class.as_bytes());
            p.extend_from_slice(b"\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ");
            p.extend(long(*offset));
            p.extend(tuple(size));
            p.extend(tuple(stride));
            p.extend_from_slice(b"\x89}tR");
        }
        p.extend_from_slice(b"u.");
        let path = dir.join("views.pt");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in [("views/data.pkl", p.as_slice()), ("views/data/0", storage)] {
            zip.start_file(name, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn hostile_sizes_are_checked_against_the_storage() {
        let dir = tempfile::tempdir().unwrap();
        let floats: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let load = |class: &str, offset, size: &[i64], stride: &[i64]| {
            let path = views_file(dir.path(), class, &[("t", offset, size, stride)], &floats);
            load_state_dict(&path)
        };
        let t = load("FloatStorage", 1, &[2, 2], &[1, 2]).unwrap();
        assert_eq!(t.tensors["t"].data, vec![2., 4., 3., 5.]);
        let msg = |r: Result<StateDict>| r.unwrap_err().to_string();
        assert_contains(
            &msg(load("FloatStorage", 0, &[1 << 40, 1 << 40], &[1, 1])),
            &["tensor t", "more elements than fit"],
        );
        assert_contains(
            &msg(load("FloatStorage", 3, &[2, 2], &[2, 1])),
            &["holds 24 bytes", "needs 28"],
        );
        assert_contains(
            &msg(load("FloatStorage", 0, &[1 << 40], &[0])),
            &["refusing to expand"],
        );
        assert_contains(
            &msg(load("FloatStorage", 0, &[2], &[-1])),
            &["stride must be a tuple of ints"],
        );
        assert_contains(
            &msg(load("ComplexFloatStorage", 0, &[1], &[1])),
            &["unsupported dtype complex64", "bfloat16"],
        );
        assert_contains(
            &msg(load("QInt8Storage", 0, &[1], &[1])),
            &["torch.QInt8Storage"],
        );
        let empty = load("DoubleStorage", 100, &[0, 3], &[3, 1]).unwrap();
        assert_eq!(empty.tensors["t"].shape, vec![0, 3]);
    }

    #[test]
    fn many_views_cannot_multiply_one_storage_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let one = 1f32.to_le_bytes();
        let names: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
        let views: Vec<ViewSpec> = names
            .iter()
            .map(|n| (n.as_str(), 0, &[1 << 22][..], &[0][..]))
            .collect();
        let msg = load_state_dict(&views_file(dir.path(), "FloatStorage", &views, &one))
            .unwrap_err()
            .to_string();
        assert_contains(&msg, &["elements from", "bytes of storage"]);
        // Tied weights (two views of one storage) are fine.
        let floats: Vec<u8> = [1f32, 2.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tied = [("a", 0, &[2][..], &[1][..]), ("b", 0, &[2][..], &[1][..])];
        let sd = load_state_dict(&views_file(dir.path(), "FloatStorage", &tied, &floats)).unwrap();
        assert_eq!(sd.tensors["a"], sd.tensors["b"]);
    }
}
