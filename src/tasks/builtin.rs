//! The paper's seven tasks: specs (templates adapted from BBT's Table 1 to next-token prediction)
//! and where their files sit in a data directory laid out like `shared/datasets/` (see its
//! SOURCES.md for formats, label conventions and provenance).

use std::path::Path;

use super::formats::{Column, Delimited, JsonFields, LabelMap};
use super::spec::{Metric, TaskSpec, Template};
use super::FileFormat;

/// Where one built-in task's files are, relative to the data directory.
pub struct Layout {
    /// Folder of the task.
    pub dir: &'static str,
    /// The evaluation file, its format, and a note when it is a stand-in for a missing test set.
    pub eval: Option<(&'static str, FileFormat, Option<&'static str>)>,
    /// Files of the training pool the few-shot splits are sampled from.
    pub pool: Vec<(&'static str, FileFormat)>,
    /// Format of the pre-sampled `k-shot/<k>-<seed>/{train,dev}.tsv` files.
    pub kshot: FileFormat,
    /// When there is no evaluation file: evaluate on the pool minus the sampled examples.
    pub pool_as_eval_note: Option<&'static str>,
}

fn spec(name: &str, classes: &[&str], template: &str, words: &[&str], metric: Metric) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        classes: classes.iter().map(|c| c.to_string()).collect(),
        template: Template::new(template).expect("built-in templates are valid"),
        verbalizer: words.iter().map(|&w| w.into()).collect(),
        metric,
    }
}

/// A GLUE / LM-BFF TSV: header row, no quoting (QUOTE_NONE; `"` is an ordinary character).
fn tsv(text_a: &[&str], text_b: Option<&str>, label: Column, labels: LabelMap) -> FileFormat {
    delimited_tsv(false, text_a, text_b, label, labels)
}

/// A TSV written by pandas (the RLPrompt files): fields holding tabs or quotes are `"`-quoted.
fn pandas_tsv(text_a: &[&str], label: &str, labels: LabelMap) -> FileFormat {
    delimited_tsv(true, text_a, None, Column::name(label), labels)
}

fn delimited_tsv(
    quoting: bool,
    text_a: &[&str],
    text_b: Option<&str>,
    label: Column,
    labels: LabelMap,
) -> FileFormat {
    FileFormat::Delimited(Delimited {
        delimiter: b'\t',
        quoting,
        has_header: true,
        text_a: text_a.iter().map(|c| Column::name(c)).collect(),
        text_b: text_b.map(Column::name),
        label,
        labels,
    })
}

/// Headerless, quoted CSV `class,title,body` with classes numbered from 1.
fn class_title_body_csv(classes: usize) -> FileFormat {
    FileFormat::Delimited(Delimited {
        delimiter: b',',
        quoting: true,
        has_header: false,
        text_a: vec![Column::Index(1), Column::Index(2)],
        text_b: None,
        label: Column::Index(0),
        labels: LabelMap::numeric(classes, 1),
    })
}

const DBPEDIA_CLASSES: [&str; 14] = [
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
];

/// Names of the built-in tasks (as given on the command line).
pub const NAMES: &[&str] = &["sst2", "yelp", "agnews", "dbpedia", "mrpc", "snli", "rte"];

