//! Random and mutated requests at every route of a live server (tiny model, real HTTP): bodies
//! that are valid requests with parts replaced by random JSON, random bytes or cut short; random
//! methods, ids, query strings, content types, encodings and keys. Whatever arrives, the server
//! answers with a status below 500 and a JSON error body for every 4xx, never drops the
//! connection (a panic would), and still answers `/health` afterwards.
//!
//! `BBT_FUZZ_CASES` sets the number of requests (default 300, a few seconds; README states a
//! longer run and its count).

use std::sync::{Arc, OnceLock};

use bbt::model::config::Architecture;
use bbt::testing::random_model::tiny_engine;
use bbt_server::{ApiKeys, Limits, Service};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// A server on an ephemeral port, its runtime kept alive for the whole test binary.
struct Live {
    base: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data = std::env::temp_dir().join(format!("bbt-fuzz-data-{}", std::process::id()));
        std::fs::create_dir_all(data.join("SST-2")).unwrap();
        let rows: String = std::iter::once("sentence\tlabel\n".to_string())
            .chain((0..40).map(|i| format!("t{} t{}\t{}\n", 10 + i % 20, 30 + i % 9, i % 2)))
            .collect();
        std::fs::write(data.join("SST-2/train.tsv"), &rows).unwrap();
        std::fs::write(data.join("SST-2/dev.tsv"), &rows).unwrap();
        let limits = Limits {
            max_body_bytes: 256 << 10,
            max_candidates: 8,
            max_examples: 64,
            max_prompt_length: 8,
            max_intrinsic_dim: 64,
            max_context_tokens: 256,
            max_session_bytes: 4 << 20,
            max_session_bytes_per_key: 2 << 20,
            max_queue: 64,
            ..Limits::default()
        };
        let keys = ApiKeys::parse("fuzz\nother 1000000\n").unwrap();
        let service = Arc::new(Service::new(
            tiny_engine(Architecture::Llama, 3),
            limits,
            keys.quotas(),
            data,
        ));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(bbt_server::serve(
            listener,
            service,
            keys,
            std::future::pending(),
        ));
        Live {
            base,
            runtime,
            client: reqwest::Client::new(),
        }
    })
}

/// One request as sent.
#[derive(Debug, Clone)]
struct Request {
    method: reqwest::Method,
    path: String,
    query: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    key: Option<String>,
    body: Vec<u8>,
}

/// The answer: status, and the body when it is not a success.
fn send(r: &Request) -> Result<(u16, String), String> {
    let live = live();
    live.runtime.block_on(async {
        let url = if r.query.is_empty() {
            format!("{}{}", live.base, r.path)
        } else {
            format!("{}{}?{}", live.base, r.path, r.query)
        };
        let mut req = live.client.request(r.method.clone(), url);
        if let Some(t) = &r.content_type {
            req = req.header("content-type", t.as_str());
        }
        if let Some(e) = &r.content_encoding {
            req = req.header("content-encoding", e.as_str());
        }
        if let Some(k) = &r.key {
            req = req.header("authorization", k.as_str());
        }
        let resp = req
            .body(r.body.clone())
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("cut off: {e}"))?;
        Ok((status, text))
    })
}

