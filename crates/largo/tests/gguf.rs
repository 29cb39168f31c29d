//! The GGUF reader and block dequantisation against the `gguf` package's own files and
//! `gguf.quants.dequantize` outputs (tools/gen_gguf_fixtures.py), hand-built bad files, a
//! mutation test, and the shared SmolLM2 file when it is present.

use largo::io::gguf::{GgmlType, GgufArray, GgufFile, GgufValue};
use largo::rng::Rng;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

#[test]
fn every_block_type_dequantises_exactly_as_the_gguf_package() {
    let f = GgufFile::open(fixture("blocks.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    for dtype in GgmlType::ALL {
        let view = f.tensor(dtype.name()).unwrap();
        assert_eq!(view.dtype, dtype);
        assert_eq!(view.shape, vec![2, 256], "{dtype}");
        let got = view.dequantize().unwrap();
        let raw = std::fs::read(fixture(&format!("{}.f32", dtype.name().to_lowercase()))).unwrap();
        let want: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len(), "{dtype}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{dtype} value {i}: {g} vs {w}");
        }
        assert!(got.iter().any(|v| *v != 0.0), "{dtype}: all zero");
    }
    let hist = f.type_histogram();
    assert_eq!(hist.len(), 11);
    assert_eq!(hist[&GgmlType::Q6_K], (1, 2 * 210));
    assert_eq!(f.parameter_count(), 11 * 512);
}

#[test]
fn metadata_of_every_value_type_reads_back() {
    let f = GgufFile::open(fixture("blocks.gguf")).unwrap();
    let m = |k: &str| f.metadata(k).unwrap().clone();
    assert_eq!(f.get_str("general.architecture").unwrap(), "fixture");
    assert_eq!(m("test.u8"), GgufValue::U8(200));
    assert_eq!(m("test.i8"), GgufValue::I8(-100));
    assert_eq!(m("test.u16"), GgufValue::U16(60000));
    assert_eq!(m("test.i16"), GgufValue::I16(-30000));
    assert_eq!(f.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i32("test.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.get_u64("test.u64").unwrap(), 18_000_000_000_000_000_000);
    assert_eq!(m("test.i64"), GgufValue::I64(-9_000_000_000_000_000_000));
    assert_eq!(f.get_f32("test.f32").unwrap(), 0.15625);
    assert_eq!(m("test.f64"), GgufValue::F64(-2.5e-300));
    assert!(f.get_bool("test.bool").unwrap());
    assert_eq!(f.get_str("test.string").unwrap(), "héllo ▁wörld");
    assert_eq!(f.get_i32_array("test.array_i32").unwrap(), vec![1, -2, 3]);
    assert_eq!(f.get_f32_array("test.array_f32").unwrap(), vec![0.5, -1.25]);
    assert_eq!(
        f.get_str_array("test.array_string").unwrap(),
        vec!["a", "", "ü"]
    );
    assert_eq!(
        m("test.array_bool"),
        GgufValue::Array(GgufArray::Bool(vec![true, false, true]))
    );
    assert_eq!(
        f.get_array("test.array_u8").unwrap(),
        &GgufArray::U8(vec![1, 2, 255])
    );
    assert_eq!(
        m("test.array_u8").summary(8, 20),
        "array of 3 u8: [1, 2, 255]"
    );
    let nested = m("test.array_nested");
    assert_eq!(
        nested.summary(8, 20),
        "array of 2 array: [array of 2 i32: [1, 2], array of 1 i32: [3]]"
    );
    assert_eq!(f.get_usize("test.u16").unwrap(), 60000);
    // File order is kept.
    let keys: Vec<&str> = f
        .metadata_entries()
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        &keys[..3],
        ["general.architecture", "general.name", "test.u8"]
    );

    // Getters name the key and both types.
    let e = f.get_u32("test.string").unwrap_err().to_string();
    assert!(
        e.contains("blocks.gguf") && e.contains("test.string") && e.contains("expected u32"),
        "{e}"
    );
    assert!(e.contains("(string)"), "{e}");
    let e = f.get_str_array("test.array_i32").unwrap_err().to_string();
    assert!(e.contains("array of 3 i32"), "{e}");
    let e = f.get_usize("test.i8").unwrap_err().to_string();
    assert!(e.contains("non-negative"), "{e}");
    let e = f.get_f32("no.such.key").unwrap_err().to_string();
    assert!(e.contains("missing metadata key no.such.key"), "{e}");
    let e = f.tensor("nope").unwrap_err().to_string();
    assert!(e.contains("missing tensor nope"), "{e}");
}

/// Builds GGUF files byte by byte, for the malformed cases the Python writer will not make.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = Bytes(b"GGUF".to_vec());
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends the data section.
    fn data(&mut self, data: &[u8]) -> &mut Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(data);
        self
    }
}

