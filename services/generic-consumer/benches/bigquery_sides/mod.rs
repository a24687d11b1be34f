//! The BigQuery sides of `make bench`: the fake Google endpoints in a process of their
//! own (this benchmark's binary started again with `--fake-bigquery DIR`, counting rows
//! instead of keeping them, so that its CPU is not the consumer's), the sink alone next
//! to a bare client sending the same rows pre-encoded (the ceiling of each API), and the
//! instance end to end into each API.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt as _;
use generic_consumer::{
    bigquery::{BigQuerySink, auth::Auth, layout::Layout, proto_rows},
    contract::Contract,
    decode::{Decoded, Decoder, Position},
    row::Row,
    samples,
    sink::{RowOutcome, Sink, Table},
};
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    AppendRowsRequest, ProtoRows, ProtoSchema, append_rows_request, append_rows_response,
    big_query_write_client::BigQueryWriteClient,
};

#[path = "../../tests/it/fake_bigquery.rs"]
#[allow(dead_code)]
mod fake_bigquery;

pub const PROJECT: &str = "bench-project";
pub const DATASET: &str = "bench";
pub const TABLE: &str = "delivery_events";

/// The child side: serves the fake (count-only) until stdin closes, having written the
/// key file and both endpoints into `dir`.
pub async fn serve_fake(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let fake = fake_bigquery::FakeBigQuery::start().await;
    fake.count_only();
    fake.key_file(dir);
    std::fs::write(dir.join("endpoint.tmp"), &fake.url)?;
    std::fs::write(dir.join("storage-endpoint"), &fake.storage_url)?;
    // The endpoint file last, renamed: the parent waits for it.
    std::fs::rename(dir.join("endpoint.tmp"), dir.join("endpoint"))?;
    // The parent holds stdin open; its end (or the parent's) ends this process.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    Ok(())
}

/// The fake in its own process.
pub struct FakeProcess {
    child: Child,
    _dir: tempfile::TempDir,
    pub key: PathBuf,
    pub rest: String,
    pub storage: String,
    http: reqwest::Client,
}

impl FakeProcess {
    pub fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--fake-bigquery")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .spawn()?;
        let endpoint = dir.path().join("endpoint");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !endpoint.exists() {
            if Instant::now() > deadline {
                return Err("the fake BigQuery process did not start within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            rest: std::fs::read_to_string(&endpoint)?,
            storage: std::fs::read_to_string(dir.path().join("storage-endpoint"))?,
            key: dir.path().join("service-account.json"),
            child,
            _dir: dir,
            http: reqwest::Client::new(),
        })
    }

    /// Rows the fake has accepted so far.
    pub async fn counted(&self) -> u64 {
        let stats: serde_json::Value = self
            .http
            .get(format!("{}/fake/stats", self.rest))
            .send()
            .await
            .expect("the fake's stats")
            .json()
            .await
            .expect("the fake's stats are JSON");
        stats["counted"].as_u64().expect("counted")
    }

