//! bbt-server over real HTTP on an ephemeral port, with a tiny random model (fast): the API,
//! authentication, limits, bad input and determinism.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bbt::model::config::Architecture;
use bbt::testing::random_model::tiny_engine;
use bbt_server::{ApiKeys, Limits, Service};
use serde_json::{json, Value};

struct Server {
    base: String,
    client: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(limits: Limits, keys: ApiKeys) -> Server {
    start_with_data(limits, keys, bbt::tasks::default_data_dir()).await
}

async fn start_with_data(limits: Limits, keys: ApiKeys, data_dir: std::path::PathBuf) -> Server {
    start_engine(tiny_engine(Architecture::Llama, 3), limits, keys, data_dir).await
}

async fn start_engine(
    engine: bbt::Engine,
    limits: Limits,
    keys: ApiKeys,
    data_dir: std::path::PathBuf,
) -> Server {
    let service = Arc::new(Service::new(engine, limits, keys.quotas(), data_dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bbt_server::serve(listener, service, keys, async move {
        let _ = stopped.await;
    }));
    Server {
        base,
        client: reqwest::Client::new(),
        _stop: stop,
    }
}

impl Server {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            key,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, key, None).await
    }
}

/// Examples over the tiny vocabulary: class 0 texts use t10..t19, class 1 texts t20..t29.
fn examples(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let label = i % 2;
            let base = 10 + 10 * label;
            json!({"text": format!("t{} t{} t{}", base + i % 10, base + (i + 3) % 10, base + (i + 7) % 10), "label": label})
        })
        .collect()
}

fn session_body(placement: &str) -> Value {
    json!({
        "task": {"kind": "explicit", "template": " <S> t40", "classes": ["a", "b"], "verbalizer": [" t50", " t51"],
                 "train": examples(8), "dev": examples(4), "test": examples(6)},
        "prompt_length": 3,
        "placement": placement,
        "projection": {"intrinsic_dim": 6, "seed": 11}
    })
}

fn z(seed: u64, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..6)
                .map(|j| ((seed as f32 + 1.0) * 0.37 * (i * 6 + j) as f32).sin())
                .collect()
        })
        .collect()
}

async fn create(server: &Server, key: Option<&str>, placement: &str) -> String {
    let (status, body) = server
        .post("/v1/sessions", key, &session_body(placement))
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

fn losses(body: &Value) -> Vec<f64> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn health_models_openapi_and_metrics() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    assert_eq!(s.get("/health", None).await.0, 200);
    let (status, models) = s.get("/v1/models", None).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["hidden_size"], 32);
    assert!(models["data"][0]["embedding_std"].as_f64().unwrap() > 0.5);
    // OpenAI's list shape.
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");
    assert!(models["data"][0]["id"].is_string());
    let (status, doc) = s.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/sessions/{id}/evaluate"]["post"].is_object());
    assert!(doc["paths"]["/v1/sessions/{id}"]["put"].is_object());
    assert!(doc["paths"]["/v1/sessions/{id}/layers/{layer}"]["put"].is_object());
    assert!(doc["paths"]["/v1/sessions/{id}/features"]["post"].is_object());
    assert!(doc["paths"]["/v1/sessions/{id}/score"]["post"].is_object());
    // Generated from the handlers: every route the server has, with its methods...
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.clone(), path.clone()));
        }
    }
    routes.sort();
    let expected = [
        ("delete", "/v1/sessions/{id}"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/v1/models"),
        ("get", "/v1/sessions"),
        ("get", "/v1/sessions/{id}"),
        ("get", "/v1/usage"),
        ("post", "/v1/forward"),
        ("post", "/v1/sessions"),
        ("post", "/v1/sessions/{id}/evaluate"),
        ("post", "/v1/sessions/{id}/features"),
        ("post", "/v1/sessions/{id}/prompt"),
        ("post", "/v1/sessions/{id}/score"),
        ("put", "/v1/sessions/{id}"),
        ("put", "/v1/sessions/{id}/layers/{layer}"),
    ];
    assert_eq!(
        routes,
        expected
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .to_vec()
    );
    // ... each of which the server answers (never 405, never the fallback's 404 for an unknown
    // path) ...
    for (method, path) in &routes {
        let url = format!(
            "{}{}",
            s.base,
            path.replace("{id}", "ses_none").replace("{layer}", "0")
        );
        let method: reqwest::Method = method.to_uppercase().parse().unwrap();
        let resp = s.client.request(method, &url).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{path}");
        assert!(
            !body["detail"].as_str().unwrap_or("").contains("no route"),
            "{path}: {body}"
        );
    }
    // ... every request and response type, and for the /v1 routes their error answers.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "CreateSessionRequest",
        "SessionInfo",
        "SessionList",
        "SessionSummary",
        "EvaluateRequest",
        "EvaluateResponse",
        "Candidates",
        "ForwardRequest",
        "ForwardResponse",
        "PromptRequest",
        "PromptResponse",
        "FeaturesRequest",
        "FeaturesResponse",
        "ScoreRequest",
        "ScoreResponse",
        "SetLayerRequest",
        "ModelsResponse",
        "ModelCard",
        "Usage",
        "ErrorBody",
        "ErrorKind",
        "TaskRequest",
        "ProjectionSpec",
        "PromptInit",
        "Loss",
        "LabelWords",
    ] {
        assert!(
            schemas.contains_key(name),
            "{name} is not in the OpenAPI document"
        );
    }
    let create = &doc["paths"]["/v1/sessions"]["post"]["responses"];
    for code in ["201", "401", "404", "413", "422"] {
        assert!(create[code].is_object(), "POST /v1/sessions lacks {code}");
    }
    assert!(create["201"]["headers"]["Location"].is_object());
    assert!(doc["paths"]["/v1/sessions/{id}/evaluate"]["post"]["responses"]["429"].is_object());
    let (status, _) = s.get("/nope", None).await;
    assert_eq!(status, 404);
    let (_, metrics) = s.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains(
            // Once above, once in the walk over the document.
            "bbt_http_requests_total{method=\"GET\",route=\"/v1/models\",status=\"200\"} 2"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("bbt_queue_depth 0"));
    // Prometheus' conventions: counters are `_total` counters, units in the names, the
    // version as an info series, the process's own memory.
    for line in [
        "# TYPE bbt_merged_evaluations_total counter",
        "# TYPE bbt_api_calls_total counter",
        "# TYPE bbt_quota_refusals_total counter",
        "# TYPE bbt_queue_wait_seconds histogram",
        "# TYPE bbt_batch_duration_seconds histogram",
        "# TYPE bbt_session_memory_bytes gauge",
        &format!(
            "bbt_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
    // The Grafana dashboard in deploy/ reads only series this server exports.
    let dashboard: Value =
        serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut used = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            used.extend(
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("bbt_") || w.starts_with("process_"))
                    .map(|w| w.trim_end_matches("_bucket").to_string()),
            );
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in used {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "the dashboard reads {name}, which /metrics lacks"
        );
    }
    // Every `_total` series is a counter.
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[2].ends_with("_total") {
            assert_eq!(fields[3], "counter", "{line}");
        }
    }
}

