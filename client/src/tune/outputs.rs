//! What a run leaves in its output folder: `result.json`, the best prompt (`best_prompt.json`
//! with z and the session settings; for BBT `best_prompt.safetensors` with the full
//! L x hidden prompt)
//! and `curve.svg` (training loss and dev accuracy against API calls).

use std::collections::HashMap;
use std::path::Path;

use bbt::protocol::{CandidateResult, CreateSessionRequest};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CurvePoint, TestPoint};
use super::config::TuneConfig;
use crate::summary::RunSummary;

/// `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneResult {
    /// The fields every run's result has; `api_calls` counts training, dev, test and zero-shot
    /// calls, `trainable_params` the numbers CMA-ES searches (`d`, or `layers * d` for BBTv2).
    #[serde(flatten)]
    pub summary: RunSummary,
    pub zero_shot_test_accuracy: Option<f64>,
    pub best_train_loss: f64,
    pub curve: Vec<CurvePoint>,
    /// The test accuracy at the config's `test_at` milestones (the final one is the summary's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_curve: Vec<TestPoint>,
    pub config: TuneConfig,
}

impl TuneResult {
    /// The summary of a finished run.
    pub fn new(
        state: &Checkpoint,
        test: Option<CandidateResult>,
        test_examples: Option<usize>,
    ) -> Self {
        Self {
            summary: RunSummary {
                method: if state.config.deep { "bbtv2" } else { "bbt" }.into(),
                task: state.config.task.clone(),
                seed: state.config.seed,
                budget: state.config.budget,
                api_calls: state.train_calls + state.other_calls,
                train_api_calls: state.train_calls,
                best_dev_accuracy: state.best().map(|b| b.dev_accuracy),
                test_accuracy: test.as_ref().map(|t| t.accuracy),
                test_f1: test.and_then(|t| t.f1),
                test_examples,
                wall_seconds: state.wall_seconds,
                bytes_up: state.bytes_up,
                bytes_down: state.bytes_down,
                peak_rss_mb: peak_rss_mb(),
                trainable_params: Some(state.searches.len() * state.config.intrinsic_dim),
                notes: Vec::new(),
            },
            zero_shot_test_accuracy: state.zero_shot_test_accuracy,
            best_train_loss: state.best_train_loss,
            curve: state.curve.clone(),
            test_curve: state.test_curve.clone(),
            config: state.config.clone(),
        }
    }
}

/// `best_prompt.json`: enough to use the prompt again with `bbt eval` (a deep prompt's `z`
/// holds every layer's, layer by layer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPrompt {
    /// The session settings the prompt belongs to (its task is replaced by `bbt eval --task`).
    pub session: CreateSessionRequest,
    pub z: Vec<f32>,
    pub best_dev_accuracy: Option<f64>,
}

/// Peak resident set size (`VmHWM`) in MiB, where /proc tells it.
pub fn peak_rss_mb() -> Option<f64> {
    peak_rss_mb_of("self")
}

/// `VmHWM` of a process (`self` or a pid) in MiB.
pub fn peak_rss_mb_of(process: &str) -> Option<f64> {
    proc_status_mb(process, "VmHWM:")
}

/// Resident set size now (`VmRSS`) of this process in MiB, where /proc tells it.
pub fn rss_mb() -> Option<f64> {
    proc_status_mb("self", "VmRSS:")
}

