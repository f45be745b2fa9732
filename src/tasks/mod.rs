//! Tasks and data: one definition of a task ([`spec`]), the readers for its files
//! ([`formats`]), the paper's built-in tasks ([`builtin`]), tasks shipped in registry packages
//! ([`registry`]), the user's own files ([`user`]) and BBT's few-shot protocol ([`fewshot`]).

pub mod builtin;
#[cfg(feature = "engine")]
pub mod demonstrations;
pub mod fewshot;
pub mod formats;
pub mod registry;
pub mod sources;
pub mod spec;
pub mod user;
pub mod verbalizer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use formats::DataError;
pub use spec::{Metric, MultiTokenWords, TaskSpec, Template};
pub use verbalizer::{several_label_words, LabelWords, Verbalizer};

/// One labelled example: one or two texts and a class index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: usize,
}

/// A file format together with its column/field mapping.
#[derive(Debug, Clone)]
pub enum FileFormat {
    Delimited(formats::Delimited),
    JsonRecords(formats::JsonFields),
    Jsonl(formats::JsonFields),
    LabelSpaceText(formats::LabelMap),
}

impl FileFormat {
    /// Reads every example of `path`.
    pub fn read(&self, path: &Path) -> Result<Vec<Example>, DataError> {
        match self {
            Self::Delimited(d) => formats::read_delimited(path, d),
            Self::JsonRecords(f) => formats::read_json_records(path, f),
            Self::Jsonl(f) => formats::read_jsonl(path, f),
            Self::LabelSpaceText(labels) => formats::read_label_space_text(path, labels),
        }
    }
}

/// A task's few-shot splits, ready to score, with where each came from.
#[derive(Debug, Clone, Serialize)]
pub struct TaskData {
    pub spec: TaskSpec,
    pub k: usize,
    pub seed: u64,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    /// Where train and dev came from (a pre-sampled folder, or the pool and the seed).
    pub train_dev_source: String,
    /// Where the evaluation set came from.
    pub test_source: String,
    /// Set when the evaluation set is a stand-in for a missing official test set.
    pub test_stand_in: Option<String>,
}

/// Why a task could not be loaded: the request's fault, the data's absence, or the data's
/// state. A server answers the first three with a 4xx (the caller can fix them, or ask its
/// operator to fetch the data) and the last with a 5xx.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No task by that name.
    #[error("unknown task `{name}`; known tasks: {known}")]
    Unknown { name: String, known: String },
    /// The task exists but its data cannot meet the request (more examples per class than the
    /// pool holds, a `k` or seed without a pre-sampled folder).
    #[error("{0}")]
    Request(String),
    /// One of the paper's tasks whose files are not in the data directory.
    #[error(
        "the data of `{task}` is not here: {} does not exist. `bbt fetch {task}` downloads it \
         (into {}), or point --data-dir or BBT_DATA_DIR at a copy laid out as README's \
         \"Tasks and data\" shows",
        path.display(),
        sources::fetch_dir().display()
    )]
    Missing { task: String, path: PathBuf },
    /// The task's data is unreadable here (a file, a package fetch).
    #[error(transparent)]
    Data(#[from] anyhow::Error),
}

impl From<DataError> for TaskError {
    fn from(e: DataError) -> Self {
        Self::Data(e.into())
    }
}

impl From<crate::assets::AssetError> for TaskError {
    fn from(e: crate::assets::AssetError) -> Self {
        Self::Data(e.into())
    }
}

/// Options of [`load_builtin`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Data directory laid out like `shared/datasets/`.
    pub data_dir: PathBuf,
    /// Examples per class in train and in dev.
    pub k: usize,
    pub seed: u64,
    /// Sample from the pool even when a pre-sampled folder exists.
    pub resample: bool,
}

/// The data directory: `$BBT_DATA_DIR`, else where `bbt fetch` puts the datasets (`datasets/`
/// in bbt's cache) once it exists, else `../shared/datasets` (a copy beside the working
/// directory).
pub fn default_data_dir() -> PathBuf {
    let fetched = sources::fetch_dir();
    if std::env::var_os("BBT_DATA_DIR").is_some_and(|s| !s.is_empty()) || fetched.is_dir() {
        return fetched;
    }
    PathBuf::from("../shared/datasets")
}

