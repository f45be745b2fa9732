//! `bbt._native`: the Rust client exposed to Python. The Python package (`python/bbt/`) gives it
//! Python's idiom (keyword arguments, dataclasses, NumPy arrays, a progress bar); everything
//! that decides a result (CMA-ES, the tuner, retries, checkpoints, resume) runs here, in the
//! same code as the `bbt` command line.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bbt::protocol::{ErrorKind, SplitName};
use bbt_client::http::{CallError, RetryPolicy, ServerClient};
use bbt_client::tune::config::TuneConfig;
use bbt_client::tune::control::Stopped;
use bbt_client::tune::outputs::SavedPrompt;
use bbt_client::tune::progress::ProgressOptions;
use bbt_client::tune::reuse::OtherTask;
use bbt_client::tune::{self, Control, LocalInputs, Start};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    BbtError,
    pyo3::exceptions::PyException,
    "Any error of bbt."
);
pyo3::create_exception!(
    _native,
    ServerError,
    BbtError,
    "The server answered with an error: args are (message, kind, HTTP status)."
);
pyo3::create_exception!(
    _native,
    QuotaExceeded,
    ServerError,
    "The API key's quota of calls is spent; retrying cannot help."
);
pyo3::create_exception!(
    _native,
    NotFound,
    ServerError,
    "No such session (it expired or the server restarted), route or task data."
);
pyo3::create_exception!(
    _native,
    Unauthorized,
    ServerError,
    "No API key, or one the server does not know."
);
pyo3::create_exception!(
    _native,
    InvalidRequest,
    ServerError,
    "The server refused the request as malformed, invalid or too large."
);
pyo3::create_exception!(
    _native,
    ServerUnavailable,
    ServerError,
    "The server stayed busy, unavailable or failing after every retry."
);
pyo3::create_exception!(
    _native,
    ConnectionFailed,
    BbtError,
    "The server could not be reached, or its answer was not bbt's protocol."
);

/// The Python exception for a failed request.
fn call_error(e: &CallError) -> PyErr {
    call_error_saying(e, e.to_string())
}

/// The Python exception for a failed request, with `message` (the request's error and what
/// the caller made of it).
fn call_error_saying(e: &CallError, message: String) -> PyErr {
    match e {
        CallError::Status { status, kind, .. } => {
            let args = (message, kind.as_str().to_string(), *status);
            match kind {
                ErrorKind::QuotaExceeded => QuotaExceeded::new_err(args),
                ErrorKind::NotFound | ErrorKind::SessionGone | ErrorKind::TaskDataMissing => {
                    NotFound::new_err(args)
                }
                ErrorKind::Unauthorized => Unauthorized::new_err(args),
                ErrorKind::BadRequest
                | ErrorKind::Invalid
                | ErrorKind::TooLarge
                | ErrorKind::Conflict
                | ErrorKind::UnsupportedMediaType
                | ErrorKind::MethodNotAllowed => InvalidRequest::new_err(args),
                ErrorKind::RateLimited
                | ErrorKind::Busy
                | ErrorKind::Unavailable
                | ErrorKind::Internal
                | ErrorKind::Unknown => ServerUnavailable::new_err(args),
            }
        }
        CallError::Transport { .. } | CallError::Protocol { .. } => {
            ConnectionFailed::new_err(message)
        }
    }
}

/// The Python exception for a failed run: a request's own, `KeyboardInterrupt` for a stopped
/// run, `BbtError` with the whole chain of causes otherwise.
fn run_error(e: anyhow::Error) -> PyErr {
    if let Some(call) = e.downcast_ref::<CallError>() {
        return call_error_saying(call, format!("{e:#}"));
    }
    if e.downcast_ref::<Stopped>().is_some() {
        return PyKeyboardInterrupt::new_err(e.to_string());
    }
    BbtError::new_err(format!("{e:#}"))
}

/// `train`, `dev` or `test`.
fn split_name(split: &str) -> PyResult<SplitName> {
    match split {
        "train" => Ok(SplitName::Train),
        "dev" => Ok(SplitName::Dev),
        "test" => Ok(SplitName::Test),
        _ => Err(PyValueError::new_err(format!(
            "unknown split {split:?}: use train, dev or test"
        ))),
    }
}

