//! Writing safetensors one tensor at a time (F32, F16 or BF16 values), so that a writer holds
//! one encoded tensor rather than the whole file as `safetensors::serialize` needs: an 8-byte
//! header length, the JSON header (padded with spaces to 8 bytes), then the tensors' bytes back
//! to back in the header's order. Written atomically (see [`super::write_atomic_with`]).

use super::gguf::GgmlType;
use crate::{Error, Result};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

/// A tensor to write: name, shape and type; its bytes come from the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetensorsSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

impl SafetensorsSpec {
    fn n_bytes(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::Invalid(format!("tensor {}: size overflows", self.name)))
    }
}

/// f32 values as `dtype`'s little-endian bytes (F32, F16 or BF16, rounded to nearest even):
/// the same bytes as GGUF's types of those names.
pub fn encode_values(dtype: Dtype, values: &[f32]) -> Result<Vec<u8>> {
    let ggml = match dtype {
        Dtype::F32 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        other => {
            return Err(Error::Invalid(format!(
                "writing {other:?} safetensors is not supported (supported: F32, F16, BF16)"
            )))
        }
    };
    super::gguf_write::encode_values(ggml, values)
}

/// Writes `tensors` to `path`, tensor i's bytes given by `data(i)` (called once each, in
/// order; a wrong length is an error naming the tensor), with string `metadata`. Returns the
/// file's size in bytes.
pub fn write_safetensors(
    path: &Path,
    tensors: &[SafetensorsSpec],
    metadata: &HashMap<String, String>,
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for spec in tensors {
        let size = spec.n_bytes()?;
        let entry = serde_json::json!({
            "dtype": spec.dtype,
            "shape": spec.shape,
            "data_offsets": [offset, offset + size],
        });
        if spec.name == "__metadata__" || header.insert(spec.name.clone(), entry).is_some() {
            return Err(Error::Invalid(format!(
                "tensor {} is given twice (or is named __metadata__)",
                spec.name
            )));
        }
        offset += size;
        sizes.push(size);
    }
    let mut json = serde_json::to_vec(&header).expect("a JSON map serialises");
    json.resize(json.len().next_multiple_of(8), b' ');
    super::write_atomic_with(path, |out| {
        let io = |e| Error::io(path, e);
        out.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        for (i, (spec, &size)) in tensors.iter().zip(&sizes).enumerate() {
            let bytes = data(i)?;
            if bytes.len() != size {
                return Err(Error::Invalid(format!(
                    "tensor {}: {} bytes of data given, {:?} {:?} needs {size}",
                    spec.name,
                    bytes.len(),
                    spec.shape,
                    spec.dtype
                )));
            }
            out.write_all(&bytes).map_err(io)?;
        }
        Ok(())
    })?;
    Ok(8 + json.len() as u64 + offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::TensorFile;

    #[test]
    fn tensors_read_back_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let spec = |name: &str, shape: &[usize], dtype| SafetensorsSpec {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
        };
        let tensors = [
            spec("a.weight", &[2, 3], Dtype::F32),
            spec("b.weight", &[3], Dtype::F16),
            spec("c.weight", &[1, 2], Dtype::BF16),
        ];
        let values = [
            vec![1.0, -2.5, 3.25, 0.0, 1e-3, 7.0],
            vec![0.5, -0.25, 1.0 / 3.0],
            vec![1.0 + 3.0 / 256.0, -2.0],
        ];
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let size = write_safetensors(&path, &tensors, &metadata, |i| {
            encode_values(tensors[i].dtype, &values[i])
        })
        .unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b.weight").unwrap().dtype(), Dtype::F16);
        assert_eq!(st.tensor("c.weight").unwrap().dtype(), Dtype::BF16);
        let file = TensorFile::load(&path).unwrap();
        assert_eq!(file.metadata["format"], "pt");
        assert_eq!(file.tensors["a.weight"].data, values[0]);
        assert_eq!(file.tensors["a.weight"].shape, [2, 3]);
        let third = crate::io::f16_to_f32(crate::io::f32_to_f16(1.0 / 3.0));
        assert_eq!(file.tensors["b.weight"].data, [0.5, -0.25, third]);
        assert_eq!(file.tensors["c.weight"].data, [1.0 + 2.0 / 128.0, -2.0]);
    }

    #[test]
    fn a_wrong_length_is_refused_by_name_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let tensors = [SafetensorsSpec {
            name: "w".into(),
            shape: vec![4],
            dtype: Dtype::F32,
        }];
        let e = write_safetensors(&path, &tensors, &HashMap::new(), |_| Ok(vec![0; 12]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor w: 12 bytes of data given"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
