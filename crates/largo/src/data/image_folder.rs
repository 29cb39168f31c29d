//! Image classification data in torchvision's `ImageFolder` layout: `root/<class>/<image>`, the
//! classes being the sub-directories in sorted order (class i is the i-th name, as
//! torchvision's `class_to_idx`), the images PNG or JPEG files.
//!
//! Images are decoded once, resized (shorter side to `resize`, as `transforms.Resize(n)`) and
//! center-cropped to the model's input (`transforms.CenterCrop`), and kept as bytes [n, C, H, W].
//! Per-channel normalisation and training-time augmentation (random crop with zero padding,
//! horizontal flip; `transforms.RandomCrop(size, padding)`, `RandomHorizontalFlip`) happen
//! when a batch is gathered. Augmentation draws come from (seed, epoch, sample), so a run is
//! reproducible whatever its batch size or thread count, and resumes identically.

use crate::rng::Rng;
use crate::{Error, Result};
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Extensions read as images (case-insensitive); other files in a class folder are skipped.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// How images become model inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderShape {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// The shorter side is resized to this before cropping; None keeps the decoded size.
    pub resize: Option<u32>,
    /// The center crop, height and width: the model's input size.
    pub height: u32,
    pub width: u32,
}

/// Decoded images and their classes.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// Bytes [n, C, H, W].
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    /// Class names, sorted: label i is `classes[i]`.
    pub classes: Vec<String>,
    pub shape: FolderShape,
    /// Each image's file, in sample order.
    pub files: Vec<PathBuf>,
}