fn json_error(e: serde_json::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A connection to one bbt-server.
#[pyclass(module = "bbt._native")]
struct NativeClient {
    inner: Arc<Mutex<ServerClient>>,
}

impl NativeClient {
    fn with<T>(&self, f: impl FnOnce(&mut ServerClient) -> Result<T, CallError>) -> PyResult<T> {
        let mut client = self
            .inner
            .lock()
            .expect("no call panicked holding the client");
        f(&mut client).map_err(|e| call_error(&e))
    }
}

#[pymethods]
impl NativeClient {
    /// A client of the server at `url`.
    #[new]
    #[pyo3(signature = (url, api_key=None, attempts=8))]
    fn new(url: &str, api_key: Option<String>, attempts: u32) -> PyResult<Self> {
        let retry = RetryPolicy {
            max_attempts: attempts.max(1),
            ..Default::default()
        };
        let client = ServerClient::new(url, api_key, retry).map_err(|e| call_error(&e))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(client)),
        })
    }

    /// `GET /v1/models`, as JSON.
    fn models(&self, py: Python<'_>) -> PyResult<String> {
        let models = py.detach(|| self.with(|c| c.models()))?;
        serde_json::to_string(&models).map_err(json_error)
    }

    /// Creates the session a run with `config` (TuneConfig JSON) would tune in; its info as
    /// JSON.
    fn create_session(&self, py: Python<'_>, config: &str) -> PyResult<String> {
        let config: TuneConfig = serde_json::from_str(config).map_err(json_error)?;
        config
            .validate()
            .map_err(|e| PyValueError::new_err(format!("invalid setting: {e}")))?;
        let info = py.detach(|| -> PyResult<_> {
            let inputs = LocalInputs::read(&config).map_err(run_error)?;
            self.with(|c| {
                let models = c.models()?;
                let card = models.data.first().ok_or_else(|| CallError::Protocol {
                    url: c.base().to_string(),
                    message: "the server lists no model".into(),
                })?;
                let request = tune::session_request(&config, inputs, card);
                c.create_session(&request)
            })
        })?;
        serde_json::to_string(&info).map_err(json_error)
    }

    /// Scores `count` candidates `z` (row-major little-endian f32 bytes) on `split`; the
    /// answer as JSON.
    #[pyo3(signature = (session_id, z, count, split, layer=None))]
    fn evaluate(
        &self,
        py: Python<'_>,
        session_id: &str,
        z: &[u8],
        count: usize,
        split: &str,
        layer: Option<usize>,
    ) -> PyResult<String> {
        let split = split_name(split)?;
        if count == 0 || z.len() % (4 * count) != 0 {
            return Err(PyValueError::new_err(format!(
                "{} bytes do not hold {count} candidates of f32",
                z.len()
            )));
        }
        let z: Vec<f32> = z
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let answer = py.detach(|| self.with(|c| c.evaluate(session_id, &z, split, layer)))?;
        serde_json::to_string(&answer).map_err(json_error)
    }

    /// Scores the prompt of `best_prompt.json` at `prompt` on `split` of its own task, or of
    /// `task` (a few-shot sample of `k` per class drawn with `seed`), as `bbt eval` does;
    /// `{task, split, examples, accuracy, f1, loss}` as JSON.
    #[pyo3(signature = (prompt, split, task=None, k=16, seed=42))]
    fn score_prompt(
        &self,
        py: Python<'_>,
        prompt: PathBuf,
        split: &str,
        task: Option<&str>,
        k: usize,
        seed: u64,
    ) -> PyResult<String> {
        let split_name = split_name(split)?;
        let saved = SavedPrompt::read(&prompt).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let (info, result) = py.detach(|| {
            let mut client = self
                .inner
                .lock()
                .expect("no call panicked holding the client");
            let other = task.map(|task| OtherTask { task, k, seed });
            saved
                .score(&mut client, other, split_name)
                .map_err(run_error)
        })?;
        Ok(serde_json::json!({
            "task": info.task,
            "split": split,
            "examples": info.split_size(split_name),
            "accuracy": result.accuracy,
            "f1": result.f1,
            "loss": result.loss,
        })
        .to_string())
    }

    /// Deletes a session.
    fn delete_session(&self, py: Python<'_>, session_id: &str) -> PyResult<()> {
        py.detach(|| self.with(|c| c.delete_session(session_id)))
    }

    /// Runs `config` (TuneConfig JSON; `None` resumes the run in `out`) to its end and returns
    /// `result.json`'s contents. `on_event` gets each event's JSON line. Ctrl-C ends the run
    /// after its next checkpoint and raises `KeyboardInterrupt`; the folder stays resumable.
    #[pyo3(signature = (config, out, on_event=None, progress_bar=false))]
    fn tune(
        &self,
        py: Python<'_>,
        config: Option<&str>,
        out: PathBuf,
        on_event: Option<Py<PyAny>>,
        progress_bar: bool,
    ) -> PyResult<String> {
        let start = match config {
            Some(json) => Start::Fresh(Box::new(serde_json::from_str(json).map_err(json_error)?)),
            None => Start::Resume,
        };
        let (events, received) = mpsc::channel::<String>();
        // Waited on with the GIL released, which wants a shareable receiver.
        let received = Mutex::new(received);
        let control = Control {
            observer: Some(Arc::new(move |line: &str| {
                let _ = events.send(line.to_string());
            })),
            ..Default::default()
        };
        let client = Arc::clone(&self.inner);
        // The worker holds the only sender: the channel disconnects when the run ends.
        let stop = Control {
            observer: None,
            stop: Arc::clone(&control.stop),
        };
        let options = ProgressOptions {
            quiet: !progress_bar,
            json_lines: false,
        };
        let worker = std::thread::spawn(move || {
            let mut client = client.lock().expect("no call panicked holding the client");
            tune::run_with(&mut client, start, &out, options, &control)
        });
        let deliver = |line: String| -> PyResult<()> {
            match &on_event {
                Some(callback) => callback.call1(py, (line,)).map(drop),
                None => Ok(()),
            }
        };
        let mut failure: Option<PyErr> = None;
        loop {
            let next = py.detach(|| {
                let received = received.lock().expect("only this thread receives");
                received.recv_timeout(Duration::from_millis(100))
            });
            let step = match next {
                Ok(line) => deliver(line),
                Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Err(e) = step.and_then(|()| py.check_signals()) {
                stop.request_stop();
                failure = Some(e);
                break;
            }
        }
        let outcome = py.detach(|| worker.join());
        // Events sent before the end still reach the callback.
        if failure.is_none() {
            let received = received.into_inner().expect("only this thread receives");
            for line in received.try_iter() {
                deliver(line)?;
            }
        }
        let result = match outcome {
            Ok(result) => result,
            Err(_) => return Err(BbtError::new_err("the tuner panicked")),
        };
        match (failure, result) {
            (Some(e), _) => Err(e),
            (None, Ok(result)) => serde_json::to_string(&result).map_err(json_error),
            (None, Err(e)) => Err(run_error(e)),
        }
    }
}