fn post_json(path: &str, body: &Value) -> Value {
    let r = Request {
        method: reqwest::Method::POST,
        path: path.into(),
        query: String::new(),
        content_type: Some("application/json".into()),
        content_encoding: None,
        key: Some("Bearer fuzz".into()),
        body: body.to_string().into_bytes(),
    };
    let (status, text) = send(&r).unwrap();
    assert!(status < 300, "{status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn examples(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"text": format!("t{} t{}", 10 + i % 10 + 10 * (i % 2), 30 + i % 7), "label": i % 2}))
        .collect()
}

/// A valid session request over the tiny model's vocabulary.
fn session(placement: &str, deep: bool) -> Value {
    json!({
        "task": {"kind": "explicit", "template": " <S> t40", "classes": ["a", "b"],
                 "verbalizer": [" t50", " t51"], "train": examples(8), "dev": examples(4),
                 "test": examples(4)},
        "prompt_length": 2,
        "placement": placement,
        "deep": deep,
        "projection": {"intrinsic_dim": 4, "seed": 3}
    })
}

/// Ids of a prefix, a suffix and a deep session, created afresh when deleted or evicted.
fn sessions() -> [String; 3] {
    static IDS: OnceLock<std::sync::Mutex<Option<[String; 3]>>> = OnceLock::new();
    let ids = IDS.get_or_init(Default::default);
    let mut ids = ids.lock().unwrap();
    let alive = |id: &str| {
        let r = Request {
            method: reqwest::Method::GET,
            path: format!("/v1/sessions/{id}"),
            query: String::new(),
            content_type: None,
            content_encoding: None,
            key: Some("Bearer fuzz".into()),
            body: Vec::new(),
        };
        send(&r).is_ok_and(|(s, _)| s == 200)
    };
    if ids
        .as_ref()
        .is_none_or(|ids| !ids.iter().all(|id| alive(id)))
    {
        let create = |placement, deep| {
            post_json("/v1/sessions", &session(placement, deep))["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        *ids = Some([
            create("prefix", false),
            create("suffix", false),
            create("prefix", true),
        ]);
    }
    ids.clone().unwrap()
}

/// Random JSON: scalars that probe limits and types, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "train",
        "dev",
        "test",
        "content_free",
        "prefix",
        "suffix",
        "f32",
        "f16",
        "builtin",
        "explicit",
        "json",
        "packed",
        "sst2",
        " <S> t40",
        " <S1> ? <S2>",
        " t50",
        "",
        "AAAA",
        "zeros",
        "tokens",
        "vectors",
        "text",
        "demonstrations",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..70).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |x| x.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        words.prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..7).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "task",
            "kind",
            "name",
            "k",
            "seed",
            "test_limit",
            "template",
            "classes",
            "verbalizer",
            "metric",
            "train",
            "dev",
            "test",
            "text",
            "text_b",
            "label",
            "prompt_length",
            "placement",
            "projection",
            "intrinsic_dim",
            "scale",
            "gain",
            "distribution",
            "p0",
            "ids",
            "rows",
            "loss",
            "deep",
            "demonstrations",
            "max",
            "max_tokens",
            "candidates",
            "dtype",
            "count",
            "data",
            "split",
            "return_logits",
            "layer",
            "z",
            "scores",
            "inputs",
            "prompt",
        ])
        .prop_map(String::from),
        "[a-z_]{1,8}",
    ]
}

/// Replaces the value at a random place in `v` (chosen by `pick`) with `new`.
fn replace_somewhere(v: &mut Value, mut pick: usize, new: Value) {
    let mut here = v;
    loop {
        let children = match here {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || pick % 3 == 0 {
            *here = new;
            return;
        }
        let i = (pick / 3) % children;
        pick /= 7;
        here = match here {
            Value::Object(m) => m.values_mut().nth(i).expect("in range"),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

/// How a valid body is damaged.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Replace(usize, Value),
    Insert(String, Value),
    FlipBytes(Vec<(usize, u8)>),
    Truncate(usize),
    Garbage(Vec<u8>),
    Json(Value),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        1 => Just(Damage::None),
        4 => (any::<usize>(), any_json()).prop_map(|(p, v)| Damage::Replace(p, v)),
        2 => (field_name(), any_json()).prop_map(|(k, v)| Damage::Insert(k, v)),
        1 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..4).prop_map(Damage::FlipBytes),
        1 => any::<usize>().prop_map(Damage::Truncate),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Garbage),
        1 => any_json().prop_map(Damage::Json),
    ]
}

