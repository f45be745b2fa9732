//! The paper's tasks on the real data in `../shared/datasets` (CI has it beside the clone).

use std::path::{Path, PathBuf};

use bbt::tasks::{self, LoadOptions, MultiTokenWords, TaskData};

/// The datasets, or `None` (the test is skipped, and says so) when they are missing.
fn data(test: &str) -> Option<PathBuf> {
    bbt::testing::paper_datasets(Path::new(env!("CARGO_MANIFEST_DIR")), test)
}

fn options(data: &Path, k: usize, seed: u64, resample: bool) -> LoadOptions {
    LoadOptions {
        data_dir: data.to_path_buf(),
        k,
        seed,
        resample,
    }
}

fn load(data: &Path, name: &str, seed: u64) -> TaskData {
    tasks::load_builtin(name, &options(data, 16, seed, false))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

#[test]
fn every_task_loads_its_presampled_splits_and_full_evaluation_set() {
    let Some(data) = data("every_task_loads_its_presampled_splits_and_full_evaluation_set") else {
        return;
    };
    // (task, evaluation size as counted in SOURCES.md, whether it is a stand-in)
    let expected = [
        ("sst2", 872, false),
        ("yelp", 1000, true),
        ("agnews", 7600, false),
        ("dbpedia", 5000, true),
        ("mrpc", 408, false),
        ("snli", 9824, false),
        ("rte", 277, false),
    ];
    for (name, test_len, stand_in) in expected {
        for seed in [13, 21, 42, 87, 100] {
            let task = load(&data, name, seed);
            assert!(
                task.train_dev_source.starts_with("pre-sampled"),
                "{name} {seed}"
            );
            for (class, (tr, de, _)) in task.class_counts().into_iter().enumerate() {
                assert_eq!((tr, de), (16, 16), "{name} seed {seed} class {class}");
            }
            assert_eq!(task.test.len(), test_len, "{name}");
            assert_eq!(task.test_stand_in.is_some(), stand_in, "{name}");
            let two = task.spec.template.two_inputs();
            assert!(
                task.train
                    .iter()
                    .chain(&task.test)
                    .all(|e| e.text_b.is_some() == two),
                "{name}"
            );
        }
    }
}

#[test]
fn evaluation_label_conventions_match_sources() {
    let Some(data) = data("evaluation_label_conventions_match_sources") else {
        return;
    };
    let counts = |name: &str| -> Vec<usize> {
        load(&data, name, 42)
            .class_counts()
            .iter()
            .map(|c| c.2)
            .collect()
    };
    assert_eq!(counts("sst2"), vec![428, 444]);
    assert_eq!(counts("mrpc"), vec![129, 279]);
    assert_eq!(counts("rte"), vec![146, 131]);
    assert_eq!(counts("snli"), vec![3368, 3219, 3237]);
    assert_eq!(counts("agnews"), vec![1900; 4]);
    assert_eq!(counts("yelp"), vec![518, 482]);
    // AG News test row 1: "Fears for T N pension after talks ...", label 2 (Business).
    let ag = load(&data, "agnews", 42);
    assert!(ag.test[0]
        .text_a
        .starts_with("Fears for T N pension after talks"));
    assert_eq!(ag.test[0].label, 2);
}

#[test]
fn sampling_from_the_pool_is_seeded_balanced_and_pinned() {
    let Some(data) = data("sampling_from_the_pool_is_seeded_balanced_and_pinned") else {
        return;
    };
    let a = tasks::load_builtin("sst2", &options(&data, 16, 42, true)).unwrap();
    assert!(a
        .train_dev_source
        .starts_with("sampled from train.tsv with seed 42"));
    assert!(a
        .class_counts()
        .iter()
        .all(|&(tr, de, _)| (tr, de) == (16, 16)));
    let b = tasks::load_builtin("sst2", &options(&data, 16, 42, true)).unwrap();
    assert_eq!((&a.train, &a.dev), (&b.train, &b.dev));
    assert!(a.train.iter().all(|e| !a.dev.contains(e)));
    // Pinned: the same seed gives these examples on every machine.
    let first: Vec<&str> = a.train.iter().take(3).map(|e| e.text_a.as_str()).collect();
    assert_eq!(first, PINNED_SST2_SEED42);
    let other = tasks::load_builtin("sst2", &options(&data, 16, 43, true)).unwrap();
    assert_ne!(other.train, a.train);
    // A seed without a pre-sampled folder samples too (AG News pool: 5,000 rows, 4 classes).
    let ag = tasks::load_builtin("agnews", &options(&data, 8, 7, false)).unwrap();
    assert!(ag.train_dev_source.starts_with("sampled"));
    assert!(ag
        .class_counts()
        .iter()
        .all(|&(tr, de, _)| (tr, de) == (8, 8)));
}

const PINNED_SST2_SEED42: [&str; 3] = [
    "for all the wit and hoopla",
    "hideousness",
    "comes off as emotionally manipulative and sadly imitative of innumerable past love story derisions .",
];

#[test]
fn dbpedia_stand_in_excludes_the_few_shot_examples() {
    let Some(data) = data("dbpedia_stand_in_excludes_the_few_shot_examples") else {
        return;
    };
    let d = tasks::load_builtin("dbpedia", &options(&data, 4, 3, true)).unwrap();
    assert_eq!(d.test.len(), 5000 - d.train.len() - d.dev.len());
    assert!(d
        .test
        .iter()
        .all(|e| !d.train.contains(e) && !d.dev.contains(e)));
}

#[test]
fn verbalizers_are_single_tokens_for_the_default_model() {
    let path = bbt::assets::resolve_model(bbt::assets::DEFAULT_MODEL).unwrap();
    let tokenizer = bbt::tokenizer::Tokenizer::load(&path).unwrap();
    for name in tasks::builtin::NAMES {
        let (spec, _) = tasks::builtin::lookup(name).unwrap();
        spec.validate().unwrap();
        let (ids, cut) = spec
            .verbalizer_ids(&tokenizer, MultiTokenWords::Reject)
            .unwrap();
        assert_eq!(
            (ids.classes(), cut.len()),
            (spec.classes.len(), 0),
            "{name}"
        );
        assert!(ids.is_single(), "{name}");
    }
    // The lists of several words per class: single tokens too, the task's own word first.
    for name in tasks::task_names() {
        let Some(several) = tasks::several_label_words(name) else {
            continue;
        };
        let mut spec = tasks::registry::lookup(name)
            .map(|(s, _)| s)
            .or_else(|| tasks::builtin::lookup(name).map(|(s, _)| s))
            .unwrap();
        for (own, list) in spec.verbalizer.iter().zip(&several) {
            assert_eq!(own.first(), list.first(), "{name}");
            assert!(list.words().len() > 1, "{name}");
        }
        spec.verbalizer = several;
        spec.validate().unwrap();
        let (ids, cut) = spec
            .verbalizer_ids(&tokenizer, MultiTokenWords::Reject)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            (ids.classes(), cut.len()),
            (spec.classes.len(), 0),
            "{name}"
        );
        assert!(!ids.is_single(), "{name}");
    }
    // The check bites: a two-token word is refused, or cut to its first token when allowed.
    let (mut spec, _) = tasks::builtin::lookup("dbpedia").unwrap();
    spec.verbalizer[3] = " Athlete".into();
    let err = spec
        .verbalizer_ids(&tokenizer, MultiTokenWords::Reject)
        .unwrap_err();
    assert!(
        err.to_string().contains("\" Athlete\" is 2 tokens"),
        "{err}"
    );
    let (_, cut) = spec
        .verbalizer_ids(&tokenizer, MultiTokenWords::FirstToken)
        .unwrap();
    assert_eq!(cut, vec![" Athlete".to_string()]);
}

