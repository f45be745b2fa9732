//! `bbt-experiments train` end to end, as real processes on the real default model and real
//! SST-2 sentences: a run killed midway and resumed ends exactly like an uninterrupted one;
//! bad flags and folders exit non-zero with one clear message.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_bbt-experiments");

/// The paper's datasets: `$BBT_DATA_DIR`, else `shared/datasets` beside the repository.
fn data_dir() -> String {
    std::env::var("BBT_DATA_DIR")
        .unwrap_or_else(|_| format!("{}/../../shared/datasets", env!("CARGO_MANIFEST_DIR")))
}

/// A small LoRA run: 4 examples per class, 6 steps, dev every 2, 16 test sentences.
fn train_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--method",
        "lora",
        "--task",
        "sst2",
        "--k",
        "4",
        "--seed",
        "13",
        "--steps",
        "6",
        "--eval-every",
        "2",
        "--test-limit",
        "16",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string(), "--data-dir".into(), data_dir()])
    .collect()
}

fn run(args: &[String]) -> Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("bbt-experiments runs")
}

fn result(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("result.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn checkpoint_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("checkpoint.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["step"].as_u64()
}

#[test]
fn killed_and_resumed_run_ends_like_an_uninterrupted_one() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let test = "killed_and_resumed_run_ends_like_an_uninterrupted_one";
    if bbt::testing::paper_datasets(&workspace, test).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let out = run(&train_args(&whole));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let broken = tmp.path().join("broken");
    let mut child = Command::new(EXE).args(train_args(&broken)).spawn().unwrap();
    let start = Instant::now();
    while checkpoint_step(&broken).is_none_or(|s| s < 2) {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!broken.join("result.json").exists());
    let resume = [
        "train".to_string(),
        "--resume".into(),
        broken.display().to_string(),
        "--quiet".into(),
    ];
    let out = run(&resume);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (a, b) = (result(&whole), result(&broken));
    for field in [
        "curve",
        "best_dev_accuracy",
        "test_accuracy",
        "best_step",
        "steps",
        "best_train_loss",
        "trainable_params",
        "config",
    ] {
        assert_eq!(a[field], b[field], "{field} differs after resuming");
    }
    let params = |d: &Path| std::fs::read(d.join("params.safetensors")).unwrap();
    assert!(
        params(&whole) == params(&broken),
        "parameters differ after resuming"
    );
    assert!(whole.join("peft/adapter_config.json").exists());
    assert!(whole.join("curve.svg").exists());
}

#[test]
fn bad_flags_and_folders_exit_nonzero_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir();
    let fails = |args: &[&str], message: &str| {
        let out = Command::new(EXE).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    };
    let fails_with =
        |args: &[&str], message: &str| fails(&[args, &["--data-dir", &data]].concat(), message);
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    fails_with(&["train", "--task", "sst2", "--out", out], "--method");
    fails_with(
        &[
            "train",
            "--method",
            "lora",
            "--task",
            "sst2",
            "--out",
            out,
            "--lora-targets",
            "qq",
        ],
        "unknown projection \"qq\"",
    );
    // A setting of another method is refused, naming the methods it is for.
    fails_with(
        &[
            "train",
            "--method",
            "adapter",
            "--task",
            "sst2",
            "--out",
            out,
            "--lora-rank",
            "4",
        ],
        "--lora-rank does not apply to adapter: it is a setting of lora",
    );
    fails_with(
        &[
            "train",
            "--method",
            "bitfit",
            "--task",
            "sst2",
            "--out",
            out,
            "--learning-rate=-1",
        ],
        "learning rate must be positive",
    );
    fails_with(
        &[
            "train",
            "--method",
            "bitfit",
            "--task",
            "no-such-task",
            "--out",
            out,
        ],
        "no-such-task",
    );
    fails_with(
        &[
            "train", "--peer", "--method", "bitfit", "--task", "sst2", "--out", out,
        ],
        "the PyTorch peer runs lora, prompt-tuning, model-tuning; not bitfit",
    );
    fails_with(
        &[
            "train", "--peer", "--method", "lora", "--task", "sst2", "--out", out, "--loss",
            "hinge",
        ],
        "cross-entropy loss only",
    );
    fails_with(
        &["train", "--resume", tmp.path().to_str().unwrap()],
        "holds no training run",
    );
    fails(
        &["peft-check", "--run", tmp.path().to_str().unwrap()],
        "holds no training run",
    );
    let empty = tempfile::tempdir().unwrap();
    fails(
        &[
            "compare",
            "--report-only",
            "--out",
            empty.path().to_str().unwrap(),
        ],
        "holds no finished run",
    );
    fails(
        &["compare", "--report-only", "--out", "/nonexistent/grid"],
        "is not a folder",
    );
    std::fs::write(tmp.path().join("checkpoint.json"), "{}").unwrap();
    fails_with(
        &[
            "train",
            "--method",
            "lora",
            "--task",
            "sst2",
            "--out",
            tmp.path().to_str().unwrap(),
        ],
        "already holds a run",
    );
    fails_with(
        &["train", "--resume", tmp.path().to_str().unwrap()],
        "not a bbt training checkpoint",
    );
}
