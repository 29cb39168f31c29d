//! The report's charts, drawn in memory as PNG bytes: curves over training steps (with the
//! gap between two of them shaded) and a hyper-parameter's values against a sweep's metric.

use crate::draw::{self, bounds, Canvas, DrawResult, Padding};
use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type Points = Vec<(f64, f64)>;

pub const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
pub const TRAIN_LIGHT: RGBColor = RGBColor(158, 202, 225);
pub const VAL_COLOR: RGBColor = RGBColor(214, 39, 40);
const OTHER_COLOR: RGBColor = RGBColor(150, 150, 150);
const SIZE: (u32, u32) = (920, 380);

pub struct Series {
    pub label: String,
    pub points: Points,
    pub color: RGBColor,
    /// Main series are drawn thick with a marker at every point; others thin, as context.
    pub main: bool,
}

/// A shaded region between two curves sampled at the same steps.
pub struct Band {
    pub label: String,
    pub lower: Points,
    pub upper: Points,
    pub color: RGBColor,
}

pub struct LineChart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    pub band: Option<Band>,
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
}

/// A little room above and below the points.
const PADDING: Padding = Padding {
    span: 0.06,
    top: 0.01,
    from_zero: false,
};

/// Runs `paint` on a white canvas of `size` and returns the PNG.
fn render(size: (u32, u32), paint: impl FnOnce(&Canvas) -> DrawResult) -> Result<Vec<u8>> {
    draw::png(size, |root| {
        paint(root).map_err(|e| Error::Invalid(format!("cannot draw a chart: {e}")))
    })
}

/// The corner where a legend of `entries` lines, the longest `chars` characters, hides the
/// fewest of `points` (matplotlib's `loc="best"`, by corners). Points are fractions of a plot
/// of `plot` pixels: x from the left, y from the bottom.
pub fn legend_corner(
    points: &[(f64, f64)],
    plot: (u32, u32),
    entries: usize,
    chars: usize,
) -> SeriesLabelPosition {
    // DejaVu Sans Mono at 13 px is about 8 px a character; the swatch and padding add ~44.
    let w = (chars as f64 * 8.0 + 44.0) / plot.0 as f64;
    let h = (entries as f64 * 19.0 + 12.0) / plot.1 as f64;
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let hidden = |right: bool, upper: bool| {
        points
            .iter()
            .filter(|&&(x, y)| {
                let in_x = if right { x >= 1.0 - w } else { x <= w };
                let in_y = if upper { y >= 1.0 - h } else { y <= h };
                in_x && in_y
            })
            .count()
    };
    // min_by_key keeps the first of equals: upper right unless another corner is emptier.
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| hidden(right, upper))
        .map_or(SeriesLabelPosition::UpperRight, |c| c.0)
}

/// `p` as fractions of the ranges.
fn fraction(p: (f64, f64), xr: &std::ops::Range<f64>, yr: &std::ops::Range<f64>) -> (f64, f64) {
    (
        (p.0 - xr.start) / (xr.end - xr.start),
        (p.1 - yr.start) / (yr.end - yr.start),
    )
}

/// Curves over steps; the band (if any) is drawn first, under them.
pub fn line_chart(c: &LineChart) -> Result<Vec<u8>> {
    let labelled =
        c.series.iter().filter(|s| !s.points.is_empty()).count() + c.band.is_some() as usize;
    // A tall legend gets a taller chart, so that it leaves room for the curves.
    let size = (SIZE.0, SIZE.1.max(170 + 22 * labelled as u32));
    render(size, |root| {
        let band_points = c
            .band
            .iter()
            .flat_map(|b| finite(&b.lower).chain(finite(&b.upper)));
        let all = c
            .series
            .iter()
            .flat_map(|s| finite(&s.points))
            .chain(band_points);
        let (xr, yr) = bounds(all, PADDING);
        // The legend avoids the curves' vertices and the midpoints of their segments.
        let mut occupied = Vec::new();
        for s in &c.series {
            let pts: Points = finite(&s.points).collect();
            occupied.extend(pts.iter().map(|&p| fraction(p, &xr, &yr)));
            occupied.extend(
                pts.windows(2).map(|w| {
                    fraction(((w[0].0 + w[1].0) / 2.0, (w[0].1 + w[1].1) / 2.0), &xr, &yr)
                }),
            );
        }
        let longest = c
            .series
            .iter()
            .map(|s| s.label.chars().count())
            .chain(c.band.iter().map(|b| b.label.chars().count()))
            .max()
            .unwrap_or(0);
        let plot = (size.0 - 88, size.1 - 100);
        let corner = legend_corner(&occupied, plot, labelled, longest);
        let mut chart = ChartBuilder::on(root)
            .caption(&c.title, ("sans-serif", 19))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(xr, yr)?;
        chart
            .configure_mesh()
            .x_desc(c.x_desc.as_str())
            .y_desc(c.y_desc.as_str())
            .x_label_formatter(&|x| short_number(*x))
            .label_style(("sans-serif", 13))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;
        if let Some(b) = &c.band {
            let outline: Points = finite(&b.lower)
                .chain(finite(&b.upper).collect::<Vec<_>>().into_iter().rev())
                .collect();
            if outline.len() >= 3 {
                let fill = b.color.mix(0.2).filled();
                chart
                    .draw_series(std::iter::once(Polygon::new(outline, fill)))?
                    .label(b.label.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], fill));
            }
        }
        for s in &c.series {
            let pts: Points = finite(&s.points).collect();
            if pts.is_empty() {
                continue;
            }
            let width = if s.main { 2 } else { 1 };
            let style = s.color.stroke_width(width);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            if s.main {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, s.color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(corner)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        Ok(())
    })
}

