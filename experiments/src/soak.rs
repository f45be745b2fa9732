//! `bench-server --soak MINUTES`: sustained load on an in-process server on loopback. Clients
//! (16 by default) run for the given minutes, each cycling through its own session (prefix,
//! suffix or deep placement by client), valid evaluations, requests that must be refused (a
//! wrong-length `z`, an unknown session, a malformed body) and deleting and recreating its
//! session. Prints one JSON line: requests, errors (answers other than the intended ones; must
//! be 0), p50/p99 latency of the evaluations, and the process's resident memory after warm-up
//! and at the end (it should stay flat).

use std::time::{Duration, Instant};

use bbt_client::tune::outputs::rss_mb;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// What one soak client does with its session in each step of a cycle of ten.
#[derive(Debug, Clone, Copy)]
enum Step {
    Evaluate,
    WrongLength,
    UnknownSession,
    Malformed,
    Recreate,
}

fn step(i: usize) -> Step {
    match i % 10 {
        3 => Step::WrongLength,
        6 => Step::UnknownSession,
        8 => Step::Malformed,
        9 => Step::Recreate,
        _ => Step::Evaluate,
    }
}

/// Settings of one soak run.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    pub minutes: f64,
    pub clients: usize,
    pub population: usize,
    pub dim: usize,
    pub prompt_length: usize,
}

/// A client's tally.
#[derive(Default)]
struct Tally {
    requests: usize,
    api_calls: usize,
    intended_4xx: usize,
    errors: Vec<String>,
    latencies: Vec<f64>,
}

/// Runs the soak against a server on `engine`; prints the JSON line.
pub fn run(engine: bbt::Engine, soak: &Soak) -> anyhow::Result<()> {
    let layers = engine.config().num_layers;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let base = crate::loopback_server::serve_on_loopback(engine).await?;
        let http = Client::new();
        // Warm-up: every client's first session, evaluated once (the task loaded, text caches
        // built), before the memory baseline.
        let mut sessions = Vec::new();
        for c in 0..soak.clients {
            let session = ClientSession::create(&http, &base, c, soak, layers).await?;
            session.evaluate(&http, 0, soak).await?;
            sessions.push(session);
        }
        let rss_start = rss_mb();
        let deadline = Instant::now() + Duration::from_secs_f64(soak.minutes * 60.0);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for session in sessions {
            let (http, base) = (http.clone(), base.clone());
            let soak = *soak;
            tasks.push(tokio::spawn(async move {
                drive(session, &http, &base, &soak, layers, deadline).await
            }));
        }
        let mut total = Tally::default();
        for task in tasks {
            let t = task.await?;
            total.requests += t.requests;
            total.api_calls += t.api_calls;
            total.intended_4xx += t.intended_4xx;
            total.errors.extend(t.errors);
            total.latencies.extend(t.latencies);
        }
        let wall = started.elapsed().as_secs_f64();
        let rss_end = rss_mb();
        for e in total.errors.iter().take(10) {
            eprintln!("soak error: {e}");
        }
        total.latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let n = total.latencies.len();
            (n > 0).then(|| total.latencies[((n - 1) as f64 * p).round() as usize])
        };
        println!(
            "{}",
            json!({
                "bench": "server_soak", "minutes": soak.minutes, "clients": soak.clients,
                "population": soak.population, "dim": soak.dim, "prompt_length": soak.prompt_length,
                "requests": total.requests, "api_calls": total.api_calls,
                "intended_4xx": total.intended_4xx, "errors": total.errors.len(),
                "evaluate_p50_s": pct(0.5), "evaluate_p99_s": pct(0.99),
                "api_calls_per_s": total.api_calls as f64 / wall,
                "rss_start_mb": rss_start, "rss_end_mb": rss_end,
                "rss_change": rss_start.zip(rss_end).map(|(a, b)| b / a - 1.0),
            })
        );
        anyhow::ensure!(
            total.errors.is_empty(),
            "{} unexpected answers under load",
            total.errors.len()
        );
        Ok(())
    })
}

/// A soak client's session: its placement follows the client's number.
struct ClientSession {
    client: usize,
    evaluate_url: String,
    session_url: String,
    deep: bool,
}