impl ImageFolder {
    /// Reads every image under `root`'s class folders. An empty root, a class with no image
    /// or an image that cannot be decoded is an error naming the folder or file.
    pub fn load(root: &Path, shape: FolderShape) -> Result<Self> {
        if shape.channels != 1 && shape.channels != 3 {
            crate::bail!(
                "images have 1 (grey) or 3 (RGB) channels, not {}",
                shape.channels
            );
        }
        if shape.height == 0 || shape.width == 0 || shape.resize == Some(0) {
            crate::bail!("image sizes must be ≥ 1, got {shape:?}");
        }
        let mut classes = Vec::new();
        for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            if entry.path().is_dir() {
                classes.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(Error::format(
                root,
                "no class folders: an image folder holds one sub-directory per class (root/<class>/<image>.png)",
            ));
        }
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if images.is_empty() {
                return Err(Error::format(
                    &dir,
                    format!(
                        "class '{class}' has no images ({} files expected)",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            images.sort();
            labels.extend(std::iter::repeat_n(label as u32, images.len()));
            files.extend(images);
        }
        let per_image = shape.channels * (shape.height * shape.width) as usize;
        let mut pixels = Vec::with_capacity(files.len() * per_image);
        for f in &files {
            pixels.extend(decode(f, shape)?);
        }
        Ok(ImageFolder {
            images: pixels,
            labels,
            classes,
            shape,
            files,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image (C·H·W).
    pub fn image_len(&self) -> usize {
        self.shape.channels * (self.shape.height * self.shape.width) as usize
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One file → bytes [C, H, W] of `shape`.
fn decode(path: &Path, shape: FolderShape) -> Result<Vec<u8>> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| {
            Error::format(
                path,
                format!("cannot decode image (PNG or JPEG expected): {e}"),
            )
        })?;
    let img = match shape.resize {
        Some(side) => {
            // Shorter side to `side`, the other in proportion (rounded as torchvision does).
            let (w, h) = (img.width(), img.height());
            let (nw, nh) = if w <= h {
                (side, ((h as u64 * side as u64) / w as u64).max(1) as u32)
            } else {
                (((w as u64 * side as u64) / h as u64).max(1) as u32, side)
            };
            img.resize_exact(nw, nh, FilterType::Triangle)
        }
        None => img,
    };
    let (w, h) = (img.width(), img.height());
    if w < shape.width || h < shape.height {
        return Err(Error::format(
            path,
            format!(
                "the image is {w}×{h} after resizing, smaller than the {}×{} crop",
                shape.width, shape.height
            ),
        ));
    }
    // Center crop: torchvision rounds the offset as Python's round() does (half to even).
    let left = ((w - shape.width) as f64 / 2.0).round_ties_even() as u32;
    let top = ((h - shape.height) as f64 / 2.0).round_ties_even() as u32;
    let img = img.crop_imm(left, top, shape.width, shape.height);
    let plane = (shape.width * shape.height) as usize;
    Ok(if shape.channels == 1 {
        img.into_luma8().into_raw()
    } else {
        // Interleaved RGB → planes [3, H, W].
        let rgb = img.into_rgb8().into_raw();
        let mut chw = vec![0u8; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = px[c];
            }
        }
        chw
    })
}

/// Per-channel normalisation: x = (p/255 − mean[c]) / std[c].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelNorm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl ChannelNorm {
    /// torchvision's ImageNet statistics (RGB), or their mean for grey images.
    pub fn imagenet(channels: usize) -> Self {
        let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
        if channels == 1 {
            ChannelNorm {
                mean: vec![mean.iter().sum::<f32>() / 3.0],
                std: vec![std.iter().sum::<f32>() / 3.0],
            }
        } else {
            ChannelNorm {
                mean: mean.to_vec(),
                std: std.to_vec(),
            }
        }
    }

    /// Mean and standard deviation of each channel over the images `train`.
    pub fn fit(data: &ImageFolder, train: &[usize]) -> Self {
        let c = data.shape.channels;
        let plane = data.image_len() / c;
        let mut stats = vec![(0f64, 0f64); c];
        for &i in train {
            let img = &data.images[i * c * plane..(i + 1) * c * plane];
            for (ch, s) in img.chunks_exact(plane).zip(&mut stats) {
                for &p in ch {
                    let v = p as f64 / 255.0;
                    s.0 += v;
                    s.1 += v * v;
                }
            }
        }
        let n = (train.len() * plane).max(1) as f64;
        let (mean, std) = stats
            .iter()
            .map(|&(s, s2)| {
                let m = s / n;
                let sd = (s2 / n - m * m).max(0.0).sqrt();
                (m as f32, if sd > 0.0 { sd as f32 } else { 1.0 })
            })
            .unzip();
        ChannelNorm { mean, std }
    }
}

/// Training-time augmentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding on every side before a random crop back to the input size (0: none).
    pub crop_padding: usize,
    /// Mirror left-right with probability ½.
    pub horizontal_flip: bool,
}

impl Augment {
    pub fn is_none(&self) -> bool {
        self.crop_padding == 0 && !self.horizontal_flip
    }
}

/// The random draws for sample `sample` in epoch `epoch` of a run seeded with `seed`.
fn augment_rng(seed: u64, epoch: usize, sample: usize) -> Rng {
    let mut key = seed ^ 0xA076_1D64_78BD_642F;
    key = crate::rng::splitmix64(&mut key) ^ epoch as u64;
    key = crate::rng::splitmix64(&mut key) ^ sample as u64;
    Rng::new(key)
}

/// Gathers samples `idx` into a normalised batch x [len, C, H, W] and targets [len]; with
/// `augment` = Some((how, seed, epoch)), each sample is cropped and flipped by its own draws.
pub fn gather_image_batch(
    data: &ImageFolder,
    norm: &ChannelNorm,
    idx: &[usize],
    augment: Option<(&Augment, u64, usize)>,
    x: &mut Vec<f32>,
    y: &mut Vec<i64>,
) {
    let c = data.shape.channels;
    let (h, w) = (data.shape.height as usize, data.shape.width as usize);
    let len = data.image_len();
    x.clear();
    y.clear();
    for &i in idx {
        let img = &data.images[i * len..(i + 1) * len];
        // Where output pixel (r, q) reads from: shifted by the crop, mirrored by the flip.
        let (mut dy, mut dx, mut flip) = (0isize, 0isize, false);
        if let Some((how, seed, epoch)) = augment {
            let mut rng = augment_rng(seed, epoch, i);
            if how.crop_padding > 0 {
                let p = how.crop_padding;
                dy = rng.below(2 * p + 1) as isize - p as isize;
                dx = rng.below(2 * p + 1) as isize - p as isize;
            }
            flip = how.horizontal_flip && rng.uniform() < 0.5;
        }
        for ch in 0..c {
            let (m, s) = (norm.mean[ch], norm.std[ch]);
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            for r in 0..h {
                for q in 0..w {
                    let q = if flip { w - 1 - q } else { q };
                    let (sr, sq) = (r as isize + dy, q as isize + dx);
                    let p = if sr < 0 || sq < 0 || sr >= h as isize || sq >= w as isize {
                        0
                    } else {
                        plane[sr as usize * w + sq as usize]
                    };
                    x.push((p as f32 / 255.0 - m) / s);
                }
            }
        }
        y.push(data.labels[i] as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a w×h RGB PNG whose pixel (x, y) is (x, y, value).
    fn png(path: &Path, w: u32, h: u32, value: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, value]));
        img.save(path).unwrap();
    }

    fn shape(channels: usize, resize: Option<u32>, side: u32) -> FolderShape {
        FolderShape {
            channels,
            resize,
            height: side,
            width: side,
        }
    }

    #[test]
    fn classes_are_sorted_folders_and_images_are_cropped_to_chw() {
        let tmp = tempfile::tempdir().unwrap();
        for (class, n) in [("dog", 2), ("cat", 1)] {
            std::fs::create_dir(tmp.path().join(class)).unwrap();
            for i in 0..n {
                png(
                    &tmp.path().join(class).join(format!("{i}.png")),
                    8,
                    6,
                    10 * i as u8,
                );
            }
        }
        std::fs::write(tmp.path().join("cat").join("notes.txt"), "skipped").unwrap();
        let data = ImageFolder::load(tmp.path(), shape(3, None, 4)).unwrap();
        assert_eq!(data.classes, ["cat", "dog"]);
        assert_eq!(data.labels, [0, 1, 1]);
        assert_eq!(data.len(), 3);
        // 8×6 → centre 4×4 starts at x = 2, y = 1; planes R (x), G (y), B (value).
        let img = &data.images[2 * 48..3 * 48];
        assert_eq!(&img[..4], &[2, 3, 4, 5]);
        assert_eq!(
            img[16..32].iter().step_by(4).copied().collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(img[32..].iter().all(|&b| b == 10));
        // Shorter side 6 → 3: 8×6 becomes 4×3, too small for a 4×4 crop: the file is named.
        let err = ImageFolder::load(tmp.path(), shape(3, Some(3), 4))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0.png") && err.contains("smaller than the 4×4 crop"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_class_an_unreadable_image_and_no_classes_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ImageFolder::load(tmp.path(), shape(1, None, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no class folders"), "{err}");
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::fs::create_dir(tmp.path().join("b")).unwrap();
        png(&tmp.path().join("a").join("x.png"), 3, 3, 0);
        let err = ImageFolder::load(tmp.path(), shape(1, None, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 'b' has no images"), "{err}");
        std::fs::write(tmp.path().join("b").join("broken.jpg"), b"not a jpeg").unwrap();
        let err = ImageFolder::load(tmp.path(), shape(1, None, 2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.jpg") && err.contains("cannot decode"),
            "{err}"
        );
        let err = ImageFolder::load(tmp.path(), shape(2, None, 2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 (grey) or 3 (RGB)"), "{err}");
    }

    #[test]
    fn batches_normalise_per_channel_and_augment_reproducibly() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("only")).unwrap();
        png(&tmp.path().join("only").join("a.png"), 5, 5, 255);
        let data = ImageFolder::load(tmp.path(), shape(3, None, 5)).unwrap();
        let norm = ChannelNorm {
            mean: vec![0.0, 0.0, 0.5],
            std: vec![1.0, 1.0, 0.5],
        };
        let (mut x, mut y) = (Vec::new(), Vec::new());
        gather_image_batch(&data, &norm, &[0], None, &mut x, &mut y);
        assert_eq!(y, [0]);
        assert_eq!(x[1], 1.0 / 255.0);
        assert_eq!(x[50], 1.0);
        // Padding 2 and a flip: every draw is a shift of the plain image (zeros come in from
        // the padding), the same draw for the same (seed, epoch, sample), others vary.
        let how = Augment {
            crop_padding: 2,
            horizontal_flip: true,
        };
        let mut seen = std::collections::HashSet::new();
        for epoch in 0..40 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            gather_image_batch(&data, &norm, &[0], Some((&how, 7, epoch)), &mut a, &mut y);
            gather_image_batch(&data, &norm, &[0], Some((&how, 7, epoch)), &mut b, &mut y);
            assert_eq!(a, b);
            // The blue plane is 1 inside the image and (0 − 0.5)/0.5 = −1 in the padding.
            assert!(a[50..].iter().all(|&v| v == 1.0 || v == -1.0));
            seen.insert(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        assert!(seen.len() > 10, "{} distinct crops", seen.len());
        let fit = ChannelNorm::fit(&data, &[0]);
        assert_eq!(fit.mean[2], 1.0);
        assert_eq!(fit.std[2], 1.0, "a constant channel keeps std 1");
        assert!((fit.mean[0] - 2.0 / 255.0).abs() < 1e-6);
    }
}
