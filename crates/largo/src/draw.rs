//! What every picture largo makes shares — the training curves, the report's charts, attention
//! maps and saliency: the font it ships, a canvas that becomes a PNG, and axis ranges that hold a
//! chart's points.

use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

/// plotters draws text with a font we ship, so pictures look the same on every machine. Call it
/// before making a font (`png` does).
pub fn ensure_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../../assets/fonts/DejaVuSansMono.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// The whole picture, as `png` and `write_png` hand it to their painter.
pub type Canvas<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What plotters' drawing calls return, through `?`.
pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Runs `paint` on a white canvas of `size` pixels (width, height) and returns the picture as
/// PNG bytes.
pub fn png(size: (u32, u32), paint: impl FnOnce(&Canvas) -> Result<()>) -> Result<Vec<u8>> {
    ensure_font();
    let (w, h) = size;
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        paint(&root)?;
        root.present()
            .map_err(|e| Error::Invalid(format!("drawing: {e}")))?;
    }
    let img = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| Error::Invalid("image buffer has the wrong size".into()))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::Invalid(format!("PNG encoding: {e}")))?;
    Ok(out.into_inner())
}

/// Runs `paint` on a canvas of `size` pixels (black until painted) and writes it to `path`,
/// atomically, as the PNG that plotters encodes itself: the training curves are written so.
/// (`png` encodes with a later version of the `image` crate, whose bytes differ.) An error of
/// painting or encoding is "cannot draw {what}: …".
pub fn write_png(
    path: &Path,
    size: (u32, u32),
    what: &str,
    paint: impl FnOnce(&Canvas) -> DrawResult,
) -> Result<()> {
    ensure_font();
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{stem}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        paint(&root)
            .and_then(|_| root.present().map_err(Into::into))
            .map_err(|e| Error::format(path, format!("cannot draw {what}: {e}")))?;
    }
    let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let _ = std::fs::remove_file(&tmp);
    crate::io::write_atomic(path, &bytes)
}

/// The room a chart leaves above and below its points.
#[derive(Clone, Copy, Debug)]
pub struct Padding {
    /// This share of the points' y span…
    pub span: f64,
    /// …or, where more, this share of the top value's size.
    pub top: f64,
    /// The y axis reaches down to 0 at least (losses).
    pub from_zero: bool,
}

/// The axis ranges that hold every point: x from 0 (or the first x, where below) over at least
/// one unit, y padded by `pad`. Without points, 0..1 on both.
pub fn bounds(
    points: impl IntoIterator<Item = (f64, f64)>,
    pad: Padding,
) -> (Range<f64>, Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if pad.from_zero {
        y0 = y0.min(0.0);
    }
    let dy = ((y1 - y0) * pad.span).max(y1.abs() * pad.top).max(1e-6);
    (x0.min(0.0)..x1.max(x0 + 1.0), (y0 - dy)..(y1 + dy))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: Padding = Padding {
        span: 0.05,
        top: 0.0,
        from_zero: false,
    };

    #[test]
    fn bounds_hold_the_points_with_room_around_them() {
        let (x, y) = bounds([(10.0, 2.0), (30.0, 4.0)], PAD);
        assert_eq!(x, 0.0..30.0);
        assert!((y.start - 1.9).abs() < 1e-12 && (y.end - 4.1).abs() < 1e-12);
        let (_, y) = bounds(
            [(1.0, 2.0), (2.0, 4.0)],
            Padding {
                from_zero: true,
                ..PAD
            },
        );
        assert!((y.start + 0.2).abs() < 1e-12, "{y:?}");
        // A flat line gets room from the size of its value.
        let (_, y) = bounds([(1.0, 100.0)], Padding { top: 0.01, ..PAD });
        assert_eq!(y, 99.0..101.0);
        assert_eq!(bounds(std::iter::empty(), PAD), (0.0..1.0, 0.0..1.0));
    }

    #[test]
    fn pictures_are_pngs_of_the_size_asked() {
        let png = png((40, 30), |root| {
            root.fill(&BLUE).map_err(|e| Error::Invalid(e.to_string()))
        })
        .unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (40, 30));
        assert_eq!(img.get_pixel(20, 15).0, [0, 0, 255]);
    }
}
