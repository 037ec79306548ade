//! `synapswap plan --plot FILE.svg`: predicted tokens/s against the VRAM budget, one line per
//! policy, drawn with the `plotters` crate (its SVG backend).

use plotters::prelude::*;
use synapswap::plan::PolicyPrediction;

/// Writes the sweep as an SVG line chart to `path`.
pub fn tokens_per_s_against_vram(
    path: &std::path::Path,
    title: &str,
    sweep: &[(u64, Vec<PolicyPrediction>)],
) -> Result<(), String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let x_max = sweep.last().map_or(1.0, |s| gib(s.0)).max(1e-3);
    let y_max = sweep
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| p.tokens_per_s))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let mut policies: Vec<&'static str> = Vec::new();
    for (_, ps) in sweep {
        for p in ps {
            if !policies.contains(&p.policy) {
                policies.push(p.policy);
            }
        }
    }
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("VRAM budget (GiB)")
        .y_desc("predicted tokens/s")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, name) in policies.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = sweep
            .iter()
            .filter_map(|(b, ps)| {
                ps.iter()
                    .find(|p| p.policy == *name)
                    .map(|p| (gib(*b), p.tokens_per_s))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
