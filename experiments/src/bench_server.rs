//! `bench-server`: latency and throughput of `/v1/sessions/{id}/evaluate` under 1, 4 and 16
//! concurrent clients against an in-process server on loopback (or `--servers URL,...`, or
//! `--replicas 1,2,3` of this binary's server behind nginx), and the bytes a client uploads per
//! API call in each encoding. One JSON object per line. `--deep` measures BBTv2 sessions. With
//! `--soak MINUTES`, sustained mixed load instead ([`crate::soak`]).

use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use bbt_server::daemons::Daemon;
use bbt_server::process::ServerProcess;
use serde_json::{json, Value};

use crate::loopback_server::{serve_on_loopback, BENCH_SESSION_MB};

/// Options of `bench-server`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Concurrent client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Requests each client sends per measurement.
    #[arg(long, default_value_t = 1)]
    requests_per_client: usize,
    /// Candidates per request (the CMA-ES population).
    #[arg(long, default_value_t = 20)]
    population: usize,
    /// Intrinsic dimension d.
    #[arg(long, default_value_t = 500)]
    dim: usize,
    /// Prompt length L.
    #[arg(long, default_value_t = 10)]
    prompt_length: usize,
    /// Prompt placement (suffix keeps a warm text cache per session).
    #[arg(long, default_value = "suffix")]
    placement: String,
    /// BBTv2 sessions: a deep prompt (one projection per layer); every request carries
    /// candidates for one layer, cycling through the first layers, the others at their `z`.
    #[arg(long, conflicts_with = "soak")]
    deep: bool,
    /// Measure these running servers (e.g. a load balancer's URL) instead of one in this
    /// process; clients are spread over them in turn.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["replicas", "soak"])]
    servers: Option<Vec<String>>,
    /// Measure N replicas of this binary's server behind nginx (`deploy/nginx.conf`) on
    /// loopback, for each N given (e.g. `1,2,3`); needs nginx.
    #[arg(long, value_delimiter = ',', conflicts_with = "soak")]
    replicas: Option<Vec<usize>>,
    /// API key for --servers.
    #[arg(long, env = "BBT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Instead of the measurements: MINUTES of sustained load by the largest `--clients` count
    /// (prefix, suffix and deep sessions, refused requests, sessions deleted and recreated);
    /// errors, latency and memory at start and end.
    #[arg(long, value_name = "MINUTES")]
    soak: Option<f64>,
}

