//! The finished cells of a comparison, read once from their `result.json` files for the report
//! and the plots.

use std::path::Path;

use bbt_client::summary::RunSummary;
use bbt_client::tune::checkpoint::CurvePoint;

use super::plan::{cells, Cell};
use super::Grid;

/// A finished cell's summary, its test accuracy at earlier budgets, and the local server's
/// peak memory when it ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub summary: RunSummary,
    /// `(training calls, test accuracy)` at a black-box run's `test_at` milestones.
    pub test_curve: Vec<(u64, f64)>,
    /// A black-box run's training curve (empty for other methods).
    pub curve: Vec<CurvePoint>,
    pub server_peak_rss_mb: Option<f64>,
}

/// Every finished cell of `grid` under `out`; a result that does not parse is an error naming
/// its file.
pub fn load(out: &Path, grid: &Grid) -> anyhow::Result<Vec<Finished>> {
    let mut found = Vec::new();
    for cell in cells(&grid.tasks, &grid.methods, &grid.seeds) {
        if let Some(f) = load_cell(out, &cell)? {
            found.push(f);
        }
    }
    Ok(found)
}

fn load_cell(out: &Path, cell: &Cell) -> anyhow::Result<Option<Finished>> {
    let dir = cell.dir(out);
    let path = dir.join("result.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let mut summary: RunSummary = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a run result: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let test_curve = value["test_curve"]
        .as_array()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| Some((p["api_calls"].as_u64()?, p["test_accuracy"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let curve = value
        .get("curve")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    // A prompt-transfer run is a BBT run; the grid knows it by its cell's name.
    summary.method.clone_from(&cell.method);
    let server_peak_rss_mb = std::fs::read_to_string(dir.join("server.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["server_peak_rss_mb"].as_f64());
    Ok(Some(Finished {
        summary,
        test_curve,
        curve,
        server_peak_rss_mb,
    }))
}
