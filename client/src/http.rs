//! A blocking HTTP client for bbt-server: the protocol types from `bbt::protocol`, candidates
//! uploaded as raw little-endian f32, retries with exponential backoff on connection errors and
//! 5xx (waiting at least the server's `Retry-After`), and a count of the body bytes sent and
//! received. A spent quota (429) is never retried.
//!
//! Behind a load balancer: the client names its sessions (`PUT /v1/sessions/{id}`), so the
//! balancer can route every request of a session by its id (in the path, and in the
//! `X-Bbt-Session` header for balancers that hash on headers), and a replica that lacks the
//! session gets the same creation request again. Every charged request carries an
//! `Idempotency-Key` that stays the same through its retries, so a request whose answer was lost
//! (with the replica that computed it) is charged once.

use std::time::Duration;

use bbt::protocol::{
    CreateSessionRequest, ErrorBody, ErrorKind, EvaluateResponse, FeaturesRequest,
    FeaturesResponse, ModelsResponse, PromptRequest, PromptResponse, ScoreRequest, ScoreResponse,
    SessionInfo, SetLayerRequest, SplitName,
};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled after each.
    pub initial_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status (after any retries).
    #[error("server answered {status}: {kind}: {detail}")]
    Status {
        status: u16,
        kind: ErrorKind,
        detail: String,
    },
    /// The server could not be reached, or the answer was cut off (after any retries).
    #[error("cannot reach the server at {url}: {message}")]
    Transport { url: String, message: String },
    /// The answer was not what the protocol says.
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

impl CallError {
    /// Whether the key's quota of API calls is spent (retrying cannot help).
    pub fn quota_spent(&self) -> bool {
        matches!(
            self,
            Self::Status {
                kind: ErrorKind::QuotaExceeded,
                ..
            }
        )
    }

    /// Whether the session is unknown to the server (it restarted, or the session expired).
    pub fn session_lost(&self) -> bool {
        matches!(
            self,
            Self::Status {
                kind: ErrorKind::NotFound | ErrorKind::SessionGone,
                ..
            }
        )
    }
}

/// A connection to one bbt-server.
pub struct ServerClient {
    base: String,
    api_key: Option<String>,
    http: Client,
    retry: RetryPolicy,
    /// Random per client: the idempotency keys of its charged requests are `SALT-N`.
    salt: u128,
    /// Charged requests this client has finished; the next one is `SALT-{finished}`.
    finished: u64,
    /// Request body bytes sent so far.
    pub bytes_up: u64,
    /// Response body bytes received so far.
    pub bytes_down: u64,
    /// Whether the server has answered once: until then a connection error fails at once (no
    /// server there), after it the request is retried (a server restarting or failing over).
    answered: bool,
}

