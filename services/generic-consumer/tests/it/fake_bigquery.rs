//! A fake of the Google endpoints the `bigquery` sink talks to, on 127.0.0.1: the OAuth
//! token endpoint of a service-account key file and BigQuery's REST API (`tables.get`,
//! `tables.insert`, `tabledata.insertAll`). It checks what it receives the way Google
//! does (the JWT assertion's signature against the key file's public key, its `iss`,
//! `aud` and scope; the bearer token on every call; the table path; each row against the
//! table's schema; request size and row count limits), keeps the rows, and fails on
//! request: scripted statuses, invalid rows, 413 pages from a front end, revoked tokens.
//! What it found wrong with a request is kept in [`FakeBigQuery::problems`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::{Value, json};

const KEY_PEM: &str = include_str!("../fixtures/fake-service-account-key.pem");
pub const CLIENT_EMAIL: &str = "generic-consumer@fake-project.iam.gserviceaccount.com";
/// BigQuery's limits, as it enforces them.
const MAX_REQUEST_BYTES: usize = 10_485_760;
const MAX_ROWS: usize = 50_000;

/// A row the fake keeps: the request's `insertId` and `json`.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub insert_id: String,
    pub json: serde_json::Map<String, Value>,
}

#[derive(Default)]
struct Table {
    schema: Value,
    rows: Vec<StoredRow>,
}

/// A scripted answer to the next insertAll requests.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub reason: &'static str,
    pub retry_after: Option<u64>,
}

#[derive(Default)]
struct Inner {
    token_uri: String,
    tokens: HashMap<String, bool>,
    /// Tokens issued are refused by the APIs.
    refuse_tokens: bool,
    /// Rows are counted, not decoded, checked or kept (the benchmark's fake).
    count_only: bool,
    counted: u64,
    issued: u32,
    tables: BTreeMap<String, Table>,
    script: VecDeque<Scripted>,
    /// insertAll answers with this until cleared (an outage).
    outage: Option<Scripted>,
    invalid_offsets: BTreeSet<i64>,
    /// Requests with more rows than this get a front end's 413 HTML page.
    front_end_rows: Option<usize>,
    insert_requests: Vec<(usize, usize, u16)>,
    problems: Vec<String>,
    /// Added before every write is answered (insertAll and AppendRows).
    write_delay: std::time::Duration,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    public_key: Arc<Vec<u8>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeBigQuery {
    /// REST base and token endpoint (`BIGQUERY_ENDPOINT`).
    pub url: String,
    /// The Storage Write API (`BIGQUERY_STORAGE_ENDPOINT`).
    pub storage_url: String,
    shared: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeBigQuery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn key_der() -> Vec<u8> {
    let body: String = KEY_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("the fixture key is PEM")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": status.as_u16(),
            "message": message,
            "errors": [{"reason": reason, "message": message, "domain": "global"}],
            "status": match status.as_u16() { 401 => "UNAUTHENTICATED", 403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND", 429 => "RESOURCE_EXHAUSTED", 503 => "UNAVAILABLE",
                500 => "INTERNAL", _ => "INVALID_ARGUMENT" },
        }
    });
    (status, axum::Json(body)).into_response()
}

