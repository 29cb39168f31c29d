//! `curves.png`: training and validation loss (left) and accuracy (right) from `metrics.jsonl`.

use super::metrics::{read_records, Record};
use crate::draw::{self, bounds, Canvas, DrawResult, Padding};
use crate::Result;
use plotters::prelude::*;
use std::path::Path;

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
            Record::Test { .. } => {}
        }
    }
    let out = run.join("curves.png");
    // A language model's right panel is its validation perplexity.
    let right = if perplexity.is_empty() {
        ("accuracy %", "train (per epoch)", &train_acc, &val_acc)
    } else {
        ("validation perplexity", "", &train_acc, &perplexity)
    };
    draw::write_png(&out, (1100, 420), "curves", |root| {
        panels(root, &train_loss, &val_loss, right)
    })
}

type Panel<'a> = (&'a str, &'a str, &'a Series, &'a Series);

/// Loss on the left, `right` on the right.
fn panels(root: &Canvas, train_loss: &Series, val_loss: &Series, right: Panel) -> DrawResult {
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
        let points = train.iter().chain(val).copied().filter(|p| p.1.is_finite());
        let pad = Padding {
            span: 0.05,
            top: 0.0,
            from_zero: pad_zero,
        };
        let (xr, yr) = bounds(points, pad);
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
    Ok(())
}