/// The same tiny model served in f32 and in bf16 (the GPUs' default dtype, here on the CPU):
/// every scoring route answers, reports its dtype, and agrees with f32 within bf16's precision.
#[tokio::test]
async fn a_bf16_model_serves_every_route_like_its_f32_twin() {
    use candle_core::DType;
    let limits = Limits {
        max_batch_wait: Duration::from_millis(200),
        ..Limits::default()
    };
    let serve = |dtype| {
        let engine = bbt::testing::random_model::tiny_engine_in(Architecture::Llama, 3, dtype);
        start_engine(
            engine,
            limits.clone(),
            ApiKeys::open(),
            bbt::tasks::default_data_dir(),
        )
    };
    let (wide, narrow) = (serve(DType::F32).await, serve(DType::BF16).await);
    for (s, dtype) in [(&wide, "f32"), (&narrow, "bf16")] {
        let (_, models) = s.get("/v1/models", None).await;
        assert_eq!(models["data"][0]["dtype"], dtype, "{models}");
        assert_eq!(models["data"][0]["device"], "cpu", "{models}");
        let (_, metrics) = s.get("/metrics", None).await;
        let kernels = models["data"][0]["cpu_kernels"]
            .as_str()
            .unwrap_or_default();
        let info = format!(
            "bbt_model_info{{device=\"cpu\",dtype=\"{dtype}\",kernels=\"{kernels}\",model=\"tiny-random\"}} 1"
        );
        assert!(metrics.as_str().unwrap().contains(&info), "{metrics}");
    }
    let close = |a: &[f64], b: &[f64], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        // bf16 keeps 8 significant bits; through this random model's large activations the
        // losses and logits move by up to 5% (measured), a wrong read by far more.
        let bad = a
            .iter()
            .zip(b)
            .any(|(x, y)| (x - y).abs() > 0.1 * x.abs().max(1.0));
        assert!(!bad, "{what}: bf16 {b:?} vs f32 {a:?}");
    };
    // Shallow sessions in both placements, evaluated one at a time and concurrently (prefix
    // requests then share one merged pass), and a deep session's layer.
    let mut deep = session_body("prefix");
    deep["deep"] = json!(true);
    let mut calls = Vec::new();
    for (body, layer) in [
        (session_body("prefix"), None),
        (session_body("suffix"), None),
        (deep, Some(1)),
    ] {
        let mut ids = Vec::new();
        for s in [&wide, &narrow] {
            let (status, info) = s.post("/v1/sessions", None, &body).await;
            assert_eq!(status, 201, "{info}");
            ids.push(info["id"].as_str().unwrap().to_string());
        }
        calls.push((ids, layer));
    }
    let mut sequential = Vec::new();
    for (i, (ids, layer)) in calls.iter().enumerate() {
        let mut answers = Vec::new();
        for (s, id) in [&wide, &narrow].into_iter().zip(ids) {
            let body = json!({"candidates": z(i as u64, 3), "layer": layer});
            let (status, r) = s
                .post(&format!("/v1/sessions/{id}/evaluate"), None, &body)
                .await;
            assert_eq!(status, 200, "{r}");
            answers.push(losses(&r));
        }
        close(&answers[0], &answers[1], &format!("session {i}"));
        sequential.push(answers.pop().unwrap());
    }
    let requests: Vec<EvaluateCall> = calls
        .iter()
        .enumerate()
        .map(|(i, (ids, layer))| (ids[1].clone(), z(i as u64, 3), *layer))
        .collect();
    let concurrent = futures_join(&narrow, &requests).await;
    for (seq, con) in sequential.iter().zip(&concurrent) {
        close(seq, con, "bf16 merged vs alone");
    }
    // The stateless forward and the probe's features.
    let inputs: Vec<Value> = examples(3)
        .iter()
        .map(|e| json!({"text": e["text"]}))
        .collect();
    let body = json!({"template": " <S> t40", "verbalizer": [" t50", " t51"], "inputs": inputs});
    let mut logits = Vec::new();
    let mut features = Vec::new();
    for (k, s) in [&wide, &narrow].into_iter().enumerate() {
        let (status, f) = s.post("/v1/forward", None, &body).await;
        assert_eq!(status, 200, "{f}");
        logits.push(
            rows(&f["logits"])
                .concat()
                .into_iter()
                .map(f64::from)
                .collect::<Vec<_>>(),
        );
        let id = &calls[0].0[k];
        let path = format!("/v1/sessions/{id}/features");
        let (status, ft) = s.post(&path, None, &json!({"split": "train"})).await;
        assert_eq!(status, 200, "{ft}");
        features.push(
            rows(&ft["features"])
                .concat()
                .into_iter()
                .map(f64::from)
                .collect::<Vec<_>>(),
        );
    }
    close(&logits[0], &logits[1], "forward logits");
    close(&features[0], &features[1], "features");
}

#[tokio::test]
async fn evaluate_is_deterministic_across_calls_and_batch_compositions() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    for placement in ["prefix", "suffix"] {
        let id = create(&s, None, placement).await;
        let path = format!("/v1/sessions/{id}/evaluate");
        let candidates = z(1, 5);
        let (status, all) = s
            .post(&path, None, &json!({"candidates": candidates}))
            .await;
        assert_eq!(status, 200, "{all}");
        let all = losses(&all);
        assert_eq!(all.len(), 5);
        assert!(
            all.iter().any(|l| (l - all[0]).abs() > 1e-6),
            "candidates must differ: {all:?}"
        );
        // The same candidate alone, and inside another population, scores the same (1e-5).
        for i in [0, 3] {
            let (_, alone) = s
                .post(&path, None, &json!({"candidates": [candidates[i].clone()]}))
                .await;
            assert!(
                (losses(&alone)[0] - all[i]).abs() < 1e-5,
                "{placement}: alone"
            );
            let mut mixed = z(9, 3);
            mixed.insert(1, candidates[i].clone());
            let (_, m) = s.post(&path, None, &json!({"candidates": mixed})).await;
            assert!((losses(&m)[1] - all[i]).abs() < 1e-5, "{placement}: mixed");
        }
        // Packed f32 and f16 carry the same candidates.
        let flat: Vec<u8> = candidates
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let packed = json!({"candidates": {"dtype": "f32", "count": 5,
                            "data": base64::engine::general_purpose::STANDARD.encode(&flat)}});
        let (_, p) = s.post(&path, None, &packed).await;
        assert_eq!(losses(&p), all);
        let flat16: Vec<u8> = candidates
            .iter()
            .flatten()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let packed = json!({"candidates": {"dtype": "f16", "count": 5,
                            "data": base64::engine::general_purpose::STANDARD.encode(&flat16)}});
        let (_, p16) = s.post(&path, None, &packed).await;
        assert!(losses(&p16)
            .iter()
            .zip(&all)
            .all(|(a, b)| (a - b).abs() < 1e-2));
        // A raw octet-stream body carries the same candidates with no encoding overhead.
        let resp = s
            .client
            .post(format!("{}{path}?split=train&dtype=f32", s.base))
            .header("content-type", "application/octet-stream")
            .body(flat.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let raw: Value = resp.json().await.unwrap();
        assert_eq!(losses(&raw), all);
        let resp = s
            .client
            .post(format!("{}{path}?dtype=f64", s.base))
            .header("content-type", "application/octet-stream")
            .body(flat.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "unknown dtype");
        let resp = s
            .client
            .post(format!("{}{path}?dtype=f32", s.base))
            .header("content-type", "application/octet-stream")
            .body(flat[..10].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 422, "ragged bytes");
        // Splits and logits.
        let (_, dev) = s.post(&path, None, &json!({"candidates": [candidates[0].clone()], "split": "dev", "return_logits": true})).await;
        assert_eq!(dev["results"][0]["logits"].as_array().unwrap().len(), 4);
        let (_, info) = s.get(&format!("/v1/sessions/{id}"), None).await;
        assert_eq!(info["api_calls"], 5 + 2 + 2 * 4 + 5 + 5 + 5 + 1);
        assert_eq!(info["test_size"], 6);
    }
}