impl FakeBigQuery {
    pub async fn start() -> Self {
        let der = key_der();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("the fixture key parses");
        let public_key = pair.public().as_ref().to_vec();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let url = format!("http://{addr}");
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                token_uri: format!("{url}/token"),
                ..Inner::default()
            })),
            public_key: Arc::new(public_key),
        };
        let tables = "/bigquery/v2/projects/{project}/datasets/{dataset}/tables";
        let app = Router::new()
            .route("/token", post(token))
            .route(tables, post(create_table))
            .route(&format!("{tables}/{{table}}"), get(get_table))
            .route(&format!("{tables}/{{table}}/insertAll"), post(insert_all))
            .route("/fake/stats", get(stats))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared.clone());
        let rest = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let storage_url = format!("http://{}", grpc_listener.local_addr().expect("addr"));
        let service = storage::WriteService(shared.clone());
        let grpc = tokio::spawn(async move {
            // Flow-control windows sized by bandwidth-delay probing, as gRPC servers do
            // (h2's fixed 64 KiB would make a 1.5 MB append wait for window updates).
            let _ = tonic::transport::Server::builder()
                .http2_adaptive_window(Some(true))
                .add_service(service)
                // TCP_NODELAY, as Google's front ends answer: a small response must not
                // wait for Nagle's algorithm behind a delayed ACK.
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                )
                .await;
        });
        Self {
            url,
            storage_url,
            shared,
            tasks: vec![rest, grpc],
        }
    }

    /// Writes a service-account key file whose `token_uri` is this fake.
    pub fn key_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("service-account.json");
        let key = json!({
            "type": "service_account",
            "project_id": "fake-project",
            "private_key_id": "fake-key-1",
            "private_key": KEY_PEM,
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": self.shared.lock().token_uri,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&key).expect("json")).expect("write key");
        path
    }

    pub fn add_table(&self, project: &str, dataset: &str, table: &str, schema: Value) {
        self.shared.lock().tables.insert(
            format!("{project}/{dataset}/{table}"),
            Table {
                schema,
                rows: Vec::new(),
            },
        );
    }

    pub fn table_schema(&self, project: &str, dataset: &str, table: &str) -> Option<Value> {
        let inner = self.shared.lock();
        inner
            .tables
            .get(&format!("{project}/{dataset}/{table}"))
            .map(|t| t.schema.clone())
    }

    pub fn rows(&self, project: &str, dataset: &str, table: &str) -> Vec<StoredRow> {
        let inner = self.shared.lock();
        inner
            .tables
            .get(&format!("{project}/{dataset}/{table}"))
            .map(|t| t.rows.clone())
            .unwrap_or_default()
    }

    /// Every table's rows, by `project.dataset.table`.
    pub fn all_rows(&self) -> Vec<(String, Vec<StoredRow>)> {
        let inner = self.shared.lock();
        inner
            .tables
            .iter()
            .map(|(key, t)| (key.replace('/', "."), t.rows.clone()))
            .collect()
    }

    /// The next `n` insertAll requests get `status` with `reason`.
    pub fn fail_next(&self, n: usize, status: u16, reason: &'static str, retry_after: Option<u64>) {
        let mut inner = self.shared.lock();
        for _ in 0..n {
            inner.script.push_back(Scripted {
                status,
                reason,
                retry_after,
            });
        }
    }

    /// Every write (insertAll request, AppendRows request) is answered `delay` late.
    pub fn slow_writes(&self, delay: std::time::Duration) {
        self.shared.lock().write_delay = delay;
    }

    /// Every insertAll request gets `status` until [`FakeBigQuery::end_outage`].
    pub fn outage(&self, status: u16, reason: &'static str) {
        self.shared.lock().outage = Some(Scripted {
            status,
            reason,
            retry_after: None,
        });
    }

    pub fn end_outage(&self) {
        self.shared.lock().outage = None;
    }

    /// Rows at these Kafka offsets are refused as invalid, every time.
    pub fn refuse_offsets(&self, offsets: impl IntoIterator<Item = i64>) {
        self.shared.lock().invalid_offsets.extend(offsets);
    }

    /// Requests of more than `rows` rows are too large: a front end's 413 HTML page
    /// (REST), the "AppendRows request too large" status (Storage Write).
    pub fn front_end_limit(&self, rows: usize) {
        self.shared.lock().front_end_rows = Some(rows);
    }

    /// From now on rows are counted as they are accepted, not decoded, checked one by
    /// one or kept: a fake that costs little beside a benchmark (auth, stream and
    /// request limits are still checked).
    #[allow(dead_code)] // the benchmark's
    pub fn count_only(&self) {
        self.shared.lock().count_only = true;
    }

    /// Rows accepted in count-only mode.
    #[allow(dead_code)] // the benchmark's
    pub fn counted(&self) -> u64 {
        self.shared.lock().counted
    }

    /// Every token, issued so far or from now on, is refused by the APIs (a key whose
    /// account lost its access while its tokens are still issued).
    pub fn refuse_all_tokens(&self) {
        let mut inner = self.shared.lock();
        inner.refuse_tokens = true;
        for valid in inner.tokens.values_mut() {
            *valid = false;
        }
    }

    /// Every token issued so far stops working (as when it expires early).
    pub fn revoke_tokens(&self) {
        for valid in self.shared.lock().tokens.values_mut() {
            *valid = false;
        }
    }

    pub fn tokens_issued(&self) -> u32 {
        self.shared.lock().issued
    }

    /// insertAll requests so far: (rows, bytes, status).
    pub fn insert_requests(&self) -> Vec<(usize, usize, u16)> {
        self.shared.lock().insert_requests.clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.shared.lock().problems.clone()
    }
}

