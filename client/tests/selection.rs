//! The final-prompt rules (`bbt tune --select`) and test milestones (`--test-at`) end to end:
//! a `bbt serve` child with the real default model, a small task of real SST-2 sentences. A rule
//! only chooses among the prompts checked on dev, so the search is the same under every rule;
//! milestones score the prompt chosen so far without changing the search either.

mod common;

use std::path::Path;

use common::{run_to_end, serve, tune_args, write_task, BBT_RUN};
use serde_json::Value;

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One checked prompt of a `dev` event: kind, accuracy, loss.
type Checked = (String, f64, f64);

/// The `dev` events of a run's log: training calls and the prompts checked.
fn dev_checks(out: &Path) -> Vec<(u64, Vec<Checked>)> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "dev")
        .map(|e| {
            let candidates = e["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["kind"].as_str().unwrap().to_string(),
                        c["accuracy"].as_f64().unwrap(),
                        c["loss"].as_f64().unwrap(),
                    )
                })
                .collect();
            (e["api_calls"].as_u64().unwrap(), candidates)
        })
        .collect()
}

#[test]
fn each_rule_returns_its_own_pick_of_the_same_search() {
    let dir = tempfile::tempdir().unwrap();
    let Some(task) = write_task(dir.path(), "selection rules") else {
        return;
    };
    let server = serve("127.0.0.1:0");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut flags = BBT_RUN.to_vec();
        flags.extend_from_slice(extra);
        run_to_end(&tune_args(server.url(), &task, &out, &flags));
        out
    };
    let accuracy_run = run("dev-accuracy", &[]);
    let loss_run = run("dev-loss", &["--select", "dev-loss"]);
    let final_run = run("final", &["--select", "final", "--test-at", "12,30"]);

    let checks = dev_checks(&accuracy_run);
    // Dev every 12 of 48 calls: mean and sample at each check.
    assert_eq!(
        checks.iter().map(|c| c.0).collect::<Vec<_>>(),
        [12, 24, 36, 48]
    );
    for (_, candidates) in &checks {
        let kinds: Vec<&str> = candidates.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(kinds, ["estimate", "sample"]);
    }
    // The same search under every rule: same training losses, same dev checks.
    let curve = |out: &Path| read(&out.join("result.json"))["curve"].clone();
    let train_losses = |out: &Path| -> Vec<Value> {
        curve(out)
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["train_loss"].clone())
            .collect()
    };
    assert_eq!(train_losses(&loss_run), train_losses(&accuracy_run));
    assert_eq!(train_losses(&final_run), train_losses(&accuracy_run));
    assert_eq!(dev_checks(&loss_run), checks);

    // Each run's prompt is its rule's pick, which is what the dev log says it should be.
    let all: Vec<(u64, &Checked)> = checks
        .iter()
        .flat_map(|(calls, cs)| cs.iter().map(move |c| (*calls, c)))
        .collect();
    let best_accuracy = all.iter().map(|c| c.1 .1).fold(f64::MIN, f64::max);
    let lowest_loss = all.iter().map(|c| c.1 .2).fold(f64::MAX, f64::min);
    let result = |out: &Path| read(&out.join("result.json"));
    let z = |out: &Path| read(&out.join("best_prompt.json"))["z"].clone();
    let pick = |out: &Path, rule: &str| read(&out.join("checkpoint.json"))["picks"][rule].clone();
    assert_eq!(result(&accuracy_run)["best_dev_accuracy"], best_accuracy);
    assert_eq!(pick(&accuracy_run, "dev-accuracy")["z"], z(&accuracy_run));
    assert_eq!(pick(&loss_run, "dev-loss")["dev_loss"], lowest_loss);
    assert_eq!(pick(&loss_run, "dev-loss")["z"], z(&loss_run));
    // `final`: the search's estimate at the last check, the end of the run.
    let last = &checks.last().unwrap().1[0];
    assert_eq!(pick(&final_run, "final")["api_calls"], 48);
    assert_eq!(pick(&final_run, "final")["dev_loss"], last.2);
    assert_eq!(pick(&final_run, "final")["z"], z(&final_run));
    // Every run tracks every rule's pick: the same in two runs with the same dev checks.
    for rule in [
        "dev-accuracy",
        "dev-loss",
        "mean-dev-accuracy",
        "mean-dev-loss",
        "final",
    ] {
        assert_eq!(pick(&loss_run, rule), pick(&accuracy_run, rule), "{rule}");
    }

    // Milestones: a test score at 12 and 30 calls (30 falls inside the generation that ends at
    // 30; its dev check comes first), and the final test as without them.
    let test_curve = result(&final_run)["test_curve"].clone();
    let at: Vec<u64> = test_curve
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["api_calls"].as_u64().unwrap())
        .collect();
    assert_eq!(at, [12, 30]);
    let dev_at: Vec<u64> = dev_checks(&final_run).iter().map(|c| c.0).collect();
    assert_eq!(dev_at, [12, 24, 30, 36, 48]);
    assert!(result(&accuracy_run).get("test_curve").is_none());
}
