//! Downloading the paper's datasets (`bbt fetch sst2`): each file of a task from the public
//! repository it is a copy of ([`bbt::tasks::sources`]), checked against its size and sha256
//! before it is written, into a data directory laid out as the built-in tasks read it.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use bbt::tasks::sources::{self, SourceFile};

use crate::http::error_chain;

/// What fetching one task did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Files downloaded and written.
    pub downloaded: usize,
    /// Files already there with the right sha256, left alone.
    pub present: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not one of the paper's tasks.
    #[error("`{0}` is not one of the paper's tasks ({names}); models are fetched by their asset name", names = bbt::tasks::builtin::NAMES.join(", "))]
    UnknownTask(String),
    /// The source could not be reached or did not answer 200.
    #[error(
        "cannot download {url}: {message} (the datasets come from GitHub, so this needs \
         internet; --source or BBT_DATA_SOURCE names a mirror with the same layout)"
    )]
    Download { url: String, message: String },
    /// The source answered with other bytes than the ones bbt reads.
    #[error(
        "{url} is not the file bbt reads: {got} bytes with sha256 {got_sha}, expected {bytes} \
         bytes with sha256 {sha256}; nothing was written"
    )]
    Mismatch {
        url: String,
        got: u64,
        got_sha: String,
        bytes: u64,
        sha256: String,
    },
    /// The data directory could not be written.
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
}

/// Downloads the files of `task` that `data_dir` lacks from `source` (a base URL laid out as
/// [`sources::DEFAULT_SOURCE`]). Each file is verified before it replaces anything; `progress`
/// hears of each file as it is written.
pub fn fetch_task(
    task: &str,
    data_dir: &Path,
    source: &str,
    mut progress: impl FnMut(&SourceFile),
) -> Result<Fetched, FetchError> {
    let files = sources::of_task(task).ok_or_else(|| FetchError::UnknownTask(task.into()))?;
    let http = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| FetchError::Download {
            url: source.into(),
            message: e.to_string(),
        })?;
    let mut fetched = Fetched::default();
    for file in &files {
        if file.present_in(data_dir) {
            fetched.present += 1;
            continue;
        }
        let bytes = download(&http, file, source)?;
        write_atomically(&data_dir.join(file.path), &bytes)?;
        fetched.downloaded += 1;
        fetched.bytes += bytes.len() as u64;
        progress(file);
    }
    Ok(fetched)
}

/// The bytes of `file` from `source`, verified.
fn download(
    http: &reqwest::blocking::Client,
    file: &SourceFile,
    source: &str,
) -> Result<Vec<u8>, FetchError> {
    let url = file.url(source);
    let failed = |message: String| FetchError::Download {
        url: url.clone(),
        message,
    };
    let response = http.get(&url).send().map_err(|e| failed(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!("answered {}", response.status())));
    }
    let bytes = response.bytes().map_err(|e| failed(error_chain(&e)))?;
    if !file.matches(&bytes) {
        return Err(FetchError::Mismatch {
            url,
            got: bytes.len() as u64,
            got_sha: sources::sha256_hex(&bytes),
            bytes: file.bytes,
            sha256: file.sha256.into(),
        });
    }
    Ok(bytes.to_vec())
}

/// Writes `bytes` to a temporary file beside `path` and renames it there, so a reader never
/// sees half a file and a failed write leaves any older copy in place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let failed = |e: std::io::Error| FetchError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = path.parent().expect("dataset files sit in a folder");
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    tmp.write_all(bytes).map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}