/// The OAuth 2 JWT bearer grant: the assertion must verify with the key file's public
/// key and name this service account, this endpoint and a BigQuery scope.
async fn token(State(shared): State<Shared>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let refuse = |why: String| {
        shared.lock().problems.push(format!("token: {why}"));
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse(format!("grant_type is {:?}", form.get("grant_type")));
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion".into());
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let [head, claims, signature] = parts.as_slice() else {
        return refuse("the assertion is not a JWT".into());
    };
    // base64url; Google takes it with or without padding.
    let b64 = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('='))
    };
    let (Ok(header), Ok(claims), Ok(signature)) = (b64(head), b64(claims), b64(signature)) else {
        return refuse("the assertion is not base64url".into());
    };
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        shared.public_key.as_slice(),
    );
    if key
        .verify(format!("{head}.{}", parts[1]).as_bytes(), &signature)
        .is_err()
    {
        return refuse("the signature does not verify with the key file's public key".into());
    }
    let header: Value = serde_json::from_slice(&header).unwrap_or_default();
    let claims: Value = serde_json::from_slice(&claims).unwrap_or_default();
    let token_uri = shared.lock().token_uri.clone();
    if header["alg"] != "RS256" {
        return refuse(format!("alg is {}", header["alg"]));
    }
    if claims["iss"] != CLIENT_EMAIL {
        return refuse(format!("iss is {}", claims["iss"]));
    }
    if claims["aud"] != token_uri.as_str() {
        return refuse(format!("aud is {}, not {token_uri}", claims["aud"]));
    }
    if !claims["scope"]
        .as_str()
        .unwrap_or_default()
        .contains("https://www.googleapis.com/auth/bigquery")
    {
        return refuse(format!("scope is {}", claims["scope"]));
    }
    if claims["exp"].as_u64().unwrap_or(0) <= now() {
        return refuse("the assertion has expired".into());
    }
    let mut inner = shared.lock();
    inner.issued += 1;
    let access = format!("fake-access-token-{}", inner.issued);
    let valid = !inner.refuse_tokens;
    inner.tokens.insert(access.clone(), valid);
    axum::Json(json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600}))
        .into_response()
}

/// `None` when the bearer token is one this fake issued and has not revoked.
fn unauthorized(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| shared.lock().tokens.get(t).copied().unwrap_or(false));
    (!valid).then(|| {
        google_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        )
    })
}

async fn get_table(
    State(shared): State<Shared>,
    UrlPath((project, dataset, table)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    let inner = shared.lock();
    match inner.tables.get(&format!("{project}/{dataset}/{table}")) {
        Some(t) => axum::Json(json!({
            "kind": "bigquery#table",
            "id": format!("{project}:{dataset}.{table}"),
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": t.schema,
        }))
        .into_response(),
        None => google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Table {project}:{dataset}.{table}"),
        ),
    }
}

async fn create_table(
    State(shared): State<Shared>,
    UrlPath((project, dataset)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    let resource: Value = serde_json::from_slice(&body).unwrap_or_default();
    let reference = &resource["tableReference"];
    if reference["projectId"] != project.as_str() || reference["datasetId"] != dataset.as_str() {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "tableReference does not match the path",
        );
    }
    let Some(table) = reference["tableId"].as_str() else {
        return google_error(StatusCode::BAD_REQUEST, "invalid", "no tableId");
    };
    let mut inner = shared.lock();
    let key = format!("{project}/{dataset}/{table}");
    if inner.tables.contains_key(&key) {
        return google_error(
            StatusCode::CONFLICT,
            "duplicate",
            &format!("Already Exists: Table {project}:{dataset}.{table}"),
        );
    }
    inner.tables.insert(
        key,
        Table {
            schema: resource["schema"].clone(),
            rows: Vec::new(),
        },
    );
    axum::Json(resource).into_response()
}

