//! The BigQuery REST API (`<base>/bigquery/v2/...`): `tables.get` and `tables.insert` at
//! start, `tabledata.insertAll` for rows. Every request carries a fresh-enough bearer
//! token (one retry with a new token after a 401) and has a timeout; an answer is
//! classified the way BigQuery produces them (see [`Failure`]).

use std::{sync::Arc, time::Duration};

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use super::auth::{Auth, Refusal};

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Over BigQuery's request size or row count: split it and send the halves.
    TooLarge(String),
    /// Worth trying again later (5xx, `backendError`, `rateLimitExceeded`,
    /// `quotaExceeded`, 429, a timeout, no connection), with the server's hint.
    Transient {
        reason: String,
        after: Option<Duration>,
    },
    /// No retry fixes it (403, 404, a request BigQuery refuses as it is).
    Fatal(String),
}

/// A BigQuery error answer: `{"error": {"code", "message", "status", "errors": [{"reason"}]}}`.
#[derive(Debug, Default)]
struct GoogleError {
    message: String,
    reasons: Vec<String>,
}

impl GoogleError {
    fn parse(body: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            // Not JSON (a proxy's HTML page): the start of it says enough.
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            return Self {
                message: text.split_whitespace().collect::<Vec<_>>().join(" "),
                reasons: Vec::new(),
            };
        };
        let error = &value["error"];
        Self {
            message: error["message"].as_str().unwrap_or_default().to_owned(),
            reasons: error["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn has(&self, reason: &str) -> bool {
        self.reasons.iter().any(|r| r == reason)
    }
}

/// What an answer other than 2xx means for the request that got it.
fn classify(status: StatusCode, after: Option<Duration>, body: &[u8], what: &str) -> Failure {
    let error = GoogleError::parse(body);
    let reason = format!("{what}: HTTP {status}: {}", error.message);
    let size = error
        .message
        .contains("Request payload size exceeds the limit")
        || error.message.contains("too many rows")
        || error.message.contains("Too many rows");
    if status == StatusCode::PAYLOAD_TOO_LARGE || (status == StatusCode::BAD_REQUEST && size) {
        return Failure::TooLarge(reason);
    }
    let transient_reason = [
        "backendError",
        "rateLimitExceeded",
        "quotaExceeded",
        "internalError",
    ]
    .iter()
    .any(|r| error.has(r));
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || transient_reason
    {
        return Failure::Transient { reason, after };
    }
    Failure::Fatal(reason)
}

/// `Retry-After` in seconds (the form Google's front ends send).
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    platform::retry::retry_after(
        headers.get(header::RETRY_AFTER)?.to_str().ok()?,
        Duration::from_secs(300),
    )
}

/// The REST client of one dataset.
#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
    auth: Arc<Auth>,
    /// `<base>/bigquery/v2/projects/<p>/datasets/<d>/tables`.
    tables: String,
}

