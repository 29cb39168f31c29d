//! A directory of class folders, torchvision's `ImageFolder` layout: `root/<class>/*.png|jpg`.
//! Classes are the folder names in sorted order (class i is the i-th); every image is decoded,
//! resized so it covers the model's input and center-cropped to it (torchvision's
//! `Resize` + `CenterCrop`), as grey or RGB bytes in [C, H, W] order.

use super::mnist::Mnist;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The class folders of `root` (sorted) and the image files of each (sorted). An empty class
/// or a root without class folders is an error naming the directory.
pub fn list_classes(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let read = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
            .collect::<Result<_>>()?;
        paths.sort();
        Ok(paths)
    };
    let mut classes = Vec::new();
    for dir in read(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let images: Vec<PathBuf> = read(&dir)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|x| {
                        EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str())
                    })
            })
            .collect();
        if images.is_empty() {
            return Err(Error::format(
                &dir,
                "class folder without images (.png, .jpg or .jpeg)",
            ));
        }
        classes.push((name, images));
    }
    if classes.is_empty() {
        return Err(Error::format(
            root,
            "no class folders: expected root/<class>/*.png|jpg (torchvision's ImageFolder layout)",
        ));
    }
    Ok(classes)
}

/// Decodes `path` to `channels` (1: grey, 3: RGB) × `size` bytes: resized so that it covers
/// `size`, then center-cropped. The error names the file.
pub fn load_image(path: &Path, channels: usize, size: [usize; 2]) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(path, format!("cannot read image: {e}")))?
        .decode()
        .map_err(|e| {
            Error::format(
                path,
                format!("cannot decode image (PNG or JPEG expected): {e}"),
            )
        })?;
    let [h, w] = size;
    let (w0, h0) = (img.width() as f64, img.height() as f64);
    let scale = (w as f64 / w0).max(h as f64 / h0);
    let (rw, rh) = (
        ((w0 * scale).round() as u32).max(w as u32),
        ((h0 * scale).round() as u32).max(h as u32),
    );
    let resized = img.resize_exact(rw, rh, image::imageops::FilterType::Triangle);
    let (left, top) = ((rw - w as u32) / 2, (rh - h as u32) / 2);
    let cropped = resized.crop_imm(left, top, w as u32, h as u32);
    let plane = h * w;
    Ok(match channels {
        1 => cropped.into_luma8().into_raw(),
        3 => {
            // HWC → CHW
            let rgb = cropped.into_rgb8().into_raw();
            let mut chw = vec![0u8; 3 * plane];
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    chw[c * plane + i] = px[c];
                }
            }
            chw
        }
        c => {
            return Err(Error::Invalid(format!(
                "image folders give grey (1) or RGB (3) images, the model takes {c} channels"
            )))
        }
    })
}

/// Every image of `root`'s class folders as a dataset of `channels` × `size` images; the
/// number of class folders must be `classes`.
pub fn load_image_folder(
    root: &Path,
    channels: usize,
    size: [usize; 2],
    classes: usize,
) -> Result<Mnist> {
    let folders = list_classes(root)?;
    if folders.len() > 256 {
        return Err(Error::format(
            root,
            format!("{} class folders: at most 256 are supported", folders.len()),
        ));
    }
    if folders.len() != classes {
        let names: Vec<&str> = folders.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::format(
            root,
            format!(
                "{} class folders ({}), the model has {classes} classes",
                folders.len(),
                names.join(", ")
            ),
        ));
    }
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (label, (_, paths)) in folders.iter().enumerate() {
        for path in paths {
            images.extend(load_image(path, channels, size)?);
            labels.push(label as u8);
        }
    }
    Ok(Mnist {
        images,
        labels,
        pixels: channels * size[0] * size[1],
        classes,
        files: [root.to_path_buf(), root.to_path_buf()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_center_cropped_after_covering_the_size_and_laid_out_channel_first() {
        let dir = tempfile::tempdir().unwrap();
        // 6 wide, 2 high: columns 0–2 red, 3–5 blue.
        let img = image::RgbImage::from_fn(6, 2, |x, _| {
            image::Rgb(if x < 3 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let path = dir.path().join("a.png");
        img.save(&path).unwrap();
        // Already covers 2×2: no resize; the crop keeps columns 2 and 3.
        let chw = load_image(&path, 3, [2, 2]).unwrap();
        assert_eq!(chw, [255, 0, 255, 0, 0, 0, 0, 0, 0, 255, 0, 255]);
        let grey = load_image(&path, 1, [2, 2]).unwrap();
        assert_eq!(grey.len(), 4);
        assert!(
            grey[0] > grey[1],
            "red is lighter than blue in luma: {grey:?}"
        );
        let e = load_image(&path, 2, [2, 2]).unwrap_err().to_string();
        assert!(e.contains("grey (1) or RGB (3)"), "{e}");
        let e = list_classes(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
    }
}
