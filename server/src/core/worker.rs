//! The model worker: one thread owns the engine's compute. Requests queue for it in arrival
//! order (so no client starves); each time it picks up work it also takes whatever else is
//! queued (waiting at most `max_wait`, up to `max_batch_tokens` positions) and runs that batch
//! in arrival order, except that its prefix evaluations share one engine pass at the place of
//! the earliest ([`super::batching`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bbt::protocol::{CandidateResult, Placement};
use bbt::Engine;

use super::batching::{self, EvaluateJob};
use super::metrics::WorkerMetrics;
use super::CoreError;

/// How the worker gathers queued requests into one pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, CoreError>>;

enum Job {
    Evaluate(EvaluateJob, Reply<Vec<CandidateResult>>),
    Run(Box<dyn FnOnce(&Engine) + Send>),
}

impl Job {
    fn tokens(&self) -> usize {
        match self {
            Job::Evaluate(job, _) => batching::job_tokens(job),
            Job::Run(_) => 0,
        }
    }
}

/// A job and when it joined the queue.
type Queued = (Instant, Job);

/// Handle to the model worker thread.
#[derive(Clone)]
pub struct Worker {
    tx: SyncSender<Queued>,
    depth: Arc<AtomicUsize>,
}

fn catch<T>(f: impl FnOnce() -> Result<T, CoreError>) -> Result<T, CoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(CoreError::Internal(
            "the model worker panicked on this request".into(),
        ))
    })
}

impl Worker {
    /// Starts the worker thread; at most `max_queue` jobs wait at once. It records its queue
    /// waits, batch times and merged evaluations in `metrics`.
    pub fn start(
        engine: Arc<Engine>,
        max_queue: usize,
        policy: BatchPolicy,
        metrics: WorkerMetrics,
    ) -> Self {
        let (tx, rx) = sync_channel::<Queued>(max_queue);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        std::thread::Builder::new()
            .name("bbt-model-worker".into())
            .spawn(move || worker_loop(&engine, &rx, &thread_depth, &metrics, policy))
            .expect("spawn the model worker");
        Self { tx, depth }
    }

    /// Jobs waiting or running.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    fn submit(&self, job: Job) -> Result<(), CoreError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send((Instant::now(), job)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => {
                        CoreError::Busy("the model queue is full; retry shortly".into())
                    }
                    TrySendError::Disconnected(_) => {
                        CoreError::Unavailable("the model worker has stopped".into())
                    }
                })
            }
        }
    }

    /// Runs `f` on the worker and returns its result; a panic inside `f` becomes a 500.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.submit(Job::Run(Box::new(move |engine: &Engine| {
            // The requester went away while the job waited: skip the work.
            if !reply.is_closed() {
                let _ = reply.send(catch(|| f(engine)));
            }
        })))?;
        wait.await.unwrap_or_else(|_| {
            Err(CoreError::Unavailable(
                "the model worker dropped the request".into(),
            ))
        })
    }

    /// Scores `job`'s candidates, possibly in one pass with other queued evaluations.
    pub async fn evaluate(&self, job: EvaluateJob) -> Result<Vec<CandidateResult>, CoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.submit(Job::Evaluate(job, reply))?;
        wait.await.unwrap_or_else(|_| {
            Err(CoreError::Unavailable(
                "the model worker dropped the request".into(),
            ))
        })
    }
}