fn candidates(seed: usize, population: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..population)
        .map(|c| {
            (0..dim)
                .map(|j| (((seed * 7919 + c * dim + j) as f32) * 0.618).sin())
                .collect()
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the measurements.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(minutes) = args.soak {
        anyhow::ensure!(
            minutes > 0.0 && minutes <= 24.0 * 60.0,
            "--soak takes 0 < MINUTES <= 1440, got {minutes}"
        );
        let soak = crate::soak::Soak {
            minutes,
            clients: args.clients.iter().copied().max().unwrap_or(16).max(1),
            population: args.population,
            dim: args.dim,
            prompt_length: args.prompt_length,
        };
        return crate::soak::run(args.model.load()?, &soak);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(counts) = &args.replicas {
        for &n in counts {
            anyhow::ensure!(n > 0, "--replicas counts must be at least 1");
            let cluster = Cluster::start(&args.model, n)?;
            runtime.block_on(measure_all(args, &[cluster.url()], Some(n)))?;
        }
        return Ok(());
    }
    runtime.block_on(async move {
        let bases = match &args.servers {
            Some(urls) => urls.clone(),
            None => {
                let base = serve_on_loopback(args.model.load()?).await?;
                print_upload_sizes(args);
                vec![base]
            }
        };
        measure_all(args, &bases, None).await
    })
}

/// `n` replicas of this binary's `serve` behind nginx (`deploy/nginx.conf`), on loopback.
struct Cluster {
    _replicas: Vec<ServerProcess>,
    balancer: Daemon,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(model: &bbt::cli::ModelArgs, n: usize) -> anyhow::Result<Self> {
        let nginx_program = bbt_server::daemons::system_program("nginx", "bench-server --replicas")
            .ok_or_else(|| {
                anyhow::anyhow!("--replicas needs nginx (apt-get install nginx-light)")
            })?;
        let mut replicas = Vec::new();
        for _ in 0..n {
            let mut command = Command::new(std::env::current_exe()?);
            let mb = BENCH_SESSION_MB.to_string();
            command
                .args(["serve", "--bind", "127.0.0.1:0"])
                .args(["--max-session-mb", &mb, "--max-session-mb-per-key", &mb])
                .args(model.to_flags());
            replicas.push(ServerProcess::spawn(command, false)?);
        }
        let upstreams: Vec<String> = replicas
            .iter()
            .map(|r| r.url().trim_start_matches("http://").to_string())
            .collect();
        let port = bbt_server::daemons::free_port()?;
        let config = bbt_server::daemons::render_nginx_conf(NGINX_CONF, &upstreams, port);
        let dir = tempfile::tempdir()?;
        let balancer = bbt_server::daemons::nginx(&nginx_program, &config, port, dir.path())?;
        Ok(Self {
            _replicas: replicas,
            balancer,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.balancer.port())
    }
}

/// Deep sessions' requests cycle through this many layers (every layer costs the same pass).
const DEEP_LAYERS_CYCLED: usize = 4;

/// The nginx configuration operators start from.
const NGINX_CONF: &str = include_str!("../../deploy/nginx.conf");

/// Bytes uploaded per API call, by encoding (bodies; HTTP headers add ~150 bytes per request).
fn print_upload_sizes(args: &Args) {
    let z = candidates(0, args.population, args.dim);
    let flat32: Vec<u8> = z.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    let flat16: Vec<u8> = z
        .iter()
        .flatten()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let bodies = [
        ("json_numbers", json!({"candidates": z}).to_string().len()),
        (
            "json_base64_f32",
            json!({"candidates": {"dtype": "f32", "count": args.population, "data": b64(&flat32)}})
                .to_string()
                .len(),
        ),
        (
            "json_base64_f16",
            json!({"candidates": {"dtype": "f16", "count": args.population, "data": b64(&flat16)}})
                .to_string()
                .len(),
        ),
        ("raw_f32", flat32.len()),
        ("raw_f16", flat16.len()),
    ];
    for (encoding, bytes) in bodies {
        println!(
            "{}",
            json!({"bench": "server_upload", "encoding": encoding, "dim": args.dim, "population": args.population,
                   "body_bytes_per_call": bytes as f64 / args.population as f64,
                   "paper_bbt_bytes_per_call": 6000})
        );
    }
}

/// Every `--clients` count against `bases` (clients spread over them in turn).
async fn measure_all(args: &Args, bases: &[String], replicas: Option<usize>) -> anyhow::Result<()> {
    for &clients in &args.clients {
        let mut line = measure(args, bases, clients).await?;
        line["servers"] = json!(bases.len());
        if let Some(n) = replicas {
            line["replicas_behind_nginx"] = json!(n);
        }
        println!("{line}");
    }
    Ok(())
}

/// `clients` concurrent clients, each with its own session, sending `--requests-per-client`
/// evaluate requests of `--population` candidates.
async fn measure(args: &Args, bases: &[String], clients: usize) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let with_key = |req: reqwest::RequestBuilder| match &args.api_key {
        Some(k) => req.bearer_auth(k),
        None => req,
    };
    let session_body = json!({
        "task": {"kind": "builtin", "name": "mr", "k": 16, "seed": 42},
        "prompt_length": args.prompt_length, "placement": args.placement,
        "projection": {"intrinsic_dim": args.dim, "seed": 1}, "deep": args.deep
    });
    // Deep sessions name the layer each request's candidates are for.
    let layer = |r: usize| match args.deep {
        true => format!("&layer={}", r % DEEP_LAYERS_CYCLED),
        false => String::new(),
    };
    // One session per client, named by the client (so a balancer routes all of its requests
    // alike), created and warmed (text cache) before timing.
    let warm: Vec<u8> = candidates(0, 1, args.dim)
        .concat()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mut sessions = Vec::new();
    for c in 0..clients {
        let base = &bases[c % bases.len()];
        let id = format!("ses_bench_{:016x}", rand::random::<u64>());
        let resp = with_key(http.put(format!("{base}/v1/sessions/{id}")))
            .json(&session_body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "session creation failed: {}",
            resp.text().await?
        );
        let url = format!("{base}/v1/sessions/{id}/evaluate?split=train&dtype=f32");
        let resp = with_key(http.post(format!("{url}{}", layer(0))))
            .header("content-type", "application/octet-stream")
            .body(warm.clone())
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "warm-up failed: {}",
            resp.text().await?
        );
        sessions.push(url);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, url) in sessions.into_iter().enumerate() {
        let (population, dim, requests) = (args.population, args.dim, args.requests_per_client);
        let requests: Vec<_> = (0..requests)
            .map(|r| with_key(http.post(format!("{url}{}", layer(r)))))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for (r, request) in requests.into_iter().enumerate() {
                let body: Vec<u8> = candidates(1 + c * 100 + r, population, dim)
                    .iter()
                    .flatten()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                let t = Instant::now();
                let resp = request
                    .header("content-type", "application/octet-stream")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "evaluate failed: {}",
                    resp.text().await?
                );
                resp.bytes().await?;
                latencies.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let calls = (latencies.len() * args.population) as f64;
    Ok(
        json!({"bench": "server_evaluate", "clients": clients, "requests": latencies.len(),
           "population": args.population, "examples": 32, "prompt_length": args.prompt_length,
           "dim": args.dim,
           "placement": args.placement, "deep": args.deep, "p50_s": percentile(&latencies, 0.5),
           "p99_s": percentile(&latencies, 0.99), "wall_s": wall, "api_calls_per_s": calls / wall}),
    )
}