/// Loads any task: a user task spec file (`.toml` / `.json`, see [`user`]), a package-backed
/// task ([`registry`]: mr, mr-snippets, bbc) or one of the paper's seven read from the data
/// directory ([`load_builtin`]).
pub fn load_task(name: &str, options: &LoadOptions) -> Result<TaskData, TaskError> {
    let path = Path::new(name);
    if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("toml" | "json")
    ) {
        return Ok(user::load(path, options)?);
    }
    match registry::lookup(name) {
        Some((spec, package)) => registry::load(spec, &package, options),
        None => load_builtin(name, options),
    }
}

/// Every task name [`load_task`] knows.
pub fn task_names() -> Vec<&'static str> {
    registry::NAMES
        .iter()
        .chain(builtin::NAMES)
        .copied()
        .collect()
}

/// Loads a built-in task under BBT's protocol: the pre-sampled `k-shot/<k>-<seed>` folder when
/// present (LM-BFF style), else `k` per class for train and another `k` for dev sampled from the
/// training pool with `seed`; the evaluation set untouched.
pub fn load_builtin(name: &str, options: &LoadOptions) -> Result<TaskData, TaskError> {
    let (spec, layout) = builtin::lookup(name).ok_or_else(|| TaskError::Unknown {
        name: name.to_string(),
        known: task_names().join(", "),
    })?;
    let task_dir = options.data_dir.join(layout.dir);
    let presampled = if options.resample {
        None
    } else {
        builtin::kshot_dir(&options.data_dir, &layout, options.k, options.seed)
    };
    // Every file this load reads must be there; a missing one is the data's absence, which
    // `bbt fetch` cures, not a broken file.
    let needs_pool = presampled.is_none() || layout.eval.is_none();
    let needed = layout.eval.iter().map(|(file, _, _)| *file).chain(
        layout
            .pool
            .iter()
            .map(|(file, _)| *file)
            .filter(|_| needs_pool),
    );
    for file in needed {
        let path = task_dir.join(file);
        if !path.is_file() {
            return Err(TaskError::Missing {
                task: spec.name.clone(),
                path,
            });
        }
    }
    let read_pool = || -> Result<Vec<Example>, DataError> {
        let mut pool = Vec::new();
        for (file, format) in &layout.pool {
            pool.extend(format.read(&task_dir.join(file))?);
        }
        Ok(pool)
    };
    let mut pool_used: Option<Vec<Example>> = None;
    let (train, dev, train_dev_source) = match presampled {
        Some(dir) => (
            layout.kshot.read(&dir.join("train.tsv"))?,
            layout.kshot.read(&dir.join("dev.tsv"))?,
            format!("pre-sampled {}", dir.display()),
        ),
        None => {
            if layout.pool.is_empty() {
                return Err(TaskError::Request(format!(
                    "`{}` has no training pool here, only the pre-sampled folders k-shot/16-{{13,21,42,87,100}}; \
                     use k = 16 and one of those seeds",
                    spec.name
                )));
            }
            let pool = read_pool()?;
            let (train, dev) = sample_train_dev(&spec, &pool, options)?;
            let files: Vec<&str> = layout.pool.iter().map(|(f, _)| *f).collect();
            pool_used = Some(pool);
            (
                train,
                dev,
                format!(
                    "sampled from {} with seed {}",
                    files.join(" + "),
                    options.seed
                ),
            )
        }
    };
    let (test, test_source, test_stand_in) = match &layout.eval {
        Some((file, format, note)) => (
            format.read(&task_dir.join(file))?,
            task_dir.join(file).display().to_string(),
            note.map(str::to_string),
        ),
        None => {
            let pool = match pool_used.take() {
                Some(p) => p,
                None => read_pool()?,
            };
            let seen: HashSet<&str> = train
                .iter()
                .chain(&dev)
                .map(|e| e.text_a.as_str())
                .collect();
            let test: Vec<Example> = pool
                .iter()
                .filter(|e| !seen.contains(e.text_a.as_str()))
                .cloned()
                .collect();
            let files: Vec<&str> = layout.pool.iter().map(|(f, _)| *f).collect();
            (
                test,
                files.join(" + "),
                layout.pool_as_eval_note.map(str::to_string),
            )
        }
    };
    Ok(TaskData {
        spec,
        k: options.k,
        seed: options.seed,
        train,
        dev,
        test,
        train_dev_source,
        test_source,
        test_stand_in,
    })
}