/// Why a row does not fit the table's schema, as BigQuery words it.
fn check_row(schema: &Value, row: &serde_json::Map<String, Value>) -> Option<(String, String)> {
    let fields = schema["fields"].as_array().cloned().unwrap_or_default();
    for (name, value) in row {
        let Some(field) = fields.iter().find(|f| f["name"] == name.as_str()) else {
            return Some((name.clone(), format!("no such field: {name}.")));
        };
        let kind = field["type"].as_str().unwrap_or_default();
        let ok = match (kind, value) {
            (_, Value::Null) => field["mode"] != "REQUIRED",
            ("STRING", Value::String(_)) => true,
            ("INTEGER" | "INT64", Value::Number(n)) => n.is_i64(),
            ("INTEGER" | "INT64", Value::String(s)) => s.parse::<i64>().is_ok(),
            ("FLOAT" | "FLOAT64", Value::Number(_)) => true,
            ("BOOLEAN" | "BOOL", Value::Bool(_)) => true,
            ("TIMESTAMP", Value::String(s)) => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .is_ok()
            }
            ("JSON", Value::String(s)) => serde_json::from_str::<Value>(s).is_ok(),
            ("JSON", _) => true,
            ("BYTES", Value::String(_)) => true,
            _ => false,
        };
        if !ok {
            return Some((
                name.clone(),
                format!("Cannot convert value to {kind}: {value}"),
            ));
        }
    }
    for field in &fields {
        let name = field["name"].as_str().unwrap_or_default();
        if field["mode"] == "REQUIRED" && !row.contains_key(name) {
            return Some((name.to_owned(), format!("Missing required field: {name}.")));
        }
    }
    None
}

/// `GET /fake/stats`: what the fake counted, for a benchmark in another process.
async fn stats(State(shared): State<Shared>) -> Response {
    let inner = shared.lock();
    axum::Json(json!({"counted": inner.counted, "requests": inner.insert_requests.len()}))
        .into_response()
}