impl ServerClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`), with an optional API key.
    pub fn new(base: &str, api_key: Option<String>, retry: RetryPolicy) -> Result<Self, CallError> {
        let url = reqwest::Url::parse(base).map_err(|e| CallError::Transport {
            url: base.into(),
            message: format!("not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CallError::Transport {
                url: base.into(),
                message: "the server URL must start with http:// or https://".into(),
            });
        }
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A test split of thousands of examples can take minutes on a CPU server.
            .timeout(Duration::from_secs(3600))
            .build()
            .map_err(|e| CallError::Transport {
                url: base.into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            api_key,
            http,
            retry,
            salt: rand::random(),
            finished: 0,
            bytes_up: 0,
            bytes_down: 0,
            answered: false,
        })
    }

    /// A fresh session id (`ses_` and 32 random hex digits), for [`Self::put_session`].
    pub fn new_session_id() -> String {
        format!("ses_{:032x}", rand::random::<u128>())
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/models`.
    pub fn models(&mut self) -> Result<ModelsResponse, CallError> {
        self.call("/v1/models", |http, url| http.get(url), 0)
    }

    /// Creates a session under a fresh id of the client's ([`Self::put_session`]).
    pub fn create_session(&mut self, req: &CreateSessionRequest) -> Result<SessionInfo, CallError> {
        self.put_session(&Self::new_session_id(), req)
    }

    /// `PUT /v1/sessions/{id}`: creates session `id` from `req`, or finds it already there from
    /// the same request. Sent again to the same id when a server has lost the session.
    pub fn put_session(
        &mut self,
        id: &str,
        req: &CreateSessionRequest,
    ) -> Result<SessionInfo, CallError> {
        let body = serde_json::to_vec(req).expect("a request serialises");
        let len = body.len() as u64;
        self.call(
            &format!("/v1/sessions/{id}"),
            move |http, url| {
                http.put(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            },
            len,
        )
    }

    /// `GET /v1/sessions/{id}`.
    pub fn session(&mut self, id: &str) -> Result<SessionInfo, CallError> {
        self.call(&format!("/v1/sessions/{id}"), |http, url| http.get(url), 0)
    }

    /// `POST /v1/sessions/{id}/evaluate` with `count` candidates of `z.len() / count` floats,
    /// sent as raw little-endian f32.
    /// `layer` names a deep session's layer the candidates are for.
    pub fn evaluate(
        &mut self,
        id: &str,
        z: &[f32],
        split: SplitName,
        layer: Option<usize>,
    ) -> Result<EvaluateResponse, CallError> {
        self.evaluate_raw(id, z, split, layer, false)
    }

    /// [`Self::evaluate`] of a shallow session that also returns each example's verbalizer
    /// logits.
    pub fn evaluate_with_logits(
        &mut self,
        id: &str,
        z: &[f32],
        split: SplitName,
    ) -> Result<EvaluateResponse, CallError> {
        self.evaluate_raw(id, z, split, None, true)
    }

    fn evaluate_raw(
        &mut self,
        id: &str,
        z: &[f32],
        split: SplitName,
        layer: Option<usize>,
        return_logits: bool,
    ) -> Result<EvaluateResponse, CallError> {
        let body: Vec<u8> = z.iter().flat_map(|v| v.to_le_bytes()).collect();
        let len = body.len() as u64;
        let split = serde_json::to_value(split).expect("split serialises");
        let mut path = format!(
            "/v1/sessions/{id}/evaluate?dtype=f32&split={}&return_logits={return_logits}",
            split.as_str().unwrap_or("train")
        );
        if let Some(l) = layer {
            path.push_str(&format!("&layer={l}"));
        }
        self.charged(
            &path,
            move |http, url| {
                http.post(url)
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            },
            len,
        )
    }

    /// `PUT /v1/sessions/{id}/layers/{layer}`: fixes a deep session's layer at `z`.
    pub fn set_layer(
        &mut self,
        id: &str,
        layer: usize,
        z: &[f32],
    ) -> Result<SessionInfo, CallError> {
        let body = serde_json::to_vec(&SetLayerRequest { z: z.to_vec() }).expect("serialises");
        let len = body.len() as u64;
        let path = format!("/v1/sessions/{id}/layers/{layer}");
        self.call(
            &path,
            move |http, url| {
                http.put(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            },
            len,
        )
    }

    /// `POST /v1/sessions/{id}/prompt`: the full prompt for `z`.
    pub fn prompt(&mut self, id: &str, z: &[f32]) -> Result<PromptResponse, CallError> {
        self.post_json(
            &format!("/v1/sessions/{id}/prompt"),
            &PromptRequest { z: z.to_vec() },
        )
    }

    /// `POST /v1/sessions/{id}/features`: the final hidden state at the prediction position of
    /// each example of `split` (one API call).
    pub fn features(
        &mut self,
        id: &str,
        split: SplitName,
        z: Option<&[f32]>,
    ) -> Result<FeaturesResponse, CallError> {
        let req = FeaturesRequest {
            split,
            z: z.map(<[f32]>::to_vec),
        };
        let body = serde_json::to_vec(&req).expect("a request serialises");
        let len = body.len() as u64;
        self.charged(
            &format!("/v1/sessions/{id}/features"),
            move |http, url| {
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            },
            len,
        )
    }

    /// `POST /v1/sessions/{id}/score`: the task's metric for the client's class scores on a
    /// split (not an API call).
    pub fn score(
        &mut self,
        id: &str,
        split: SplitName,
        scores: Vec<Vec<f32>>,
    ) -> Result<ScoreResponse, CallError> {
        self.post_json(
            &format!("/v1/sessions/{id}/score"),
            &ScoreRequest { split, scores },
        )
    }

    /// A JSON `POST` and its decoded JSON answer.
    fn post_json<T: DeserializeOwned>(
        &mut self,
        path: &str,
        req: &impl serde::Serialize,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(req).expect("a request serialises");
        let len = body.len() as u64;
        self.call(
            path,
            move |http, url| {
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            },
            len,
        )
    }

    /// `DELETE /v1/sessions/{id}`; a session already gone is not an error.
    pub fn delete_session(&mut self, id: &str) -> Result<(), CallError> {
        let url = format!("{}/v1/sessions/{id}", self.base);
        match self.send(&url, |http, url| http.delete(url), 0) {
            Ok(_) => Ok(()),
            Err(e) if e.session_lost() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// [`Self::call`] for a request that spends API calls: it carries this client's current
    /// idempotency key, which moves on once the request has an outcome other than a lost
    /// session or an unreachable server (after which the caller may send it again).
    fn charged<T: DeserializeOwned>(
        &mut self,
        path: &str,
        build: impl Fn(&Client, &str) -> RequestBuilder,
        body_len: u64,
    ) -> Result<T, CallError> {
        let key = format!("{:032x}-{}", self.salt, self.finished);
        let answer = self.call(
            path,
            |http, url| build(http, url).header("idempotency-key", &key),
            body_len,
        );
        match &answer {
            Err(e) if e.session_lost() || matches!(e, CallError::Transport { .. }) => {}
            _ => self.finished += 1,
        }
        answer
    }

    /// Sends a request (rebuilt for each attempt) and decodes its JSON answer.
    fn call<T: DeserializeOwned>(
        &mut self,
        path: &str,
        build: impl Fn(&Client, &str) -> RequestBuilder,
        body_len: u64,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let bytes = self.send(&url, build, body_len)?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Protocol {
            url,
            message: e.to_string(),
        })
    }

    /// One request with retries; returns the body of a 2xx answer.
    fn send(
        &mut self,
        url: &str,
        build: impl Fn(&Client, &str) -> RequestBuilder,
        body_len: u64,
    ) -> Result<Vec<u8>, CallError> {
        let mut delay = self.retry.initial_delay;
        let mut attempt = 1;
        loop {
            let mut request = build(&self.http, url);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            if let Some(id) = session_in(url) {
                request = request.header("x-bbt-session", id);
            }
            self.bytes_up += body_len;
            let outcome = request.send().and_then(|r| {
                let status = r.status();
                let retry_after = retry_after(&r);
                r.bytes().map(|b| (status, retry_after, b))
            });
            let error = match outcome {
                Ok((status, retry_after, body)) => {
                    self.answered = true;
                    self.bytes_down += body.len() as u64;
                    if status.is_success() {
                        return Ok(body.to_vec());
                    }
                    let error = status_error(status, &body);
                    // A 429 is retried only when the server says when (a rate limit), never
                    // for a spent quota.
                    let retryable = status.is_server_error()
                        || (status == StatusCode::TOO_MANY_REQUESTS
                            && retry_after.is_some()
                            && !error.quota_spent());
                    if !retryable || attempt >= self.retry.max_attempts {
                        return Err(error);
                    }
                    if let Some(wait) = retry_after {
                        delay = delay.max(wait);
                    }
                    error
                }
                Err(e) if !self.answered => {
                    return Err(CallError::Transport {
                        url: url.to_string(),
                        message: format!(
                            "{}; is bbt-server running at {}?",
                            error_chain(&e),
                            self.base
                        ),
                    });
                }
                Err(e) => {
                    let error = CallError::Transport {
                        url: url.to_string(),
                        message: error_chain(&e),
                    };
                    if attempt >= self.retry.max_attempts {
                        return Err(error);
                    }
                    error
                }
            };
            eprintln!(
                "bbt: {error}; retrying in {:.1} s (attempt {}/{})",
                delay.as_secs_f64(),
                attempt + 1,
                self.retry.max_attempts
            );
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.retry.max_delay);
            attempt += 1;
        }
    }
}

/// The session id of a `/v1/sessions/{id}[/...]` URL.
fn session_in(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("/v1/sessions/")?;
    let id = rest.split(['/', '?']).next()?;
    (!id.is_empty()).then_some(id)
}

/// The server's `Retry-After` in seconds, if any.
fn retry_after(r: &Response) -> Option<Duration> {
    r.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The error status as a [`CallError`], with the server's JSON error body when it sent one.
fn status_error(status: StatusCode, body: &[u8]) -> CallError {
    let (kind, detail) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.error, e.detail),
        // Not the server's own error (e.g. a proxy's HTML page): one short line of it.
        Err(_) => (
            ErrorKind::from_status(status.as_u16()),
            foreign_body_line(&String::from_utf8_lossy(body)),
        ),
    };
    CallError::Status {
        status: status.as_u16(),
        kind,
        detail,
    }
}

/// An error body that is not bbt's JSON, as one line: an HTML page's title, else the text with
/// its whitespace collapsed, at most 160 characters.
fn foreign_body_line(text: &str) -> String {
    let title = text
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(title, _)| title);
    let line = title
        .unwrap_or(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    line.chars().take(160).collect()
}

/// The root causes of a transport error, one line (reqwest's top level repeats the URL).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut causes = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let skip = causes.len().saturating_sub(2);
    causes[skip..].join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_error_page_is_one_line_and_session_ids_are_read_from_urls() {
        let page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>...</body></html>";
        assert_eq!(foreign_body_line(page), "502 Bad Gateway");
        assert_eq!(
            foreign_body_line("upstream\n  timed   out"),
            "upstream timed out"
        );
        assert_eq!(
            session_in("http://h/v1/sessions/ses_1/evaluate?x=1"),
            Some("ses_1")
        );
        assert_eq!(session_in("http://h/v1/sessions/ses_2"), Some("ses_2"));
        assert_eq!(session_in("http://h/v1/sessions"), None);
        assert_eq!(session_in("http://h/v1/models"), None);
    }
}