impl TaskData {
    /// Number of examples per class in each split: `(train, dev, test)`.
    pub fn class_counts(&self) -> Vec<(usize, usize, usize)> {
        let count = |xs: &[Example], c: usize| xs.iter().filter(|e| e.label == c).count();
        (0..self.spec.classes.len())
            .map(|c| {
                (
                    count(&self.train, c),
                    count(&self.dev, c),
                    count(&self.test, c),
                )
            })
            .collect()
    }
}

/// A fixed subset of `limit` test examples (all of them if absent): the same examples for every
/// seed and method, drawn by a seeded shuffle (seed 0) because test files are often sorted by
/// label, so their first examples would be one class.
pub fn test_subset(test: Vec<Example>, limit: Option<usize>) -> Vec<Example> {
    let Some(limit) = limit.filter(|&n| n < test.len()) else {
        return test;
    };
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..test.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    order.truncate(limit);
    order.sort_unstable();
    order.into_iter().map(|i| test[i].clone()).collect()
}

/// `k` per class for train and for dev from `pool`, with the run's seed (see [`fewshot`]).
pub fn sample_train_dev(
    spec: &TaskSpec,
    pool: &[Example],
    options: &LoadOptions,
) -> Result<(Vec<Example>, Vec<Example>), TaskError> {
    let (ti, di) = fewshot::sample_indices(pool, spec.classes.len(), options.k, options.seed)
        .map_err(|e| TaskError::Request(format!("{}: {e}", spec.name)))?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| pool[i].clone()).collect::<Vec<_>>();
    Ok((pick(&ti), pick(&di)))
}

/// Size of the fixed evaluation set carved out of a task that has only one pool of examples.
pub const HELD_OUT: usize = 1000;
/// Seed of that carve-out: never the run's seed, so every run sees the same evaluation set.
const HELD_OUT_SEED: u64 = 0x5eed;

/// Few-shot splits from a single pool (`source` names it): exact duplicates dropped (so no text
/// lands in both the few-shot sets and the evaluation set; BBC News repeats a few dozen
/// articles), a class-stratified evaluation set of up to [`HELD_OUT`] examples drawn with a fixed
/// seed, and `k` per class for train and for dev sampled from the rest with the run's seed.
pub fn split_pool(
    spec: TaskSpec,
    all: Vec<Example>,
    source: &str,
    options: &LoadOptions,
) -> Result<TaskData, TaskError> {
    let mut seen = HashSet::new();
    let all: Vec<Example> = all
        .into_iter()
        .filter(|e| seen.insert((e.text_a.clone(), e.text_b.clone())))
        .collect();
    let classes = spec.classes.len();
    let per_class = HELD_OUT.min(all.len() / 2) / classes;
    let test_idx = fewshot::stratified_indices(&all, classes, per_class, HELD_OUT_SEED)
        .map_err(|e| TaskError::Data(anyhow::anyhow!("{}: {e}", spec.name)))?;
    let mut in_test = vec![false; all.len()];
    for &i in &test_idx {
        in_test[i] = true;
    }
    let rest: Vec<Example> = all
        .iter()
        .zip(&in_test)
        .filter(|(_, t)| !**t)
        .map(|(e, _)| e.clone())
        .collect();
    let (train, dev) = sample_train_dev(&spec, &rest, options)?;
    Ok(TaskData {
        k: options.k,
        seed: options.seed,
        train,
        dev,
        test: test_idx.iter().map(|&i| all[i].clone()).collect(),
        train_dev_source: format!(
            "sampled from {source} ({} examples outside the evaluation set) with seed {}",
            rest.len(),
            options.seed
        ),
        test_source: format!(
            "{} held-out examples of {source} ({per_class} per class, fixed seed)",
            test_idx.len()
        ),
        test_stand_in: None,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_subset_is_fixed_and_mixes_a_sorted_file() {
        // A file sorted by label: the first 100 are class 0.
        let test: Vec<Example> = (0..200)
            .map(|i| Example {
                text_a: format!("text {i}"),
                text_b: None,
                label: usize::from(i >= 100),
            })
            .collect();
        let subset = test_subset(test.clone(), Some(50));
        assert_eq!(subset.len(), 50);
        let ones = subset.iter().filter(|e| e.label == 1).count();
        assert!((15..=35).contains(&ones), "{ones} of 50 from class 1");
        assert_eq!(subset, test_subset(test.clone(), Some(50)));
        assert_eq!(test_subset(test.clone(), None), test);
        assert_eq!(test_subset(test.clone(), Some(500)), test);
    }
}
