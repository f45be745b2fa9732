//! `bbt-experiments compare --server A,B` spreads its API cells over both servers (real
//! processes, the real default model, MR's package data): every cell finishes, and each server
//! ran sessions of its own.

use std::process::Command;

use bbt_server::process::ServerProcess;

const EXE: &str = env!("CARGO_BIN_EXE_bbt-experiments");

fn serve() -> ServerProcess {
    let mut command = Command::new(EXE);
    command.args(["serve", "--bind", "127.0.0.1:0"]);
    ServerProcess::spawn(command, false).expect("the server starts")
}

/// Sessions `server` created (its `/metrics`).
fn sessions_created(server: &ServerProcess) -> u64 {
    let text = reqwest::blocking::get(format!("{}/metrics", server.url()))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with(
                "bbt_http_requests_total{method=\"PUT\",route=\"/v1/sessions/{id}\",status=\"201\"}",
            )
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_grid_spreads_over_several_servers() {
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (serve(), serve());
    let status = Command::new(EXE)
        .args([
            "compare",
            "--tasks",
            "mr",
            "--methods",
            "manual",
            "--seeds",
            "13,42",
        ])
        .args(["--server", &format!("{},{}", a.url(), b.url())])
        .arg("--out")
        .arg(out.path())
        .arg("--quiet")
        .status()
        .unwrap();
    assert!(status.success());
    for seed in [13, 42] {
        let result = out.path().join(format!("mr/manual/seed{seed}/result.json"));
        assert!(result.exists(), "{} written", result.display());
    }
    assert!(out.path().join("REPORT.md").exists());
    assert!(
        sessions_created(&a) >= 1 && sessions_created(&b) >= 1,
        "both servers ran cells"
    );
}