/// The spec and file layout of a built-in task, by name (case-insensitive, `-`/`_` ignored).
pub fn lookup(name: &str) -> Option<(TaskSpec, Layout)> {
    let key: String = name
        .to_lowercase()
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect();
    let sentiment = |n: &str| {
        spec(
            n,
            &["negative", "positive"],
            " <S> It was",
            &[" bad", " great"],
            Metric::Accuracy,
        )
    };
    let binary = || LabelMap::numeric(2, 0);
    let nli_fields = |labels: LabelMap| JsonFields {
        text_a: "text_a".into(),
        text_b: Some("text_b".into()),
        label: "label".into(),
        labels,
    };
    Some(match key.as_str() {
        "sst2" => (
            sentiment("sst2"),
            Layout {
                dir: "SST-2",
                eval: Some(("dev.tsv", tsv(&["sentence"], None, Column::name("label"), binary()), None)),
                pool: vec![("train.tsv", tsv(&["sentence"], None, Column::name("label"), binary()))],
                kshot: tsv(&["sentence"], None, Column::name("label"), binary()),
                pool_as_eval_note: None,
            },
        ),
        "yelp" | "yelpp" | "yelppolarity" => (
            sentiment("yelp"),
            Layout {
                dir: "YelpP",
                eval: Some((
                    "fallback_textfooler/yelp",
                    FileFormat::LabelSpaceText(binary()),
                    Some("stand-in: the 1,000-example TextFooler Yelp sample (lower-cased, tokenised); the raw Yelp test set is not available"),
                )),
                pool: vec![],
                kshot: pandas_tsv(&["text"], "label", binary()),
                pool_as_eval_note: None,
            },
        ),
        "agnews" | "ag" => (
            spec(
                "agnews",
                &["World", "Sports", "Business", "Sci/Tech"],
                " <S> Topic:",
                &[" World", " Sports", " Business", " Tech"],
                Metric::Accuracy,
            ),
            Layout {
                dir: "AGNews",
                eval: Some(("test.tsv", pandas_tsv(&["sentence"], "label", LabelMap::numeric(4, 0)), None)),
                pool: vec![("train_pool/valid.csv", class_title_body_csv(4))],
                kshot: pandas_tsv(&["text"], "label", LabelMap::numeric(4, 0)),
                pool_as_eval_note: None,
            },
        ),
        "dbpedia" => (
            spec(
                "dbpedia",
                &DBPEDIA_CLASSES,
                " <S> Category:",
                &[
                    // The paper's words, but " Athlete" and " Album" are two tokens for SmolLM2.
                    " Company", " Education", " Artist", " Sport", " Office", " Transportation", " Building",
                    " Natural", " Village", " Animal", " Plant", " Music", " Film", " Written",
                ],
                Metric::Accuracy,
            ),
            Layout {
                dir: "DBPedia",
                eval: None,
                pool: vec![("train_pool/valid.csv", class_title_body_csv(14))],
                kshot: pandas_tsv(&["sentence"], "label", LabelMap::numeric(14, 0)),
                pool_as_eval_note: Some(
                    "stand-in: the 5,000 train-split rows of DBPedia/train_pool/valid.csv minus the few-shot examples; the official test set is not available",
                ),
            },
        ),
        "mrpc" => {
            let layout = || tsv(&["#1 String"], Some("#2 String"), Column::name("Quality"), binary());
            (
                spec(
                    "mrpc",
                    &["not_equivalent", "equivalent"],
                    " <S1> ? <S2> Same meaning?",
                    &[" No", " Yes"],
                    Metric::AccuracyAndF1,
                ),
                Layout {
                    dir: "MRPC",
                    eval: Some(("dev.tsv", layout(), None)),
                    pool: vec![("train.tsv", layout())],
                    kshot: layout(),
                    pool_as_eval_note: None,
                },
            )
        }
        "snli" => {
            let names = || LabelMap::new(&[&["entailment", "0"], &["neutral", "1"], &["contradiction", "2"]]);
            (
                spec(
                    "snli",
                    &["entailment", "neutral", "contradiction"],
                    " <S1> ? <S2> Answer:",
                    &[" Yes", " Maybe", " No"],
                    Metric::Accuracy,
                ),
                Layout {
                    dir: "SNLI",
                    eval: Some(("test.tsv", tsv(&["premise"], Some("hypothesis"), Column::name("label"), names()), None)),
                    pool: vec![
                        ("train_pool/train.json", FileFormat::JsonRecords(nli_fields(names()))),
                        ("train_pool/dev.json", FileFormat::JsonRecords(nli_fields(names()))),
                    ],
                    // Rows carry 1-5 annotator labels before gold_label: read the last field.
                    kshot: tsv(&["sentence1"], Some("sentence2"), Column::Last, names()),
                    pool_as_eval_note: None,
                },
            )
        }
        "rte" => {
            let layout = || {
                tsv(
                    &["sentence1"],
                    Some("sentence2"),
                    Column::name("label"),
                    LabelMap::new(&[&["entailment", "0"], &["not_entailment", "1"]]),
                )
            };
            (
                spec("rte", &["entailment", "not_entailment"], " <S1> ? <S2> Answer:", &[" Yes", " No"], Metric::Accuracy),
                Layout {
                    dir: "RTE",
                    eval: Some(("dev.tsv", layout(), None)),
                    pool: vec![("train.tsv", layout())],
                    kshot: layout(),
                    pool_as_eval_note: None,
                },
            )
        }
        _ => return None,
    })
}

/// The pre-sampled split folder for `k` and `seed`, if the data directory has one.
pub fn kshot_dir(
    data_dir: &Path,
    layout: &Layout,
    k: usize,
    seed: u64,
) -> Option<std::path::PathBuf> {
    let dir = data_dir
        .join(layout.dir)
        .join("k-shot")
        .join(format!("{k}-{seed}"));
    (dir.join("train.tsv").is_file() && dir.join("dev.tsv").is_file()).then_some(dir)
}