/// The settings of preset `name` (`paper`, `bbtv2`, `quick`, `rgb`) for `task`, as JSON.
#[pyfunction]
fn preset(name: &str, task: &str) -> PyResult<String> {
    let config = match name {
        "paper" => TuneConfig::paper(task),
        "bbtv2" => TuneConfig::bbtv2(task),
        "quick" => TuneConfig::quick(task),
        "rgb" => TuneConfig::rgb(task),
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown preset {name:?}: use paper, bbtv2, quick or rgb"
            )))
        }
    };
    serde_json::to_string(&config).map_err(json_error)
}

/// Checks `config` (TuneConfig JSON) as `bbt tune` would; `ValueError` names the bad setting.
#[pyfunction]
fn validate(config: &str) -> PyResult<()> {
    let config: TuneConfig = serde_json::from_str(config).map_err(json_error)?;
    config
        .validate()
        .map_err(|e| PyValueError::new_err(format!("invalid setting: {e}")))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_function(wrap_pyfunction!(preset, m)?)?;
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    let py = m.py();
    m.add("BbtError", py.get_type::<BbtError>())?;
    m.add("ServerError", py.get_type::<ServerError>())?;
    m.add("QuotaExceeded", py.get_type::<QuotaExceeded>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("Unauthorized", py.get_type::<Unauthorized>())?;
    m.add("InvalidRequest", py.get_type::<InvalidRequest>())?;
    m.add("ServerUnavailable", py.get_type::<ServerUnavailable>())?;
    m.add("ConnectionFailed", py.get_type::<ConnectionFailed>())?;
    Ok(())
}
