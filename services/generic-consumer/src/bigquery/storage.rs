//! `BIGQUERY_API=storage_write`: rows through the Storage Write API's default stream
//! (`projects/P/datasets/D/tables/T/streams/_default`, at least once, committed as
//! appended). One `AppendRows` stream per table, opened when first needed and again
//! after it fails; several requests in flight on it, their responses matched in order.
//! The first request of a stream carries the stream name and the writer schema.
//!
//! Outcomes: an append result → written; `row_errors` (FIELDS_ERROR: nothing of that
//! request was appended) → the named rows dead-lettered, the others sent again at once;
//! UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, DEADLINE_EXCEEDED, a broken stream
//! → the rows left to the pipeline's backoff; UNAUTHENTICATED → a new token and stream
//! (when the new token is refused too, the key is refused: the instance stops);
//! PERMISSION_DENIED, NOT_FOUND, another INVALID_ARGUMENT → the instance stops.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    AppendRowsRequest, AppendRowsResponse, ProtoRows, ProtoSchema, append_rows_request,
    append_rows_response, big_query_write_client::BigQueryWriteClient,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tonic::{Code, Status, transport::Channel};

use super::{auth::Auth, layout::Layout, proto_rows};
use crate::{
    row::Row,
    sink::{Fatal, Retry, RowOutcome, Table},
};

/// How long one append may wait for its response.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests queued on a stream before a writer waits.
const STREAM_QUEUE: usize = 16;
/// Rounds within one write (resends of rows a request's row errors held back, halvings).
const MAX_ROUNDS: usize = 12;

type Answer = oneshot::Sender<Result<AppendRowsResponse, Status>>;

/// One open `AppendRows` stream.
struct Connection {
    sender: mpsc::Sender<AppendRowsRequest>,
    /// Responses arrive in request order: the oldest waiting request gets the next one.
    pending: Arc<std::sync::Mutex<VecDeque<Answer>>>,
    schema_sent: bool,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

/// A table written through the default stream.
pub struct StorageWriteTable {
    client: BigQueryWriteClient<Channel>,
    auth: Arc<Auth>,
    stream: String,
    schema: ProtoSchema,
    encoder: proto_rows::RowEncoder,
    max_bytes: usize,
    connection: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for StorageWriteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageWriteTable")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// The channel to `endpoint` (`http://` plaintext, `https://` TLS with the web's roots),
/// with keepalive so a half-open connection is found.
pub fn channel(endpoint: &str) -> Result<Channel, String> {
    let mut builder = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| format!("BIGQUERY_STORAGE_ENDPOINT: {endpoint:?}: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if endpoint.starts_with("https://") {
        builder = builder
            .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
            .map_err(|e| format!("BIGQUERY_STORAGE_ENDPOINT: TLS: {e}"))?;
    }
    Ok(builder.connect_lazy())
}

impl StorageWriteTable {
    pub fn new(
        channel: Channel,
        auth: Arc<Auth>,
        (project, dataset, table): (&str, &str, &str),
        layout: &Layout,
        max_bytes: usize,
    ) -> Self {
        Self {
            client: BigQueryWriteClient::new(channel)
                .max_decoding_message_size(16 * 1024 * 1024)
                .max_encoding_message_size(16 * 1024 * 1024),
            auth,
            stream: format!(
                "projects/{project}/datasets/{dataset}/tables/{table}/streams/_default"
            ),
            schema: ProtoSchema {
                proto_descriptor: Some(proto_rows::writer_schema(layout)),
            },
            encoder: proto_rows::RowEncoder::new(layout),
            max_bytes,
            connection: Mutex::new(None),
        }
    }

