//! `curves.png`: training and validation loss (left) and accuracy (right) from `metrics.jsonl`.

use super::metrics::{read_records, Record};
use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

/// plotters draws text with a font we ship, so charts look the same on every machine.
pub fn ensure_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../../../assets/fonts/DejaVuSansMono.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

type Series = Vec<(f64, f64)>;

/// Writes `<run>/curves.png` (atomically) from the run's metrics.
pub fn plot_run(run: &Path) -> Result<()> {
    let records = read_records(&run.join("metrics.jsonl"))?;
    let (mut train_loss, mut val_loss, mut train_acc, mut val_acc) =
        (Series::new(), Series::new(), Series::new(), Series::new());
    let mut perplexity = Series::new();
    for r in &records {
        match *r {
            Record::Train { step, loss, .. } => train_loss.push((step as f64, loss)),
            Record::Val {
                step,
                val_loss: vl,
                val_accuracy,
                train_accuracy,
                ..
            } => {
                val_loss.push((step as f64, vl));
                val_acc.push((step as f64, 100.0 * val_accuracy));
                train_acc.push((step as f64, 100.0 * train_accuracy));
            }
            Record::Eval {
                step,
                val_loss: vl,
                val_perplexity,
                ..
            } => {
                val_loss.push((step as f64, vl));
                perplexity.push((step as f64, val_perplexity));
            }
        }
    }
    let out = run.join("curves.png");
    let tmp = run.join(".curves.tmp.png");
    // A language model's right panel is its validation perplexity.
    let right = if perplexity.is_empty() {
        ("accuracy %", "train (per epoch)", &train_acc, &val_acc)
    } else {
        ("validation perplexity", "", &train_acc, &perplexity)
    };
    draw(&tmp, &train_loss, &val_loss, right)
        .map_err(|e| Error::format(&out, format!("cannot draw curves: {e}")))?;
    let bytes = std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let _ = std::fs::remove_file(&tmp);
    crate::io::write_atomic(&out, &bytes)
}

fn range(series: &[&Series], pad_zero: bool) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let pts = series
        .iter()
        .flat_map(|s| s.iter())
        .filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if pad_zero {
        y0 = y0.min(0.0);
    }
    let dy = ((y1 - y0) * 0.05).max(1e-6);
    (x0.min(0.0)..x1.max(x0 + 1.0), (y0 - dy)..(y1 + dy))
}

type Panel<'a> = (&'a str, &'a str, &'a Series, &'a Series);

fn draw(
    path: &Path,
    train_loss: &Series,
    val_loss: &Series,
    right: Panel,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    ensure_font();
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right_area) = root.split_horizontally(550);
    let panels = [
        (
            left,
            "loss",
            train_loss,
            val_loss,
            "train (per log window)",
            true,
        ),
        (right_area, right.0, right.2, right.3, right.1, false),
    ];
    for (area, title, train, val, train_label, pad_zero) in panels {
        let (xr, yr) = range(&[train, val], pad_zero);
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xr, yr)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .label_style(("sans-serif", 13))
            .draw()?;
        if !train.is_empty() {
            chart
                .draw_series(LineSeries::new(train.iter().copied(), BLUE.stroke_width(2)))?
                .label(train_label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
        }
        chart
            .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
