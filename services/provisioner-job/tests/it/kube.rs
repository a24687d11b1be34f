//! A fake Kubernetes API server on 127.0.0.1: the Secret endpoints the job uses, with the
//! API server's wire format (Secret objects, `Status` errors), checks on what it is sent
//! (path, bearer token, patch content type, body shape) and failures on demand.

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-service-account-token";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

#[derive(Default)]
struct Inner {
    /// (namespace, name) -> data entries (decoded).
    secrets: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// Status codes the next PATCHes fail with.
    patch_failures: VecDeque<u16>,
    seen: Vec<Seen>,
    /// Requests that broke the contract: wrong token, content type or body.
    violations: Vec<String>,
}

/// The running fake. Stops when dropped.
pub struct FakeApiServer {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/secrets/{name}",
                get(secret).patch(secret),
            )
            .fallback(unexpected)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
        });
        Self { url, inner, stop }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake state")
    }

    /// Creates a Secret holding `entries`.
    pub fn add_secret(&self, namespace: &str, name: &str, entries: &[(&str, &str)]) {
        self.lock().secrets.insert(
            (namespace.into(), name.into()),
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }

    /// The next `codes.len()` PATCHes fail with these codes, in order.
    pub fn fail_patches(&self, codes: &[u16]) {
        self.lock().patch_failures.extend(codes);
    }

    pub fn entries(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        self.lock()
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// A kubeconfig that points at this server with the test's bearer token.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 users:\n- name: job\n  user:\n    token: {TOKEN}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: job\n\
                 current-context: fake\n",
                self.url
            ),
        )
        .expect("write kubeconfig");
        path
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).expect("status code"),
        axum::Json(body),
    )
        .into_response()
}

fn secret_object(namespace: &str, name: &str, data: &BTreeMap<String, String>) -> Value {
    let encoded: BTreeMap<&String, String> = data
        .iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect();
    json!({
        "kind": "Secret", "apiVersion": "v1", "type": "Opaque",
        "metadata": { "name": name, "namespace": namespace, "resourceVersion": "1" },
        "data": encoded,
    })
}

async fn secret(
    State(inner): State<Arc<Mutex<Inner>>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().expect("fake state");
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    inner.seen.push(Seen {
        method: method.clone(),
        path: format!("/api/v1/namespaces/{namespace}/secrets/{name}"),
        content_type: content_type.clone(),
        body: parsed.clone(),
    });
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        inner
            .violations
            .push(format!("{method} without the bearer token"));
        return status(401, "Unauthorized", "Unauthorized");
    }
    let key = (namespace.clone(), name.clone());
    if !inner.secrets.contains_key(&key) {
        return status(404, "NotFound", &format!("secrets \"{name}\" not found"));
    }
    if method == Method::PATCH {
        if content_type.as_deref() != Some("application/merge-patch+json") {
            inner
                .violations
                .push(format!("PATCH with content type {content_type:?}"));
            return status(415, "UnsupportedMediaType", "unsupported patch type");
        }
        let Some(Value::Object(patch)) = parsed else {
            inner
                .violations
                .push("PATCH body is not a JSON object".into());
            return status(400, "BadRequest", "bad body");
        };
        if patch.keys().any(|k| k != "data") {
            inner
                .violations
                .push(format!("PATCH touches more than data: {:?}", patch.keys()));
        }
        let Some(Value::Object(data)) = patch.get("data") else {
            inner.violations.push("PATCH without a data object".into());
            return status(422, "Invalid", "data must be an object");
        };
        let mut decoded = BTreeMap::new();
        for (k, v) in data {
            let bytes = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            match bytes.and_then(|b| String::from_utf8(b).ok()) {
                Some(text) => {
                    decoded.insert(k.clone(), text);
                }
                None => {
                    inner.violations.push(format!("data.{k} is not base64"));
                    return status(422, "Invalid", "illegal base64 data");
                }
            }
        }
        if let Some(code) = inner.patch_failures.pop_front() {
            let reason = if code == 409 {
                "Conflict"
            } else {
                "InternalError"
            };
            return status(code, reason, "injected by the test");
        }
        inner
            .secrets
            .entry(key.clone())
            .or_default()
            .extend(decoded);
    }
    let data = inner.secrets.get(&key).cloned().unwrap_or_default();
    axum::Json(secret_object(&namespace, &name, &data)).into_response()
}

async fn unexpected(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    inner
        .lock()
        .expect("fake state")
        .violations
        .push(format!("unexpected {method} {uri}"));
    status(404, "NotFound", "the page could not be found")
}