    /// Opens a new stream: auth and routing headers, the response reader.
    async fn open(&self) -> Result<Connection, Status> {
        let token = self
            .auth
            .token()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (sender, receiver) = mpsc::channel(STREAM_QUEUE);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let metadata = request.metadata_mut();
        let bearer = format!("Bearer {}", token.as_str());
        metadata.insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| Status::internal("the token is not a header value"))?,
        );
        let params: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("write_stream", &self.stream)
            .finish();
        metadata.insert(
            "x-goog-request-params",
            params
                .parse()
                .map_err(|_| Status::internal("the stream name is not a header value"))?,
        );
        let pending: Arc<std::sync::Mutex<VecDeque<Answer>>> = Arc::default();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut client = self.client.clone();
        let (reader_pending, reader_dead) = (Arc::clone(&pending), Arc::clone(&dead));
        let auth = Arc::clone(&self.auth);
        // The call returns once the server answers the stream's headers; it runs beside
        // the writers so that the first request is already queued.
        tokio::spawn(async move {
            let fail_all = |status: Status| {
                reader_dead.store(true, std::sync::atomic::Ordering::SeqCst);
                let mut pending = reader_pending.lock().unwrap_or_else(|e| e.into_inner());
                for answer in pending.drain(..) {
                    let _ = answer.send(Err(status.clone()));
                }
            };
            let mut responses = match client.append_rows(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    if status.code() == Code::Unauthenticated {
                        auth.refused(&token);
                    }
                    return fail_all(status);
                }
            };
            let mut proven = false;
            loop {
                match responses.message().await {
                    Ok(Some(response)) => {
                        if !proven {
                            auth.accepted(&token);
                            proven = true;
                        }
                        let answer = reader_pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front();
                        match answer {
                            Some(answer) => {
                                let _ = answer.send(Ok(response));
                            }
                            None => {
                                return fail_all(Status::internal(
                                    "a response to no request: the stream is out of step",
                                ));
                            }
                        }
                    }
                    Ok(None) => {
                        return fail_all(Status::unavailable("the server closed the stream"));
                    }
                    Err(status) => {
                        if status.code() == Code::Unauthenticated {
                            auth.refused(&token);
                        }
                        return fail_all(status);
                    }
                }
            }
        });
        Ok(Connection {
            sender,
            pending,
            schema_sent: false,
            dead,
        })
    }

    /// Sends one request of `rows` and waits for its response.
    async fn append(&self, rows: Vec<Bytes>) -> Result<AppendRowsResponse, Status> {
        let bytes: usize = rows.iter().map(Bytes::len).sum();
        let waiting = {
            let mut slot = self.connection.lock().await;
            let stale = slot
                .as_ref()
                .is_none_or(|c| c.dead.load(std::sync::atomic::Ordering::SeqCst));
            if stale {
                *slot = Some(self.open().await?);
            }
            let Some(connection) = slot.as_mut() else {
                return Err(Status::internal("no stream"));
            };
            let first = !connection.schema_sent;
            let request = AppendRowsRequest {
                write_stream: if first {
                    self.stream.clone()
                } else {
                    String::new()
                },
                rows: Some(append_rows_request::Rows::ProtoRows(
                    append_rows_request::ProtoData {
                        writer_schema: first.then(|| self.schema.clone()),
                        rows: Some(ProtoRows {
                            serialized_rows: rows,
                        }),
                    },
                )),
                ..AppendRowsRequest::default()
            };
            let (answer, waiting) = oneshot::channel();
            connection
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(answer);
            if connection.sender.send(request).await.is_err() {
                connection
                    .dead
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(Status::unavailable("the stream is closed"));
            }
            connection.schema_sent = true;
            waiting
        };
        metrics::counter!("bigquery_request_bytes_total", "api" => "storage_write")
            .increment(bytes as u64);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(APPEND_TIMEOUT, waiting).await;
        metrics::histogram!("bigquery_request_duration_seconds", "api" => "storage_write")
            .record(started.elapsed().as_secs_f64());
        let result = match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Status::unavailable("the stream ended before the response")),
            Err(_) => {
                // Responses after this one would be matched to the wrong requests.
                if let Some(c) = self.connection.lock().await.as_ref() {
                    c.dead.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Err(Status::deadline_exceeded(format!(
                    "no AppendRows response within {} s",
                    APPEND_TIMEOUT.as_secs()
                )))
            }
        };
        let outcome = match &result {
            Ok(r)
                if matches!(
                    r.response,
                    Some(append_rows_response::Response::AppendResult(_))
                ) =>
            {
                "ok".to_owned()
            }
            Ok(r) => match &r.response {
                Some(append_rows_response::Response::Error(s)) => {
                    Code::from_i32(s.code).description().to_owned()
                }
                _ => "empty".to_owned(),
            },
            Err(status) => status.code().description().to_owned(),
        };
        metrics::counter!("bigquery_requests_total", "api" => "storage_write", "outcome" => outcome)
            .increment(1);
        result
    }

    /// Cuts `rows` (indices into `encoded`) into requests within the byte bound.
    fn requests(&self, encoded: &[Bytes], rows: impl Iterator<Item = usize>) -> Vec<Vec<usize>> {
        super::cut_requests(
            rows,
            |i| encoded[i].len() + 8,
            (usize::MAX, self.max_bytes, 1024),
        )
    }
}