fn apply(body: Option<Value>, damage: Damage) -> Vec<u8> {
    let mut value = body.unwrap_or(Value::Null);
    match damage {
        Damage::None => value.to_string().into_bytes(),
        Damage::Replace(pick, new) => {
            replace_somewhere(&mut value, pick, new);
            value.to_string().into_bytes()
        }
        Damage::Insert(key, new) => {
            if let Value::Object(m) = &mut value {
                m.insert(key, new);
            }
            value.to_string().into_bytes()
        }
        Damage::FlipBytes(flips) => {
            let mut bytes = value.to_string().into_bytes();
            for (at, b) in flips {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[at % n] = b;
                }
            }
            bytes
        }
        Damage::Truncate(at) => {
            let bytes = value.to_string().into_bytes();
            bytes[..at % (bytes.len() + 1)].to_vec()
        }
        Damage::Garbage(bytes) => bytes,
        Damage::Json(v) => v.to_string().into_bytes(),
    }
}

/// Which route, with which id and layer; bodies start valid for the route.
#[derive(Debug, Clone)]
struct Shape {
    route: usize,
    session: usize,
    random_id: String,
    layer: String,
    method: Option<usize>,
    query: Vec<(String, String)>,
    content_type: usize,
    encoding: Option<String>,
    key: usize,
    damage: Damage,
}

fn shape() -> impl Strategy<Value = Shape> {
    let query_pair = (
        prop::sample::select(vec![
            "split",
            "dtype",
            "return_logits",
            "layer",
            "x",
            "split[]",
        ]),
        prop_oneof![
            prop::sample::select(vec![
                "train", "dev", "test", "f32", "f16", "true", "0", "29", "-1", "%FF%FE", "",
            ])
            .prop_map(String::from),
            "[ -~]{0,10}".prop_map(|s| s.replace(['&', '#', ' '], "")),
        ],
    )
        .prop_map(|(k, v)| (k.to_string(), v));
    (
        (
            0usize..15,
            0usize..4,
            prop_oneof![
                "[a-z_0-9]{0,20}",
                Just("%FF%00".to_string()),
                Just("..".to_string())
            ],
            prop_oneof![
                "[0-9]{1,3}",
                Just("-1".to_string()),
                Just("99999999999999999999".to_string()),
                "\\PC{0,6}".prop_map(|s| s
                    .replace(['/', '?', '#', '%'], "")
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect()),
            ],
        ),
        prop::option::weighted(0.2, 0usize..6),
        prop::collection::vec(query_pair, 0..4),
        0usize..6,
        prop::option::weighted(0.1, prop::sample::select(vec!["gzip", "br", "x-bogus"]))
            .prop_map(|e| e.map(String::from)),
        0usize..4,
        damage(),
    )
        .prop_map(
            |(
                (route, session, random_id, layer),
                method,
                query,
                content_type,
                encoding,
                key,
                damage,
            )| {
                Shape {
                    route,
                    session,
                    random_id,
                    layer,
                    method,
                    query,
                    content_type,
                    encoding,
                    key,
                    damage,
                }
            },
        )
}

