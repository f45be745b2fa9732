//! User tasks: the user's own CSV / TSV / JSONL files, described by a small TOML or JSON spec.
//!
//! ```toml
//! name = "support-tickets"
//! template = " <S> The ticket is about"
//! classes = ["billing", "bug"]
//! verbalizer = [" money", " software"]  # or several words per class: [[" money", " bill"], " bug"]
//! metric = "accuracy"                    # or "accuracy_and_f1"; optional
//!
//! [data]
//! train = "tickets.csv"                  # the pool train/dev are sampled from (relative to the spec)
//! test = "tickets_test.csv"              # optional; else a fixed evaluation set is held out
//! format = "csv"                         # csv | tsv | jsonl; optional, from the extension
//! text = "body"                          # column name, or 0-based index in a headerless file
//! text_b = "subject"                     # optional second text (templates with <S1> and <S2>)
//! label = "kind"
//! header = true                          # csv/tsv only; default true
//! labels = { billing = ["0", "invoice"], bug = ["1"] }   # optional; default: the class names
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::formats::{Column, Delimited, JsonFields, LabelMap};
use super::spec::{Metric, TaskSpec, Template};
use super::verbalizer::LabelWords;
use super::{Example, FileFormat, LoadOptions, TaskData};

/// A column given by name or by 0-based index.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ColumnRef {
    Index(usize),
    Name(String),
}

impl ColumnRef {
    fn column(&self) -> Column {
        match self {
            Self::Index(i) => Column::Index(*i),
            Self::Name(n) => Column::Name(n.clone()),
        }
    }

    fn key(&self) -> String {
        match self {
            Self::Index(i) => i.to_string(),
            Self::Name(n) => n.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSection {
    train: PathBuf,
    test: Option<PathBuf>,
    format: Option<String>,
    text: ColumnRef,
    text_b: Option<ColumnRef>,
    label: ColumnRef,
    header: Option<bool>,
    labels: Option<HashMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: String,
    template: String,
    classes: Vec<String>,
    verbalizer: Vec<LabelWords>,
    metric: Option<Metric>,
    data: DataSection,
}

/// Loads a user task from its spec file (`.toml` or `.json`).
pub fn load(spec_path: &Path, options: &LoadOptions) -> anyhow::Result<TaskData> {
    let text = std::fs::read_to_string(spec_path)
        .map_err(|e| anyhow::anyhow!("cannot read task spec {}: {e}", spec_path.display()))?;
    let file: SpecFile = match spec_path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: invalid task spec: {e}",
                spec_path.display(),
                e.line()
            )
        })?,
        _ => toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            let at = line.map(|l| format!(":{l}")).unwrap_or_default();
            anyhow::anyhow!(
                "{}{at}: invalid task spec: {}",
                spec_path.display(),
                e.message()
            )
        })?,
    };
    let spec = TaskSpec {
        name: file.name.clone(),
        classes: file.classes.clone(),
        template: Template::new(&file.template)
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?,
        verbalizer: file.verbalizer.clone(),
        metric: file.metric.unwrap_or(Metric::Accuracy),
    };
    spec.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?;
    let data = &file.data;
    if spec.template.two_inputs() != data.text_b.is_some() {
        anyhow::bail!(
            "{}: the template {} but the data section {} `text_b`",
            spec_path.display(),
            if spec.template.two_inputs() {
                "takes two texts"
            } else {
                "takes one text"
            },
            if data.text_b.is_some() {
                "names"
            } else {
                "does not name"
            }
        );
    }
    let labels =
        label_map(&spec, data).map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?;
    let base = spec_path.parent().unwrap_or(Path::new("."));
    let read = |file: &Path| -> anyhow::Result<Vec<Example>> {
        let path = base.join(file);
        let format = file_format(&path, data, labels.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?;
        Ok(format.read(&path)?)
    };
    let pool = read(&data.train)?;
    let source = base.join(&data.train).display().to_string();
    match &data.test {
        None => Ok(super::split_pool(spec, pool, &source, options)?),
        Some(test_file) => {
            let test = read(test_file)?;
            let (train, dev) = super::sample_train_dev(&spec, &pool, options)?;
            Ok(TaskData {
                k: options.k,
                seed: options.seed,
                train,
                dev,
                test,
                train_dev_source: format!("sampled from {source} with seed {}", options.seed),
                test_source: base.join(test_file).display().to_string(),
                test_stand_in: None,
                spec,
            })
        }
    }
}