/// A memory field of `/proc/{process}/status` (given in kB there) in MiB.
fn proc_status_mb(process: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Writes `result.json`, the best prompt files and `curve.svg`.
pub fn write_all(
    dir: &Path,
    result: &TuneResult,
    state: &Checkpoint,
    z: &[f32],
    prompt: Option<&[Vec<f32>]>,
) -> anyhow::Result<()> {
    write_json(&dir.join("result.json"), result)?;
    let saved = SavedPrompt {
        session: state.session_request.clone(),
        z: z.to_vec(),
        best_dev_accuracy: result.summary.best_dev_accuracy,
    };
    write_json(&dir.join("best_prompt.json"), &saved)?;
    if let Some(prompt) = prompt {
        write_prompt_safetensors(&dir.join(PROMPT_FILE), prompt, &result.summary.task)?;
    }
    let points: Vec<CurveXy> = result
        .curve
        .iter()
        .map(|p| (p.api_calls as f64, p.train_loss, p.dev_accuracy))
        .collect();
    plot_curve(
        &dir.join("curve.svg"),
        &points,
        &format!(
            "bbt on {}: training loss and dev accuracy",
            result.summary.task
        ),
        "API calls (training)",
        "best training loss of the generation",
    )?;
    Ok(())
}

/// Writes `value` as pretty JSON through a temporary file and a rename (never half-written).
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The `[L, hidden]` prompt a BBT run saved, from its folder or its `best_prompt.safetensors`;
/// an error unless it has `expected_len` rows.
pub fn read_prompt(path: &Path, expected_len: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let file = if path.is_dir() {
        path.join(PROMPT_FILE)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the prompt to start from, {}: {e} (BBT runs save it as {PROMPT_FILE})",
            file.display()
        )
    })?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", file.display()))?;
    let prompt = tensors
        .tensor("prompt")
        .map_err(|e| anyhow::anyhow!("{}: no `prompt` tensor: {e}", file.display()))?;
    let (rows, hidden) = match prompt.shape() {
        [rows, hidden] if prompt.dtype() == safetensors::Dtype::F32 => (*rows, *hidden),
        shape => anyhow::bail!(
            "{}: `prompt` must be an f32 [L, hidden] matrix, it is {:?} {shape:?}",
            file.display(),
            prompt.dtype()
        ),
    };
    anyhow::ensure!(
        rows == expected_len,
        "{} holds {rows} prompt vectors; this run's prompt length is {expected_len} (set it to \
         match)",
        file.display()
    );
    let values: Vec<f32> = prompt
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(values.chunks(hidden.max(1)).map(<[f32]>::to_vec).collect())
}

/// The file a BBT run keeps its full prompt in.
pub const PROMPT_FILE: &str = "best_prompt.safetensors";

/// The prompt as one f32 tensor `prompt` of shape `[L, hidden]`.
fn write_prompt_safetensors(path: &Path, prompt: &[Vec<f32>], task: &str) -> anyhow::Result<()> {
    let metadata = HashMap::from([("task".to_string(), task.to_string())]);
    write_rows_safetensors(path, "prompt", prompt, Some(metadata))
}

/// Writes `rows` (all of one length) as the f32 tensor `name` of shape `[rows, length]`.
pub fn write_rows_safetensors(
    path: &Path,
    name: &str,
    rows: &[Vec<f32>],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    let (count, width) = (rows.len(), rows.first().map_or(0, Vec::len));
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![count, width], &bytes)?;
    safetensors::serialize_to_file([(name, view)], metadata, path)?;
    Ok(())
}

/// One point of a training curve: x (API calls or steps), training loss, dev accuracy if
/// evaluated there.
pub type CurveXy = (f64, f64, Option<f64>);

/// Training loss (left axis) and dev accuracy (right axis) against `x_label` (API calls for
/// `bbt tune`, optimizer steps for the gradient methods).
pub fn plot_curve(
    path: &Path,
    curve: &[CurveXy],
    title: &str,
    x_label: &str,
    loss_label: &str,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_calls = curve.last().map_or(1.0, |p| p.0).max(1.0);
    let losses: Vec<(f64, f64)> = curve.iter().map(|p| (p.0, p.1)).collect();
    let (lo, hi) = losses
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..max_calls, (lo - pad)..(hi + pad))?
        .set_secondary_coord(0.0..max_calls, 0.0..100.0);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(loss_label)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("dev accuracy (%)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(losses, &BLUE))?
        .label("training loss")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    let dev: Vec<(f64, f64)> = curve
        .iter()
        .filter_map(|p| p.2.map(|a| (p.0, 100.0 * a)))
        .collect();
    chart
        .draw_secondary_series(LineSeries::new(dev.clone(), &RED))?
        .label("best dev accuracy")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_secondary_series(dev.into_iter().map(|p| Circle::new(p, 3, RED.filled())))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod prompt_file_tests {
    use super::*;

    #[test]
    fn a_saved_prompt_reads_back_and_a_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let prompt: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..4).map(|j| (i * 4 + j) as f32 - 5.5).collect())
            .collect();
        write_prompt_safetensors(&dir.path().join(PROMPT_FILE), &prompt, "mr").unwrap();
        assert_eq!(read_prompt(dir.path(), 3).unwrap(), prompt);
        assert_eq!(
            read_prompt(&dir.path().join(PROMPT_FILE), 3).unwrap(),
            prompt
        );
        let err = read_prompt(dir.path(), 5).unwrap_err().to_string();
        assert!(err.contains("holds 3 prompt vectors"), "{err}");
        let missing = read_prompt(&dir.path().join("nothing"), 3).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        std::fs::write(dir.path().join("bad.safetensors"), b"not a file").unwrap();
        assert!(read_prompt(&dir.path().join("bad.safetensors"), 3).is_err());
    }
}
