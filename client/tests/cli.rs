//! The `bbt` binary as a user runs it: exit codes and messages.

use std::process::Command;

fn bbt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bbt"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run bbt");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the paper's datasets are here (when not, the caller is skipped and says so).
fn have_data(test: &str) -> bool {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    bbt::testing::paper_datasets(&workspace, test).is_some()
}

#[test]
fn data_show_prints_counts_and_rendered_examples() {
    if !have_data("data_show_prints_counts_and_rendered_examples") {
        return;
    }
    let (code, out, err) = bbt(&["data", "show", "sst2", "--seed", "13", "--examples", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verbalizer \" bad\"=3309  \" great\"=1109"),
        "{out}"
    );
    assert!(
        out.contains("negative                     16     16     428"),
        "{out}"
    );
    assert!(out.contains("| It was\" -> \""), "{out}");
}

#[test]
fn data_show_first_token_warns_instead_of_refusing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pool.csv"), {
        let mut s = String::from("text,label\n");
        for i in 0..40 {
            s.push_str(&format!("example number {i},{}\n", ["a", "b"][i % 2]));
        }
        s
    })
    .unwrap();
    let spec = dir.path().join("t.toml");
    std::fs::write(
        &spec,
        "name = \"t\"\ntemplate = \" <S> Verdict:\"\nclasses = [\"a\", \"b\"]\nverbalizer = [\" Athlete\", \" great\"]\n\
         [data]\ntrain = \"pool.csv\"\ntext = \"text\"\nlabel = \"label\"\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let (code, _, err) = bbt(&["data", "show", spec, "--k", "4"]);
    assert_ne!(code, 0);
    assert!(err.contains("label word \" Athlete\" is 2 tokens"), "{err}");
    let (code, out, err) = bbt(&["data", "show", spec, "--k", "4", "--first-token"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("WARNING label word \" Athlete\" is several tokens"),
        "{out}"
    );
}

#[test]
fn bad_input_exits_non_zero_with_one_clear_line() {
    for (args, want) in [
        (vec!["data", "show", "sst3"], "unknown task `sst3`"),
        (
            vec!["data", "show", "rte", "--data-dir", "/nonexistent"],
            "the data of `rte` is not here",
        ),
        (
            vec!["data", "show", "yelp", "--seed", "7"],
            "has no training pool here",
        ),
        (
            vec!["fetch", "no-such-model"],
            "`no-such-model` is neither a model nor one of the paper's tasks",
        ),
        (vec!["demo", "--device", "tpu"], "unknown device `tpu`"),
        (
            vec!["demo", "--model", "/nonexistent.gguf"],
            "model file not found: /nonexistent.gguf does not exist",
        ),
        (
            vec![
                "tune",
                "--server",
                "http://127.0.0.1:9",
                "--task",
                "mr",
                "--sigma",
                "-1",
            ],
            "sigma must be positive, got -1",
        ),
        (
            vec![
                "tune",
                "--server",
                "http://127.0.0.1:9",
                "--task",
                "dbpedia",
                "--label-words",
                "several",
            ],
            "task dbpedia has no built-in lists of several label words",
        ),
    ] {
        if args[..2] == ["data", "show"]
            && args[2] == "yelp"
            && !have_data("bad_input_exits_non_zero_with_one_clear_line (yelp)")
        {
            continue;
        }
        let (code, _, err) = bbt(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn eval_refuses_sample_flags_that_would_be_ignored() {
    for flag in ["--seed", "--k"] {
        let (code, _, err) = bbt(&[
            "eval",
            "--server",
            "http://127.0.0.1:9",
            "--prompt",
            "best_prompt.json",
            flag,
            "3",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--task <TASK>"), "{flag}: {err}");
    }
}

#[test]
fn label_words_that_are_not_a_list_per_class_are_refused_before_any_call() {
    for bad in ["[3]", "great", "{\"a\": 1}"] {
        let (code, _, err) = bbt(&[
            "tune",
            "--server",
            "http://127.0.0.1:9",
            "--task",
            "mr",
            "--label-words",
            bad,
        ]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("expected `several` or a JSON list with one entry per class"),
            "{bad}: {err}"
        );
    }
}