/// Writes `bytes` and opens them, expecting an error containing every one of `needles`.
#[track_caller]
fn refused(bytes: &[u8], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, bytes).unwrap();
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("bad.gguf"), "error does not name the file: {e}");
    for n in needles {
        assert!(e.contains(n), "error lacks {n:?}: {e}");
    }
}

#[test]
fn a_well_formed_hand_built_file_opens() {
    let mut b = Bytes::header(2, 1, 1);
    b.kv_u32("general.alignment", 32)
        .tensor("w", &[2, 3], 0, 0)
        .data(&[0u8; 24]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.gguf");
    std::fs::write(&p, &b.0).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.version(), 2);
    let t = f.tensor("w").unwrap();
    assert_eq!(t.shape, vec![3, 2], "HF order: the file's dims reversed");
    assert_eq!(t.to_tensor().unwrap().data, vec![0.0; 6]);
}

#[test]
fn bad_headers_are_refused_by_name() {
    let mut b = Bytes::header(3, 0, 0);
    b.0[..4].copy_from_slice(b"GGML");
    refused(&b.0, &["not a GGUF file", "GGML"]);
    refused(&Bytes::header(1, 0, 0).0, &["version 1 is not supported"]);
    refused(&Bytes::header(7, 0, 0).0, &["unsupported version 7"]);
    refused(
        &Bytes::header(3u32.swap_bytes(), 0, 0).0,
        &["big-endian GGUF (version 3)"],
    );
    refused(b"GGUF", &["4 bytes, shorter than the 24-byte header"]);
    refused(&[], &["0 bytes"]);
}

#[test]
fn counts_and_lengths_larger_than_the_file_are_refused_before_allocating() {
    refused(
        &Bytes::header(3, u64::MAX / 2, 0).0,
        &["tensor count 9223372036854775807 at offset 8 is larger than the file allows"],
    );
    refused(
        &Bytes::header(3, 0, 1 << 40).0,
        &["metadata count 1099511627776 at offset 16"],
    );
    // A key length of 2^60.
    let mut b = Bytes::header(3, 0, 1);
    b.u64(1 << 60).0.extend([0u8; 16]);
    refused(
        &b.0,
        &[
            "metadata entry 0",
            "key length 1152921504606846976 at offset 24 runs past the end",
        ],
    );
    // A string value's length.
    let mut b = Bytes::header(3, 0, 1);
    b.str("k").u32(8).u64(u64::MAX).0.extend([0u8; 8]);
    refused(
        &b.0,
        &["metadata key k", "string length 18446744073709551615"],
    );
    // An array of 2^61 u32.
    let mut b = Bytes::header(3, 0, 1);
    b.str("arr").u32(9).u32(4).u64(1 << 61).0.extend([0u8; 64]);
    refused(
        &b.0,
        &[
            "metadata key arr",
            "array of u32: item count 2305843009213693952",
            "larger than the file allows",
        ],
    );
    // Arrays nested past the depth limit.
    let mut b = Bytes::header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..6 {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(1).u32(7);
    refused(&b.0, &["metadata key deep", "nests deeper than 4"]);
    // The tensor count fits the header's check but not what the metadata left.
    let mut b = Bytes::header(3, 2, 1);
    b.kv_u32("general.alignment", 32).0.extend([0u8; 30]);
    refused(&b.0, &["tensor count 2 is larger than the file allows"]);
    // n_dims.
    let mut b = Bytes::header(3, 1, 0);
    b.str("w").u32(1000).0.extend([0u8; 64]);
    refused(&b.0, &["tensor w", "n_dims 1000 at offset 33", "at most 4"]);
}

#[test]
fn bad_metadata_values_are_refused_naming_the_key() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("flag").u32(7).0.push(2);
    refused(&b.0, &["metadata key flag", "bool at offset 40 is 2"]);
    let mut b = Bytes::header(3, 0, 1);
    b.str("x").u32(13).u32(0);
    refused(
        &b.0,
        &["metadata key x: unknown value type 13 at offset 33"],
    );
    let mut b = Bytes::header(3, 0, 2);
    b.kv_u32("a", 1).kv_u32("a", 2);
    refused(&b.0, &["metadata key a appears twice"]);
    let mut b = Bytes::header(3, 0, 1);
    b.kv_u32("general.alignment", 48);
    refused(
        &b.0,
        &["general.alignment is 48 (u32), expected a u32 power of two"],
    );
    let mut b = Bytes::header(3, 0, 1);
    b.str("s").u32(8).u64(2).0.extend([0xff, 0xfe]);
    refused(&b.0, &["metadata key s", "not UTF-8"]);
}