async fn insert_all(
    State(shared): State<Shared>,
    UrlPath((project, dataset, table)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    let delay = shared.lock().write_delay;
    tokio::time::sleep(delay).await;
    if shared.lock().count_only {
        #[derive(serde::Deserialize)]
        struct Rows {
            rows: Vec<serde::de::IgnoredAny>,
        }
        return match serde_json::from_slice::<Rows>(&body) {
            Ok(request) if body.len() <= MAX_REQUEST_BYTES => {
                let mut inner = shared.lock();
                inner.counted += request.rows.len() as u64;
                inner
                    .insert_requests
                    .push((request.rows.len(), body.len(), 200));
                axum::Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response()
            }
            Ok(_) => google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Request payload size exceeds the limit: 10485760 bytes.",
            ),
            Err(e) => google_error(
                StatusCode::BAD_REQUEST,
                "parseError",
                &format!("Parse Error: {e}"),
            ),
        };
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            shared
                .lock()
                .problems
                .push(format!("insertAll: body is not JSON: {e}"));
            return google_error(StatusCode::BAD_REQUEST, "parseError", "Parse Error");
        }
    };
    let rows = request["rows"].as_array().cloned().unwrap_or_default();
    let mut inner = shared.lock();
    let answer = |inner: &mut Inner, status: u16, response: Response| {
        inner.insert_requests.push((rows.len(), body.len(), status));
        response
    };
    if let Some(limit) = inner.front_end_rows.filter(|&limit| rows.len() > limit) {
        let _ = limit;
        let page = "<html><head><title>413 Request Entity Too Large</title></head><body>Request Entity Too Large</body></html>";
        return answer(
            &mut inner,
            413,
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONTENT_TYPE, "text/html")],
                page,
            )
                .into_response(),
        );
    }
    if body.len() > MAX_REQUEST_BYTES {
        let r = google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Request payload size exceeds the limit: 10485760 bytes.",
        );
        return answer(&mut inner, 400, r);
    }
    if rows.len() > MAX_ROWS {
        let r = google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "too many rows present in the request, limit: 50000 row count: N.",
        );
        return answer(&mut inner, 400, r);
    }
    if let Some(s) = inner.outage.clone().or_else(|| inner.script.pop_front()) {
        let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = google_error(status, s.reason, "scripted failure");
        if let Some(after) = s.retry_after {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                after.to_string().parse().expect("header"),
            );
        }
        return answer(&mut inner, s.status, r);
    }
    if request["skipInvalidRows"] != false || request["ignoreUnknownValues"] != false {
        inner.problems.push(format!(
            "insertAll: skipInvalidRows/ignoreUnknownValues not false: {request}"
        ));
    }
    let key = format!("{project}/{dataset}/{table}");
    let Some(schema) = inner.tables.get(&key).map(|t| t.schema.clone()) else {
        let r = google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Table {project}:{dataset}.{table}"),
        );
        return answer(&mut inner, 404, r);
    };
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let insert_id = row["insertId"].as_str().unwrap_or_default().to_owned();
        let json = row["json"].as_object().cloned().unwrap_or_default();
        let expected = format!(
            "{}:{}:{}",
            json.get("kafka_topic")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            json.get("kafka_partition").unwrap_or(&Value::Null),
            json.get("kafka_offset").unwrap_or(&Value::Null)
        );
        if insert_id != expected {
            inner.problems.push(format!(
                "insertAll: row {index}: insertId {insert_id:?}, expected {expected:?}"
            ));
        }
        let offset = json
            .get("kafka_offset")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let invalid = if inner.invalid_offsets.contains(&offset) {
            Some((
                "payload".to_owned(),
                "scripted: the row is invalid".to_owned(),
            ))
        } else {
            let found = check_row(&schema, &json);
            if let Some((column, message)) = &found {
                inner.problems.push(format!(
                    "insertAll: row {index} ({insert_id}): {column}: {message}"
                ));
            }
            found
        };
        if let Some((location, message)) = invalid {
            errors.push((index, location, message));
        }
        parsed.push(StoredRow { insert_id, json });
    }
    if errors.is_empty() {
        if let Some(t) = inner.tables.get_mut(&key) {
            t.rows.extend(parsed);
        }
        return answer(
            &mut inner,
            200,
            axum::Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response(),
        );
    }
    // skipInvalidRows=false: nothing of the request is inserted; the valid rows are
    // "stopped".
    let invalid: BTreeMap<usize, (String, String)> =
        errors.into_iter().map(|(i, l, m)| (i, (l, m))).collect();
    let insert_errors: Vec<Value> = (0..rows.len())
        .map(|i| match invalid.get(&i) {
            Some((location, message)) => json!({"index": i, "errors": [{"reason": "invalid", "location": location, "debugInfo": "", "message": message}]}),
            None => json!({"index": i, "errors": [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]}),
        })
        .collect();
    answer(
        &mut inner,
        200,
        axum::Json(
            json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": insert_errors}),
        )
        .into_response(),
    )
}

/// The Storage Write API's `AppendRows` (the only method the sink uses), served by hand
/// (the generated crate ships clients only): checks the bearer token and the routing
/// header, takes the stream name and writer schema from the first request, decodes every
/// row with that schema and checks it against the table, and answers in order.
mod storage {
    use std::pin::Pin;