/// What a failed append means for its rows.
enum Failed {
    Split(String),
    Transient(String),
    Fatal(String),
}

fn classify(status: &Status, auth: &Auth) -> Failed {
    let reason = format!(
        "AppendRows: {}: {}",
        status.code().description(),
        status.message()
    );
    match status.code() {
        Code::Unauthenticated if auth.key_refused() => Failed::Fatal(format!(
            "{reason}: refused again with a new token for {}: the key is refused",
            auth.describe()
        )),
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::Unauthenticated => Failed::Transient(reason),
        Code::InvalidArgument
            if status.message().contains("too large") || status.message().contains("exceeds") =>
        {
            Failed::Split(reason)
        }
        _ => Failed::Fatal(reason),
    }
}

impl Table for StorageWriteTable {
    async fn write(&self, rows: &[Row]) -> Result<Vec<RowOutcome>, Fatal> {
        let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
        let mut buffer = Vec::with_capacity(rows.iter().map(Row::size).sum());
        let mut spans = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let start = buffer.len();
            if let Err(reason) = self.encoder.encode(row, &mut buffer) {
                buffer.truncate(start);
                outcomes[i] = Some(RowOutcome::Invalid(reason));
            }
            spans.push(start..buffer.len());
        }
        let buffer = Bytes::from(buffer);
        let encoded: Vec<Bytes> = spans.into_iter().map(|s| buffer.slice(s)).collect();
        let sendable: Vec<usize> = (0..rows.len()).filter(|&i| outcomes[i].is_none()).collect();
        let mut pending = self.requests(&encoded, sendable.into_iter());
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let answers =
                futures::future::join_all(pending.iter().map(|request| {
                    self.append(request.iter().map(|&i| encoded[i].clone()).collect())
                }))
                .await;
            let mut next = Vec::new();
            for (request, answer) in pending.drain(..).zip(answers) {
                let failure = match answer {
                    Ok(response) => match response.response {
                        Some(append_rows_response::Response::AppendResult(_)) => {
                            for &i in &request {
                                outcomes[i] = Some(RowOutcome::Written);
                            }
                            continue;
                        }
                        Some(append_rows_response::Response::Error(status))
                            if !response.row_errors.is_empty() =>
                        {
                            // Nothing of this request was appended: the named rows are
                            // invalid, the others go again.
                            let mut invalid = std::collections::HashMap::new();
                            for error in &response.row_errors {
                                invalid.insert(error.index as usize, error.message.clone());
                            }
                            let mut again = Vec::new();
                            for (n, &i) in request.iter().enumerate() {
                                match invalid.get(&n) {
                                    Some(message) => {
                                        outcomes[i] = Some(RowOutcome::Invalid(format!(
                                            "AppendRows refused the row: {message} ({})",
                                            status.message
                                        )));
                                    }
                                    None => again.push(i),
                                }
                            }
                            next.extend(self.requests(&encoded, again.into_iter()));
                            continue;
                        }
                        Some(append_rows_response::Response::Error(status)) => classify(
                            &Status::new(Code::from_i32(status.code), status.message),
                            &self.auth,
                        ),
                        None => Failed::Transient("AppendRows: an empty response".into()),
                    },
                    Err(status) => classify(&status, &self.auth),
                };
                match failure {
                    Failed::Split(_) if request.len() > 1 => {
                        metrics::counter!("bigquery_request_splits_total", "api" => "storage_write")
                            .increment(1);
                        let (a, b) = request.split_at(request.len() / 2);
                        next.push(a.to_vec());
                        next.push(b.to_vec());
                    }
                    Failed::Split(reason) => {
                        outcomes[request[0]] = Some(RowOutcome::Invalid(format!(
                            "the row alone is too large for AppendRows: {reason}"
                        )));
                    }
                    Failed::Transient(reason) => {
                        let retry = Retry::from(reason);
                        for &i in &request {
                            outcomes[i] = Some(RowOutcome::Retry(retry.clone()));
                        }
                    }
                    Failed::Fatal(reason) => return Err(Fatal(reason)),
                }
            }
            pending = next;
        }
        let outcomes: Vec<RowOutcome> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    RowOutcome::Retry(format!("not appended after {MAX_ROUNDS} rounds").into())
                })
            })
            .collect();
        super::count_outcomes("storage_write", &outcomes);
        Ok(outcomes)
    }
}