#[test]
fn bad_tensor_infos_are_refused_naming_the_tensor() {
    // Q2_K (10) is known to ggml but not read; 99 is unknown to it.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("blk.0.ffn_up.weight", &[256], 10, 0)
        .data(&[0u8; 84]);
    refused(
        &b.0,
        &[
            "tensor blk.0.ffn_up.weight",
            "tensor type Q2_K (ggml type 10) is not supported",
        ],
    );
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[32], 99, 0).data(&[0u8; 128]);
    refused(
        &b.0,
        &["tensor w: unknown tensor type 99", "(at offset 45)"],
    );
    // Data past the end of the file.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[1000], 0, 0).data(&[0u8; 16]);
    refused(
        &b.0,
        &[
            "tensor w",
            "plus 4000 bytes",
            "runs past the end of the file",
        ],
    );
    // An offset not on the alignment, and one that overflows.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[4], 0, 4).data(&[0u8; 64]);
    refused(
        &b.0,
        &[
            "tensor w",
            "data offset 4",
            "not a multiple of the alignment 32",
        ],
    );
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[4], 0, u64::MAX - 31).data(&[0u8; 64]);
    refused(&b.0, &["tensor w", "runs past the end of the file"]);
    // Rows must be whole blocks; dims whose product overflows.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[16, 2], 2, 0).data(&[0u8; 64]);
    refused(
        &b.0,
        &["tensor w", "row length 16", "Q4_0's block of 32 values"],
    );
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[1 << 32, 1 << 32, 2], 0, 0).data(&[0u8; 64]);
    refused(&b.0, &["tensor w", "overflow 64 bits"]);
    // No elements, but dimensions whose product would overflow a shape's.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("w", &[1 << 40, 1 << 40, 0], 0, 0).data(&[0u8; 64]);
    refused(&b.0, &["tensor w", "overflow 64 bits"]);
    let mut b = Bytes::header(3, 2, 0);
    b.tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .data(&[0u8; 64]);
    refused(&b.0, &["tensor w: appears twice"]);
}

#[test]
fn a_file_cut_anywhere_before_its_last_tensor_ends_is_refused() {
    let bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let f = GgufFile::open(fixture("tiny.gguf")).unwrap();
    let end = f
        .tensors()
        .iter()
        .map(|t| f.data_start() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    let dir = scratch_dir();
    let p = dir.path().join("cut.gguf");
    for cut in 0..end {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("cut.gguf"), "cut at {cut}: {e}");
    }
}