    use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
        AppendRowsRequest, AppendRowsResponse, RowError, append_rows_request, append_rows_response,
        row_error::RowErrorCode,
    };
    use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
    use serde_json::Value;
    use tonic::{
        Status,
        codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http},
    };

    use super::{Shared, StoredRow, check_row};

    pub const PATH: &str = "/google.cloud.bigquery.storage.v1.BigQueryWrite/AppendRows";

    #[derive(Clone)]
    pub struct WriteService(pub Shared);

    impl tonic::server::NamedService for WriteService {
        const NAME: &'static str = "google.cloud.bigquery.storage.v1.BigQueryWrite";
    }

    type Responses =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<AppendRowsResponse, Status>> + Send>>;

    struct AppendRows(Shared);

    impl tonic::server::StreamingService<AppendRowsRequest> for AppendRows {
        type Response = AppendRowsResponse;
        type ResponseStream = Responses;
        type Future = BoxFuture<tonic::Response<Responses>, Status>;

        fn call(
            &mut self,
            request: tonic::Request<tonic::Streaming<AppendRowsRequest>>,
        ) -> Self::Future {
            let shared = self.0.clone();
            Box::pin(async move { open(shared, request) })
        }
    }

    fn open(
        shared: Shared,
        request: tonic::Request<tonic::Streaming<AppendRowsRequest>>,
    ) -> Result<tonic::Response<Responses>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let valid = token
            .as_ref()
            .is_some_and(|t| shared.lock().tokens.get(t).copied().unwrap_or(false));
        if !valid {
            return Err(Status::unauthenticated(
                "Request had invalid authentication credentials.",
            ));
        }
        let routing = request
            .metadata()
            .get("x-goog-request-params")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut incoming = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut stream_name: Option<String> = None;
            let mut row_type: Option<MessageDescriptor> = None;
            loop {
                let request = match incoming.message().await {
                    Ok(Some(request)) => request,
                    _ => return,
                };
                let delay = shared.lock().write_delay;
                tokio::time::sleep(delay).await;
                let answer = append(&shared, &routing, &mut stream_name, &mut row_type, request);
                let last = answer.is_err();
                if sender.send(answer).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    fn error_response(
        code: tonic::Code,
        message: &str,
        row_errors: Vec<RowError>,
    ) -> AppendRowsResponse {
        AppendRowsResponse {
            response: Some(append_rows_response::Response::Error(
                googleapis_tonic_google_rpc::google::rpc::Status {
                    code: code as i32,
                    message: message.to_owned(),
                    details: Vec::new(),
                },
            )),
            row_errors,
            ..AppendRowsResponse::default()
        }
    }

    /// One request: `Ok` is the response to send, `Err` ends the stream with a status.
    fn append(
        shared: &Shared,
        routing: &str,
        stream_name: &mut Option<String>,
        row_type: &mut Option<MessageDescriptor>,
        request: AppendRowsRequest,
    ) -> Result<AppendRowsResponse, Status> {
        let problem = |p: String| shared.lock().problems.push(format!("AppendRows: {p}"));
        if stream_name.is_none() {
            if request.write_stream.is_empty() {
                problem("the first request has no write_stream".into());
                return Err(Status::invalid_argument("write_stream is required"));
            }
            let expected: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("write_stream", &request.write_stream)
                .finish();
            if routing != expected {
                problem(format!(
                    "x-goog-request-params is {routing:?}, expected {expected:?}"
                ));
            }
            *stream_name = Some(request.write_stream.clone());
        } else if !request.write_stream.is_empty()
            && Some(&request.write_stream) != stream_name.as_ref()
        {
            problem("write_stream changed within a stream".into());
        }
        let Some(append_rows_request::Rows::ProtoRows(data)) = request.rows else {
            problem("no proto rows".into());
            return Err(Status::invalid_argument("rows are required"));
        };
        if let Some(schema) = data.writer_schema.and_then(|s| s.proto_descriptor) {
            let file = prost_types::FileDescriptorProto {
                name: Some("writer.proto".into()),
                message_type: vec![schema.clone()],
                ..Default::default()
            };
            let pool = DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet {
                file: vec![file],
            })
            .map_err(|e| Status::invalid_argument(format!("invalid writer schema: {e}")))?;
            *row_type = pool.get_message_by_name(schema.name());
        }
        let Some(descriptor) = row_type.clone() else {
            problem("the first request has no writer_schema".into());
            return Err(Status::invalid_argument("writer_schema is required"));
        };
        let name = stream_name.clone().unwrap_or_default();
        // projects/P/datasets/D/tables/T/streams/_default
        let parts: Vec<&str> = name.split('/').collect();
        let key = match parts.as_slice() {
            [
                "projects",
                p,
                "datasets",
                d,
                "tables",
                t,
                "streams",
                "_default",
            ] => {
                format!("{p}/{d}/{t}")
            }
            _ => {
                problem(format!("{name:?} is not a default stream"));
                return Err(Status::invalid_argument("bad stream name"));
            }
        };
        let rows = data.rows.map(|r| r.serialized_rows).unwrap_or_default();
        let bytes: usize = rows.iter().map(|r| r.len()).sum();
        let mut inner = shared.lock();
        let over_front_end = inner.front_end_rows.is_some_and(|limit| rows.len() > limit);
        let too_large = bytes > super::MAX_REQUEST_BYTES || over_front_end;
        inner
            .insert_requests
            .push((rows.len(), bytes, if too_large { 413 } else { 0 }));
        if too_large {
            return Ok(error_response(
                tonic::Code::InvalidArgument,
                &format!(
                    "AppendRows request too large: {bytes} limit {}",
                    super::MAX_REQUEST_BYTES
                ),
                Vec::new(),
            ));
        }
        if inner.count_only {
            inner.counted += rows.len() as u64;
            if let Some(last) = inner.insert_requests.last_mut() {
                last.2 = 200;
            }
            return Ok(AppendRowsResponse {
                response: Some(append_rows_response::Response::AppendResult(
                    append_rows_response::AppendResult { offset: None },
                )),
                write_stream: name,
                ..AppendRowsResponse::default()
            });
        }
        if let Some(s) = inner.outage.clone().or_else(|| inner.script.pop_front()) {
            if let Some(last) = inner.insert_requests.last_mut() {
                last.2 = s.status;
            }
            let code = match s.status {
                429 => tonic::Code::ResourceExhausted,
                403 => tonic::Code::PermissionDenied,
                404 => tonic::Code::NotFound,
                _ => tonic::Code::Unavailable,
            };
            return Err(Status::new(
                code,
                format!("scripted failure ({})", s.reason),
            ));
        }
        let Some(schema) = inner.tables.get(&key).map(|t| t.schema.clone()) else {
            return Err(Status::not_found(format!(
                "Requested entity was not found. Table {key}"
            )));
        };
        let options = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true);
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for (index, bytes) in rows.iter().enumerate() {
            let message = match DynamicMessage::decode(descriptor.clone(), bytes.as_ref()) {
                Ok(m) => m,
                Err(e) => {
                    inner
                        .problems
                        .push(format!("AppendRows: row {index} does not decode: {e}"));
                    errors.push((index, format!("cannot decode: {e}")));
                    continue;
                }
            };
            let json = match message.serialize_with_options(serde_json::value::Serializer, &options)
            {
                Ok(Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            // TIMESTAMP columns arrive as int64 micros: compare with the schema's types
            // as BigQuery does for proto rows.
            let mut checked = json.clone();
            for (column, value) in checked.iter_mut() {
                let is_ts = schema["fields"].as_array().is_some_and(|f| {
                    f.iter()
                        .any(|f| f["name"] == column.as_str() && f["type"] == "TIMESTAMP")
                });
                if is_ts && value.is_i64() {
                    *value = Value::String("1970-01-01T00:00:00Z".into());
                }
            }
            let offset = json
                .get("kafka_offset")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
            if inner.invalid_offsets.contains(&offset) {
                errors.push((index, "scripted: the row is invalid".into()));
            } else if let Some((column, message)) = check_row(&schema, &checked) {
                inner
                    .problems
                    .push(format!("AppendRows: row {index}: {column}: {message}"));
                errors.push((index, format!("{column}: {message}")));
            }
            let insert_id = format!(
                "{}:{}:{}",
                json.get("kafka_topic")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                json.get("kafka_partition").unwrap_or(&Value::Null),
                json.get("kafka_offset").unwrap_or(&Value::Null)
            );
            parsed.push(StoredRow { insert_id, json });
        }
        if !errors.is_empty() {
            let row_errors = errors
                .into_iter()
                .map(|(index, message)| RowError {
                    index: index as i64,
                    code: RowErrorCode::FieldsError as i32,
                    message,
                })
                .collect();
            return Ok(error_response(
                tonic::Code::InvalidArgument,
                "Errors found while processing rows.",
                row_errors,
            ));
        }
        if let Some(t) = inner.tables.get_mut(&key) {
            t.rows.extend(parsed);
        }
        if let Some(last) = inner.insert_requests.last_mut() {
            last.2 = 200;
        }
        Ok(AppendRowsResponse {
            response: Some(append_rows_response::Response::AppendResult(
                append_rows_response::AppendResult { offset: None },
            )),
            write_stream: name,
            ..AppendRowsResponse::default()
        })
    }

    impl<B> Service<http::Request<B>> for WriteService
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<B>) -> Self::Future {
            let shared = self.0.clone();
            if request.uri().path() == PATH {
                return Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec)
                        .apply_max_message_size_config(Some(32 << 20), Some(32 << 20));
                    Ok(grpc.streaming(AppendRows(shared), request).await)
                });
            }
            Box::pin(
                async move { Ok(Status::unimplemented("only AppendRows is served").into_http()) },
            )
        }
    }
}
