//! `bbt quickstart` as a user runs it: a child `bbt serve` with the real default model, MR
//! 16-shot, the `quick` preset. BBT must beat the manual prompt's zero-shot test accuracy by at
//! least 5 points on the 1,000 held-out test sentences. (Its wall time is reported in README,
//! not asserted.)

use std::process::Command;

#[test]
fn quickstart_beats_the_zero_shot_manual_prompt_by_five_points() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let output = Command::new(env!("CARGO_BIN_EXE_bbt"))
        .args([
            "quickstart",
            "--quiet",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "quickstart failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let zero_shot = result["zero_shot_test_accuracy"].as_f64().unwrap();
    let bbt = result["test_accuracy"].as_f64().unwrap();
    eprintln!(
        "quickstart: zero-shot {zero_shot:.3}, BBT {bbt:.3}, {} calls, {:.0} s",
        result["api_calls"], result["wall_seconds"]
    );
    assert!(
        bbt >= zero_shot + 0.05,
        "BBT {bbt:.3} does not beat zero-shot {zero_shot:.3} by 5 points"
    );
    assert_eq!(result["task"], "mr");
    assert!(result["curve"].as_array().unwrap().len() >= 10);
    for file in [
        "result.json",
        "best_prompt.json",
        "best_prompt.safetensors",
        "curve.svg",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
}
