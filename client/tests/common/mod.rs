//! Helpers shared by the end-to-end `bbt tune` tests: `bbt serve` children, a small task of
//! real SST-2 sentences, small runs, and what of a run's result must not depend on how it ran.

#![allow(dead_code)] // each test file uses the subset it needs

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bbt_server::process::ServerProcess;
use serde_json::Value;

pub const BBT: &str = env!("CARGO_BIN_EXE_bbt");

pub fn serve(bind: &str) -> ServerProcess {
    serve_with(bind, &[])
}

/// `bbt serve --bind BIND` with `extra` flags.
pub fn serve_with(bind: &str, extra: &[&str]) -> ServerProcess {
    let mut command = Command::new(BBT);
    command.args(["serve", "--bind", bind]).args(extra);
    ServerProcess::spawn(command, false).expect("bbt serve starts")
}

/// A task spec over 40 real SST-2 sentences per class (k = 4: 8 train, 8 dev) and a 24-sentence
/// test file; `None` (the test `who` is skipped, and says so) without the paper's datasets.
pub fn write_task(dir: &Path, who: &str) -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = bbt::testing::paper_datasets(&workspace, who)?.join("SST-2/train.tsv");
    let text = std::fs::read_to_string(&data)
        .unwrap_or_else(|e| panic!("{}: {e} (tests read ../shared/datasets)", data.display()));
    let mut by_label: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
    for line in text.lines().skip(1) {
        let Some((sentence, label)) = line.rsplit_once('\t') else {
            continue;
        };
        let label: usize = label.trim().parse().unwrap();
        if sentence.split_whitespace().count() >= 6 && by_label[label].len() < 52 {
            by_label[label].push(sentence.trim());
        }
    }
    let rows = |range: std::ops::Range<usize>| -> String {
        let mut out = String::from("sentence\tlabel\n");
        for i in range {
            for (label, sentences) in by_label.iter().enumerate() {
                out.push_str(&format!("{}\t{label}\n", sentences[i]));
            }
        }
        out
    };
    std::fs::write(dir.join("pool.tsv"), rows(0..40)).unwrap();
    std::fs::write(dir.join("test.tsv"), rows(40..52)).unwrap();
    let spec = dir.join("sst2-small.toml");
    std::fs::write(
        &spec,
        r#"name = "sst2-small"
template = " <S> It was"
classes = ["negative", "positive"]
verbalizer = [" bad", " great"]

[data]
train = "pool.tsv"
test = "test.tsv"
text = "sentence"
label = "label"
labels = { negative = ["0"], positive = ["1"] }
"#,
    )
    .unwrap();
    Some(spec)
}

/// BBT's small run: 8 generations of 6 calls, dev every 12 calls.
pub const BBT_RUN: &[&str] = &[
    "--preset",
    "quick",
    "--budget",
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

/// `bbt tune` flags of a small run on `task` with the settings of `run`.
pub fn tune_args(server: &str, task: &Path, out: &Path, run: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["tune", "--server", server, "--task", task.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    args.extend(run.iter().map(|s| s.to_string()));
    args.extend(
        [
            "--k",
            "4",
            "--quiet",
            "--attempts",
            "10",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    args
}

pub fn generations_logged(out: &Path) -> usize {
    std::fs::read_to_string(out.join("log.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"generation\"")).count())
        .unwrap_or(0)
}

pub fn wait_for_generations(out: &Path, n: usize) {
    let start = Instant::now();
    while generations_logged(out) < n {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the run stalled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The parts of a result that must not depend on interruptions.
pub fn outcome(out: &Path) -> (Value, Value) {
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let prompt: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best_prompt.json")).unwrap())
            .unwrap();
    let keep = |keys: &[&str]| -> Value {
        keys.iter()
            .map(|k| (k.to_string(), result[*k].clone()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    (
        keep(&[
            "test_accuracy",
            "best_dev_accuracy",
            "zero_shot_test_accuracy",
            "best_train_loss",
            "curve",
            "train_api_calls",
            "api_calls",
        ]),
        prompt["z"].clone(),
    )
}

pub fn run_to_end(args: &[String]) {
    let status = Command::new(BBT).args(args).status().unwrap();
    assert!(status.success(), "bbt {args:?} failed");
}
