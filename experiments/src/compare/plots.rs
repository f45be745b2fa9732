//! The comparison's SVG plots, per task: test accuracy against wall time and against API calls
//! (one point per method: the mean over seeds, with a bar from the lowest to the highest seed),
//! and the training curves of BBT, BBTv2 and the BBT-RGB preset (mean over seeds, shaded
//! between the lowest and the highest).

use std::path::Path;

use bbt_client::tune::checkpoint::CurvePoint;
use plotters::prelude::*;

use super::results::Finished;
use super::Grid;

/// The plot files of `task` and what each shows.
pub fn files(task: &str) -> Vec<(String, &'static str)> {
    vec![
        (
            format!("{task}-accuracy-vs-time.svg"),
            "test accuracy against wall time",
        ),
        (
            format!("{task}-accuracy-vs-calls.svg"),
            "test accuracy against API calls",
        ),
        (
            format!("{task}-black-box-curves.svg"),
            "the black-box methods' training loss against API calls",
        ),
    ]
}

/// Writes every plot that has data among `results`.
pub fn write_all(out: &Path, grid: &Grid, results: &[Finished]) -> anyhow::Result<()> {
    for task in &grid.tasks {
        let names = files(task);
        let of_task: Vec<&Finished> = results.iter().filter(|r| &r.summary.task == task).collect();
        let points = |x: &dyn Fn(&Finished) -> Option<f64>| -> Vec<MethodPoint> {
            grid.methods
                .iter()
                .filter_map(|m| {
                    let runs: Vec<(f64, f64)> = of_task
                        .iter()
                        .filter(|r| &r.summary.method == m)
                        .filter_map(|r| Some((x(r)?, r.summary.test_accuracy? * 100.0)))
                        .collect();
                    MethodPoint::new(m, &runs)
                })
                .collect()
        };
        let by_time = points(&|r| Some(r.summary.wall_seconds));
        scatter(
            &out.join(&names[0].0),
            &by_time,
            &format!("{task}: test accuracy against wall time"),
            "wall time per run (s, log scale)",
        )?;
        let by_calls = points(&|r| (r.summary.api_calls > 0).then_some(r.summary.api_calls as f64));
        scatter(
            &out.join(&names[1].0),
            &by_calls,
            &format!("{task}: test accuracy against API calls"),
            "API calls per run (log scale)",
        )?;
        let mut curves = Vec::new();
        for method in ["bbt", "bbtv2", "bbt-rgb"] {
            let runs: Vec<Vec<CurvePoint>> = of_task
                .iter()
                .filter(|r| r.summary.method == method && !r.curve.is_empty())
                .map(|r| r.curve.clone())
                .collect();
            if !runs.is_empty() {
                curves.push((method, runs));
            }
        }
        band_plot(
            &out.join(&names[2].0),
            &curves,
            &format!("{task}: BBT and BBTv2 training loss (mean over seeds, min-max shaded)"),
        )?;
    }
    Ok(())
}

/// One method on a scatter plot.
struct MethodPoint {
    name: String,
    x: f64,
    mean: f64,
    low: f64,
    high: f64,
}

impl MethodPoint {
    fn new(name: &str, runs: &[(f64, f64)]) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        let n = runs.len() as f64;
        let ys = runs.iter().map(|r| r.1);
        Some(Self {
            name: name.into(),
            x: runs.iter().map(|r| r.0).sum::<f64>() / n,
            mean: ys.clone().sum::<f64>() / n,
            low: ys.clone().fold(f64::INFINITY, f64::min),
            high: ys.fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

fn y_range(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 100.0)
    };
    let pad = ((hi - lo) * 0.1).max(1.0);
    (lo - pad).max(0.0)..(hi + pad).min(100.0)
}

fn scatter(path: &Path, points: &[MethodPoint], title: &str, x_label: &str) -> anyhow::Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_lo = points
        .iter()
        .map(|p| p.x)
        .fold(f64::INFINITY, f64::min)
        .max(1e-3);
    let x_hi = points
        .iter()
        .map(|p| p.x)
        .fold(0.0, f64::max)
        .max(x_lo * 10.0);
    let ys = y_range(
        points.iter().map(|p| p.low).fold(f64::INFINITY, f64::min),
        points
            .iter()
            .map(|p| p.high)
            .fold(f64::NEG_INFINITY, f64::max),
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((x_lo / 1.5..x_hi * 3.0).log_scale(), ys)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("test accuracy (%)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (i, p) in points.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(p.x, p.low), (p.x, p.high)],
            color.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Circle::new(
            (p.x, p.mean),
            5,
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            p.name.clone(),
            (p.x * 1.08, p.mean),
            ("sans-serif", 14).into_font().color(&BLACK),
        )))?;
    }
    root.present()?;
    Ok(())
}

type Curves<'a> = [(&'a str, Vec<Vec<CurvePoint>>)];

/// A point of a seed band: API calls, mean, lowest and highest loss over the seeds.
type BandPoint = (f64, f64, f64, f64);

fn band_plot(path: &Path, curves: &Curves, title: &str) -> anyhow::Result<()> {
    if curves.is_empty() {
        return Ok(());
    }
    // Per method: x, mean, min, max over the seeds' curves (aligned point by point).
    let series: Vec<(&str, Vec<BandPoint>)> = curves
        .iter()
        .map(|(name, runs)| {
            let len = runs.iter().map(Vec::len).min().unwrap_or(0);
            let points = (0..len)
                .map(|i| {
                    let ys: Vec<f64> = runs.iter().map(|r| r[i].train_loss).collect();
                    let mean = ys.iter().sum::<f64>() / ys.len() as f64;
                    let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    (runs[0][i].api_calls as f64, mean, lo, hi)
                })
                .collect();
            (*name, points)
        })
        .collect();
    let x_hi = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0, f64::max);
    let lo = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.2))
        .fold(f64::INFINITY, f64::min);
    let hi = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.3))
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.05;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_hi, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("API calls (training)")
        .y_desc("best training loss of the generation")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i);
        let mut band: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.3)).collect();
        band.extend(points.iter().rev().map(|p| (p.0, p.2)));
        chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.2).filled())))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
