//! Scale-out end to end, on loopback with real processes: three `bbt serve` replicas (the real
//! model) behind nginx configured from `deploy/nginx.conf`, sharing usage in Redis (both from
//! the system's packages). A `bbt tune` run through nginx loses the replica that holds its
//! session midway and finishes through the others with exactly the result of an uninterrupted
//! run, and its key is charged once for every call.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bbt_server::daemons::{free_port, nginx, redis, render_nginx_conf, system_program};
use bbt_server::process::ServerProcess;
use common::{
    generations_logged, outcome, run_to_end, serve_with, tune_args, wait_for_generations,
    write_task, BBT, BBT_RUN,
};
use serde_json::Value;

const WHO: &str = "a_run_survives_the_replica_holding_its_session";

fn get(url: &str, key: Option<&str>) -> Value {
    let mut req = reqwest::blocking::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().unwrap().json().unwrap()
}

/// Sessions a replica holds now (its `/health`).
fn sessions(replica: &ServerProcess) -> u64 {
    get(&format!("{}/health", replica.url()), None)["sessions"]
        .as_u64()
        .unwrap()
}

fn api_calls(result_dir: &Path) -> u64 {
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(result_dir.join("result.json")).unwrap())
            .unwrap();
    result["api_calls"].as_u64().unwrap()
}

#[test]
fn a_run_survives_the_replica_holding_its_session() {
    let (Some(redis_server), Some(nginx_program)) = (
        system_program("redis-server", WHO),
        system_program("nginx", WHO),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(task) = write_task(dir.path(), WHO) else {
        return;
    };
    let store = redis(&redis_server).expect("redis-server starts");
    let store_url = format!("redis://127.0.0.1:{}", store.port());
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "reference\nrunner 100000\n").unwrap();
    let flags = [
        "--api-keys",
        keys.to_str().unwrap(),
        "--usage-store",
        &store_url,
    ];
    let mut replicas: Vec<Option<ServerProcess>> = (0..3)
        .map(|_| Some(serve_with("127.0.0.1:0", &flags)))
        .collect();
    let upstreams: Vec<String> = replicas
        .iter()
        .map(|r| {
            let url = r.as_ref().unwrap().url();
            url.trim_start_matches("http://").to_string()
        })
        .collect();
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx.conf"))
            .unwrap();
    let port = free_port().unwrap();
    let config = render_nginx_conf(&template, &upstreams, port);
    let _balancer = nginx(&nginx_program, &config, port, &dir.path().join("nginx"))
        .expect("nginx starts with deploy/nginx.conf");
    let front = format!("http://127.0.0.1:{port}");

    // Reference: uninterrupted, through the balancer.
    let reference = dir.path().join("reference");
    let mut args = tune_args(&front, &task, &reference, BBT_RUN);
    args.extend(["--api-key", "reference"].map(String::from));
    run_to_end(&args);
    let expected = outcome(&reference);
    let usage = get(&format!("{front}/v1/usage"), Some("reference"));
    assert_eq!(usage["api_calls"].as_u64(), Some(api_calls(&reference)));

    // The same run, losing the replica that holds its session after 3 of 8 generations.
    let survivor = dir.path().join("failover");
    let mut args = tune_args(&front, &task, &survivor, BBT_RUN);
    args.extend(["--api-key", "runner"].map(String::from));
    let mut client = Command::new(BBT).args(&args).spawn().unwrap();
    wait_for_generations(&survivor, 3);
    let holder = replicas
        .iter()
        .position(|r| sessions(r.as_ref().unwrap()) > 0)
        .expect("one replica holds the run's session");
    replicas[holder] = None; // killed
    let done = generations_logged(&survivor);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run stalled"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the run failed after its replica died");
    assert!(
        done < 8,
        "the replica died mid-run ({done} generations done)"
    );
    assert_eq!(
        outcome(&survivor),
        expected,
        "the run differs after failover"
    );
    // Every call was charged exactly once, the lost one included.
    let usage = get(&format!("{front}/v1/usage"), Some("runner"));
    assert_eq!(
        usage["api_calls"].as_u64(),
        Some(api_calls(&survivor)),
        "{usage}"
    );
}
