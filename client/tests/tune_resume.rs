//! `bbt tune` end to end with real processes: a `bbt serve` child with the real default model,
//! real HTTP, a small task of real SST-2 sentences. A run killed midway (client and server) and
//! resumed with `--resume` ends with exactly the result of an uninterrupted run; so does a run
//! whose server is killed and restarted under it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    generations_logged, outcome, run_to_end, serve, serve_with, tune_args, wait_for_generations,
    write_task, BBT, BBT_RUN,
};
use serde_json::Value;

/// BBTv2's small run: one round of one 6-call generation per layer (30 layers), dev every 60.
const BBTV2_RUN: &[&str] = &[
    "--preset",
    "bbtv2",
    "--budget",
    "180",
    "--popsize",
    "6",
    "--intrinsic-dim",
    "16",
    "--prompt-length",
    "2",
    "--dev-every",
    "60",
];

/// BBT-RGB's two-stage search: 3 CMA-ES generations of 6 (18 calls), then 48 COBYLA calls,
/// reported 6 at a time (8 more curve points): the kills below land in the local search.
const TWO_STAGE_RUN: &[&str] = &[
    "--preset",
    "quick",
    "--budget",
    "66",
    "--local-calls",
    "48",
    "--popsize",
    "6",
    "--intrinsic-dim",
    "16",
    "--prompt-length",
    "2",
    "--dev-every",
    "12",
];

/// `bbt tune --resume out` against `server`, to the end.
fn resume_to_end(server: &str, out: &Path) {
    let args = [
        "tune",
        "--server",
        server,
        "--resume",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from);
    run_to_end(&args);
}