fn worker_loop(
    engine: &Engine,
    rx: &Receiver<Queued>,
    depth: &AtomicUsize,
    metrics: &WorkerMetrics,
    policy: BatchPolicy,
) {
    while let Ok(first) = rx.recv() {
        depth.fetch_sub(1, Ordering::Relaxed);
        let mut tokens = first.1.tokens();
        let mut jobs = vec![first];
        let deadline = Instant::now() + policy.max_wait;
        while tokens < policy.max_batch_tokens {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) => rx.recv_timeout(left),
                None => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            match next {
                Ok(job) => {
                    depth.fetch_sub(1, Ordering::Relaxed);
                    tokens += job.1.tokens();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let jobs = jobs
            .into_iter()
            .map(|(queued, job)| {
                metrics
                    .queue_wait
                    .observe(started.duration_since(queued).as_secs_f64());
                job
            })
            .collect();
        execute(engine, jobs, metrics);
        metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Runs a gathered batch in arrival order, except that the prefix evaluations run together in
/// one merged pass, at the place of the earliest of them. Evaluations whose requester has gone
/// (the client disconnected while they waited) are skipped.
fn execute(engine: &Engine, jobs: Vec<Job>, metrics: &WorkerMetrics) {
    let mut prefix = Vec::new();
    let mut order = Vec::new();
    for job in jobs {
        match job {
            Job::Evaluate(_, reply) if reply.is_closed() => {}
            Job::Evaluate(job, reply) if job.session.placement == Placement::Prefix => {
                if prefix.is_empty() {
                    order.push(Step::Prefix);
                }
                prefix.push((job, reply));
            }
            other => order.push(Step::Alone(other)),
        }
    }
    for step in order {
        match step {
            Step::Alone(Job::Evaluate(job, reply)) => {
                let _ = reply.send(catch(|| batching::evaluate_one(engine, &job)));
            }
            Step::Alone(Job::Run(f)) => f(engine),
            Step::Prefix => run_prefix(engine, std::mem::take(&mut prefix), metrics),
        }
    }
}

/// A place in a batch's running order.
enum Step {
    Alone(Job),
    /// All the batch's prefix evaluations, merged.
    Prefix,
}

/// Prefix evaluations in one merged pass (one alone if it is the only one).
fn run_prefix(
    engine: &Engine,
    mut jobs: Vec<(EvaluateJob, Reply<Vec<CandidateResult>>)>,
    metrics: &WorkerMetrics,
) {
    match jobs.len() {
        0 => {}
        1 => {
            let (job, reply) = jobs.pop().expect("one job");
            let _ = reply.send(catch(|| batching::evaluate_one(engine, &job)));
        }
        _ => {
            let refs: Vec<&EvaluateJob> = jobs.iter().map(|(j, _)| j).collect();
            match catch(|| batching::evaluate_prefix_merged(engine, &refs)) {
                Ok(results) => {
                    metrics.merged_evaluations.inc_by(results.len() as u64);
                    for ((_, reply), r) in jobs.into_iter().zip(results) {
                        let _ = reply.send(Ok(r));
                    }
                }
                // A failed merged pass: retry each alone, so one bad job cannot fail the others.
                Err(_) => {
                    for (job, reply) in jobs {
                        let _ = reply.send(catch(|| batching::evaluate_one(engine, &job)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use bbt::model::config::Architecture;
    use bbt::testing::random_model::tiny_engine;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_is_busy_and_work_whose_requester_left_is_skipped() {
        let engine = Arc::new(tiny_engine(Architecture::Llama, 3));
        let policy = BatchPolicy {
            max_batch_tokens: 1,
            max_wait: Duration::ZERO,
        };
        let metrics = crate::core::metrics::Metrics::new(crate::core::metrics::ModelLabels {
            model: "tiny",
            device: "cpu",
            dtype: "f32",
            kernels: "none",
        });
        let worker = Worker::start(engine, 1, policy, metrics.worker.clone());
        // Hold the worker until released.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let worker = worker.clone();
            async move {
                worker
                    .run(move |_| {
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        Ok(())
                    })
                    .await
            }
        });
        started_rx.await.unwrap();
        // One job fills the queue of 1; its requester then leaves.
        let ran = Arc::new(AtomicBool::new(false));
        let abandoned = tokio::spawn({
            let (worker, ran) = (worker.clone(), ran.clone());
            async move {
                worker
                    .run(move |_| {
                        ran.store(true, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
            }
        });
        while worker.depth() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let refused = worker.run(|_| Ok(())).await;
        assert!(matches!(refused, Err(CoreError::Busy(_))), "{refused:?}");
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        release_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        // The worker takes the abandoned job off the queue before the queue has room again.
        while worker.depth() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // First in, first out: once this has run, the abandoned job has been passed over.
        worker.run(|_| Ok(())).await.unwrap();
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job was skipped");
    }
}