/// Label strings per class: the spec's `labels` table, else each class's own name.
fn label_map(spec: &TaskSpec, data: &DataSection) -> Result<LabelMap, String> {
    let aliases: Vec<Vec<String>> = match &data.labels {
        None => spec.classes.iter().map(|c| vec![c.clone()]).collect(),
        Some(table) => {
            if let Some(unknown) = table.keys().find(|k| !spec.classes.contains(k)) {
                return Err(format!(
                    "`labels` names `{unknown}`, which is not one of the classes"
                ));
            }
            spec.classes
                .iter()
                .map(|c| table.get(c).cloned().unwrap_or_else(|| vec![c.clone()]))
                .collect()
        }
    };
    let refs: Vec<Vec<&str>> = aliases
        .iter()
        .map(|a| a.iter().map(String::as_str).collect())
        .collect();
    let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    Ok(LabelMap::new(&slices))
}

fn file_format(path: &Path, data: &DataSection, labels: LabelMap) -> Result<FileFormat, String> {
    let kind = match &data.format {
        Some(f) => f.to_lowercase(),
        None => path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_lowercase)
            .ok_or_else(|| {
                format!(
                    "cannot tell the format of {}: set data.format",
                    path.display()
                )
            })?,
    };
    let delimited = |delimiter: u8, quoting: bool| {
        FileFormat::Delimited(Delimited {
            delimiter,
            quoting,
            has_header: data.header.unwrap_or(true),
            text_a: vec![data.text.column()],
            text_b: data.text_b.as_ref().map(ColumnRef::column),
            label: data.label.column(),
            labels: labels.clone(),
        })
    };
    Ok(match kind.as_str() {
        "csv" => delimited(b',', true),
        "tsv" => delimited(b'\t', true),
        "jsonl" | "json" => FileFormat::Jsonl(JsonFields {
            text_a: data.text.key(),
            text_b: data.text_b.as_ref().map(ColumnRef::key),
            label: data.label.key(),
            labels,
        }),
        other => return Err(format!("unknown data format `{other}` (csv, tsv or jsonl)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> LoadOptions {
        LoadOptions {
            data_dir: PathBuf::from("/unused"),
            k: 2,
            seed: 1,
            resample: false,
        }
    }

    const SPEC: &str = r#"
name = "tickets"
template = " <S> The ticket is about"
classes = ["billing", "bug"]
verbalizer = [" money", " software"]

[data]
train = "pool.csv"
text = "body"
label = "kind"
labels = { billing = ["0", "invoice"] }
"#;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn pool_csv(rows: usize) -> String {
        let mut s = String::from("body,kind\n");
        for i in 0..rows {
            let label = ["invoice", "bug", "0"][i % 3];
            s.push_str(&format!("\"ticket {i}, please help\",{label}\n"));
        }
        s
    }

    #[test]
    fn a_class_may_have_several_label_words_in_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir, "pool.csv", &pool_csv(60));
        let toml = SPEC.replace(
            r#"verbalizer = [" money", " software"]"#,
            r#"verbalizer = [[" money", " bill"], " software"]"#,
        );
        let spec = load(&write(&dir, "task.toml", &toml), &options())
            .unwrap()
            .spec;
        assert_eq!(spec.verbalizer[0].words(), [" money", " bill"]);
        assert_eq!(spec.verbalizer[1].words(), [" software"]);
        // An empty list is refused with the class it belongs to.
        let empty = SPEC.replace(
            r#"verbalizer = [" money", " software"]"#,
            r#"verbalizer = [[], " software"]"#,
        );
        let err = load(&write(&dir, "empty.toml", &empty), &options()).unwrap_err();
        assert!(
            err.to_string().contains("\"billing\" has an empty list"),
            "{err:#}"
        );
    }

    #[test]
    fn csv_task_with_label_aliases_and_held_out_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir, "pool.csv", &pool_csv(60));
        let spec = write(&dir, "task.toml", SPEC);
        let data = load(&spec, &options()).unwrap();
        assert_eq!(data.spec.classes, vec!["billing", "bug"]);
        assert_eq!(
            data.class_counts()
                .iter()
                .map(|c| (c.0, c.1))
                .collect::<Vec<_>>(),
            vec![(2, 2); 2]
        );
        assert_eq!(data.test.len(), 30); // half the pool, stratified: 15 per class
        assert!(data.train.iter().all(|e| !data.test.contains(e)));
        assert_eq!(
            data.train[0].text_a.split(',').count(),
            2,
            "quoted commas stay in the text"
        );
    }

    #[test]
    fn jsonl_task_with_test_file_and_two_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let line = |a: &str, b: &str, l: &str| {
            format!("{{\"p\": \"{a}\", \"h\": \"{b}\", \"y\": \"{l}\"}}\n")
        };
        let pool: String = (0..8)
            .map(|i| line(&format!("premise {i}"), "hypothesis", ["yes", "no"][i % 2]))
            .collect();
        write(&dir, "pool.jsonl", &pool);
        write(&dir, "test.jsonl", &line("a", "b", "no"));
        let spec = write(
            &dir,
            "nli.json",
            r#"{"name": "nli", "template": " <S1> ? <S2> Answer:", "classes": ["yes", "no"],
                "verbalizer": [" Yes", " No"], "metric": "accuracy_and_f1",
                "data": {"train": "pool.jsonl", "test": "test.jsonl", "text": "p", "text_b": "h", "label": "y"}}"#,
        );
        let data = load(&spec, &options()).unwrap();
        assert_eq!(data.spec.metric, Metric::AccuracyAndF1);
        assert_eq!(data.test.len(), 1);
        assert_eq!(data.test[0].text_b.as_deref(), Some("b"));
        assert_eq!(data.train.len(), 4);
    }

    #[test]
    fn bad_specs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir, "pool.csv", &pool_csv(60));
        let err = |text: &str| {
            let spec = write(&dir, "bad.toml", text);
            load(&spec, &options()).unwrap_err().to_string()
        };
        let e = err(&SPEC.replace(" <S> The ticket", " The ticket"));
        assert!(
            e.contains("bad.toml: template") && e.contains("has no slot"),
            "{e}"
        );
        let e = err(&SPEC.replace("[\" money\", \" software\"]", "[\" money\"]"));
        assert!(e.contains("1 label words for 2 classes"), "{e}");
        let e = err(&SPEC.replace("label = \"kind\"", "label = \"kind\"\ncolour = \"red\""));
        assert!(
            e.contains("bad.toml:") && e.contains("unknown field `colour`"),
            "{e}"
        );
        let e = err(&SPEC.replace("billing = [", "refund = ["));
        assert!(e.contains("`labels` names `refund`"), "{e}");
        let e = err(&SPEC.replace("text = \"body\"", "text = \"content\""));
        assert!(e.contains("pool.csv:1: missing column `content`"), "{e}");
        let e = err(&SPEC.replace("text = \"body\"", "text = \"body\"\ntext_b = \"kind\""));
        assert!(
            e.contains("takes one text but the data section names `text_b`"),
            "{e}"
        );
        let e = err(&SPEC.replace("pool.csv", "missing.csv"));
        assert!(e.contains("missing.csv: cannot read"), "{e}");
        write(&dir, "pool.csv", "body,kind\nhello,refund\n");
        let e = err(SPEC);
        assert!(e.contains("pool.csv:2: unknown label \"refund\""), "{e}");
    }
}
