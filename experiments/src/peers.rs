//! Peer measurements: Python scripts in `experiments/peers/` run in the same benchmark run,
//! each printing JSON lines.

use serde_json::Value;

/// Runs `experiments/peers/{script}` with `$BBT_PYTHON` (default `python3`) and returns its JSON
/// lines; `Err` says why the peer could not run.
pub fn run_python(script: &str, args: &[String]) -> Result<Vec<Value>, String> {
    let path = format!("{}/peers/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("BBT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{script} printed `{l}`: {e}")))
        .collect()
}
