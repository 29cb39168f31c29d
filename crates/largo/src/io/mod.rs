//! Files: atomic writes (temp file, fsync, rename), safetensors in both directions, GGUF read.

pub mod gguf;
pub mod torch_pickle;

use crate::tensor::Tensor;
use crate::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| Error::io(path, e))
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Builds a directory under a temporary name and renames it into place when `fill` succeeded.
/// An existing directory at `dest` is replaced only after the new one is complete.
pub fn write_dir_atomic(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let swap = || -> std::io::Result<()> {
        sync_dir(&tmp)?;
        if dest.exists() {
            std::fs::rename(dest, &old)?;
        }
        std::fs::rename(&tmp, dest)?;
        sync_dir(parent)?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        Ok(())
    };
    swap().map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        Error::io(dest, e)
    })
}

/// Writes named f32 tensors as safetensors (atomically), with string metadata.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, &Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let v = safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .expect("shape matches byte length");
            (n.clone(), v)
        })
        .collect();
    let out = safetensors::serialize(views, &metadata)
        .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &out)
}

/// All tensors of a safetensors file converted to f32 (F32, F64, F16, BF16; integers as f32).
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: std::collections::HashMap<String, String>,
}

impl TensorFile {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = to_f32(view.dtype(), view.data())
                .map_err(|m| Error::format(path, format!("tensor {name}: {m}")))?;
            tensors.insert(
                name.clone(),
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// The tensor `name`, which must exist and have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            Error::format(
                &self.path,
                format!("missing tensor {name} (shape {shape:?})"),
            )
        })?;
        if t.shape != shape {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor {name} has shape {:?}, the model expects {shape:?}",
                    t.shape
                ),
            ));
        }
        Ok(t)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::format(&self.path, format!("missing tensor {name}")))
    }
}

fn to_f32(dtype: Dtype, b: &[u8]) -> std::result::Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => {
            return Err(format!(
                "unsupported dtype {other:?}: expected F32, F64, F16, BF16, I64 or I32"
            ))
        }
    })
}

/// A weights file: a `torch.save` zip (.pt/.pth/.bin; read without running any pickle code)
/// or safetensors, told apart by content rather than by name.
pub fn load_weights(path: &Path) -> Result<TensorFile> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
        if n < 4 {
            return Err(Error::format(path, "file too short to hold weights"));
        }
    }
    if &magic != b"PK\x03\x04" {
        return TensorFile::load(path);
    }
    let sd = torch_pickle::load_state_dict(path)?;
    Ok(TensorFile {
        path: path.to_path_buf(),
        tensors: sd.tensors,
        metadata: Default::default(),
    })
}

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

    #[test]
    fn safetensors_round_trip_and_shape_errors_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let t = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        save_safetensors(&p, &[("fc1.weight".into(), &t)], None).unwrap();
        let mut f = TensorFile::load(&p).unwrap();
        let e = f.take("fc1.weight", &[4]).unwrap_err().to_string();
        assert!(
            e.contains("fc1.weight has shape [2, 2], the model expects [4]"),
            "{e}"
        );
        let mut f = TensorFile::load(&p).unwrap();
        assert_eq!(f.take("fc1.weight", &[2, 2]).unwrap(), t);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(TensorFile::load(&p).is_err());
    }

    #[test]
    fn an_unknown_dtype_is_a_clear_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let bytes = [1u8, 0, 1, 1];
        let view = safetensors::tensor::TensorView::new(Dtype::BOOL, vec![4], &bytes).unwrap();
        let out = safetensors::serialize(vec![("mask".to_string(), view)], &None).unwrap();
        std::fs::write(&p, out).unwrap();
        let e = TensorFile::load(&p).err().unwrap().to_string();
        assert!(e.contains("tensor mask: unsupported dtype BOOL"), "{e}");
        assert!(e.contains("m.safetensors"), "{e}");
    }
}
