//! A session request's task as a spec and example splits: a built-in task loaded from the
//! server's data, or the client's explicit examples checked one by one. Runs off the async
//! runtime (loading reads files and may fetch a package on first use).

use std::collections::HashMap;
use std::path::Path;

use bbt::protocol::{ExampleIn, SplitName, TaskRequest};
use bbt::tasks::{self, Example, LoadOptions, TaskError, TaskSpec, Template};

use super::{CoreError, Limits};

/// The task's spec and its train, dev and test examples, each split within
/// `limits.max_examples` and train not empty.
pub fn task_examples(
    task: &TaskRequest,
    limits: &Limits,
    data_dir: &Path,
) -> Result<(TaskSpec, HashMap<SplitName, Vec<Example>>), CoreError> {
    let (spec, splits) = match task {
        TaskRequest::Builtin {
            name,
            k,
            seed,
            test_limit,
            verbalizer,
        } => {
            let (mut spec, splits) = builtin(name, *k, *seed, *test_limit, limits, data_dir)?;
            if let Some(words) = verbalizer {
                spec.verbalizer = words.clone();
                spec.validate().map_err(CoreError::Invalid)?;
            }
            (spec, splits)
        }
        TaskRequest::Explicit {
            name,
            template,
            classes,
            verbalizer,
            metric,
            train,
            dev,
            test,
        } => {
            let spec = TaskSpec {
                name: name.clone().unwrap_or_else(|| "custom".into()),
                classes: classes.clone(),
                template: Template::new(template).map_err(CoreError::Invalid)?,
                verbalizer: verbalizer.clone(),
                metric: *metric,
            };
            spec.validate().map_err(CoreError::Invalid)?;
            let splits = HashMap::from([
                (SplitName::Train, explicit_split(&spec, "train", train)?),
                (SplitName::Dev, explicit_split(&spec, "dev", dev)?),
                (SplitName::Test, explicit_split(&spec, "test", test)?),
            ]);
            (spec, splits)
        }
    };
    for (name, examples) in &splits {
        if examples.len() > limits.max_examples {
            return Err(CoreError::TooLarge(format!(
                "{name:?} split has {} examples; this server's limit is {}",
                examples.len(),
                limits.max_examples
            )));
        }
    }
    if splits.get(&SplitName::Train).is_none_or(Vec::is_empty) {
        return Err(CoreError::Invalid(
            "the task has no training examples".into(),
        ));
    }
    Ok((spec, splits))
}

/// One of the server's tasks by name, under BBT's few-shot protocol.
fn builtin(
    name: &str,
    k: usize,
    seed: u64,
    test_limit: Option<usize>,
    limits: &Limits,
    data_dir: &Path,
) -> Result<(TaskSpec, HashMap<SplitName, Vec<Example>>), CoreError> {
    if k == 0 || k > limits.max_examples {
        return Err(CoreError::Invalid(format!(
            "k must be between 1 and {}",
            limits.max_examples
        )));
    }
    // Only task names: a client must never make the server read a file of its choosing.
    if name.contains(['/', '\\']) || name.ends_with(".toml") || name.ends_with(".json") {
        return Err(CoreError::Invalid(format!(
            "`{name}` is not a task name this server knows"
        )));
    }
    let options = LoadOptions {
        data_dir: data_dir.to_path_buf(),
        k,
        seed,
        resample: false,
    };
    let data = tasks::load_task(name, &options).map_err(|e| match e {
        TaskError::Unknown { .. } | TaskError::Request(_) => CoreError::Invalid(e.to_string()),
        // The operator's data directory is theirs to know; the caller learns what to ask for.
        TaskError::Missing { task, .. } => CoreError::TaskDataMissing(format!(
            "this server has no data for task `{task}`; its operator can download it with \
             `bbt fetch {task} --data-dir DIR`, DIR being the server's --data-dir (or \
             BBT_DATA_DIR), with no restart needed"
        )),
        TaskError::Data(e) => CoreError::Internal(format!(
            "this server cannot load task `{name}` (tell its operator): {e:#}"
        )),
    })?;
    let test = tasks::test_subset(data.test, test_limit);
    let splits = HashMap::from([
        (SplitName::Train, data.train),
        (SplitName::Dev, data.dev),
        (SplitName::Test, test),
    ]);
    Ok((data.spec, splits))
}

/// The client's examples of one split, each checked against the spec (label in range, text not
/// empty, as many texts as the template takes).
fn explicit_split(
    spec: &TaskSpec,
    split: &str,
    examples: &[ExampleIn],
) -> Result<Vec<Example>, CoreError> {
    let classes = spec.classes.len();
    let texts = if spec.template.two_inputs() { 2 } else { 1 };
    examples
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if x.label >= classes {
                return Err(CoreError::Invalid(format!(
                    "{split}[{i}]: label {} but the task has {classes} classes",
                    x.label
                )));
            }
            if x.text.trim().is_empty() {
                return Err(CoreError::Invalid(format!("{split}[{i}]: empty text")));
            }
            if spec.template.two_inputs() != x.text_b.is_some() {
                return Err(CoreError::Invalid(format!(
                    "{split}[{i}]: the template takes {texts} text(s)"
                )));
            }
            Ok(Example {
                text_a: x.text.clone(),
                text_b: x.text_b.clone(),
                label: x.label,
            })
        })
        .collect()
}
