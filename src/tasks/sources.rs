//! Where the paper's datasets come from: every file bbt reads for the seven built-in tasks, each
//! a byte-for-byte copy of a file in a public repository at a fixed commit, with its size and
//! sha256 (`sources.tsv`, one line per file). `bbt fetch TASK` downloads a task's files from
//! there into a data directory; [`missing_files`] says which of them a directory lacks.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The table of files, compiled in.
const MANIFEST: &str = include_str!("sources.tsv");

/// Where the files are downloaded from by default: each one's raw URL on GitHub,
/// `{source}/{repository}/{commit}/{path}`. A mirror laid out the same way can stand in.
pub const DEFAULT_SOURCE: &str = "https://raw.githubusercontent.com";

/// One file of a built-in task and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The task it belongs to (`sst2`, `agnews`, ...).
    pub task: &'static str,
    /// Its path under the data directory (`SST-2/dev.tsv`).
    pub path: &'static str,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its sha256, hex.
    pub sha256: &'static str,
    /// The public repository it is a copy of (`owner/name`).
    pub repository: &'static str,
    /// The commit of that repository.
    pub commit: &'static str,
    /// Its path in that repository.
    pub source_path: &'static str,
    /// The licence the repository states.
    pub licence: &'static str,
}

impl SourceFile {
    /// Its download URL under `source` (e.g. [`DEFAULT_SOURCE`] or a mirror's base URL).
    pub fn url(&self, source: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            source.trim_end_matches('/'),
            self.repository,
            self.commit,
            self.source_path
        )
    }

    /// Whether `bytes` are this file: the size and the sha256 match.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.bytes && sha256_hex(bytes) == self.sha256
    }

    /// Whether the copy under `data_dir` is this file (present, right size and sha256).
    pub fn present_in(&self, data_dir: &Path) -> bool {
        let path = data_dir.join(self.path);
        std::fs::metadata(&path).is_ok_and(|m| m.len() == self.bytes)
            && std::fs::read(&path).is_ok_and(|b| self.matches(&b))
    }
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file of every built-in task, in the table's order.
pub fn all() -> Vec<SourceFile> {
    MANIFEST
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&'static str> = line.split('\t').collect();
            assert_eq!(f.len(), 8, "sources.tsv: 8 columns per line: {line}");
            SourceFile {
                task: f[0],
                path: f[1],
                bytes: f[2].parse().expect("sources.tsv: bytes is a number"),
                sha256: f[3],
                repository: f[4],
                commit: f[5],
                source_path: f[6],
                licence: f[7],
            }
        })
        .collect()
}

/// The files of one built-in task (its canonical name or any name [`super::builtin::lookup`]
/// accepts); `None` for a task that is not one of the paper's seven.
pub fn of_task(name: &str) -> Option<Vec<SourceFile>> {
    let (spec, _) = super::builtin::lookup(name)?;
    Some(all().into_iter().filter(|f| f.task == spec.name).collect())
}

/// The files of `task` that `data_dir` lacks or holds in another version.
pub fn missing_files(task: &str, data_dir: &Path) -> Vec<SourceFile> {
    of_task(task)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !f.present_in(data_dir))
        .collect()
}

/// Where `bbt fetch` puts the datasets: `$BBT_DATA_DIR`, else `datasets/` in bbt's cache.
pub fn fetch_dir() -> PathBuf {
    std::env::var_os("BBT_DATA_DIR")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::assets::cache_dir().join("datasets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_a_builtin_task_reads_is_in_the_table() {
        let table = all();
        for name in super::super::builtin::NAMES {
            let (spec, layout) = super::super::builtin::lookup(name).unwrap();
            let files = of_task(name).unwrap();
            assert!(files.iter().all(|f| f.task == spec.name));
            let mut read: Vec<String> = layout
                .eval
                .iter()
                .map(|(f, _, _)| f.to_string())
                .chain(layout.pool.iter().map(|(f, _)| f.to_string()))
                .collect();
            for seed in [13, 21, 42, 87, 100] {
                for split in ["train", "dev"] {
                    read.push(format!("k-shot/16-{seed}/{split}.tsv"));
                }
            }
            for file in read {
                let path = format!("{}/{file}", layout.dir);
                assert!(
                    files.iter().any(|f| f.path == path),
                    "{path} is read by `{name}` but not in sources.tsv"
                );
            }
        }
        // Nothing else: every line belongs to a built-in task.
        let known: usize = super::super::builtin::NAMES
            .iter()
            .map(|n| of_task(n).unwrap().len())
            .sum();
        assert_eq!(known, table.len());
        assert!(table
            .iter()
            .all(|f| f.sha256.len() == 64 && f.commit.len() == 40));
    }

    #[test]
    fn urls_follow_the_raw_layout_and_a_mirror_replaces_the_host() {
        let f = &of_task("SST-2").unwrap()[0];
        assert_eq!(
            f.url(DEFAULT_SOURCE),
            format!(
                "https://raw.githubusercontent.com/{}/{}/{}",
                f.repository, f.commit, f.source_path
            )
        );
        assert!(f
            .url("http://127.0.0.1:9/")
            .starts_with("http://127.0.0.1:9/"));
        assert!(of_task("no-such-task").is_none());
    }

    #[test]
    fn a_file_matches_only_its_own_bytes_and_a_directory_reports_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let files = of_task("rte").unwrap();
        assert_eq!(missing_files("rte", dir.path()).len(), files.len());
        // A file of the right size with other bytes is not the file.
        let f = &files[0];
        let wrong = vec![b'x'; f.bytes as usize];
        assert!(!f.matches(&wrong));
        let path = dir.path().join(f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &wrong).unwrap();
        assert!(!f.present_in(dir.path()));
        assert_eq!(missing_files("rte", dir.path()).len(), files.len());
    }

    /// The table against the copies in `shared/datasets` (byte-identical to the sources).
    #[test]
    fn the_table_describes_the_paper_datasets_copy() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(dir) = crate::testing::paper_datasets(workspace, "sources table check") else {
            return;
        };
        for name in super::super::builtin::NAMES {
            assert!(
                missing_files(name, &dir).is_empty(),
                "{name}: {:?}",
                missing_files(name, &dir)
            );
        }
    }
}
