//! MNIST as a classification dataset: IDX files, checked, split, normalised, batched.

use super::idx::read_idx;
use crate::rng::{stream, Rng};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const IMAGES: &str = "train-images-idx3-ubyte";
pub const LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Which pair of files of an MNIST directory: `train-*` or `t10k-*` (the test set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistFiles {
    Train,
    Test,
}

impl MnistFiles {
    /// The (images, labels) file stems.
    pub fn stems(self) -> (&'static str, &'static str) {
        match self {
            MnistFiles::Train => (IMAGES, LABELS),
            MnistFiles::Test => (TEST_IMAGES, TEST_LABELS),
        }
    }

    /// Whether `dir` holds this pair's images file (`<stem>` or `<stem>.gz`).
    pub fn present_in(self, dir: &Path) -> bool {
        let stem = self.stems().0;
        dir.join(format!("{stem}.gz")).is_file() || dir.join(stem).is_file()
    }
}

/// Images as raw bytes [n, rows·cols] and labels [n].
#[derive(Clone, Debug)]
pub struct Mnist {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub pixels: usize,
    pub classes: usize,
    /// The images and labels files it was read from.
    pub files: [PathBuf; 2],
}

/// Finds `<stem>` or `<stem>.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "data directory not found"),
        ));
    }
    Err(Error::format(
        dir,
        format!("missing {stem}.gz (or {stem}) in the MNIST directory"),
    ))
}

impl Mnist {
    /// Loads `train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]` from `dir`.
    pub fn load(dir: &Path, classes: usize) -> Result<Self> {
        Self::load_files(dir, MnistFiles::Train, classes)
    }

    /// Loads the `train-*` or the `t10k-*` pair of `dir`.
    pub fn load_files(dir: &Path, which: MnistFiles, classes: usize) -> Result<Self> {
        let (images_stem, labels_stem) = which.stems();
        let img_path = find(dir, images_stem)?;
        let lbl_path = find(dir, labels_stem)?;
        let images = read_idx(&img_path)?;
        let labels = read_idx(&lbl_path)?;
        if images.dims.len() != 3 {
            return Err(Error::format(
                &img_path,
                format!(
                    "expected 3 dimensions [n, rows, cols], found {:?}",
                    images.dims
                ),
            ));
        }
        if labels.dims.len() != 1 {
            return Err(Error::format(
                &lbl_path,
                format!("expected 1 dimension [n], found {:?}", labels.dims),
            ));
        }
        if images.dims[0] != labels.dims[0] {
            return Err(Error::format(
                &lbl_path,
                format!(
                    "{} labels but {} has {} images",
                    labels.dims[0],
                    img_path.display(),
                    images.dims[0]
                ),
            ));
        }
        if images.dims[0] == 0 {
            return Err(Error::format(&img_path, "contains no images"));
        }
        if let Some((i, &l)) = labels
            .data
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::format(
                &lbl_path,
                format!("label {l} at index {i} is out of range 0..{classes}"),
            ));
        }
        Ok(Mnist {
            pixels: images.dims[1] * images.dims[2],
            images: images.data,
            labels: labels.data,
            classes,
            files: [img_path, lbl_path],
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Seeded split: shuffle 0..n with the SPLIT stream; the first round(n·fraction) go to validation.
pub fn split_indices(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::for_stream(seed, stream::SPLIT).shuffle(&mut perm);
    let n_val = ((n as f64) * val_fraction).round() as usize;
    let train = perm.split_off(n_val.min(n));
    (train, perm)
}

/// Pixel normalisation: x = (p/255 − mean)/std, mean and std measured on the training split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: f32,
    pub std: f32,
}

impl Normalization {
    pub fn fit(data: &Mnist, train: &[usize]) -> Self {
        let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
        for &i in train {
            for &p in &data.images[i * data.pixels..(i + 1) * data.pixels] {
                let v = p as f64 / 255.0;
                s += v;
                s2 += v * v;
                n += 1.0;
            }
        }
        let mean = s / n;
        let std = (s2 / n - mean * mean).max(0.0).sqrt();
        Normalization {
            mean: mean as f32,
            std: if std > 0.0 { std as f32 } else { 1.0 },
        }
    }

    pub fn apply(&self, pixel: u8) -> f32 {
        ((pixel as f64 / 255.0 - self.mean as f64) / self.std as f64) as f32
    }
}

/// Gathers samples `idx` into a normalised batch x [len, pixels] and targets [len].
pub fn gather_batch(
    data: &Mnist,
    norm: &Normalization,
    idx: &[usize],
    x: &mut Vec<f32>,
    y: &mut Vec<i64>,
) {
    x.clear();
    y.clear();
    for &i in idx {
        x.extend(
            data.images[i * data.pixels..(i + 1) * data.pixels]
                .iter()
                .map(|&p| norm.apply(p)),
        );
        y.push(data.labels[i] as i64);
    }
}

/// Order of the training samples in epoch `epoch`: positions into the train list.
pub fn epoch_order(n_train: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_train).collect();
    Rng::for_stream(seed, stream::SHUFFLE + epoch as u64).shuffle(&mut order);
    order
}
