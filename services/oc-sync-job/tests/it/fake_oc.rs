//! A fake Open Connectors tenant on 127.0.0.1: `GET /elements/api-v2/instances` (tags,
//! pages with `Elements-Next-Page-Token`) and `GET /elements/api-v2/instances/{id}/docs`,
//! both checking the `User .., Organization ..` header; faults on demand.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

pub const USER_SECRET: &str = "oc-user-secret-7f3a";
pub const ORG_SECRET: &str = "oc-org-secret-91bc";

/// An instance the tenant has.
#[derive(Debug, Clone)]
pub struct FakeInstance {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub tags: Vec<String>,
    pub disabled: bool,
    pub valid: bool,
    pub element_key: String,
}

impl FakeInstance {
    pub fn new(id: i64, name: &str) -> Self {
        Self {
            id,
            name: name.into(),
            token: format!("instance-token-{id}-c0ffee"),
            tags: Vec::new(),
            disabled: false,
            valid: true,
            element_key: "sfdc".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "token": self.token, "tags": self.tags,
            "disabled": self.disabled, "valid": self.valid, "createdDate": "2026-01-01",
            "element": {"id": 100 + self.element_key.len(), "name": element_name(&self.element_key), "key": self.element_key}
        })
    }

    /// The OpenAPI document the tenant serves for it.
    pub fn docs(&self) -> Value {
        json!({
            "swagger": "2.0",
            "info": {"title": format!("{} {}", element_name(&self.element_key), self.name), "version": "1"},
            "basePath": "/elements/api-v2",
            "paths": {"/contacts": {"get": {"responses": {"200": {"description": "ok"}}}}}
        })
    }
}

fn element_name(key: &str) -> String {
    match key {
        "sfdc" => "Salesforce".into(),
        other => format!("Element {other}"),
    }
}

/// A fault the next call gets.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooMany(u64),
    /// The answer comes after this long.
    Slow(Duration),
}

#[derive(Debug, Default)]
pub struct OcState {
    pub instances: Vec<FakeInstance>,
    /// The most instances per page, whatever the client asks for.
    pub max_page: usize,
    /// Every listing call fails with 500.
    pub listing_down: bool,
    pub faults: VecDeque<Fault>,
    /// Added to every call.
    pub delay: Duration,
    /// `GET <path>?<query>` of every call.
    pub calls: Vec<String>,
    /// Calls refused for a wrong Authorization header.
    pub refused: usize,
}

#[derive(Clone)]
pub struct FakeOc {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<OcState>>,
}

impl FakeOc {
    pub async fn start(instances: Vec<FakeInstance>) -> Self {
        let state = Arc::new(Mutex::new(OcState {
            instances,
            max_page: 50,
            ..OcState::default()
        }));
        let app = Router::new()
            .route("/elements/api-v2/instances", get(list))
            .route("/elements/api-v2/instances/{id}/docs", get(docs))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn hostname(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The label context the job writes: host and port.
    pub fn context(&self) -> String {
        self.addr.to_string()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut OcState) -> R) -> R {
        f(&mut self.state.lock().expect("lock"))
    }

    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }
}

/// The common part of every call: record it, check the header, apply delay and faults.
async fn enter(
    state: &Arc<Mutex<OcState>>,
    headers: &HeaderMap,
    call: String,
) -> Result<(), Response> {
    let (delay, fault) = {
        let mut s = state.lock().expect("lock");
        s.calls.push(call);
        let expected = format!("User {USER_SECRET}, Organization {ORG_SECRET}");
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&expected) {
            s.refused += 1;
            return Err((StatusCode::UNAUTHORIZED, r#"{"message":"Invalid Organization or User secret, or invalid Element token provided."}"#).into_response());
        }
        (s.delay, s.faults.pop_front())
    };
    tokio::time::sleep(delay).await;
    match fault {
        Some(Fault::Status(code)) => Err((
            StatusCode::from_u16(code).expect("status"),
            r#"{"message":"injected"}"#,
        )
            .into_response()),
        Some(Fault::TooMany(seconds)) => {
            let mut response =
                (StatusCode::TOO_MANY_REQUESTS, r#"{"message":"slow down"}"#).into_response();
            response.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&seconds.to_string()).expect("header"),
            );
            Err(response)
        }
        Some(Fault::Slow(wait)) => {
            tokio::time::sleep(wait).await;
            Ok(())
        }
        None => Ok(()),
    }
}

async fn list(
    State(state): State<Arc<Mutex<OcState>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if let Err(refused) = enter(&state, &headers, format!("GET /instances?{query}")).await {
        return refused;
    }
    let (mut tags, mut size, mut offset) = (Vec::new(), 200usize, 0usize);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "tags[]" => tags.push(value.into_owned()),
            "pageSize" => size = value.parse().unwrap_or(200),
            "nextPage" => match value.strip_prefix("page-").and_then(|n| n.parse().ok()) {
                Some(at) => offset = at,
                None => return (StatusCode::BAD_REQUEST, "bad nextPage").into_response(),
            },
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other}"),
                )
                    .into_response();
            }
        }
    }
    let s = state.lock().expect("lock");
    if s.listing_down {
        return (StatusCode::INTERNAL_SERVER_ERROR, "listing down").into_response();
    }
    let matching: Vec<&FakeInstance> = s
        .instances
        .iter()
        .filter(|i| tags.iter().all(|t| i.tags.contains(t)))
        .collect();
    let size = size.min(s.max_page).max(1);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(size)
        .map(|i| i.json())
        .collect();
    let mut response = axum::Json(Value::Array(page)).into_response();
    if offset + size < matching.len() {
        response.headers_mut().insert(
            "elements-next-page-token",
            HeaderValue::from_str(&format!("page-{}", offset + size)).expect("header"),
        );
    }
    response
}

async fn docs(
    State(state): State<Arc<Mutex<OcState>>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    if let Err(refused) = enter(
        &state,
        &headers,
        format!("GET /instances/{id}/docs?{query}"),
    )
    .await
    {
        return refused;
    }
    if query != "version=-1" {
        return (StatusCode::BAD_REQUEST, "expected version=-1").into_response();
    }
    let s = state.lock().expect("lock");
    match s.instances.iter().find(|i| i.id == id) {
        Some(instance) => axum::Json(instance.docs()).into_response(),
        None => (StatusCode::NOT_FOUND, r#"{"message":"no such instance"}"#).into_response(),
    }
}