/// A temporary directory in memory where there is one: thousands of small files written to
/// disk take seconds (about 2 ms a write and map here), in /dev/shm milliseconds.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// One corruption of `bytes`: flipped bytes, a truncation, or a u64/u32 field overwritten with
/// a value a reader might trust (huge, the file size, a type id).
fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let len = b.len();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(len);
                b[i] = rng.next_u64() as u8;
            }
        }
        1 => b.truncate(rng.below(len)),
        2 => {
            let i = rng.below(len - 8);
            let v = match rng.below(6) {
                0 => u64::MAX,
                1 => 1 << (32 + rng.below(31)),
                2 => len as u64 + rng.below(64) as u64,
                3 => rng.below(len) as u64,
                4 => (len as u64).wrapping_neg(),
                _ => rng.next_u64(),
            };
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        _ => {
            let i = rng.below(len - 4);
            let v = match rng.below(3) {
                0 => rng.below(64) as u32,
                1 => u32::MAX,
                _ => rng.next_u64() as u32,
            };
            b[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    b
}

const MUTANTS: usize = 10_000;

#[test]
fn thousands_of_corrupted_copies_give_only_clean_errors() {
    let bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let dir = scratch_dir();
    let p = dir.path().join("mutant.gguf");
    let mut rng = Rng::new(7);
    let (mut opened, mut refused) = (0, 0);
    let start = std::time::Instant::now();
    for i in 0..MUTANTS {
        let b = mutate(&bytes, &mut rng);
        std::fs::write(&p, &b).unwrap();
        let outcome = std::panic::catch_unwind(|| -> largo::Result<()> {
            let f = GgufFile::open(&p)?;
            for t in f.tensor_views() {
                t.dequantize()?;
            }
            for (k, v) in f.metadata_entries() {
                let _ = (k.len(), v.summary(4, 40));
            }
            Ok(())
        });
        match outcome {
            Ok(Ok(())) => opened += 1,
            Ok(Err(e)) => {
                let e = e.to_string();
                assert!(e.contains("mutant.gguf"), "mutation {i}: {e}");
                refused += 1;
            }
            Err(_) => {
                let dump = dir.path().join(format!("panic-{i}.gguf"));
                std::fs::write(&dump, &b).unwrap();
                panic!("mutation {i} panicked: {b:?}");
            }
        }
    }
    eprintln!(
        "{MUTANTS} mutants: {opened} opened, {refused} refused, {:.2?}",
        start.elapsed()
    );
    assert!(
        refused > 1000 && opened > 50,
        "{opened} opened, {refused} refused"
    );
}

fn smollm2() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent", p.display());
        None
    }
}

#[test]
fn smollm2_opens_in_milliseconds_and_every_tensor_dequantises() {
    let Some(path) = smollm2() else { return };
    let start = std::time::Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let opened = start.elapsed();
    eprintln!("opened {} in {opened:.2?}", path.display());
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_usize("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_usize("llama.embedding_length").unwrap(), 576);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    let params = f.parameter_count();
    assert!((134_000_000..135_000_000).contains(&params), "{params}");
    let types: Vec<GgmlType> = f.type_histogram().into_keys().collect();
    assert_eq!(types, [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0]);
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dtype, embd.shape.clone()),
        (GgmlType::Q8_0, vec![49152, 576])
    );
    let start = std::time::Instant::now();
    let mut total = 0usize;
    for t in f.tensor_views() {
        let v = t.dequantize().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
        total += v.len();
    }
    eprintln!("dequantised {total} values in {:.2?}", start.elapsed());
    assert_eq!(total as u64, params);
}

/// The integer kernels' repacked blocks hold the gguf package's values: exactly for the
/// 32-value types, within the stated rounding for Q4_K/Q5_K (f16 sub-scales) and Q6_K
/// (requantised to 8 bits): a 250th of each 32-value block's largest magnitude.
#[test]
fn quantised_matmul_blocks_hold_the_gguf_packages_values() {
    use largo::backend::cpu::qmatmul::QMatrix;
    let f = GgufFile::open(fixture("blocks.gguf")).unwrap();
    for dtype in GgmlType::ALL {
        let view = f.tensor(dtype.name()).unwrap();
        if !QMatrix::supports(dtype) {
            assert!(matches!(
                dtype,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
            ));
            continue;
        }
        let q = QMatrix::from_ggml(dtype, 2, 256, view.bytes).unwrap();
        let want = view.dequantize().unwrap();
        for r in 0..2 {
            let mut row = vec![0f32; 256];
            q.dequantize_row(r, &mut row);
            let want = &want[r * 256..][..256];
            for (b, (got, want)) in row.chunks(32).zip(want.chunks(32)).enumerate() {
                let amax = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (g, w) in got.iter().zip(want) {
                    let exact = dtype.block_values() == 32;
                    assert!(
                        if exact {
                            g == w
                        } else {
                            (g - w).abs() <= amax / 250.0
                        },
                        "{dtype} row {r} block {b}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