/// A client-named session (`PUT`): created once, found again by the same request (as a retry
/// or another replica's rebuild would send it), refused for another request or another key.
#[tokio::test]
async fn sessions_named_by_the_client_are_created_once_and_never_hijacked() {
    let keys = ApiKeys::parse("alice\nbob\n").unwrap();
    let s = start(Limits::default(), keys).await;
    let put = |id: &str, key: &'static str, body: Value| {
        let s = &s;
        let path = format!("/v1/sessions/{id}");
        async move {
            s.send(
                reqwest::Method::PUT,
                &path,
                Some(key),
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let body = session_body("suffix");
    let (status, created) = put("ses_run-1_a", "alice", body.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "ses_run-1_a");
    let path = "/v1/sessions/ses_run-1_a/evaluate";
    let (status, first) = s
        .post(path, Some("alice"), &json!({"candidates": z(2, 2)}))
        .await;
    assert_eq!(status, 200, "{first}");
    // The same request again: nothing rebuilt, the session (and its call count) kept.
    let (status, again) = put("ses_run-1_a", "alice", body.clone()).await;
    assert_eq!(
        (status, again["api_calls"].as_u64()),
        (200, Some(2)),
        "{again}"
    );
    let mut other = body.clone();
    other["prompt_length"] = json!(2);
    let (status, err) = put("ses_run-1_a", "alice", other).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (409, Some("conflict")),
        "{err}"
    );
    let (status, err) = put("ses_run-1_a", "bob", body.clone()).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(s.get("/v1/sessions/ses_run-1_a", Some("bob")).await.0, 404);
    for bad in [
        "run-1",
        "ses_",
        "ses_a%2Fb",
        &format!("ses_{}", "x".repeat(61)),
    ] {
        let (status, err) = put(bad, "alice", body.clone()).await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    // Same scores as a server-named session of the same request.
    let (_, named) = s.post("/v1/sessions", Some("alice"), &body).await;
    let named = named["id"].as_str().unwrap();
    let (_, second) = s
        .post(
            &format!("/v1/sessions/{named}/evaluate"),
            Some("alice"),
            &json!({"candidates": z(2, 2)}),
        )
        .await;
    assert_eq!(losses(&first), losses(&second));
}

/// A retried request with the same `Idempotency-Key` is answered again, charged once.
#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_is_charged_once() {
    let keys = ApiKeys::parse("carol 10\n").unwrap();
    let s = start(Limits::default(), keys).await;
    let id = create(&s, Some("carol"), "prefix").await;
    let evaluate = |key: Option<&'static str>| {
        let mut req = s
            .client
            .post(format!("{}/v1/sessions/{id}/evaluate", s.base))
            .bearer_auth("carol")
            .json(&json!({"candidates": z(3, 4)}));
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let calls = || async {
        s.get("/v1/usage", Some("carol")).await.1["api_calls"]
            .as_u64()
            .unwrap()
    };
    let (status, a) = evaluate(Some("gen-7")).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = evaluate(Some("gen-7")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(calls().await, 4);
    assert_eq!(evaluate(Some("gen-8")).await.0, 200);
    assert_eq!(calls().await, 8);
    // 8 of 10 used: a new 4-candidate request is refused, a retry of a charged one is not.
    assert_eq!(evaluate(None).await.0, 429);
    assert_eq!(evaluate(Some("gen-8")).await.0, 200);
    assert_eq!(calls().await, 8);
    let (status, err) = evaluate(Some("")).await;
    assert_eq!(status, 400, "{err}");
}

#[tokio::test]
async fn api_keys_ownership_and_quota() {
    let keys = ApiKeys::parse("alice\nbob 3\n").unwrap();
    let s = start(Limits::default(), keys).await;
    let (status, body) = s.get("/v1/models", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(s.get("/v1/models", Some("mallory")).await.0, 401);
    assert_eq!(s.get("/health", None).await.0, 200, "health needs no key");
    let id = create(&s, Some("alice"), "prefix").await;
    assert_eq!(
        s.get(&format!("/v1/sessions/{id}"), Some("alice")).await.0,
        200
    );
    let (status, body) = s.get(&format!("/v1/sessions/{id}"), Some("bob")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let bobs = create(&s, Some("bob"), "prefix").await;
    // Each key lists its own sessions only, the most recently used first; a created session's
    // Location is where it lives.
    let second = create(&s, Some("alice"), "suffix").await;
    let (status, listed) = s.get("/v1/sessions", Some("alice")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["object"], "list");
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), id.as_str()]);
    assert!(listed["data"][0]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(listed["data"][0]["placement"], "suffix");
    let (_, listed) = s.get("/v1/sessions", Some("bob")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], bobs.as_str());
    let resp = s
        .client
        .post(format!("{}/v1/sessions", s.base))
        .bearer_auth("alice")
        .json(&session_body("prefix"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let made: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/sessions/{}", made["id"].as_str().unwrap())
    );
    assert_eq!(s.get(&location, Some("alice")).await.0, 200);
    let path = format!("/v1/sessions/{bobs}/evaluate");
    assert_eq!(
        s.post(&path, Some("bob"), &json!({"candidates": z(1, 2)}))
            .await
            .0,
        200
    );
    let (status, body) = s
        .post(&path, Some("bob"), &json!({"candidates": z(1, 2)}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "quota_exceeded");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("quota of 3 API calls is spent"));
    // A spent quota is not "busy": no Retry-After, since waiting will not help.
    let resp = s
        .client
        .post(format!("{}{path}", s.base))
        .bearer_auth("bob")
        .json(&json!({"candidates": z(1, 2)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    // The metrics count the calls charged (bob's 2, one per candidate, and none of the
    // refused requests) and the two refusals.
    let (_, metrics) = s.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("\nbbt_api_calls_total 2\n"), "{metrics}");
    assert!(
        metrics.contains("\nbbt_quota_refusals_total 2\n"),
        "{metrics}"
    );
    let (_, usage) = s.get("/v1/usage", Some("bob")).await;
    assert_eq!(
        (
            usage["api_calls"].as_u64(),
            usage["quota_remaining"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert!(usage["bytes_in"].as_u64().unwrap() > 0 && usage["bytes_out"].as_u64().unwrap() > 0);
    let (status, _) = s
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{id}"),
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(status, 404, "bob cannot delete alice's session");
    let (status, _) = s
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{id}"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        s.get(&format!("/v1/sessions/{id}"), Some("alice")).await.0,
        404
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_never_breaks_the_session() {
    let limits = Limits {
        max_body_bytes: 64 << 10,
        max_candidates: 8,
        max_examples: 20,
        ..Limits::default()
    };
    let s = start(limits, ApiKeys::open()).await;
    let id = create(&s, None, "prefix").await;
    let path = format!("/v1/sessions/{id}/evaluate");
    let (_, before) = s.post(&path, None, &json!({"candidates": z(2, 1)})).await;
    let nan: Vec<u8> = [f32::NAN; 6].iter().flat_map(|x| x.to_le_bytes()).collect();
    let cases: Vec<(u16, &str, Vec<u8>)> = vec![
        (422, "NaN or infinite", json!({"candidates": {"dtype": "f32", "count": 1, "data": base64::engine::general_purpose::STANDARD.encode(&nan)}}).to_string().into_bytes()),
        (422, "has 5 numbers", json!({"candidates": [vec![0.0f32; 5]]}).to_string().into_bytes()),
        (413, "limit is 8 per call", json!({"candidates": z(3, 9)}).to_string().into_bytes()),
        (400, "base64", json!({"candidates": {"dtype": "f32", "count": 1, "data": "!!"}}).to_string().into_bytes()),
        (422, "need 24", json!({"candidates": {"dtype": "f32", "count": 1, "data": "AAAA"}}).to_string().into_bytes()),
        // A count whose byte size overflows: refused, never a wrapped or panicking product.
        (422, "more than this machine can address", json!({"candidates": {"dtype": "f32", "count": u64::MAX, "data": "AAAA"}}).to_string().into_bytes()),
        (400, "", b"{\"candidates\": [[0.0, ".to_vec()),
        (400, "", b"{\"candidates\": \"\xff\xfe\"}".to_vec()),
        (422, "", json!({"candidates": [vec![0.0f32; 6]], "split": "holdout"}).to_string().into_bytes()),
        (413, "", vec![b' '; 70 << 10]),
    ];
    for (want, detail, body) in cases {
        let (status, answer) = s.send(reqwest::Method::POST, &path, None, Some(body)).await;
        assert_eq!(status, want, "{answer}");
        assert!(answer["error"].is_string(), "{answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(detail),
            "{answer}"
        );
    }
    let (status, _) = s
        .post(
            "/v1/sessions/ses_missing/evaluate",
            None,
            &json!({"candidates": z(2, 1)}),
        )
        .await;
    assert_eq!(status, 404);
    // Session creation: too many examples, unknown or multi-token label words, bad template.
    let mut body = session_body("prefix");
    body["task"]["train"] = json!(examples(21));
    assert_eq!(s.post("/v1/sessions", None, &body).await.0, 413);
    let mut body = session_body("prefix");
    body["task"]["verbalizer"] = json!([" t50", " t51 t52"]);
    let (status, answer) = s.post("/v1/sessions", None, &body).await;
    assert_eq!(status, 422);
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("\" t51 t52\" is 2 tokens"),
        "{answer}"
    );
    let mut body = session_body("prefix");
    body["task"]["template"] = json!(" t40 only");
    assert_eq!(s.post("/v1/sessions", None, &body).await.0, 422);
    let mut body = session_body("prefix");
    body["task"] = json!({"kind": "builtin", "name": "../../etc/passwd.toml"});
    assert_eq!(s.post("/v1/sessions", None, &body).await.0, 422);
    let mut body = session_body("prefix");
    body["prompt_length"] = json!(40);
    assert_eq!(
        s.post("/v1/sessions", None, &body).await.0,
        413,
        "examples no longer fit the model"
    );
    // A misspelt field is refused by name, never silently defaulted: at the top, in a nested
    // object, in a tagged one, and in every request type.
    for (path, field, body) in [
        ("/v1/sessions".to_string(), "placment", {
            let mut b = session_body("prefix");
            b["placment"] = json!("suffix");
            b
        }),
        ("/v1/sessions".to_string(), "sed", {
            let mut b = session_body("prefix");
            b["projection"]["sed"] = json!(3);
            b
        }),
        ("/v1/sessions".to_string(), "margn", {
            let mut b = session_body("prefix");
            b["loss"] = json!({"kind": "hinge", "margin": 1.0, "margn": 2.0});
            b
        }),
        (
            path.clone(),
            "splt",
            json!({"candidates": z(2, 1), "splt": "dev"}),
        ),
        (
            format!("/v1/sessions/{id}/prompt"),
            "zz",
            json!({"z": vec![0.0; 6], "zz": 1}),
        ),
        (
            format!("/v1/sessions/{id}/score"),
            "scors",
            json!({"split": "dev", "scores": [], "scors": []}),
        ),
        (
            "/v1/forward".to_string(),
            "placemnt",
            json!({"template": " <S> t40", "verbalizer": [" t50", " t51"], "inputs": [{"text": " t1", "text_b": null, "extra": 1}], "placemnt": "suffix"}),
        ),
    ] {
        let (status, answer) = s.post(&path, None, &body).await;
        assert_eq!(status, 422, "{path} {field}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(
            detail.contains("unknown field")
                && (detail.contains(field) || detail.contains("extra")),
            "{path} {field}: {answer}"
        );
    }
    // The session still answers exactly as before.
    let (_, after) = s.post(&path, None, &json!({"candidates": z(2, 1)})).await;
    assert_eq!(losses(&after), losses(&before));
}

#[tokio::test]
async fn forward_is_stateless_and_matches_sessions_with_the_same_prompt() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let inputs: Vec<Value> = examples(3)
        .iter()
        .map(|e| json!({"text": e["text"]}))
        .collect();
    let prompt = vec![vec![0.0f32; 32]; 3];
    let body = json!({"template": " <S> t40", "verbalizer": [" t50", " t51"], "inputs": inputs, "prompt": prompt});
    let (status, a) = s.post("/v1/forward", None, &body).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["logits"].as_array().unwrap().len(), 3);
    let mut suffix = body.clone();
    suffix["placement"] = json!("suffix");
    assert_eq!(s.post("/v1/forward", None, &suffix).await.0, 200);
    let mut bad = body.clone();
    bad["prompt"] = json!([vec![0.0f32; 31]]);
    let (status, answer) = s.post("/v1/forward", None, &bad).await;
    assert_eq!(status, 422);
    assert!(answer["detail"]
        .as_str()
        .unwrap()
        .contains("hidden size is 32"));
    // z = 0 in a session is the prompt p0 = 0: the same logits as /forward with a zero prompt.
    let id = create(&s, None, "prefix").await;
    let (_, e) = s
        .post(
            &format!("/v1/sessions/{id}/evaluate"),
            None,
            &json!({"candidates": [vec![0.0f32; 6]], "split": "train", "return_logits": true}),
        )
        .await;
    let session_logits = &e["results"][0]["logits"];
    for i in 0..3 {
        for c in 0..2 {
            let x = session_logits[i][c].as_f64().unwrap();
            let y = a["logits"][i][c].as_f64().unwrap();
            assert!((x - y).abs() < 1e-4);
        }
    }
}

#[tokio::test]
async fn several_label_words_score_the_mean_of_their_logits() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let inputs: Vec<Value> = examples(3)
        .iter()
        .map(|e| json!({"text": e["text"]}))
        .collect();
    let prompt = vec![vec![0.1f32; 32]; 2];
    let forward = |verbalizer: Value| json!({"template": " <S> t40", "verbalizer": verbalizer, "inputs": inputs, "prompt": prompt});
    let (status, words) = s
        .post(
            "/v1/forward",
            None,
            &forward(json!([" t50", " t52", " t51"])),
        )
        .await;
    assert_eq!(status, 200, "{words}");
    let (status, grouped) = s
        .post(
            "/v1/forward",
            None,
            &forward(json!([[" t50", " t52"], " t51"])),
        )
        .await;
    assert_eq!(status, 200, "{grouped}");
    for i in 0..3 {
        let w = |c: usize| words["logits"][i][c].as_f64().unwrap();
        let g = |c: usize| grouped["logits"][i][c].as_f64().unwrap();
        assert_eq!(grouped["logits"][i].as_array().unwrap().len(), 2);
        assert!((g(0) - (w(0) + w(1)) / 2.0).abs() < 1e-4, "example {i}");
        assert!((g(1) - w(2)).abs() < 1e-4, "example {i}");
    }
    // A session keeps the lists, and says so.
    let mut body = session_body("suffix");
    body["task"]["verbalizer"] = json!([[" t50", " t52"], " t51"]);
    let (status, info) = s.post("/v1/sessions", None, &body).await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["verbalizer"], json!([[" t50", " t52"], " t51"]));
    // A word in two classes, or an empty list, is a 422 that names the problem.
    for (verbalizer, says) in [
        (json!([[" t50", " t51"], " t51"]), "same token"),
        (json!([[], " t51"]), "empty list"),
    ] {
        let (status, answer) = s.post("/v1/forward", None, &forward(verbalizer)).await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn idle_and_evicted_sessions_get_a_clear_410() {
    let limits = Limits {
        session_idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = start(limits, ApiKeys::open()).await;
    let id = create(&s, None, "prefix").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = s
        .post(
            &format!("/v1/sessions/{id}/evaluate"),
            None,
            &json!({"candidates": z(1, 1)}),
        )
        .await;
    assert_eq!(status, 410, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("create a new session"));
    // Memory cap: a cap below two sessions' projections evicts the older one.
    let one = 3 * 32 * 6 * 4;
    let s = start(
        Limits {
            max_session_bytes: one + one / 2,
            ..Limits::default()
        },
        ApiKeys::open(),
    )
    .await;
    let first = create(&s, None, "prefix").await;
    let second = create(&s, None, "prefix").await;
    assert_eq!(s.get(&format!("/v1/sessions/{first}"), None).await.0, 410);
    assert_eq!(s.get(&format!("/v1/sessions/{second}"), None).await.0, 200);
}

#[tokio::test]
async fn concurrent_requests_share_engine_passes_with_unchanged_results() {
    let limits = Limits {
        max_batch_wait: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = start(limits, ApiKeys::open()).await;
    // Two prefix sessions with different tasks and label words (the second with several words
    // for two of its classes, sharing words with the first), one suffix session.
    let a = create(&s, None, "prefix").await;
    let mut other = session_body("prefix");
    other["task"]["verbalizer"] = json!([[" t52", " t54"], " t50", [" t53", " t55", " t51"]]);
    other["task"]["classes"] = json!(["x", "y", "z"]);
    other["prompt_length"] = json!(2);
    let (status, b) = s.post("/v1/sessions", None, &other).await;
    assert_eq!(status, 201, "{b}");
    let b = b["id"].as_str().unwrap().to_string();
    let c = create(&s, None, "suffix").await;
    // And a deep (BBTv2) session, whose prompts merge with the shallow ones.
    let mut deep = session_body("prefix");
    deep["deep"] = json!(true);
    let (status, d) = s.post("/v1/sessions", None, &deep).await;
    assert_eq!(status, 201, "{d}");
    let d = d["id"].as_str().unwrap().to_string();
    let requests: Vec<EvaluateCall> = vec![
        (a.clone(), z(1, 3), None),
        (b.clone(), z(2, 2), None),
        (d.clone(), z(6, 2), Some(1)),
        (a.clone(), z(3, 1), None),
        (c.clone(), z(4, 2), None),
        (b.clone(), z(5, 4), None),
    ];
    let mut sequential = Vec::new();
    for (id, cands, layer) in &requests {
        let (_, r) = s
            .post(
                &format!("/v1/sessions/{id}/evaluate"),
                None,
                &json!({"candidates": cands, "layer": layer}),
            )
            .await;
        sequential.push(losses(&r));
    }
    let concurrent = futures_join(&s, &requests).await;
    for (seq, con) in sequential.iter().zip(&concurrent) {
        assert_eq!(seq.len(), con.len());
        for (x, y) in seq.iter().zip(con) {
            assert!((x - y).abs() < 1e-5, "{seq:?} vs {con:?}");
        }
    }
    let (_, metrics) = s.get("/metrics", None).await;
    let merged: usize = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("bbt_merged_evaluations_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        merged >= 2,
        "concurrent prefix requests should share a pass (merged = {merged})"
    );
}

/// A session id, its candidates and (deep sessions) the layer they are for.
type EvaluateCall = (String, Vec<Vec<f32>>, Option<usize>);

async fn futures_join(s: &Server, requests: &[EvaluateCall]) -> Vec<Vec<f64>> {
    // All requests are in flight before any answer is awaited.
    futures::future::join_all(requests.iter().map(|(id, cands, layer)| {
        let path = format!("/v1/sessions/{id}/evaluate");
        let body = json!({"candidates": cands, "layer": layer});
        async move { losses(&s.post(&path, None, &body).await.1) }
    }))
    .await
}

/// `/prompt` materialises `A·z + p0`; with `/forward` it scores the test split exactly as the
/// session does (whose suffix test pass runs uncached).
#[tokio::test]
async fn materialised_prompt_scores_like_its_session() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let id = create(&s, None, "suffix").await;
    let z = z(5, 1).remove(0);
    let (status, p) = s
        .post(&format!("/v1/sessions/{id}/prompt"), None, &json!({"z": z}))
        .await;
    assert_eq!(status, 200, "{p}");
    let prompt = p["prompt"].as_array().unwrap();
    assert_eq!(prompt.len(), 3);
    assert!(prompt.iter().all(|r| r.as_array().unwrap().len() == 32));
    let (_, e) = s
        .post(
            &format!("/v1/sessions/{id}/evaluate"),
            None,
            &json!({"candidates": [z], "split": "test", "return_logits": true}),
        )
        .await;
    let inputs: Vec<Value> = examples(6)
        .iter()
        .map(|e| json!({"text": e["text"]}))
        .collect();
    let body = json!({"template": " <S> t40", "verbalizer": [" t50", " t51"], "inputs": inputs,
                      "prompt": p["prompt"], "placement": "suffix"});
    let (status, f) = s.post("/v1/forward", None, &body).await;
    assert_eq!(status, 200, "{f}");
    for i in 0..6 {
        for c in 0..2 {
            let x = e["results"][0]["logits"][i][c].as_f64().unwrap();
            let y = f["logits"][i][c].as_f64().unwrap();
            assert!((x - y).abs() < 1e-4, "example {i} class {c}: {x} vs {y}");
        }
    }
    let (status, _) = s
        .post(
            &format!("/v1/sessions/{id}/prompt"),
            None,
            &json!({"z": [1.0]}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = s
        .post("/v1/sessions/ses_missing/prompt", None, &json!({"z": z}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deep_sessions_tune_one_layer_at_a_time() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let mut body = session_body("prefix");
    body["deep"] = json!(true);
    let (status, info) = s.post("/v1/sessions", None, &body).await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["deep"], true);
    let (_, models) = s.get("/v1/models", None).await;
    let layers = models["data"][0]["num_layers"].as_u64().unwrap() as usize;
    let scales: Vec<f64> = serde_json::from_value(info["layer_scales"].clone()).unwrap();
    assert_eq!(scales.len(), layers);
    assert!(scales.iter().all(|&x| x > 0.0), "{scales:?}");
    assert!(
        scales[1..].iter().all(|&x| x != scales[0]),
        "layers above 0 use hidden-state spreads"
    );
    let id = info["id"].as_str().unwrap().to_string();
    let path = format!("/v1/sessions/{id}/evaluate");
    let eval = |layer: usize, z: Vec<Vec<f32>>| {
        let body = json!({"candidates": z, "layer": layer});
        let s = &s;
        let path = path.clone();
        async move {
            let (status, r) = s.post(&path, None, &body).await;
            assert_eq!(status, 200, "{r}");
            losses(&r)
        }
    };
    // With every layer at zero the deep prompt is p0, as a shallow session's z = 0 is.
    let shallow = create(&s, None, "prefix").await;
    let (_, flat) = s
        .post(
            &format!("/v1/sessions/{shallow}/evaluate"),
            None,
            &json!({"candidates": [vec![0f32; 6]]}),
        )
        .await;
    let zero = eval(0, vec![vec![0.0; 6]]).await[0];
    assert!((zero - losses(&flat)[0]).abs() < 1e-5);
    // Each layer has its own projection.
    let cands = z(4, 2);
    let at1 = eval(1, cands.clone()).await;
    let at2 = eval(2, cands.clone()).await;
    assert!(
        at1.iter().zip(&at2).all(|(a, b)| (a - b).abs() > 1e-7),
        "{at1:?} {at2:?}"
    );
    assert!(at1.iter().all(|l| (l - zero).abs() > 1e-7));
    // Fixing layer 1 at a candidate: evaluating another layer's zero sees it.
    let put = |layer: &str, body: Value| {
        let s = &s;
        let path = format!("/v1/sessions/{id}/layers/{layer}");
        async move {
            s.send(
                reqwest::Method::PUT,
                &path,
                None,
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let (status, after) = put("1", json!({"z": cands[1].clone()})).await;
    assert_eq!(status, 200, "{after}");
    let seen = eval(2, vec![vec![0.0; 6]]).await[0];
    assert!((seen - at1[1]).abs() < 1e-5, "{seen} vs {}", at1[1]);
    // Setting a layer is not an API call: 1 + 2 + 2 + 1 calls so far.
    let (_, info) = s.get(&format!("/v1/sessions/{id}"), None).await;
    assert_eq!(info["api_calls"], 6);
    // Bad requests: a clear 4xx, the session intact.
    let (status, e) = s
        .post(&path, None, &json!({"candidates": [vec![0f32; 6]]}))
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("layer"), "{e}");
    let (status, e) = s
        .post(
            &path,
            None,
            &json!({"candidates": [vec![0f32; 6]], "layer": layers}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("out of range"),
        "{e}"
    );
    let (status, e) = s
        .post(
            &format!("/v1/sessions/{shallow}/evaluate"),
            None,
            &json!({"candidates": [vec![0f32; 6]], "layer": 0}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(put("1", json!({"z": [1.0, 2.0]})).await.0, 422);
    assert_eq!(put("x", json!({"z": cands[0].clone()})).await.0, 400);
    assert_eq!(
        put(&layers.to_string(), json!({"z": cands[0].clone()}))
            .await
            .0,
        422
    );
    let (status, e) = s
        .send(
            reqwest::Method::PUT,
            &format!("/v1/sessions/{shallow}/layers/0"),
            None,
            Some(json!({"z": cands[0].clone()}).to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(eval(2, vec![vec![0.0; 6]]).await[0], seen);

    // The suffix placement (the prompt after the cached texts): at zero its deep prompt is a
    // shallow suffix session's p0, and a layer's candidates move the loss.
    let mut suffix = body.clone();
    suffix["placement"] = json!("suffix");
    let (status, info) = s.post("/v1/sessions", None, &suffix).await;
    assert_eq!(status, 201, "{info}");
    let deep_suffix = info["id"].as_str().unwrap().to_string();
    let shallow_suffix = create(&s, None, "suffix").await;
    let loss_of = |id: String, body: Value| {
        let s = &s;
        async move {
            let (status, r) = s
                .post(&format!("/v1/sessions/{id}/evaluate"), None, &body)
                .await;
            assert_eq!(status, 200, "{r}");
            losses(&r)
        }
    };
    let flat = loss_of(shallow_suffix, json!({"candidates": [vec![0f32; 6]]})).await[0];
    let zero = loss_of(
        deep_suffix.clone(),
        json!({"candidates": [vec![0f32; 6]], "layer": 0}),
    )
    .await[0];
    assert!((zero - flat).abs() < 1e-5, "{zero} vs {flat}");
    let moved = loss_of(deep_suffix, json!({"candidates": cands, "layer": 1})).await;
    assert!(moved.iter().all(|l| (l - zero).abs() > 1e-7), "{moved:?}");
}

#[tokio::test]
async fn a_whole_deep_prompt_scores_in_one_call_as_its_layers_set_one_by_one() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let (_, models) = s.get("/v1/models", None).await;
    let layers = models["data"][0]["num_layers"].as_u64().unwrap() as usize;
    for placement in ["prefix", "suffix"] {
        let mut body = session_body(placement);
        body["deep"] = json!(true);
        let (status, info) = s.post("/v1/sessions", None, &body).await;
        assert_eq!(status, 201, "{info}");
        let id = info["id"].as_str().unwrap().to_string();
        let evaluate = |body: Value| {
            let s = &s;
            let path = format!("/v1/sessions/{id}/evaluate");
            async move {
                let (status, r) = s.post(&path, None, &body).await;
                (status, r)
            }
        };
        // Two whole prompts of `layers` parts of d = 6, layer by layer.
        let parts = z(9, 2 * layers);
        let whole: Vec<Vec<f32>> = parts.chunks(layers).map(|c| c.concat()).collect();
        let zero_before = losses(
            &evaluate(json!({"candidates": [vec![0f32; 6]], "layer": 0}))
                .await
                .1,
        );
        let (status, r) = evaluate(json!({"candidates": whole, "split": "dev"})).await;
        assert_eq!(status, 200, "{r}");
        let together = losses(&r);
        assert_eq!(r["api_calls"], 3, "{r}");
        // The session's chosen layers are untouched by it.
        let zero_after = losses(
            &evaluate(json!({"candidates": [vec![0f32; 6]], "layer": 0}))
                .await
                .1,
        );
        assert_eq!(zero_before, zero_after);
        // The same prompts the layer-at-a-time way: every other layer fixed, then layer 0.
        for (c, prompt) in parts.chunks(layers).enumerate() {
            for (l, part) in prompt.iter().enumerate().skip(1) {
                let (status, r) = s
                    .send(
                        reqwest::Method::PUT,
                        &format!("/v1/sessions/{id}/layers/{l}"),
                        None,
                        Some(json!({"z": part}).to_string().into_bytes()),
                    )
                    .await;
                assert_eq!(status, 200, "{r}");
            }
            let (status, r) =
                evaluate(json!({"candidates": [prompt[0].clone()], "layer": 0, "split": "dev"}))
                    .await;
            assert_eq!(status, 200, "{r}");
            let one = losses(&r)[0];
            assert!(
                (one - together[c]).abs() < 1e-5,
                "{placement}: candidate {c}: {one} vs {}",
                together[c]
            );
        }
        // A candidate of one layer's length without a layer is refused, saying why.
        let (status, e) = evaluate(json!({"candidates": [vec![0f32; 6]]})).await;
        assert_eq!(status, 422, "{e}");
        assert!(
            e["detail"].as_str().unwrap().contains("whole deep prompt"),
            "{e}"
        );
    }
}

/// The rows of a JSON matrix.
fn rows(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test]
async fn baseline_routes_demonstrations_content_free_features_and_score() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    // In-context learning: 8 training examples of 5 tokens with their label word; the tiny
    // model's 40 positions leave 40 - 1 (bos) - 4 (longest input) = 35 for demonstrations.
    let mut body = session_body("prefix");
    body["prompt_length"] = json!(0);
    body["demonstrations"] = json!({"seed": 5});
    let (status, icl) = s.post("/v1/sessions", None, &body).await;
    assert_eq!(status, 201, "{icl}");
    assert_eq!(
        (
            icl["demonstrations"].as_u64(),
            icl["context_tokens"].as_u64()
        ),
        (Some(7), Some(35))
    );
    let id = icl["id"].as_str().unwrap().to_string();
    // The context is the embeddings of exactly the demonstrations `assemble` builds.
    let engine = tiny_engine(Architecture::Llama, 3);
    let spec = bbt::tasks::TaskSpec {
        name: "custom".into(),
        classes: vec!["a".into(), "b".into()],
        template: bbt::tasks::Template::new(" <S> t40").unwrap(),
        verbalizer: vec![" t50".into(), " t51".into()],
        metric: bbt::tasks::Metric::Accuracy,
    };
    let train: Vec<bbt::tasks::Example> = examples(8)
        .iter()
        .map(|e| bbt::tasks::Example {
            text_a: e["text"].as_str().unwrap().into(),
            text_b: None,
            label: e["label"].as_u64().unwrap() as usize,
        })
        .collect();
    let (verbalizer, _) = spec
        .verbalizer_ids(engine.tokenizer(), bbt::tasks::MultiTokenWords::Reject)
        .unwrap();
    let demos = bbt::tasks::demonstrations::assemble(
        engine.tokenizer(),
        &spec,
        &verbalizer,
        &train,
        5,
        None,
        35,
    )
    .unwrap();
    let expected = engine
        .embed_tokens(&demos.ids)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let zero = vec![0.0f32; 6];
    let (status, p) = s
        .post(
            &format!("/v1/sessions/{id}/prompt"),
            None,
            &json!({"z": zero}),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(rows(&p["prompt"]), expected);
    // The session's test logits are those of the demonstrations before each input...
    let evaluate =
        |split: &str| json!({"candidates": [zero], "split": split, "return_logits": true});
    let (status, e) = s
        .post(
            &format!("/v1/sessions/{id}/evaluate"),
            None,
            &evaluate("test"),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    let icl_logits = rows(&e["results"][0]["logits"]);
    let inputs: Vec<Value> = examples(6)
        .iter()
        .map(|e| json!({"text": e["text"]}))
        .collect();
    let (status, f) = s
        .post(
            "/v1/forward",
            None,
            &json!({"template": " <S> t40", "verbalizer": [" t50", " t51"], "inputs": inputs,
                    "prompt": p["prompt"], "placement": "prefix"}),
        )
        .await;
    assert_eq!(status, 200, "{f}");
    for (a, b) in icl_logits
        .iter()
        .flatten()
        .zip(rows(&f["logits"]).iter().flatten())
    {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // ... and not those without them.
    body["demonstrations"] = json!({"seed": 5, "max": 3});
    let (_, three) = s.post("/v1/sessions", None, &body).await;
    assert_eq!(
        (
            three["demonstrations"].as_u64(),
            three["context_tokens"].as_u64()
        ),
        (Some(3), Some(15))
    );
    body["demonstrations"] = json!(null);
    let (_, plain) = s.post("/v1/sessions", None, &body).await;
    let plain_id = plain["id"].as_str().unwrap().to_string();
    let (_, e0) = s
        .post(
            &format!("/v1/sessions/{plain_id}/evaluate"),
            None,
            &evaluate("test"),
        )
        .await;
    assert_ne!(rows(&e0["results"][0]["logits"]), icl_logits);

    // Content-free inputs: three, scored in the session's context.
    let (status, cf) = s
        .post(
            &format!("/v1/sessions/{id}/evaluate"),
            None,
            &evaluate("content_free"),
        )
        .await;
    assert_eq!(status, 200, "{cf}");
    assert_eq!(rows(&cf["results"][0]["logits"]).len(), 3);

    // Score: the client's scores against the server's labels, not an API call.
    let calls = e["api_calls"].as_u64().unwrap() + 1;
    let (status, scored) = s
        .post(
            &format!("/v1/sessions/{id}/score"),
            None,
            &json!({"split": "test", "scores": icl_logits}),
        )
        .await;
    assert_eq!(status, 200, "{scored}");
    assert_eq!(scored["accuracy"], e["results"][0]["accuracy"]);
    let flipped: Vec<Vec<f32>> = icl_logits.iter().map(|r| vec![r[1], r[0]]).collect();
    let (_, scored_flipped) = s
        .post(
            &format!("/v1/sessions/{id}/score"),
            None,
            &json!({"split": "test", "scores": flipped}),
        )
        .await;
    let (a, b) = (
        scored["accuracy"].as_f64().unwrap(),
        scored_flipped["accuracy"].as_f64().unwrap(),
    );
    assert!((a + b - 1.0).abs() < 1e-9, "{a} + {b}");
    for bad in [
        json!({"split": "test", "scores": icl_logits[..2]}),
        json!({"split": "test", "scores": vec![vec![1.0f32]; 6]}),
        json!({"split": "content_free", "scores": vec![vec![1.0f32, 0.0]; 3]}),
    ] {
        let (status, err) = s
            .post(&format!("/v1/sessions/{id}/score"), None, &bad)
            .await;
        assert_eq!(status, 422, "{bad} -> {err}");
    }

    // Features: one API call per split; labels for train and dev only.
    let (status, ft) = s
        .post(
            &format!("/v1/sessions/{plain_id}/features"),
            None,
            &json!({"split": "train"}),
        )
        .await;
    assert_eq!(status, 200, "{ft}");
    let features = rows(&ft["features"]);
    assert_eq!((features.len(), features[0].len()), (8, 32));
    let labels: Vec<u64> = examples(8)
        .iter()
        .map(|e| e["label"].as_u64().unwrap())
        .collect();
    assert_eq!(ft["labels"], json!(labels));
    let (_, fz) = s
        .post(
            &format!("/v1/sessions/{plain_id}/features"),
            None,
            &json!({"split": "test", "z": zero}),
        )
        .await;
    assert_eq!(fz["labels"], Value::Null);
    assert_eq!(fz["api_calls"].as_u64(), Some(3));
    // With demonstrations in context the features change.
    let (_, fi) = s
        .post(
            &format!("/v1/sessions/{id}/features"),
            None,
            &json!({"split": "train"}),
        )
        .await;
    assert_ne!(rows(&fi["features"]), features);
    assert_eq!(fi["api_calls"].as_u64(), Some(calls + 1));
    let (status, _) = s
        .post(
            &format!("/v1/sessions/{plain_id}/features"),
            None,
            &json!({"split": "train", "z": [1.0]}),
        )
        .await;
    assert_eq!(status, 422);

    // Demonstrations need a shallow prefix prompt.
    for (placement, deep) in [("suffix", false), ("prefix", true)] {
        let mut bad = session_body(placement);
        bad["deep"] = json!(deep);
        bad["demonstrations"] = json!({"seed": 1});
        let (status, err) = s.post("/v1/sessions", None, &bad).await;
        assert_eq!(status, 422, "{err}");
    }
}

/// A prefix session started from `p0`, and its prompt at z = 0 (i.e. `p0` itself); the status
/// and body when the session is refused.
async fn starting_prompt(s: &Server, p0: Value) -> Result<Vec<Vec<f32>>, (u16, Value)> {
    let mut body = session_body("prefix");
    body["p0"] = p0;
    let (status, info) = s.post("/v1/sessions", None, &body).await;
    if status != 201 {
        return Err((status, info));
    }
    let id = info["id"].as_str().unwrap();
    let (_, p) = s
        .post(
            &format!("/v1/sessions/{id}/prompt"),
            None,
            &json!({"z": vec![0.0f32; 6]}),
        )
        .await;
    Ok(rows(&p["prompt"]))
}

#[tokio::test]
async fn a_prompt_given_as_vectors_is_the_starting_point() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let rows: Vec<Vec<f32>> = (0..3)
        .map(|i| (0..32).map(|j| ((i * 32 + j) as f32 * 0.1).sin()).collect())
        .collect();
    let started = starting_prompt(&s, json!({"kind": "vectors", "rows": rows})).await;
    assert_eq!(started.unwrap(), rows);
    for bad in [
        json!({"kind": "vectors", "rows": rows[..2]}),
        json!({"kind": "vectors", "rows": [vec![1.0f32; 31], vec![1.0f32; 32], vec![1.0f32; 32]]}),
    ] {
        let (status, err) = starting_prompt(&s, bad).await.unwrap_err();
        assert_eq!(status, 422, "{err}");
    }
}

#[tokio::test]
async fn a_prompt_can_start_from_the_embeddings_of_a_text() {
    let s = start(Limits::default(), ApiKeys::open()).await;
    let p0_rows = |text: &str| starting_prompt(&s, json!({"kind": "text", "text": text}));
    // Two words (the verbalizer's, one token each) fill L = 3 as word, word, first word again.
    let two = p0_rows(" t50 t51").await.unwrap();
    assert_eq!(two.len(), 3);
    assert_ne!(two[0], two[1]);
    assert_eq!(two[2], two[0]);
    assert!(
        two[0].iter().any(|&v| v != 0.0),
        "a word embedding, not zeros"
    );
    // One word fills every vector; a longer text is cut at L.
    let one = p0_rows(" t51").await.unwrap();
    assert_eq!(one, vec![two[1].clone(); 3]);
    let long = p0_rows(" t50 t51 t51 t50 t50").await.unwrap();
    assert_eq!(long, vec![two[0].clone(), two[1].clone(), two[1].clone()]);
    // A text without tokens is refused with a reason.
    let (status, err) = p0_rows("").await.unwrap_err();
    assert_eq!(status, 422);
    assert!(err.to_string().contains("p0 text"), "{err}");

    // Demonstrations: the session's training examples in its template with their label words,
    // the first L tokens of them; the order (and so the start) follows the seed.
    let demos = |seed: u64| {
        let s = &s;
        async move {
            let p0 = json!({"kind": "demonstrations", "seed": seed});
            starting_prompt(s, p0).await.unwrap()
        }
    };
    let first = demos(1).await;
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|r| r.iter().any(|&v| v != 0.0)));
    assert_eq!(demos(1).await, first, "the same seed, the same start");
    let other = (2..6).map(demos);
    let mut differs = false;
    for d in other {
        differs |= d.await != first;
    }
    assert!(differs, "another order, another start");
}

/// The status `GET /v1/sessions/{id}` answers `key`.
async fn status_of(s: &Server, id: &str, key: &str) -> u16 {
    s.get(&format!("/v1/sessions/{id}"), Some(key)).await.0
}

#[tokio::test]
async fn sessions_are_sized_before_they_are_built_and_keys_evict_their_own_first() {
    let one = 3 * 32 * 6 * 4;
    let keys = || ApiKeys::parse("alice\nbob\n").unwrap();
    let s = start(
        Limits {
            max_session_bytes_per_key: 2 * one + one / 2,
            max_session_bytes: 100 * one,
            ..Limits::default()
        },
        keys(),
    )
    .await;
    // Too big for any key: refused with its size before anything is drawn.
    let mut big = session_body("prefix");
    big["projection"]["intrinsic_dim"] = json!(20);
    let (status, body) = s.post("/v1/sessions", Some("alice"), &big).await;
    assert_eq!(status, 413, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("7680 bytes") && detail.contains("5760 bytes per key"),
        "{detail}"
    );
    // Over its own cap, a key loses its own least recently used session, never another key's.
    let b1 = create(&s, Some("bob"), "prefix").await;
    let a1 = create(&s, Some("alice"), "prefix").await;
    let a2 = create(&s, Some("alice"), "prefix").await;
    let a3 = create(&s, Some("alice"), "prefix").await;
    assert_eq!(status_of(&s, &a1, "alice").await, 410);
    assert_eq!(status_of(&s, &a2, "alice").await, 200);
    assert_eq!(status_of(&s, &a3, "alice").await, 200);
    assert_eq!(status_of(&s, &b1, "bob").await, 200);

    // Over the global cap, the key holding the most loses its oldest session first, although
    // another key's session is older.
    let s = start(
        Limits {
            max_session_bytes_per_key: 100 * one,
            max_session_bytes: 4 * one + one / 2,
            ..Limits::default()
        },
        keys(),
    )
    .await;
    let b1 = create(&s, Some("bob"), "prefix").await;
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(create(&s, Some("alice"), "prefix").await);
    }
    let a4 = create(&s, Some("alice"), "prefix").await;
    assert_eq!(status_of(&s, &b1, "bob").await, 200);
    assert_eq!(status_of(&s, &a4, "alice").await, 200);
    assert_eq!(
        status_of(&s, &a[0], "alice").await,
        410,
        "alice's oldest went first"
    );
    assert_eq!(status_of(&s, &a[1], "alice").await, 200);
}

#[tokio::test]
async fn task_loading_errors_are_the_callers_4xx_missing_data_a_404_broken_data_a_500() {
    let dir = std::env::temp_dir().join(format!("bbt-http-tasks-{}", std::process::id()));
    let sst2 = dir.join("SST-2");
    std::fs::create_dir_all(&sst2).unwrap();
    let rows = |n: usize| -> String {
        let mut out = String::from("sentence\tlabel\n");
        for i in 0..n {
            out.push_str(&format!("sentence number {i}\t{}\n", i % 2));
        }
        out
    };
    std::fs::write(sst2.join("train.tsv"), rows(6)).unwrap();
    std::fs::write(sst2.join("dev.tsv"), rows(4)).unwrap();
    let rte = dir.join("RTE");
    std::fs::create_dir_all(&rte).unwrap();
    for file in ["train.tsv", "dev.tsv"] {
        std::fs::write(rte.join(file), "no\tsuch\tcolumns\n1\t2\t3\n").unwrap();
    }
    let s = start_with_data(Limits::default(), ApiKeys::open(), dir.clone()).await;
    let builtin = |task: Value| {
        let mut body = session_body("prefix");
        body["task"] = task;
        body
    };
    let cases = [
        (
            json!({"kind": "builtin", "name": "sst2", "k": 8, "seed": 5}),
            422,
            "class 0 has 3 examples in the pool, 16 needed",
        ),
        (
            json!({"kind": "builtin", "name": "nosuch"}),
            422,
            "unknown task `nosuch`",
        ),
        // Data the server lacks: the caller's 404, saying how the operator provides it.
        (
            json!({"kind": "builtin", "name": "agnews", "k": 2}),
            404,
            "bbt fetch agnews --data-dir",
        ),
        // Data that is there but broken: the server's own fault.
        (
            json!({"kind": "builtin", "name": "rte", "k": 1}),
            500,
            "cannot load task `rte`",
        ),
    ];
    for (task, want, detail) in cases {
        let (status, body) = s.post("/v1/sessions", None, &builtin(task)).await;
        assert_eq!(status, want, "{body}");
        assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
        if want == 404 {
            assert_eq!(body["error"], "task_data_missing", "{body}");
            // The operator's paths stay on the server.
            assert!(!body["detail"]
                .as_str()
                .unwrap()
                .contains(dir.to_str().unwrap()));
        }
    }
    let (status, body) = s
        .post(
            "/v1/sessions",
            None,
            &builtin(json!({"kind": "builtin", "name": "sst2", "k": 1, "seed": 5})),
        )
        .await;
    // The small pool meets k = 1: loading succeeds, and the tiny test model's vocabulary then
    // refuses SST-2's label words, a 422 of its own.
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("label word"),
        "{body}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_request_whose_client_left_is_not_charged() {
    let keys = ApiKeys::parse("carol\n").unwrap();
    let s = start(Limits::default(), keys).await;
    let mut heavy = session_body("prefix");
    heavy["task"]["train"] = json!(examples(2048));
    let (status, body) = s.post("/v1/sessions", Some("carol"), &heavy).await;
    assert_eq!(status, 201, "{body}");
    let heavy = body["id"].as_str().unwrap().to_string();
    let light = create(&s, Some("carol"), "prefix").await;
    // The client gives up long before 64 candidates x 2048 examples are scored.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/v1/sessions/{heavy}/evaluate", s.base))
        .bearer_auth("carol")
        .json(&json!({"candidates": (0..64).map(|i| z(i, 1).remove(0)).collect::<Vec<_>>()}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the request timed out on the client");
    // The worker is first-in first-out: once this answers, the abandoned job is done or skipped.
    let (status, body) = s
        .post(
            &format!("/v1/sessions/{light}/evaluate"),
            Some("carol"),
            &json!({"candidates": z(1, 1)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, usage) = s.get("/v1/usage", Some("carol")).await;
    assert_eq!(usage["api_calls"], 1, "{usage}");
    let (_, info) = s.get(&format!("/v1/sessions/{heavy}"), Some("carol")).await;
    assert_eq!(info["api_calls"], 0, "{info}");
}