/// How a point of a sweep chart is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A finished trial.
    Done,
    /// The best finished trial.
    Best,
    /// Pruned or still running: its metric comes from a smaller budget.
    Partial,
}

/// The x axis of a hyper-parameter chart.
pub enum XAxis {
    Linear,
    /// For values spanning decades (learning rates, weight decays).
    Log,
    /// Values that are not numbers, in the order the grid lists them; x is the index.
    Categories(Vec<String>),
}

/// One trial: (x, metric, how it is drawn).
pub type TrialPoint = (f64, f64, Mark);

const MARKS: [(Mark, RGBColor, i32, &str); 3] = [
    (
        Mark::Partial,
        OTHER_COLOR,
        4,
        "pruned or unfinished (smaller budget)",
    ),
    (Mark::Done, TRAIN_COLOR, 5, "finished trial"),
    (Mark::Best, VAL_COLOR, 8, "best trial"),
];

/// Draws the trials' points (the best last, on top) with one legend entry per kind of mark,
/// on any x coordinate: `$x` maps a point's x to the chart's.
macro_rules! draw_marks {
    ($chart:expr, $points:expr, $x:expr, $corner:expr) => {{
        for (kind, color, radius, label) in MARKS {
            let pts: Vec<_> = $points.iter().filter(|p| p.2 == kind).collect();
            if pts.is_empty() {
                continue;
            }
            $chart
                .draw_series(
                    pts.iter()
                        .map(|p| Circle::new(($x(p.0), p.1), radius, color.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 9, y), radius.min(6), color.filled()));
        }
        $chart
            .configure_series_labels()
            .position($corner)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }};
}

/// A hyper-parameter's value (x) against the sweep's metric (y), one point per trial. Numeric
/// axes are labelled at the values tried.
pub fn scatter_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    axis: &XAxis,
    points: &[TrialPoint],
) -> Result<Vec<u8>> {
    if points.is_empty() {
        return Err(Error::Invalid(format!(
            "{title}: no trial has a metric to plot"
        )));
    }
    let size = (620, 360);
    let plot = (size.0 - 92, size.1 - 100);
    let kinds: Vec<&str> = MARKS
        .iter()
        .filter(|m| points.iter().any(|p| p.2 == m.0))
        .map(|m| m.3)
        .collect();
    let longest = kinds.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    render(size, |root| {
        let (_, yr) = bounds(points.iter().map(|p| (0.0, p.1)), PADDING);
        let mut builder = ChartBuilder::on(root);
        builder
            .caption(title, ("sans-serif", 17))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64);
        match axis {
            XAxis::Categories(names) => {
                let k = names.len().max(1) as f64;
                let occupied: Vec<(f64, f64)> = points
                    .iter()
                    .map(|p| ((p.0 + 0.5) / k, fraction((0.0, p.1), &(0.0..1.0), &yr).1))
                    .collect();
                let corner = legend_corner(&occupied, plot, kinds.len(), longest);
                let mut chart =
                    builder.build_cartesian_2d((0..names.len()).into_segmented(), yr)?;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .x_labels(names.len())
                    .x_label_formatter(&|v| match v {
                        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                            names.get(*i).cloned().unwrap_or_default()
                        }
                        SegmentValue::Last => String::new(),
                    })
                    .label_style(("sans-serif", 13))
                    .light_line_style(RGBColor(238, 238, 238))
                    .draw()?;
                draw_marks!(
                    chart,
                    points,
                    |x: f64| SegmentValue::CenterOf(x.round() as usize),
                    corner
                );
            }
            XAxis::Linear | XAxis::Log => {
                // A log axis is log10 of the values on a linear one, labelled with the values.
                let log = matches!(axis, XAxis::Log);
                let to_axis = |x: f64| if log { x.log10() } else { x };
                let mut ticks: Vec<f64> = points.iter().map(|p| to_axis(p.0)).collect();
                ticks.sort_by(f64::total_cmp);
                ticks.dedup();
                let every = ticks.len().div_ceil(10);
                let ticks: Vec<f64> = ticks.into_iter().step_by(every).collect();
                let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
                    (a.min(to_axis(p.0)), b.max(to_axis(p.0)))
                });
                let pad = ((hi - lo) * 0.1).max(if log { 0.15 } else { hi.abs() * 0.1 + 1e-9 });
                let xr = (lo - pad)..(hi + pad);
                let occupied: Vec<(f64, f64)> = points
                    .iter()
                    .map(|p| fraction((to_axis(p.0), p.1), &xr, &yr))
                    .collect();
                let corner = legend_corner(&occupied, plot, kinds.len(), longest);
                let mut chart = builder.build_cartesian_2d(xr, yr.clone())?;
                let desc = if log {
                    format!("{x_desc} (log scale)")
                } else {
                    x_desc.to_string()
                };
                chart
                    .configure_mesh()
                    .x_desc(desc)
                    .y_desc(y_desc)
                    .x_labels(0)
                    .disable_x_mesh()
                    .label_style(("sans-serif", 13))
                    .light_line_style(RGBColor(238, 238, 238))
                    .draw()?;
                // Grid lines and labels at the values tried, where plotters' own ticks would
                // fall between them.
                chart.draw_series(ticks.iter().map(|&u| {
                    PathElement::new(vec![(u, yr.start), (u, yr.end)], RGBColor(220, 220, 220))
                }))?;
                let tick_font = ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top));
                for &u in &ticks {
                    let (px, py) = chart.backend_coord(&(u, yr.start));
                    let value = if log { 10f64.powf(u) } else { u };
                    root.draw(&Text::new(
                        short_number(value),
                        (px, py + 6),
                        tick_font.clone(),
                    ))?;
                }
                draw_marks!(chart, points, to_axis, corner);
            }
        }
        Ok(())
    })
}