/// The request a shape describes, against the live sessions.
fn build(shape: Shape) -> Request {
    let ids = sessions();
    let id = if shape.session < 3 {
        ids[shape.session].clone()
    } else {
        shape.random_id.clone()
    };
    let z4 = json!([0.1, -0.2, 0.3, 0.0]);
    use reqwest::Method as M;
    let (method, path, body): (M, String, Option<Value>) = match shape.route {
        0 => (M::GET, "/health".into(), None),
        1 => (M::GET, "/metrics".into(), None),
        2 => (M::GET, "/openapi.json".into(), None),
        3 => (M::GET, "/v1/models".into(), None),
        4 => (M::GET, "/v1/usage".into(), None),
        5 => (
            M::POST,
            "/v1/sessions".into(),
            Some(session("prefix", false)),
        ),
        6 => (M::GET, format!("/v1/sessions/{id}"), None),
        7 => (M::DELETE, format!("/v1/sessions/{id}"), None),
        8 => (
            M::POST,
            format!("/v1/sessions/{id}/evaluate"),
            Some(json!({"candidates": [z4, z4], "split": "train", "layer": 1})),
        ),
        9 => (
            M::POST,
            format!("/v1/sessions/{id}/prompt"),
            Some(json!({"z": z4})),
        ),
        10 => (
            M::POST,
            format!("/v1/sessions/{id}/features"),
            Some(json!({"split": "dev", "z": z4})),
        ),
        11 => (
            M::POST,
            format!("/v1/sessions/{id}/score"),
            Some(json!({"split": "test", "scores": vec![vec![0.0f32, 1.0]; 4]})),
        ),
        12 => (
            M::PUT,
            format!("/v1/sessions/{id}/layers/{}", shape.layer),
            Some(json!({"z": z4})),
        ),
        13 => (
            M::POST,
            "/v1/forward".into(),
            Some(
                json!({"template": " <S> t40", "verbalizer": [" t50", " t51"],
                        "inputs": [{"text": "t11 t12"}], "prompt": vec![vec![0.0f32; 32]]}),
            ),
        ),
        _ => (
            M::POST,
            format!("/v1/sessions/{id}/evaluate"),
            None, // raw floats, below
        ),
    };
    let method = match shape.method {
        None => method,
        Some(i) => [M::GET, M::POST, M::PUT, M::DELETE, M::PATCH, M::HEAD][i].clone(),
    };
    let raw = shape.route >= 14;
    let body = if raw {
        let floats: Vec<u8> = [0.5f32, -1.0, 2.0, 0.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        match shape.damage {
            Damage::None => floats,
            Damage::FlipBytes(flips) => {
                let mut b = floats;
                for (at, v) in flips {
                    let n = b.len();
                    b[at % n] = v;
                }
                b
            }
            Damage::Truncate(at) => floats[..at % 17].to_vec(),
            Damage::Garbage(b) => b,
            other => apply(None, other),
        }
    } else if body.is_some() {
        apply(body, shape.damage)
    } else {
        Vec::new()
    };
    let content_type = match shape.content_type {
        0 | 1 if raw => Some("application/octet-stream".to_string()),
        0 | 1 => Some("application/json".to_string()),
        2 => Some("application/json; charset=utf-8".to_string()),
        3 => Some("text/plain".to_string()),
        4 => Some("application/octet-stream".to_string()),
        _ => None,
    };
    let mut query: Vec<String> = shape
        .query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if raw && shape.query.is_empty() {
        query.push("dtype=f32&split=train".into());
    }
    let key = match shape.key {
        0 | 1 => Some("Bearer fuzz".to_string()),
        2 => Some("Bearer other".to_string()),
        _ => None,
    };
    Request {
        method,
        path,
        query: query.join("&"),
        content_type,
        content_encoding: shape.encoding,
        key,
        body,
    }
}

#[test]
fn no_request_can_make_the_server_fail_or_fall_over() {
    let cases = std::env::var("BBT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    runner
        .run(&shape(), |shape| {
            let request = build(shape);
            let (status, text) =
                send(&request).map_err(|e| TestCaseError::fail(format!("{e}: {request:?}")))?;
            *statuses.borrow_mut().entry(status).or_default() += 1;
            prop_assert!(status < 500, "{status} {text}: {request:?}");
            if status >= 400 && request.method != reqwest::Method::HEAD {
                let body: Result<Value, _> = serde_json::from_str(&text);
                prop_assert!(
                    body.as_ref()
                        .is_ok_and(|b| b["error"].is_string() && b["detail"].is_string()),
                    "{status} without a JSON error body: {text}: {request:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    let health = Request {
        method: reqwest::Method::GET,
        path: "/health".into(),
        query: String::new(),
        content_type: None,
        content_encoding: None,
        key: None,
        body: Vec::new(),
    };
    assert_eq!(send(&health).unwrap().0, 200);
    // Proof that the requests reached the handlers, not only the router's 404/405.
    let statuses = statuses.into_inner();
    let handled: usize = statuses
        .iter()
        .filter(|(s, _)| ![401, 404, 405].contains(*s))
        .map(|(_, n)| n)
        .sum();
    eprintln!("{cases} requests, statuses {statuses:?}");
    assert!(
        handled * 3 > cases as usize,
        "too few requests got past routing and auth: {statuses:?}"
    );
}