#[test]
fn unknown_task_and_missing_data_are_clear_errors() {
    let nowhere = Path::new("/nonexistent");
    let e = tasks::load_builtin("sst3", &options(nowhere, 16, 42, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown task `sst3`; known tasks: mr, mr-snippets, bbc, sst2"),
        "{e}"
    );
    let e = tasks::load_builtin("rte", &options(nowhere, 16, 42, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the data of `rte` is not here: /nonexistent/RTE/dev.tsv does not exist")
            && e.contains("`bbt fetch rte` downloads it"),
        "{e}"
    );
    let Some(data) = data("unknown_task_and_missing_data_are_clear_errors") else {
        return;
    };
    let e = tasks::load_builtin("yelp", &options(&data, 16, 7, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no training pool here"), "{e}");
}

#[test]
fn package_tasks_have_their_documented_sizes_and_a_fixed_evaluation_set() {
    // (task, examples per class in the whole package)
    let expected: [(&str, Vec<usize>); 3] = [
        ("mr", vec![2000, 2000]),
        ("mr-snippets", vec![5274, 5331]),
        ("bbc", vec![510, 386, 417, 511, 401]),
    ];
    for (name, per_class) in expected {
        let (spec, package) = tasks::registry::lookup(name).unwrap();
        let archive = bbt::assets::ensure_package(&package).unwrap();
        let all = tasks::registry::read_examples(&spec, &archive).unwrap();
        let counts: Vec<usize> = (0..spec.classes.len())
            .map(|c| all.iter().filter(|e| e.label == c).count())
            .collect();
        assert_eq!(counts, per_class, "{name}");
        // Package tasks read no data directory.
        let nowhere = Path::new("/nonexistent");
        let a = tasks::load_task(name, &options(nowhere, 16, 42, false)).unwrap();
        let b = tasks::load_task(name, &options(nowhere, 16, 13, false)).unwrap();
        assert_eq!(a.test.len(), tasks::HELD_OUT, "{name}");
        assert_eq!(
            a.test, b.test,
            "{name}: the evaluation set must not depend on the seed"
        );
        assert_ne!(a.train, b.train, "{name}");
        assert!(
            a.class_counts()
                .iter()
                .all(|&(tr, de, _)| (tr, de) == (16, 16)),
            "{name}"
        );
        assert!(
            a.train.iter().chain(&a.dev).all(|e| !a.test.contains(e)),
            "{name}"
        );
    }
}

/// The example task README walks through loads as it says: 16 per class in train and dev, drawn
/// from its pool, and its own 60-example test file.
#[test]
fn the_example_user_task_loads() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/support-tickets/task.toml");
    let data = tasks::load_task(
        spec.to_str().unwrap(),
        &options(Path::new("/unused"), 16, 42, false),
    )
    .unwrap();
    assert_eq!(data.spec.classes, ["billing", "bug"]);
    assert_eq!(data.class_counts(), vec![(16, 16, 30), (16, 16, 30)]);
    assert!(data.spec.template.two_inputs());
    // Train, dev and test share no ticket.
    let texts = |xs: &[tasks::Example]| -> std::collections::HashSet<String> {
        xs.iter().map(|x| x.text_b.clone().unwrap()).collect()
    };
    assert!(texts(&data.train).is_disjoint(&texts(&data.dev)));
    assert!(texts(&data.train).is_disjoint(&texts(&data.test)));
}
