//! Prometheus metrics: requests and latency by route, method and status; the model queue's depth
//! and wait, each batch's time, batch sizes, tokens processed and forward time (tokens/s = rate
//! of one over the other); API calls, quota refusals, sessions and their memory, dropped
//! sessions; the process's memory; the model and the build.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The served model, named by its labels, as an info-style metric.
pub struct ModelLabels<'a> {
    pub model: &'a str,
    pub device: &'a str,
    pub dtype: &'a str,
    /// The CPU matmul kernels (`onemkl-2026.2`, `candle-gemm`; `none` on a GPU).
    pub kernels: &'a str,
}

/// The server's metrics, named and typed as Prometheus' conventions ask (`_total` counters,
/// `_seconds` and `_bytes` units, `_info` series of labels).
pub struct Metrics {
    registry: Registry,
    /// Always 1; its labels say which model runs where, in which dtype, on which kernels.
    pub model_info: IntGaugeVec,
    /// HTTP requests by route, method and status.
    pub requests: IntCounterVec,
    /// HTTP latency by route, method and status.
    pub latency: HistogramVec,
    pub queue_depth: IntGauge,
    pub sessions: IntGauge,
    /// Memory held by all sessions (projections, demonstrations, caches).
    pub session_bytes: IntGauge,
    /// Sessions dropped, by reason: `expired` (idle too long) or `evicted` (memory caps).
    pub sessions_dropped: IntCounterVec,
    /// API calls charged (the billing unit: one candidate scored on one split).
    pub api_calls: IntCounter,
    /// Requests refused because the key's quota of API calls was spent.
    pub quota_refusals: IntCounter,
    /// The model worker's own metrics.
    pub worker: WorkerMetrics,
    /// Sequences per scoring request.
    pub batch_rows: Histogram,
    pub tokens: IntCounter,
    pub forward_seconds: prometheus::Counter,
}

/// What the model worker records: how long jobs wait, how long each batch runs, and how many
/// evaluations shared a pass.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Seconds from a job's arrival in the queue to the start of its batch.
    pub queue_wait: Histogram,
    /// Seconds the model spent on one batch of jobs.
    pub batch_seconds: Histogram,
    /// Evaluate requests that shared an engine pass with other requests.
    pub merged_evaluations: IntCounter,
}

/// Latency buckets from 5 ms to 2 minutes (a test split on a CPU can take that long).
fn seconds_buckets() -> Vec<f64> {
    vec![
        0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]
}

impl Metrics {
    /// Registers every metric; `model` labels `bbt_model_info`.
    pub fn new(model: ModelLabels) -> Self {
        let registry = Registry::new();
        let model_info = IntGaugeVec::new(
            Opts::new(
                "bbt_model_info",
                "The served model, its device, dtype and CPU matmul kernels (always 1)",
            ),
            &["model", "device", "dtype", "kernels"],
        )
        .expect("metric");
        model_info
            .with_label_values(&[model.model, model.device, model.dtype, model.kernels])
            .set(1);
        let build_info = IntGaugeVec::new(
            Opts::new("bbt_build_info", "The server's version (always 1)"),
            &["version"],
        )
        .expect("metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let requests = IntCounterVec::new(
            Opts::new(
                "bbt_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "bbt_http_request_duration_seconds",
                "HTTP latency by route, method and status",
            )
            .buckets(seconds_buckets()),
            &["route", "method", "status"],
        )
        .expect("metric");
        let queue_depth = IntGauge::new(
            "bbt_queue_depth",
            "Jobs waiting for or running on the model worker",
        )
        .expect("metric");
        let sessions = IntGauge::new("bbt_sessions", "Live tuning sessions").expect("metric");
        let session_bytes = IntGauge::new(
            "bbt_session_memory_bytes",
            "Memory held by all sessions: projections, demonstrations and caches",
        )
        .expect("metric");
        let sessions_dropped = IntCounterVec::new(
            Opts::new(
                "bbt_sessions_dropped_total",
                "Sessions dropped: expired (idle too long) or evicted (memory caps)",
            ),
            &["reason"],
        )
        .expect("metric");
        // Both series from the start, at 0, so a dashboard sees them before the first drop.
        for reason in ["expired", "evicted"] {
            sessions_dropped.with_label_values(&[reason]);
        }
        let api_calls = IntCounter::new(
            "bbt_api_calls_total",
            "API calls charged: one candidate scored on one split",
        )
        .expect("metric");
        let quota_refusals = IntCounter::new(
            "bbt_quota_refusals_total",
            "Requests refused because the key's quota of API calls was spent",
        )
        .expect("metric");
        let worker = WorkerMetrics {
            queue_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "bbt_queue_wait_seconds",
                    "Seconds a job waited in the model queue before its batch started",
                )
                .buckets(seconds_buckets()),
            )
            .expect("metric"),
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "bbt_batch_duration_seconds",
                    "Seconds the model worker spent on one batch of jobs",
                )
                .buckets(seconds_buckets()),
            )
            .expect("metric"),
            merged_evaluations: IntCounter::new(
                "bbt_merged_evaluations_total",
                "Evaluate requests that shared an engine pass with other requests",
            )
            .expect("metric"),
        };
        let batch_rows = Histogram::with_opts(
            HistogramOpts::new("bbt_batch_rows", "Sequences per scoring request").buckets(vec![
                1.0, 8.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ]),
        )
        .expect("metric");
        let tokens = IntCounter::new(
            "bbt_tokens_total",
            "Tokens run through the model (prompt vectors included)",
        )
        .expect("metric");
        let forward_seconds = prometheus::Counter::new(
            "bbt_forward_seconds_total",
            "Seconds the model worker spent in forwards",
        )
        .expect("metric");
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(model_info.clone()),
            Box::new(build_info),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(queue_depth.clone()),
            Box::new(sessions.clone()),
            Box::new(session_bytes.clone()),
            Box::new(sessions_dropped.clone()),
            Box::new(api_calls.clone()),
            Box::new(quota_refusals.clone()),
            Box::new(worker.queue_wait.clone()),
            Box::new(worker.batch_seconds.clone()),
            Box::new(batch_rows.clone()),
            Box::new(worker.merged_evaluations.clone()),
            Box::new(tokens.clone()),
            Box::new(forward_seconds.clone()),
        ];
        for m in collectors {
            registry.register(m).expect("unique metric names");
        }
        // The process's resident memory, CPU seconds, open files and start time
        // (`process_*`, as every Prometheus client library exports them).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        Self {
            registry,
            model_info,
            requests,
            latency,
            queue_depth,
            sessions,
            session_bytes,
            sessions_dropped,
            api_calls,
            quota_refusals,
            worker,
            batch_rows,
            tokens,
            forward_seconds,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