/// A number in few characters: `0.001` → "1e-3", `0.03` → "0.03", `256` → "256".
pub fn short_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if !(1e-2..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        // "1.0e-3" → "1e-3": the trailing ".0" says nothing.
        return s.replace(".0e", "e");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(short_number(0.001), "1e-3");
        assert_eq!(short_number(0.0003), "3e-4");
        assert_eq!(short_number(0.03), "0.03");
        assert_eq!(short_number(256.0), "256");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(0.0), "0");
    }

    #[test]
    fn legends_go_where_they_hide_the_fewest_points() {
        let plot = (800, 300);
        assert_eq!(
            legend_corner(&[], plot, 3, 20),
            SeriesLabelPosition::UpperRight
        );
        // A rising curve fills the upper right and the lower left.
        let rising: Vec<(f64, f64)> = (0..=10)
            .map(|i| (i as f64 / 10.0, i as f64 / 10.0))
            .collect();
        assert_eq!(
            legend_corner(&rising, plot, 3, 20),
            SeriesLabelPosition::UpperLeft
        );
        let mut busy = rising.clone();
        busy.extend([(0.05, 0.95), (0.1, 0.9)]);
        assert_eq!(
            legend_corner(&busy, plot, 3, 20),
            SeriesLabelPosition::LowerRight
        );
    }

    #[test]
    fn charts_decode_as_pngs_even_without_points() {
        let chart = LineChart {
            title: "loss".into(),
            x_desc: "step".into(),
            y_desc: "loss".into(),
            series: vec![Series {
                label: "validation".into(),
                points: vec![(10.0, 2.0), (20.0, 1.5), (30.0, f64::NAN)],
                color: VAL_COLOR,
                main: true,
            }],
            band: Some(Band {
                label: "gap".into(),
                lower: vec![(10.0, 1.9), (20.0, 1.2)],
                upper: vec![(10.0, 2.0), (20.0, 1.5)],
                color: VAL_COLOR,
            }),
        };
        let img = image::load_from_memory(&line_chart(&chart).unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), SIZE);
        let empty = LineChart {
            series: Vec::new(),
            band: None,
            ..chart
        };
        assert!(image::load_from_memory(&line_chart(&empty).unwrap()).is_ok());

        let pts = [(1e-3, 0.9, Mark::Done), (1e-2, 0.95, Mark::Best)];
        for axis in [
            XAxis::Linear,
            XAxis::Log,
            XAxis::Categories(vec!["[64]".into(), "[128]".into()]),
        ] {
            let pts: Vec<TrialPoint> = match axis {
                XAxis::Categories(_) => vec![(0.0, 0.9, Mark::Done), (1.0, 0.8, Mark::Partial)],
                _ => pts.to_vec(),
            };
            let png = scatter_chart("lr", "optim.lr", "val_accuracy", &axis, &pts).unwrap();
            assert!(image::load_from_memory(&png).is_ok());
        }
    }
}