/// Runs `run` uninterrupted, killed and resumed, and across a server restart: the three must
/// end identically, and `bbt eval` must score the saved prompt as the run did.
fn interrupted_runs_match_the_uninterrupted_one(
    run: &[&str],
    method: &str,
    generations: usize,
    files: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let Some(task) = write_task(dir.path(), method) else {
        return;
    };

    // Reference: uninterrupted.
    let server = serve("127.0.0.1:0");
    let reference = dir.path().join("reference");
    run_to_end(&tune_args(server.url(), &task, &reference, run));
    let expected = outcome(&reference);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["method"], method);
    let curve = expected.0["curve"].as_array().unwrap();
    assert_eq!(curve.len(), generations);
    assert!(expected.0["test_accuracy"].as_f64().is_some());
    for file in files {
        assert!(reference.join(file).exists(), "{file} written");
    }
    // `bbt eval` scores the saved prompt on the test split exactly as the run did.
    let prompt_file = reference.join("best_prompt.json");
    let eval = Command::new(BBT)
        .args([
            "eval",
            "--server",
            server.url(),
            "--prompt",
            prompt_file.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let scored: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(scored["accuracy"], expected.0["test_accuracy"]);
    assert_eq!(scored["examples"], 24);

    // Kill the client and the server midway; resume against a new server.
    let interrupted = dir.path().join("interrupted");
    let mut client = Command::new(BBT)
        .args(tune_args(server.url(), &task, &interrupted, run))
        .spawn()
        .unwrap();
    wait_for_generations(&interrupted, generations * 3 / 8);
    client.kill().unwrap();
    client.wait().unwrap();
    drop(server);
    let done = generations_logged(&interrupted);
    assert!(
        done < generations,
        "killed before the end ({done} generations)"
    );
    let server = serve("127.0.0.1:0");
    resume_to_end(server.url(), &interrupted);
    assert_eq!(outcome(&interrupted), expected, "resumed run differs");

    // Kill only the server mid-run and bring it back on the same address: the client retries,
    // recreates its session and finishes with the same result.
    let addr = server.url().trim_start_matches("http://").to_string();
    let flaky = dir.path().join("flaky");
    let mut client = Command::new(BBT)
        .args(tune_args(server.url(), &task, &flaky, run))
        .spawn()
        .unwrap();
    wait_for_generations(&flaky, generations / 4);
    drop(server);
    let _server = serve(&addr);
    assert!(client.wait().unwrap().success(), "the client survived");
    assert_eq!(
        outcome(&flaky),
        expected,
        "run across a server restart differs"
    );
}

#[test]
fn killed_and_resumed_runs_end_exactly_like_an_uninterrupted_run() {
    interrupted_runs_match_the_uninterrupted_one(
        BBT_RUN,
        "bbt",
        8,
        &["curve.svg", "best_prompt.safetensors", "checkpoint.json"],
    );
}

#[test]
fn bbtv2_runs_resume_exactly_too() {
    interrupted_runs_match_the_uninterrupted_one(
        BBTV2_RUN,
        "bbtv2",
        30,
        &["curve.svg", "best_prompt.json", "checkpoint.json"],
    );
}

#[test]
fn two_stage_runs_resume_exactly_in_the_local_search() {
    interrupted_runs_match_the_uninterrupted_one(
        TWO_STAGE_RUN,
        "bbt",
        11,
        &["curve.svg", "best_prompt.safetensors", "checkpoint.json"],
    );
}

#[test]
fn bad_flags_and_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let fail = |args: &[&str]| {
        let out = Command::new(BBT).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = fail(&["tune", "--server", "not a url", "--task", "mr"]);
    assert!(err.contains("not a URL"), "{err}");
    let err = fail(&[
        "tune",
        "--server",
        "http://127.0.0.1:9",
        "--resume",
        dir.path().to_str().unwrap(),
    ]);
    assert!(err.contains("no checkpoint"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{").unwrap();
    let err = fail(&[
        "eval",
        "--server",
        "http://127.0.0.1:9",
        "--prompt",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("not a bbt best_prompt.json"), "{err}");
    let err = fail(&[
        "tune",
        "--server",
        "http://127.0.0.1:9",
        "--task",
        "mr",
        "--budget",
        "0",
    ]);
    assert!(err.contains("budget"), "{err}");
    // Nothing listening: one clear line at once (no minute of retries), no folder left behind.
    let out = dir.path().join("never-started");
    let err = fail(&[
        "tune",
        "--server",
        "http://127.0.0.1:9",
        "--task",
        "mr",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("is bbt-server running at http://127.0.0.1:9?") && !err.contains("retrying"),
        "{err}"
    );
    assert!(!out.exists(), "a failed start leaves no folder");
    // A local file is read before any network call: its error, not the server's.
    let missing = dir.path().join("no-such-task.toml");
    let err = fail(&[
        "tune",
        "--server",
        "http://127.0.0.1:9",
        "--task",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("no-such-task.toml") && !err.contains("bbt-server running"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `--p0-from`: a run starts from the prompt an earlier run saved (sent as p0 vectors), and a
/// prompt of another length is refused before anything runs.
#[test]
fn a_run_starts_from_another_runs_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let Some(task) = write_task(dir.path(), "a_run_starts_from_another_runs_prompt") else {
        return;
    };
    let server = serve("127.0.0.1:0");
    let source = dir.path().join("source");
    run_to_end(&tune_args(server.url(), &task, &source, BBT_RUN));
    let (_, saved) = tensor_values(&source.join("best_prompt.safetensors"), "prompt");

    let transferred = dir.path().join("transferred");
    let mut args = tune_args(server.url(), &task, &transferred, BBT_RUN);
    args.extend([
        "--p0-from".to_string(),
        source.to_str().unwrap().to_string(),
    ]);
    run_to_end(&args);
    let checkpoint: Value = serde_json::from_str(
        &std::fs::read_to_string(transferred.join("checkpoint.json")).unwrap(),
    )
    .unwrap();
    let p0 = &checkpoint["session_request"]["p0"];
    assert_eq!(p0["kind"], "vectors");
    let rows: Vec<Vec<f32>> = serde_json::from_value(p0["rows"].clone()).unwrap();
    assert_eq!(rows.concat(), saved);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(transferred.join("result.json")).unwrap())
            .unwrap();
    assert!(result["test_accuracy"].as_f64().is_some());

    let three: Vec<&str> = BBT_RUN
        .iter()
        .zip(std::iter::once(&"").chain(BBT_RUN))
        .map(|(arg, before)| {
            if *before == "--prompt-length" {
                "3"
            } else {
                arg
            }
        })
        .collect();
    let mut wrong = tune_args(server.url(), &task, &dir.path().join("wrong"), &three);
    wrong.extend(["--p0-from", source.to_str().unwrap()].map(String::from));
    let out = Command::new(BBT).args(&wrong).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds 2 prompt vectors"), "{err}");

    // `--p0-text`: the instruction goes to the server as text; with `--p0-from` it is refused.
    let instructed = dir.path().join("instructed");
    let mut args = tune_args(server.url(), &task, &instructed, BBT_RUN);
    args.extend(["--p0-text", " Is this review positive?"].map(String::from));
    run_to_end(&args);
    let checkpoint: Value =
        serde_json::from_str(&std::fs::read_to_string(instructed.join("checkpoint.json")).unwrap())
            .unwrap();
    let p0 = &checkpoint["session_request"]["p0"];
    assert_eq!(p0["kind"], "text");
    assert_eq!(p0["text"], " Is this review positive?");
    let (instructed_result, _) = common::outcome(&instructed);
    let (plain, _) = common::outcome(&source);
    assert_ne!(
        instructed_result["curve"], plain["curve"],
        "another starting point, another search"
    );
    // `--p0-demonstrations`: the server builds them from the run's training split and seed.
    let demonstrated = dir.path().join("demonstrated");
    let mut args = tune_args(server.url(), &task, &demonstrated, BBT_RUN);
    args.push("--p0-demonstrations".into());
    run_to_end(&args);
    let checkpoint: Value = serde_json::from_str(
        &std::fs::read_to_string(demonstrated.join("checkpoint.json")).unwrap(),
    )
    .unwrap();
    let p0 = &checkpoint["session_request"]["p0"];
    assert_eq!(p0["kind"], "demonstrations");
    assert_eq!(p0["seed"], checkpoint["config"]["seed"]);
    let mut both = tune_args(server.url(), &task, &dir.path().join("both"), BBT_RUN);
    both.extend(["--p0-text", "x", "--p0-from", source.to_str().unwrap()].map(String::from));
    let out = Command::new(BBT).args(&both).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose one"), "{err}");
}

/// A spent quota stops `bbt tune` at once with one clear line and no retries; the run so far is
/// kept, and resumes to the end against a server with quota to spare.
#[test]
fn a_spent_quota_stops_the_run_and_it_resumes_later() {
    let dir = tempfile::tempdir().unwrap();
    let Some(task) = write_task(
        dir.path(),
        "a_spent_quota_stops_the_run_and_it_resumes_later",
    ) else {
        return;
    };
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "tight 20\n").unwrap();
    let server = serve_with("127.0.0.1:0", &["--api-keys", keys.to_str().unwrap()]);
    let out = dir.path().join("run");
    let mut args = tune_args(server.url(), &task, &out, BBT_RUN);
    args.extend(["--api-key", "tight"].map(String::from));
    let run = Command::new(BBT).args(&args).output().unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("quota of API calls for this key is spent"),
        "{err}"
    );
    assert!(
        !err.contains("retrying"),
        "a spent quota is not retried: {err}"
    );
    let done = generations_logged(&out);
    assert!(
        (1..8).contains(&done),
        "{done} generations before the quota"
    );
    drop(server);

    let server = serve("127.0.0.1:0");
    resume_to_end(server.url(), &out);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["curve"].as_array().unwrap().len(), 8);
}

/// The f32 values of tensor `name` in a safetensors file.
fn tensor_values(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = file.tensor(name).unwrap();
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), values)
}

/// Two generations of 6 (the quick preset's placement: the suffix).
const SHORT_RUN: &[&str] = &[
    "--preset",
    "quick",
    "--budget",
    "12",
    "--popsize",
    "6",
    "--intrinsic-dim",
    "16",
    "--prompt-length",
    "2",
    "--dev-every",
    "12",
];

/// A prefix-placement prompt on a model without a BOS token is also written as a HF peft
/// prompt-tuning adapter holding the same vectors; a suffix-placement prompt is not.
#[test]
fn a_prefix_prompt_is_also_a_peft_prompt_tuning_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let Some(task) = write_task(dir.path(), "a_prefix_prompt_is_also_a_peft_adapter") else {
        return;
    };
    let server = serve("127.0.0.1:0");
    let prefix = dir.path().join("prefix");
    let mut args = tune_args(server.url(), &task, &prefix, SHORT_RUN);
    args.extend(["--placement", "prefix"].map(String::from));
    run_to_end(&args);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(prefix.join("peft/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "PROMPT_TUNING");
    assert_eq!(config["num_virtual_tokens"], 2);
    let (shape, adapter) = tensor_values(
        &prefix.join("peft/adapter_model.safetensors"),
        "prompt_embeddings",
    );
    assert_eq!(shape[0], 2);
    assert_eq!(config["token_dim"], shape[1]);
    let (_, saved) = tensor_values(&prefix.join("best_prompt.safetensors"), "prompt");
    assert_eq!(adapter, saved);
    assert!(adapter.iter().any(|v| *v != 0.0));

    let suffix = dir.path().join("suffix");
    run_to_end(&tune_args(server.url(), &task, &suffix, SHORT_RUN));
    assert!(suffix.join("best_prompt.safetensors").exists());
    assert!(!suffix.join("peft").exists());
}
