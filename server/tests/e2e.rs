//! End to end with the real default model: a separately started `bbt-server` process, real HTTP.

use serde_json::{json, Value};

fn start_server(extra: &[&str]) -> bbt_server::process::ServerProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bbt-server"));
    command.args(["--bind", "127.0.0.1:0"]).args(extra);
    bbt_server::process::ServerProcess::spawn(command, false).expect("bbt-server starts")
}

/// `GET /v1/models` of the server at `url`.
async fn models(client: &reqwest::Client, url: &str) -> Value {
    let resp = client.get(format!("{url}/v1/models")).send().await.unwrap();
    resp.json().await.unwrap()
}

#[tokio::test]
async fn tunes_against_a_real_server_process() {
    let server = start_server(&[]);
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = client.post(format!("{}{path}", server.url())).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let models = models(&client, server.url()).await;
    assert_eq!(models["data"][0]["hidden_size"], 576);
    assert_eq!(models["data"][0]["vocab_size"], 49152);

    // The manual prompt through /v1/forward: clear sentiment is read correctly.
    let (status, fwd) = post(
        "/v1/forward",
        json!({"template": " <S> It was", "verbalizer": [" bad", " great"],
               "inputs": [{"text": "a gorgeous, witty, seductive movie."},
                          {"text": "the movie was a complete waste of time."}]}),
    )
    .await;
    assert_eq!(status, 200, "{fwd}");
    let margin =
        |i: usize| fwd["logits"][i][1].as_f64().unwrap() - fwd["logits"][i][0].as_f64().unwrap();
    assert!(margin(0) > margin(1), "{fwd}");

    // A session on MR (fetched from its package), both placements, deterministic scores.
    for placement in ["prefix", "suffix"] {
        let (status, session) = post(
            "/v1/sessions",
            json!({"task": {"kind": "builtin", "name": "mr", "k": 16, "seed": 42},
                   "prompt_length": 5, "placement": placement,
                   "projection": {"intrinsic_dim": 20, "seed": 7}}),
        )
        .await;
        assert_eq!(status, 201, "{session}");
        assert_eq!(
            (
                session["train_size"].as_u64(),
                session["test_size"].as_u64()
            ),
            (Some(32), Some(1000))
        );
        let path = format!("/v1/sessions/{}/evaluate", session["id"].as_str().unwrap());
        let candidates: Vec<Vec<f32>> = (0..3)
            .map(|c| (0..20).map(|j| ((c * 20 + j) as f32).sin()).collect())
            .collect();
        let (status, a) = post(&path, json!({"candidates": candidates})).await;
        assert_eq!(status, 200, "{a}");
        let (_, b) = post(&path, json!({"candidates": [candidates[2].clone()]})).await;
        let results = a["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        for r in results {
            let (loss, acc) = (r["loss"].as_f64().unwrap(), r["accuracy"].as_f64().unwrap());
            assert!(
                loss.is_finite() && loss > 0.0 && (0.0..=1.0).contains(&acc),
                "{r}"
            );
        }
        let (l2, l2_alone) = (
            results[2]["loss"].as_f64().unwrap(),
            b["results"][0]["loss"].as_f64().unwrap(),
        );
        // A candidate scores the same alone as among others: in f32 to summation-order noise;
        // in bf16 (the default on CPUs with fast bf16 matmuls) the matmul inputs are rounded
        // after every layer, so the batch's shape moves a loss by a few bf16 steps (measured
        // 1.7e-3 with oneMKL's bf16 kernels).
        let tolerance = match models["data"][0]["dtype"].as_str() {
            Some("bf16") => 1e-2,
            _ => 1e-5,
        };
        assert!(
            (l2 - l2_alone).abs() < tolerance,
            "{placement}: {l2} vs {l2_alone}"
        );
        assert_eq!(b["api_calls"], 4);
    }
}

/// `bbt-server --dtype bf16` (the GPUs' default dtype, here on the CPU) next to the f32 server:
/// it says so on `/v1/models` and scores a real task within bf16's precision of f32.
#[tokio::test]
async fn a_bf16_server_process_scores_like_the_f32_one() {
    let client = reqwest::Client::new();
    let candidates: Vec<Vec<f32>> = (0..3)
        .map(|c| (0..20).map(|j| ((c * 20 + j) as f32).cos()).collect())
        .collect();
    let mut answers = Vec::new();
    for dtype in ["f32", "bf16"] {
        let server = start_server(&["--dtype", dtype]);
        let models = models(&client, server.url()).await;
        assert_eq!(models["data"][0]["dtype"], dtype, "{models}");
        let mut losses = Vec::new();
        for placement in ["prefix", "suffix"] {
            let body = json!({"task": {"kind": "builtin", "name": "mr", "k": 16, "seed": 42},
                              "prompt_length": 5, "placement": placement,
                              "projection": {"intrinsic_dim": 20, "seed": 7}});
            let resp = client
                .post(format!("{}/v1/sessions", server.url()))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
            let session: Value = resp.json().await.unwrap();
            let path = format!(
                "{}/v1/sessions/{}/evaluate",
                server.url(),
                session["id"].as_str().unwrap()
            );
            let resp = client
                .post(path)
                .json(&json!({"candidates": candidates}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let answer: Value = resp.json().await.unwrap();
            for r in answer["results"].as_array().unwrap() {
                losses.push((r["loss"].as_f64().unwrap(), r["accuracy"].as_f64().unwrap()));
            }
        }
        answers.push(losses);
    }
    for ((loss, acc), (loss16, acc16)) in answers[0].iter().zip(&answers[1]) {
        eprintln!("f32 {loss:.4} {acc:.3}  bf16 {loss16:.4} {acc16:.3}");
        // Measured: losses within 0.021 of each other, the same accuracies.
        assert!(
            (loss - loss16).abs() < 0.05,
            "loss {loss} vs {loss16} in bf16"
        );
        assert!(
            (acc - acc16).abs() <= 2.0 / 32.0 + 1e-9,
            "accuracy {acc} vs {acc16}"
        );
    }
}

/// SIGTERM, as Docker and Kubernetes stop a container, drains like Ctrl-C: a request in flight
/// is answered, no new connection is accepted, and the process exits 0.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_and_exits_zero() {
    let mut server = start_server(&[]);
    let url = server.url().to_string();
    let client = reqwest::Client::new();
    // A forward long enough (hundreds of inputs on the CPU) to be in flight when the signal comes.
    let inputs: Vec<Value> = (0..384)
        .map(|i| json!({"text": format!("review number {i}: a film I watched on a long evening, and liked")}))
        .collect();
    let request = client
        .post(format!("{url}/v1/forward"))
        .json(
            &json!({"template": " <S> It was", "verbalizer": [" bad", " great"], "inputs": inputs}),
        )
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let answer = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["logits"].as_array().unwrap().len(), 384);
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "exit status {status}");
    assert!(
        client.get(format!("{url}/health")).send().await.is_err(),
        "nothing listens after the drain"
    );
}
