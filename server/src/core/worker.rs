//! The model worker: one thread owns the engine's compute; requests queue for it in arrival
//! order (so no client starves) and await their results.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use bbt::Engine;

use super::CoreError;

type Job = Box<dyn FnOnce(&Engine) + Send>;

/// Handle to the model worker thread.
#[derive(Clone)]
pub struct Worker {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
}

impl Worker {
    /// Starts the worker thread; at most `max_queue` jobs wait at once.
    pub fn start(engine: Arc<Engine>, max_queue: usize) -> Self {
        let (tx, rx) = sync_channel::<Job>(max_queue);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        std::thread::Builder::new()
            .name("bbt-model-worker".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    thread_depth.fetch_sub(1, Ordering::Relaxed);
                    job(&engine);
                }
            })
            .expect("spawn the model worker");
        Self { tx, depth }
    }

    /// Jobs waiting or running.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Runs `f` on the worker and returns its result; a panic inside `f` becomes a 500, not a
    /// dead server.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |engine: &Engine| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(engine)))
                .unwrap_or_else(|_| {
                    Err(CoreError::Internal(
                        "the model worker panicked on this request".into(),
                    ))
                });
            let _ = reply.send(result);
        });
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(CoreError::Unavailable(
                    "the model queue is full; retry shortly".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                return Err(CoreError::Unavailable(
                    "the model worker has stopped".into(),
                ));
            }
        }
        wait.await.unwrap_or_else(|_| {
            Err(CoreError::Unavailable(
                "the model worker dropped the request".into(),
            ))
        })
    }
}