impl Rest {
    pub fn new(base: &str, project: &str, dataset: &str, auth: Arc<Auth>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("generic-consumer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let segment =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        Ok(Self {
            http,
            auth,
            tables: format!(
                "{}/bigquery/v2/projects/{}/datasets/{}/tables",
                base.trim_end_matches('/'),
                segment(project),
                segment(dataset)
            ),
        })
    }

    /// The URL of `table`, with `suffix` (`""` or `"/insertAll"`).
    pub fn table_url(&self, table: &str, suffix: &str) -> String {
        let table: String = url::form_urlencoded::byte_serialize(table.as_bytes()).collect();
        format!("{}/{table}{suffix}", self.tables)
    }

    /// Sends a request with the current token; after a 401, once more with a new one.
    /// `Ok` is the 2xx body; a non-2xx answer is classified.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<bytes::Bytes>,
        what: &str,
    ) -> Result<(StatusCode, bytes::Bytes), Failure> {
        for attempt in 0..2 {
            let token = self.auth.token().await.map_err(|e| Failure::Transient {
                reason: format!("{what}: {e}"),
                after: None,
            })?;
            let mut request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.as_str());
            if let Some(body) = &body {
                // A cheap clone: the second attempt after a 401 sends the same bytes.
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let started = std::time::Instant::now();
            let answer = request.send().await;
            metrics::histogram!("bigquery_request_duration_seconds", "api" => "rest")
                .record(started.elapsed().as_secs_f64());
            let response = match answer {
                Ok(response) => response,
                Err(err) => {
                    metrics::counter!("bigquery_requests_total", "api" => "rest", "outcome" => "unreachable")
                        .increment(1);
                    return Err(Failure::Transient {
                        reason: format!("{what}: {}", describe(&err)),
                        after: None,
                    });
                }
            };
            let status = response.status();
            let after = retry_after(response.headers());
            let bytes = response.bytes().await.map_err(|e| Failure::Transient {
                reason: format!("{what}: the answer was cut off: {}", describe(&e)),
                after: None,
            })?;
            let outcome = if status.is_success() {
                "ok"
            } else {
                status.as_str()
            };
            metrics::counter!("bigquery_requests_total", "api" => "rest", "outcome" => outcome.to_owned())
                .increment(1);
            if status == StatusCode::UNAUTHORIZED
                && self.auth.refused(&token) == Refusal::Renewed
                && attempt == 0
            {
                continue;
            }
            if status == StatusCode::UNAUTHORIZED {
                return Err(Failure::Fatal(format!(
                    "{what}: HTTP 401 with a new token for {}: the key is refused ({})",
                    self.auth.describe(),
                    GoogleError::parse(&bytes).message
                )));
            }
            if status.is_success() || status == StatusCode::NOT_FOUND {
                self.auth.accepted(&token);
                return Ok((status, bytes));
            }
            return Err(classify(status, after, &bytes, what));
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// `tables.get`: the table's resource, or `None` when there is no such table.
    pub async fn get_table(&self, table: &str) -> Result<Option<Value>, Failure> {
        let url = self.table_url(table, "");
        let (status, body) = self.send(Method::GET, &url, None, "tables.get").await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Failure::Fatal(format!("tables.get {url}: the answer is not JSON: {e}")))
    }

    /// `tables.insert` of `resource`.
    pub async fn create_table(&self, resource: &Value) -> Result<(), Failure> {
        let body = serde_json::to_vec(resource).unwrap_or_default();
        let (status, answer) = self
            .send(
                Method::POST,
                &self.tables,
                Some(body.into()),
                "tables.insert",
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Failure::Fatal(format!(
                "tables.insert: {}: HTTP 404 (no such dataset?): {}",
                self.tables,
                GoogleError::parse(&answer).message
            )));
        }
        Ok(())
    }

    /// `tabledata.insertAll` with `body` (the request JSON); the answer's JSON.
    pub async fn insert_all(&self, table: &str, body: bytes::Bytes) -> Result<Value, Failure> {
        let url = self.table_url(table, "/insertAll");
        metrics::counter!("bigquery_request_bytes_total", "api" => "insert_all")
            .increment(body.len() as u64);
        let (status, answer) = self
            .send(Method::POST, &url, Some(body), "tabledata.insertAll")
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Failure::Fatal(format!(
                "tabledata.insertAll: {url}: HTTP 404: the table is gone ({})",
                GoogleError::parse(&answer).message
            )));
        }
        serde_json::from_slice(&answer).map_err(|e| Failure::Transient {
            reason: format!("tabledata.insertAll: the answer is not JSON: {e}"),
            after: None,
        })
    }
}

/// A reqwest error with its causes, and whether it timed out.
fn describe(err: &reqwest::Error) -> String {
    let text = super::chain(err);
    if err.is_timeout() {
        format!("{text} (timed out)")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_bigquery_produces_them() {
        let google = |code: u16, reason: &str, message: &str| {
            serde_json::to_vec(&serde_json::json!({
                "error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}
            }))
            .expect("json")
        };
        let too_large = google(
            400,
            "invalid",
            "Request payload size exceeds the limit: 10485760 bytes.",
        );
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, None, &too_large, "x"),
            Failure::TooLarge(_)
        ));
        let html = b"<html><head><title>413 Request Entity Too Large</title></head></html>";
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None, html, "x"),
            Failure::TooLarge(_)
        ));
        for (status, reason) in [
            (403, "rateLimitExceeded"),
            (403, "quotaExceeded"),
            (500, "backendError"),
            (503, "backendError"),
            (429, "rateLimitExceeded"),
        ] {
            let status = StatusCode::from_u16(status).expect("status");
            let after = Some(Duration::from_secs(3));
            assert_eq!(
                classify(
                    status,
                    after,
                    &google(status.as_u16(), reason, "slow down"),
                    "x"
                ),
                Failure::Transient {
                    reason: format!("x: HTTP {status}: slow down"),
                    after
                },
                "{status} {reason}"
            );
        }
        let denied = google(403, "accessDenied", "Access Denied: Table p:d.t");
        assert_eq!(
            classify(StatusCode::FORBIDDEN, None, &denied, "tabledata.insertAll"),
            Failure::Fatal(
                "tabledata.insertAll: HTTP 403 Forbidden: Access Denied: Table p:d.t".into()
            )
        );
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