    /// The variables that point an instance at this fake, over `api`.
    pub fn vars(&self, api: &'static str) -> Vec<(&'static str, String)> {
        vec![
            ("SINK", "bigquery".into()),
            ("BIGQUERY_API", api.into()),
            ("BIGQUERY_ENDPOINT", self.rest.clone()),
            ("BIGQUERY_STORAGE_ENDPOINT", self.storage.clone()),
            ("BQ_PROJECT_LOCAL", PROJECT.into()),
            ("BQ_DATASET_LOCAL", DATASET.into()),
            ("BQ_CREATE_TABLE_DELIVERY", "true".into()),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                self.key.display().to_string(),
            ),
        ]
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// `batches` batches of `size` typed rows, decoded from the samples as the pipeline
/// decodes them (the sink-alone sides cycle through them).
pub fn rows(contract: &Contract, layout_mode: generic_consumer::context::RowMode) -> Vec<Vec<Row>> {
    const BATCHES: u64 = 10;
    const SIZE: u64 = 1000;
    let decoder = Decoder::new(contract, &Default::default(), layout_mode);
    (0..BATCHES)
        .map(|b| {
            (0..SIZE)
                .map(|i| {
                    let n = b * SIZE + i;
                    let (_, payload) = samples::encoded(contract, n);
                    let position = Position {
                        partition: (n % 6) as i32,
                        offset: n as i64,
                        timestamp_ms: Some(1_780_000_000_000),
                    };
                    match decoder.decode(&payload, position, generic_consumer::decode::now_micros())
                    {
                        Ok(Decoded::Row(row)) => row,
                        other => panic!("a sample decodes to a row: {other:?}"),
                    }
                })
                .collect()
        })
        .collect()
}

/// The sink alone: `count` rows through `Table::write`, `in_flight` batches at once, as
/// the pipeline drives it.
pub async fn sink_alone(
    sink: BigQuerySink,
    batches: &[Vec<Row>],
    count: u64,
    in_flight: usize,
) -> Duration {
    let table = sink.open(TABLE).await.expect("the table opens");
    let size = batches[0].len() as u64;
    let started = Instant::now();
    let mut writes = futures::stream::iter(0..count / size)
        .map(|n| table.write(&batches[n as usize % batches.len()]))
        .buffer_unordered(in_flight);
    while let Some(outcomes) = writes.next().await {
        let outcomes = outcomes.expect("no fatal error");
        assert!(
            outcomes.iter().all(|o| matches!(o, RowOutcome::Written)),
            "every row written"
        );
    }
    started.elapsed()
}

/// The ceiling of Storage Write: one `AppendRows` stream, the rows encoded beforehand,
/// requests of `rows per batch` sent as fast as the stream takes them with `window`
/// responses outstanding.
pub async fn bare_append_rows(
    fake: &FakeProcess,
    layout: &Layout,
    batches: &[Vec<Row>],
    count: u64,
    window: usize,
) -> Duration {
    let encoder = proto_rows::RowEncoder::new(layout);
    let encoded: Vec<Vec<Bytes>> = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|row| {
                    let mut out = Vec::new();
                    encoder.encode(row, &mut out).expect("the row encodes");
                    Bytes::from(out)
                })
                .collect()
        })
        .collect();
    let auth = Auth::load(&fake.key).expect("the key file");
    let token = auth.token().await.expect("a token");
    let channel = tonic::transport::Channel::from_shared(fake.storage.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = BigQueryWriteClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let stream = format!("projects/{PROJECT}/datasets/{DATASET}/tables/{TABLE}/streams/_default");
    let schema = ProtoSchema {
        proto_descriptor: Some(proto_rows::writer_schema(layout)),
    };
    let size = batches[0].len() as u64;
    let requests = count / size;

    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let (sender, receiver) = tokio::sync::mpsc::channel(window);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let bearer = format!("Bearer {}", token.as_str());
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("header"));
    let params = format!("write_stream={}", stream.replace('/', "%2F"));
    request
        .metadata_mut()
        .insert("x-goog-request-params", params.parse().expect("header"));
    let producer = {
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            for n in 0..requests {
                permits.acquire().await.expect("permits").forget();
                let first = n == 0;
                let request = AppendRowsRequest {
                    write_stream: if first { stream.clone() } else { String::new() },
                    rows: Some(append_rows_request::Rows::ProtoRows(
                        append_rows_request::ProtoData {
                            writer_schema: first.then(|| schema.clone()),
                            rows: Some(ProtoRows {
                                serialized_rows: encoded[n as usize % encoded.len()].clone(),
                            }),
                        },
                    )),
                    ..AppendRowsRequest::default()
                };
                if sender.send(request).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut responses = client
        .append_rows(request)
        .await
        .expect("the stream opens")
        .into_inner();
    for _ in 0..requests {
        let response = responses
            .message()
            .await
            .expect("a response")
            .expect("the stream goes on");
        assert!(
            matches!(
                response.response,
                Some(append_rows_response::Response::AppendResult(_))
            ),
            "appended: {response:?}"
        );
        permits.add_permits(1);
    }
    let elapsed = started.elapsed();
    producer.await.expect("producer");
    elapsed
}

/// The ceiling of insertAll: the request bodies built beforehand (rows of
/// `BIGQUERY_INSERT_ALL_ROWS`, payload as JSON text, insert ids), posted with `window`
/// requests outstanding.
pub async fn bare_insert_all(
    fake: &FakeProcess,
    batches: &[Vec<Row>],
    rows_per_request: usize,
    count: u64,
    window: usize,
) -> Duration {
    let bodies: Vec<Bytes> = batches
        .iter()
        .flat_map(|batch| batch.chunks(rows_per_request))
        .map(|rows| {
            let entries: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    let mut json = row.to_json();
                    json.remove("insert_id");
                    if let Some(payload) = json.get_mut("payload") {
                        *payload = serde_json::Value::String(payload.to_string());
                    }
                    serde_json::json!({"insertId": row.insert_id().to_string(), "json": json})
                })
                .collect();
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "skipInvalidRows": false,
                    "ignoreUnknownValues": false,
                    "rows": entries,
                }))
                .expect("json"),
            )
        })
        .collect();
    let auth = Auth::load(&fake.key).expect("the key file");
    let token = auth.token().await.expect("a token");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(window)
        .build()
        .expect("client");
    let url = format!(
        "{}/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/{TABLE}/insertAll",
        fake.rest
    );
    let requests = count / rows_per_request as u64;
    let started = Instant::now();
    let mut sent = futures::stream::iter(0..requests)
        .map(|n| {
            let body = bodies[n as usize % bodies.len()].clone();
            http.post(&url)
                .bearer_auth(token.as_str())
                .header("content-type", "application/json")
                .body(body)
                .send()
        })
        .buffer_unordered(window);
    while let Some(response) = sent.next().await {
        let response = response.expect("the fake answers");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.expect("the answer");
    }
    started.elapsed()
}
