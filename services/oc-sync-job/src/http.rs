//! How both clients call their API: a timeout on every call, retries with exponential
//! backoff and jitter on 5xx, 429 (its `Retry-After` honoured), timeouts and broken
//! connections, a bound on every response body, and a count of the calls made (the
//! summary reports it; the benchmark compares it with the time taken).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use platform::retry::{Backoff, retry_after};
use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};
use tracing::Instrument as _;

/// How often and how patiently a call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first wait; it doubles up to `max_wait`.
    pub initial_wait: Duration,
    pub max_wait: Duration,
    /// The longest `Retry-After` waited for.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_wait: Duration::from_millis(200),
            max_wait: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// A call that did not give what was asked for. The texts name the call, never a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status (after the retries, if it was one of the
    /// retried ones).
    #[error("{what}: HTTP {status}{}", detail(body))]
    Status {
        what: String,
        status: u16,
        /// The start of the response body.
        body: String,
    },
    #[error("{what}: no complete answer within {} ms", timeout.as_millis())]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: {error}")]
    Transport { what: String, error: String },
    #[error("{what}: the response is larger than {limit} bytes")]
    TooLarge { what: String, limit: usize },
    /// The answer came but says no, or cannot be read: GraphQL `errors`, a body that is
    /// not what the API documents, a token endpoint's refusal.
    #[error("{what}: {error}")]
    Refused { what: String, error: String },
}

fn detail(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl CallError {
    /// The HTTP status, when the server answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One API's HTTP side: the shared connection pool, its timeout and retry policy, and
/// its call counters.
#[derive(Debug, Clone)]
pub struct Caller {
    client: reqwest::Client,
    timeout: Duration,
    policy: RetryPolicy,
    max_body: usize,
    counts: Arc<Counts>,
}

/// Calls sent (every attempt) and retries among them.
#[derive(Debug, Default)]
pub struct Counts {
    pub calls: AtomicU64,
    pub retries: AtomicU64,
}

impl Caller {
    /// A caller whose every attempt must complete (body included) within `timeout`.
    pub fn new(
        client: reqwest::Client,
        timeout: Duration,
        policy: RetryPolicy,
        max_body: usize,
    ) -> Self {
        Self {
            client,
            timeout,
            policy,
            max_body,
            counts: Arc::default(),
        }
    }

    /// The same caller (pool, policy, counters) with another bound on response bodies.
    pub fn with_max_body(&self, max_body: usize) -> Self {
        Self {
            max_body,
            ..self.clone()
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// (calls, retries) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.calls.load(Ordering::Relaxed),
            self.counts.retries.load(Ordering::Relaxed),
        )
    }

    /// Sends the request `build` makes, again after a wait when the answer is 5xx or 429
    /// or the attempt timed out or lost its connection, up to the policy's attempts. Any
    /// other error status is returned at once (a 401 included: the caller decides).
    pub async fn call(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Reply, CallError> {
        let span = tracing::info_span!(
            "api.call",
            operation = what,
            attempts = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        async {
            let mut backoff = Backoff::new(self.policy.initial_wait, self.policy.max_wait);
            let mut attempt = 1;
            loop {
                self.counts.calls.fetch_add(1, Ordering::Relaxed);
                let (result, wait_hint) = self.attempt(what, &build).await;
                let retried = match &result {
                    Err(CallError::Status { status, .. }) => *status == 429 || *status >= 500,
                    Err(CallError::Timeout { .. } | CallError::Transport { .. }) => true,
                    _ => false,
                };
                if !retried || attempt >= self.policy.attempts {
                    let span = tracing::Span::current();
                    span.record("attempts", attempt);
                    if let Some(status) = result.as_ref().err().and_then(CallError::status) {
                        span.record("http.response.status_code", status);
                    }
                    return result;
                }
                let wait = wait_hint.unwrap_or_else(|| backoff.step());
                if let Err(err) = &result {
                    tracing::warn!(error = %err, attempt, wait_ms = wait.as_millis() as u64, "retrying");
                }
                self.counts.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt, and the server's `Retry-After` when it sent one.
    async fn attempt(
        &self,
        what: &str,
        build: &impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> (Result<Reply, CallError>, Option<Duration>) {
        let failed = |err: reqwest::Error| {
            if err.is_timeout() {
                CallError::Timeout {
                    what: what.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                CallError::Transport {
                    what: what.to_owned(),
                    error: error_chain(&err),
                }
            }
        };
        let mut response = match build(&self.client).timeout(self.timeout).send().await {
            Ok(response) => response,
            Err(err) => return (Err(failed(err)), None),
        };
        let status = response.status();
        let hint = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, self.policy.max_retry_after));
        let headers = std::mem::take(response.headers_mut());
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body {
                        let error = CallError::TooLarge {
                            what: what.to_owned(),
                            limit: self.max_body,
                        };
                        return (Err(error), None);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => return (Err(failed(err)), None),
            }
        }
        if status.is_success() {
            return (
                Ok(Reply {
                    headers,
                    body: body.freeze(),
                }),
                None,
            );
        }
        let error = CallError::Status {
            what: what.to_owned(),
            status: status.as_u16(),
            body: excerpt(&body),
        };
        let hint =
            hint.filter(|_| status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error());
        (Err(error), hint)
    }
}

/// The first 300 characters of a body, on one line.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// An error with its sources, `: `-joined (reqwest's own text says only "error sending
/// request").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

/// The HTTP client both APIs use: TLS against the bundled web roots, a connect timeout.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("oc-sync-job/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
}
