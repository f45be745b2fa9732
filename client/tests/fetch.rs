//! `bbt fetch TASK` over real HTTP: a loopback mirror (python's http.server, a separate
//! process) serves the paper's files at their `{repository}/{commit}/{path}` addresses, as
//! GitHub's raw host does; the downloaded folder must hold the same bytes and load the same task.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bbt::tasks::sources::{self, SourceFile};
use bbt::tasks::{load_task, LoadOptions};

fn bbt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bbt"))
        .args(args)
        .env_remove("BBT_DATA_SOURCE")
        .output()
        .expect("run bbt");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A static file server on a free loopback port, stopped when dropped.
struct Mirror {
    child: Child,
    url: String,
}

impl Mirror {
    fn serve(root: &Path) -> Self {
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 serves the mirror");
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lays out `files` (copied from `data`) as the source's URLs address them.
fn mirror_tree(root: &Path, data: &Path, files: &[SourceFile]) {
    for f in files {
        let at = root.join(f.repository).join(f.commit).join(f.source_path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::copy(data.join(f.path), at).unwrap();
    }
}

fn options(data_dir: PathBuf) -> LoadOptions {
    LoadOptions {
        data_dir,
        k: 16,
        seed: 13,
        resample: false,
    }
}

#[test]
fn fetch_downloads_verifies_and_resumes_a_task_from_a_mirror() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(data) = bbt::testing::paper_datasets(&workspace, "fetch from a loopback mirror")
    else {
        return;
    };
    let files = sources::of_task("rte").unwrap();
    let root = tempfile::tempdir().unwrap();
    mirror_tree(root.path(), &data, &files);
    let mirror = Mirror::serve(root.path());
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("datasets");
    let dir_arg = dir.to_str().unwrap();

    let (code, out, err) = bbt(&[
        "fetch",
        "rte",
        "--data-dir",
        dir_arg,
        "--source",
        &mirror.url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{} file(s) downloaded", files.len())),
        "{out}"
    );
    for f in &files {
        assert_eq!(
            std::fs::read(dir.join(f.path)).unwrap(),
            std::fs::read(data.join(f.path)).unwrap(),
            "{}",
            f.path
        );
    }
    // The fetched folder is the task: the same splits as the original copy.
    let fetched = load_task("rte", &options(dir.clone())).unwrap();
    let original = load_task("rte", &options(data.clone())).unwrap();
    assert_eq!(
        (fetched.train, fetched.dev, fetched.test),
        (original.train, original.dev, original.test)
    );
    // Again: everything is there, nothing is downloaded.
    let (code, out, _) = bbt(&[
        "fetch",
        "rte",
        "--data-dir",
        dir_arg,
        "--source",
        &mirror.url,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("0 file(s) downloaded"), "{out}");
    let (_, listing, _) = bbt(&["fetch", "--data-dir", dir_arg]);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start().starts_with("rte") && l.ends_with("fetched")),
        "{listing}"
    );

    // A source whose file differs: refused, and the good copy already there is kept.
    let first = &files[0];
    let served = root
        .path()
        .join(first.repository)
        .join(first.commit)
        .join(first.source_path);
    std::fs::write(&served, b"not the file").unwrap();
    std::fs::remove_file(dir.join(first.path)).unwrap();
    let (code, _, err) = bbt(&[
        "fetch",
        "rte",
        "--data-dir",
        dir_arg,
        "--source",
        &mirror.url,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not the file bbt reads") && err.contains(first.sha256),
        "{err}"
    );
    assert!(
        !dir.join(first.path).exists(),
        "a mismatching file is never written"
    );
    assert!(dir.join(files[1].path).exists());
    // A file the source lacks, and a source that is not there: one line each, saying why.
    std::fs::remove_file(&served).unwrap();
    let (code, _, err) = bbt(&[
        "fetch",
        "rte",
        "--data-dir",
        dir_arg,
        "--source",
        &mirror.url,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("answered 404"), "{err}");
    let (code, _, err) = bbt(&[
        "fetch",
        "rte",
        "--data-dir",
        dir_arg,
        "--source",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("this needs internet"), "{err}");
    // A name that is neither a model nor a task.
    let (code, _, err) = bbt(&["fetch", "rte", "sst3", "--data-dir", dir_arg]);
    assert_eq!(code, 1);
    assert!(err.contains("`sst3` is neither a model"), "{err}");
}
