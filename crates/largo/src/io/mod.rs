//! Files: atomic writes (temp file, fsync, rename), safetensors in both directions, GGUF read
//! and write.

pub mod gguf;
pub mod gguf_write;
pub mod safetensors_write;
pub mod torch_pickle;

use crate::tensor::Tensor;
use crate::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |out| {
        out.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Writes `path` as `fill` streams it through a buffer, atomically as [`write_atomic`]: a
/// temporary file beside `path`, synced, then renamed over it; removed if anything fails, so
/// readers see the old file or the whole new one. Errors from `fill` pass through as they are.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
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
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        fill(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(dir).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
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

/// Half-precision conversions live with the kernels that use them; files use them too.
pub use crate::backend::cpu::half::{f16_to_f32, f32_to_f16};

#[cfg(test)]
mod tests {
    use super::*;

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
