//! Two replicas (in-process servers, tiny seeded model, real HTTP) sharing usage in a real
//! Redis server started here: one account per key across replicas, quotas that hold across
//! them, a retry charged once wherever it lands, the holds of a replica that died expiring,
//! and a clear 503 when the store is down.

use std::sync::Arc;
use std::time::Duration;

use bbt::model::config::Architecture;
use bbt::testing::random_model::tiny_engine;
use bbt_server::core::usage::{Account, RedisStore, UsageBook, UsageStore};
use bbt_server::daemons::{redis, system_program, Daemon};
use bbt_server::{ApiKeys, Limits, Service};
use serde_json::{json, Value};

const KEYS: &str = "dave 10\n";

struct Replica {
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn replica(redis_url: &str) -> Replica {
    let store = Arc::new(RedisStore::connect(redis_url).await.unwrap());
    let keys = ApiKeys::parse(KEYS).unwrap();
    let service = Arc::new(Service::with_usage_store(
        tiny_engine(Architecture::Llama, 3),
        Limits::default(),
        keys.quotas(),
        bbt::tasks::default_data_dir(),
        store,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bbt_server::serve(listener, service, keys, async move {
        let _ = stopped.await;
    }));
    Replica { base, _stop: stop }
}

fn session_body() -> Value {
    let examples: Vec<Value> = (0..6)
        .map(|i| json!({"text": format!("t{} t{}", 10 + i, 20 + i), "label": i % 2}))
        .collect();
    json!({
        "task": {"kind": "explicit", "template": " <S> t40", "classes": ["a", "b"],
                 "verbalizer": [" t50", " t51"], "train": examples, "dev": examples,
                 "test": examples},
        "prompt_length": 3,
        "projection": {"intrinsic_dim": 6, "seed": 11}
    })
}

fn candidates(n: usize) -> Value {
    json!((0..n)
        .map(|i| (0..6)
            .map(|j| ((i * 6 + j) as f32 * 0.3).sin())
            .collect::<Vec<f32>>())
        .collect::<Vec<_>>())
}

async fn send(
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Value,
    idempotency: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(key)
        .json(&body);
    if let Some(k) = idempotency {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Evaluates `n` candidates on `replica`'s copy of session `id` (creating it there first).
async fn evaluate(r: &Replica, id: &str, n: usize, idempotency: Option<&str>) -> (u16, Value) {
    let put = send(
        reqwest::Method::PUT,
        format!("{}/v1/sessions/{id}", r.base),
        "dave",
        session_body(),
        None,
    )
    .await;
    assert!(matches!(put.0, 200 | 201), "{put:?}");
    let url = format!("{}/v1/sessions/{id}/evaluate", r.base);
    let body = json!({"candidates": candidates(n)});
    send(reqwest::Method::POST, url, "dave", body, idempotency).await
}

async fn used(r: &Replica) -> (u64, Option<u64>) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/usage", r.base))
        .bearer_auth("dave")
        .send()
        .await
        .unwrap();
    let u: Value = resp.json().await.unwrap();
    (
        u["api_calls"].as_u64().unwrap(),
        u["quota_remaining"].as_u64(),
    )
}

fn start_redis() -> Option<(Daemon, String)> {
    let program = system_program("redis-server", "the replica tests")?;
    let daemon = redis(&program).expect("redis-server starts");
    let url = format!("redis://127.0.0.1:{}", daemon.port());
    Some((daemon, url))
}

#[tokio::test]
async fn replicas_share_one_account_per_key_in_redis() {
    let Some((mut redis, url)) = start_redis() else {
        return;
    };
    let (a, b) = (replica(&url).await, replica(&url).await);
    // The same session on both replicas (as after a failover), charged to one account.
    let (status, first) = evaluate(&a, "ses_shared", 3, None).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = evaluate(&b, "ses_shared", 3, None).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["results"], second["results"], "replicas score alike");
    assert_eq!(used(&a).await, (6, Some(4)));
    assert_eq!(used(&b).await, (6, Some(4)));
    // A retry that lands on the other replica (its first answer was lost) is not charged.
    assert_eq!(evaluate(&a, "ses_shared", 2, Some("call-1")).await.0, 200);
    assert_eq!(evaluate(&b, "ses_shared", 2, Some("call-1")).await.0, 200);
    assert_eq!(used(&b).await, (8, Some(2)));
    // The quota holds across replicas.
    assert_eq!(evaluate(&b, "ses_shared", 2, None).await.0, 200);
    let (status, refused) = evaluate(&a, "ses_shared", 1, None).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (429, Some("quota_exceeded"))
    );
    assert_eq!(used(&a).await, (10, Some(0)));
    // The store down: a clear 503, not a crash; the replica still answers its health check.
    redis.kill();
    let (status, down) = evaluate(&b, "ses_other", 1, None).await;
    assert_eq!(status, 503, "{down}");
    assert!(
        down["detail"].as_str().unwrap().contains("usage store"),
        "{down}"
    );
    let health = reqwest::get(format!("{}/health", b.base)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Calls held by a request whose replica died count against the quota until their hold
/// expires, then are free again; settled holds never linger.
#[tokio::test]
async fn the_holds_of_a_dead_replica_expire() {
    let Some((_redis, url)) = start_redis() else {
        return;
    };
    let store: Arc<dyn UsageStore> = Arc::new(
        RedisStore::connect(&url)
            .await
            .unwrap()
            .with_hold(Duration::from_millis(800)),
    );
    let quotas = [("frank".to_string(), 5)].into();
    let book = UsageBook::new(store.clone(), quotas);
    let frank = Account {
        key: Some("frank"),
        idempotency: None,
    };
    // A replica reserves 4 calls and dies: the reservation is never settled.
    std::mem::forget(book.reserve_calls(frank, 4).await.unwrap());
    let refused = book.reserve_calls(frank, 2).await.err().unwrap();
    assert!(format!("{refused}").contains("4 held"), "{refused}");
    let one = book.reserve_calls(frank, 1).await.unwrap();
    one.commit(10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Expired: 1 used, 4 free again.
    let four = book.reserve_calls(frank, 4).await.unwrap();
    drop(four); // given back
    tokio::time::sleep(Duration::from_millis(100)).await;
    let usage = book.usage("frank").await.unwrap();
    assert_eq!((usage.api_calls, usage.tokens), (1, 10));
    assert_eq!(usage.quota_remaining, Some(4));
    book.reserve_calls(frank, 4)
        .await
        .unwrap()
        .commit(0)
        .await
        .unwrap();
}
