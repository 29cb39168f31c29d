//! Digit images for classification: any PNG/JPEG → 28×28 grayscale, MNIST polarity, normalised.

use super::mnist::Normalization;
use crate::{Error, Result};
use std::path::Path;

/// Whether to turn dark-on-light drawings into MNIST's light-on-dark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invert {
    /// Invert when the image's border is mostly light (a digit drawn on paper).
    Auto,
    Yes,
    No,
}

/// Loads `path`, converts to grayscale, resizes to `side`×`side`, returns normalised pixels.
pub fn load_digit(
    path: &Path,
    side: u32,
    invert: Invert,
    norm: &Normalization,
) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    digit_from_bytes(&bytes, side, invert, norm).map_err(|e| Error::format(path, e))
}

/// Decodes an encoded image (PNG or JPEG) held in memory; the error says what was wrong.
pub fn digit_from_bytes(
    bytes: &[u8],
    side: u32,
    invert: Invert,
    norm: &Normalization,
) -> std::result::Result<Vec<f32>, String> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?
        .decode()
        .map_err(|e| format!("cannot decode image (PNG or JPEG expected): {e}"))?
        .into_luma8();
    let small = image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle);
    Ok(digit_from_pixels(
        &small.into_raw(),
        side as usize,
        invert,
        norm,
    ))
}

/// Raw grayscale pixels (0–255, row-major, `side`×`side`) → normalised model input.
pub fn digit_from_pixels(px: &[u8], side: usize, invert: Invert, norm: &Normalization) -> Vec<f32> {
    let flip = match invert {
        Invert::Yes => true,
        Invert::No => false,
        Invert::Auto => border_mean(px, side) > 127.0,
    };
    px.iter()
        .map(|&p| norm.apply(if flip { 255 - p } else { p }))
        .collect()
}

fn border_mean(px: &[u8], side: usize) -> f64 {
    let mut sum = 0f64;
    let mut n = 0f64;
    for i in 0..side {
        for j in 0..side {
            if i == 0 || j == 0 || i + 1 == side || j + 1 == side {
                sum += px[i * side + j] as f64;
                n += 1.0;
            }
        }
    }
    sum / n
}
