//! Prometheus metrics: requests and latency by route and status, queue depth, batch sizes,
//! tokens processed and forward time (tokens/s = rate of one over the other).

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

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Always 1; its labels say which model runs where, in which dtype, on which kernels.
    pub model_info: IntGaugeVec,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub queue_depth: IntGauge,
    pub sessions: IntGauge,
    /// Evaluate requests that shared an engine pass with others (dynamic batching).
    pub merged_evaluations: IntGauge,
    pub batch_rows: Histogram,
    pub tokens: IntCounter,
    pub forward_seconds: prometheus::Counter,
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
        let requests = IntCounterVec::new(
            Opts::new(
                "bbt_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "bbt_http_request_duration_seconds",
                "HTTP latency by route and status",
            )
            .buckets(vec![
                0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["route", "status"],
        )
        .expect("metric");
        let queue_depth = IntGauge::new(
            "bbt_queue_depth",
            "Jobs waiting for or running on the model worker",
        )
        .expect("metric");
        let sessions = IntGauge::new("bbt_sessions", "Live tuning sessions").expect("metric");
        let merged_evaluations = IntGauge::new(
            "bbt_merged_evaluations_total",
            "Evaluate requests that shared an engine pass with other requests",
        )
        .expect("metric");
        let batch_rows = Histogram::with_opts(
            HistogramOpts::new("bbt_batch_rows", "Sequences per engine call").buckets(vec![
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
        for m in [
            Box::new(model_info.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(queue_depth.clone()),
            Box::new(sessions.clone()),
            Box::new(merged_evaluations.clone()),
            Box::new(batch_rows.clone()),
            Box::new(tokens.clone()),
            Box::new(forward_seconds.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Self {
            registry,
            model_info,
            requests,
            latency,
            queue_depth,
            sessions,
            merged_evaluations,
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