impl ClientSession {
    async fn create(
        http: &Client,
        base: &str,
        client: usize,
        soak: &Soak,
        layers: usize,
    ) -> anyhow::Result<Self> {
        let (placement, deep) = match client % 3 {
            0 => ("prefix", false),
            1 => ("suffix", false),
            _ => ("prefix", true),
        };
        let body = json!({
            "task": {"kind": "builtin", "name": "mr", "k": 16, "seed": 13 + client as u64},
            "prompt_length": soak.prompt_length, "placement": placement, "deep": deep,
            "projection": {"intrinsic_dim": soak.dim, "seed": client}
        });
        let resp = http
            .post(format!("{base}/v1/sessions"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == StatusCode::CREATED,
            "session creation answered {}: {}",
            resp.status(),
            resp.text().await?
        );
        let info: Value = resp.json().await?;
        let id = info["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session id in {info}"))?;
        let layer = if deep {
            format!("&layer={}", client % layers)
        } else {
            String::new()
        };
        Ok(Self {
            client,
            evaluate_url: format!("{base}/v1/sessions/{id}/evaluate?split=train&dtype=f32{layer}"),
            session_url: format!("{base}/v1/sessions/{id}"),
            deep,
        })
    }

    /// One valid evaluation of `soak.population` candidates; its latency.
    async fn evaluate(&self, http: &Client, round: usize, soak: &Soak) -> anyhow::Result<f64> {
        let body: Vec<u8> = (0..soak.population * soak.dim)
            .map(|j| (((self.client * 7919 + round * 131 + j) as f32) * 0.618).sin() * 0.5)
            .flat_map(f32::to_le_bytes)
            .collect();
        let started = Instant::now();
        let resp = http
            .post(&self.evaluate_url)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "evaluate answered {status}: {text}"
        );
        Ok(started.elapsed().as_secs_f64())
    }
}

/// One client's loop until `deadline`.
async fn drive(
    mut session: ClientSession,
    http: &Client,
    base: &str,
    soak: &Soak,
    layers: usize,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        tally.requests += 1;
        let kind = step(i);
        let outcome: anyhow::Result<()> = async {
            match kind {
                Step::Evaluate => {
                    tally.latencies.push(session.evaluate(http, i, soak).await?);
                    tally.api_calls += soak.population;
                }
                Step::WrongLength => {
                    let resp = http
                        .post(&session.evaluate_url)
                        .header("content-type", "application/octet-stream")
                        .body(vec![0u8; 4 * (soak.dim + 1)])
                        .send()
                        .await?;
                    refused(resp, StatusCode::UNPROCESSABLE_ENTITY, &mut tally).await?;
                }
                Step::UnknownSession => {
                    let resp = http
                        .get(format!("{base}/v1/sessions/ses_0000000000000000"))
                        .send()
                        .await?;
                    refused(resp, StatusCode::NOT_FOUND, &mut tally).await?;
                }
                Step::Malformed => {
                    let resp = http
                        .post(format!("{base}/v1/sessions"))
                        .header("content-type", "application/json")
                        .body("{\"task\": ")
                        .send()
                        .await?;
                    refused(resp, StatusCode::BAD_REQUEST, &mut tally).await?;
                }
                Step::Recreate => {
                    let resp = http.delete(&session.session_url).send().await?;
                    anyhow::ensure!(
                        resp.status() == StatusCode::NO_CONTENT,
                        "delete answered {}",
                        resp.status()
                    );
                    tally.requests += 1;
                    session =
                        ClientSession::create(http, base, session.client, soak, layers).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tally.errors.push(format!(
                "client {} ({}) {kind:?}: {e:#}",
                session.client,
                if session.deep { "deep" } else { "shallow" }
            ));
        }
    }
    tally
}

/// Checks a request that must be refused got exactly `want`, with a JSON error body.
async fn refused(
    resp: reqwest::Response,
    want: StatusCode,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(
        status == want && body["error"].is_string(),
        "expected {want}, got {status}: {body}"
    );
    tally.intended_4xx += 1;
    Ok(())
}
