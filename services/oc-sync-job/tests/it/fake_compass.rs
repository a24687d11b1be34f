//! A fake Compass on 127.0.0.1: an OAuth2 token endpoint (client credentials, HTTP Basic)
//! and a Director that validates every request against the schema subset (the document,
//! then its variables coerced to the operation's types), checks the bearer token and the
//! `tenant` header, keeps its applications, filters by label containment, pages at most
//! 10 at a time as the Director documents, and fails on demand.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use apollo_compiler::{
    ExecutableDocument, Schema,
    ast::Value as GqlValue,
    executable::{OperationType, Selection},
    response::JsonMap,
    validation::Valid,
};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine as _;
use serde_json::{Map, Value, json};

pub const CLIENT_ID: &str = "oc-sync-client";
pub const CLIENT_SECRET: &str = "compass-client-secret-5d21";
pub const TENANT: &str = "3e64ebae-38b5-46a0-b1ed-9ccee153a0ae";
pub const TOKEN_PREFIX: &str = "access-token-";
/// The label the job keeps its fingerprint of an instance in.
pub const FINGERPRINT: &str = "open_connectors_fingerprint";
const SCHEMA: &str = include_str!("../../graphql/director.graphql");
/// The most applications the Director serves per page.
const MAX_FIRST: i64 = 10;

pub use crate::fake_oc::Fault;

#[derive(Debug, Clone, PartialEq)]
pub struct FakeApi {
    pub id: String,
    pub name: String,
    pub target_url: String,
    pub spec: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FakeBundle {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// `defaultInstanceAuth.additionalHeadersSerialized`.
    pub auth_headers: Option<String>,
    pub apis: Vec<FakeApi>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FakeApp {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub provider_name: Option<String>,
    pub integration_system_id: Option<String>,
    pub labels: Map<String, Value>,
    pub bundles: Vec<FakeBundle>,
}

#[derive(Debug, Default)]
pub struct CompassState {
    /// Id order is creation order.
    pub apps: BTreeMap<String, FakeApp>,
    next_id: u64,
    /// Token -> when it stops working.
    tokens: HashMap<String, Instant>,
    pub token_lifetime: Duration,
    pub token_calls: usize,
    /// Every Director operation by name, in arrival order.
    pub operations: Vec<String>,
    /// registerApplication of these names answers with a GraphQL error.
    pub fail_register: HashSet<String>,
    /// Director faults for the next calls (`Fault::Status(401)` included).
    pub faults: VecDeque<Fault>,
    /// After this many more Director calls every token known so far is revoked.
    pub revoke_after: Option<usize>,
    pub delay: Duration,
    /// Requests refused before any work: bad token, tenant, document or variables.
    pub rejected: Vec<String>,
}

impl CompassState {
    /// Operations that change something.
    pub fn mutations(&self) -> Vec<String> {
        self.operations
            .iter()
            .filter(|op| !matches!(op.as_str(), "Applications"))
            .cloned()
            .collect()
    }

    /// Adds an application as if another writer had registered it.
    pub fn insert(&mut self, name: &str, labels: Value, with_api: bool) -> String {
        let id = self.new_id("app");
        let bundle_id = self.new_id("bundle");
        let api_id = self.new_id("api");
        let apis = if with_api {
            vec![FakeApi {
                id: api_id,
                name: "other".into(),
                target_url: "https://example.com".into(),
                spec: None,
            }]
        } else {
            Vec::new()
        };
        self.apps.insert(
            id.clone(),
            FakeApp {
                id: id.clone(),
                name: name.into(),
                description: Some("written by someone else".into()),
                provider_name: None,
                integration_system_id: None,
                labels: labels.as_object().cloned().unwrap_or_default(),
                bundles: vec![FakeBundle {
                    id: bundle_id,
                    name: "b".into(),
                    description: None,
                    auth_headers: None,
                    apis,
                }],
            },
        );
        id
    }

    pub fn by_name(&self, name: &str) -> Option<&FakeApp> {
        self.apps.values().find(|a| a.name == name)
    }

    fn new_id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{kind}-{:05}", self.next_id)
    }
}

#[derive(Clone)]
pub struct FakeCompass {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<CompassState>>,
}

struct Shared {
    state: Arc<Mutex<CompassState>>,
    schema: Valid<Schema>,
}

impl FakeCompass {
    pub async fn start() -> Self {
        let schema = Schema::parse_and_validate(SCHEMA, "director.graphql").expect("schema");
        let state = Arc::new(Mutex::new(CompassState {
            token_lifetime: Duration::from_secs(3600),
            ..CompassState::default()
        }));
        let shared = Arc::new(Shared {
            state: Arc::clone(&state),
            schema,
        });
        let app = Router::new()
            .route("/oauth2/token", post(token))
            .route("/director/graphql", post(director))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn director_url(&self) -> String {
        format!("http://{}/director/graphql", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut CompassState) -> R) -> R {
        f(&mut self.state.lock().expect("lock"))
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let delay = shared.state.lock().expect("lock").delay;
    tokio::time::sleep(delay).await;
    let mut s = shared.state.lock().expect("lock");
    s.token_calls += 1;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&expected) {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("scope").map(String::as_str) != Some("application:read application:write")
    {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#).into_response();
    }
    let value = format!("{TOKEN_PREFIX}{}-9e8d", s.token_calls);
    let lifetime = s.token_lifetime;
    s.tokens.insert(value.clone(), Instant::now() + lifetime);
    axum::Json(json!({
        "access_token": value, "token_type": "bearer", "expires_in": lifetime.as_secs(),
        "scope": "application:read application:write"
    }))
    .into_response()
}

fn gql_error(message: impl Into<String>) -> Response {
    axum::Json(json!({"data": null, "errors": [{"message": message.into()}]})).into_response()
}

async fn director(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Auth and tenant first, as the gateway does.
    let (delay, fault) = {
        let mut s = shared.state.lock().expect("lock");
        if let Some(left) = s.revoke_after.as_mut() {
            if *left == 0 {
                s.tokens.clear();
                s.revoke_after = None;
            } else {
                *left -= 1;
            }
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = bearer
            .and_then(|t| s.tokens.get(t))
            .is_some_and(|until| Instant::now() < *until);
        if !valid {
            s.rejected.push("401: no valid token".into());
            return (StatusCode::UNAUTHORIZED, "token invalid or expired").into_response();
        }
        if headers.get("tenant").and_then(|v| v.to_str().ok()) != Some(TENANT) {
            s.rejected.push("tenant header".into());
            return gql_error("tenant not found");
        }
        (s.delay, s.faults.pop_front())
    };
    tokio::time::sleep(delay).await;
    match fault {
        Some(Fault::Status(code)) => {
            return (StatusCode::from_u16(code).expect("status"), "injected").into_response();
        }
        Some(Fault::TooMany(seconds)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", seconds.to_string())],
                "slow down",
            )
                .into_response();
        }
        Some(Fault::Slow(wait)) => tokio::time::sleep(wait).await,
        None => {}
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response(),
    };
    let query = request["query"].as_str().unwrap_or_default();
    let name = request["operationName"].as_str().map(str::to_owned);
    let reject = |why: String| {
        shared
            .state
            .lock()
            .expect("lock")
            .rejected
            .push(why.clone());
        gql_error(why)
    };
    let document = match ExecutableDocument::parse_and_validate(&shared.schema, query, "q.graphql")
    {
        Ok(document) => document,
        Err(errors) => return reject(format!("invalid document: {}", errors.errors)),
    };
    let Ok(operation) = document.operations.get(name.as_deref()) else {
        return reject(format!("no operation {name:?}"));
    };
    let given = match &request["variables"] {
        Value::Null => json!({}),
        other => other.clone(),
    };
    let variables: JsonMap = match serde_json::from_value(given) {
        Ok(variables) => variables,
        Err(e) => return reject(format!("variables: {e}")),
    };
    let variables = match apollo_compiler::request::coerce_variable_values(
        &shared.schema,
        operation,
        &variables,
    ) {
        Ok(coerced) => serde_json::to_value(coerced.into_inner()).expect("json"),
        Err(e) => return reject(format!("variables: {}", e.message())),
    };
    let op_name = operation
        .name
        .as_ref()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let is_query = operation.operation_type == OperationType::Query;
    // The one top-level field's arguments, the variables put in.
    let Some(Selection::Field(field)) = operation.selection_set.selections.first() else {
        return reject("one top-level field expected".into());
    };
    let arguments = Value::Object(
        field
            .arguments
            .iter()
            .map(|a| (a.name.to_string(), resolve(&a.value, &variables)))
            .collect(),
    );
    let mut s = shared.state.lock().expect("lock");
    s.operations.push(op_name.clone());
    let result = if is_query {
        applications(&s, &arguments)
    } else {
        mutate(&mut s, &op_name, &arguments)
    };
    match result {
        Ok(data) => axum::Json(json!({ "data": data })).into_response(),
        Err(message) => gql_error(message),
    }
}

/// An argument's value as JSON, its variables replaced by their values.
fn resolve(value: &GqlValue, variables: &Value) -> Value {
    match value {
        GqlValue::Null => Value::Null,
        GqlValue::Enum(name) => Value::String(name.to_string()),
        GqlValue::Variable(name) => variables[name.as_str()].clone(),
        GqlValue::String(text) => Value::String(text.clone()),
        GqlValue::Float(f) => json!(f.try_to_f64().unwrap_or_default()),
        GqlValue::Int(i) => json!(i.try_to_i32().unwrap_or(i32::MAX)),
        GqlValue::Boolean(b) => Value::Bool(*b),
        GqlValue::List(items) => {
            Value::Array(items.iter().map(|v| resolve(v, variables)).collect())
        }
        GqlValue::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), resolve(v, variables)))
                .collect(),
        ),
    }
}

/// `value @> query` for JSON values, as PostgreSQL's jsonb containment.
fn contains(value: &Value, query: &Value) -> bool {
    match (value, query) {
        (Value::Object(v), Value::Object(q)) => q
            .iter()
            .all(|(k, qv)| v.get(k).is_some_and(|vv| contains(vv, qv))),
        (Value::Array(v), Value::Array(q)) => {
            q.iter().all(|qv| v.iter().any(|vv| contains(vv, qv)))
        }
        (v, q) => v == q,
    }
}

fn applications(s: &CompassState, variables: &Value) -> Result<Value, String> {
    let first = variables["first"].as_i64().unwrap_or(200);
    if !(1..=MAX_FIRST).contains(&first) {
        return Err(format!("page size must be between 1 and {MAX_FIRST}"));
    }
    let mut filters = Vec::new();
    for filter in variables["filter"].as_array().cloned().unwrap_or_default() {
        let key = filter["key"].as_str().unwrap_or_default().to_owned();
        let query = match filter["query"].as_str() {
            Some(text) => Some(
                serde_json::from_str::<Value>(text)
                    .map_err(|_| format!("label filter query {text:?} is not a JSON value"))?,
            ),
            None => None,
        };
        filters.push((key, query));
    }
    let matching: Vec<&FakeApp> = s
        .apps
        .values()
        .filter(|app| {
            filters
                .iter()
                .all(|(key, query)| match app.labels.get(key) {
                    Some(value) => query.as_ref().is_none_or(|q| contains(value, q)),
                    None => false,
                })
        })
        .collect();
    let offset: usize = match variables["after"].as_str() {
        Some(cursor) => cursor
            .strip_prefix("cursor-")
            .and_then(|n| n.parse().ok())
            .ok_or("invalid cursor")?,
        None => 0,
    };
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(first as usize)
        .map(|app| {
            json!({
                "id": app.id, "name": app.name, "labels": app.labels,
                "bundles": {"data": app.bundles.iter().take(10).map(|b| json!({
                    "id": b.id, "name": b.name,
                    "apiDefinitions": {"totalCount": b.apis.len(), "data": b.apis.iter().take(10).map(|a| json!({"id": a.id, "name": a.name})).collect::<Vec<_>>()}
                })).collect::<Vec<_>>()}
            })
        })
        .collect();
    let end = offset + page.len();
    Ok(json!({"applications": {
        "data": page,
        "pageInfo": {"hasNextPage": end < matching.len(), "endCursor": format!("cursor-{end}")},
        "totalCount": matching.len()
    }}))
}

fn api(s: &mut CompassState, input: &Value) -> FakeApi {
    FakeApi {
        id: s.new_id("api"),
        name: input["name"].as_str().unwrap_or_default().into(),
        target_url: input["targetURL"].as_str().unwrap_or_default().into(),
        spec: input["spec"]["data"].as_str().map(str::to_owned),
    }
}

fn bundle(s: &mut CompassState, input: &Value) -> FakeBundle {
    let apis = input["apiDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| api(s, a))
        .collect();
    FakeBundle {
        id: s.new_id("bundle"),
        name: input["name"].as_str().unwrap_or_default().into(),
        description: input["description"].as_str().map(str::to_owned),
        auth_headers: input["defaultInstanceAuth"]["additionalHeadersSerialized"]
            .as_str()
            .map(str::to_owned),
        apis,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 36
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn mutate(s: &mut CompassState, op: &str, v: &Value) -> Result<Value, String> {
    let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
    match op {
        "RegisterApplication" => {
            let input = &v["in"];
            let name = input["name"].as_str().unwrap_or_default().to_owned();
            if !valid_name(&name) {
                return Err(format!("name {name:?} is not valid"));
            }
            if s.fail_register.contains(&name) {
                return Err(format!("internal error while registering {name}"));
            }
            if s.by_name(&name).is_some() {
                return Err(format!(
                    "Object is not unique [object=application name={name}]"
                ));
            }
            let labels = input["labels"].as_object().cloned().unwrap_or_default();
            if labels
                .keys()
                .any(|k| !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err("label keys are alphanumeric with underscore".into());
            }
            let bundles: Vec<FakeBundle> = input["bundles"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|b| bundle(s, b))
                .collect();
            let id = s.new_id("app");
            s.apps.insert(
                id.clone(),
                FakeApp {
                    id: id.clone(),
                    name: name.clone(),
                    description: input["description"].as_str().map(str::to_owned),
                    provider_name: input["providerName"].as_str().map(str::to_owned),
                    integration_system_id: input["integrationSystemID"].as_str().map(str::to_owned),
                    labels,
                    bundles,
                },
            );
            Ok(json!({"registerApplication": {"id": id, "name": name}}))
        }
        "UpdateApplication" => {
            let app = s.apps.get_mut(&text("id")).ok_or("application not found")?;
            let input = &v["in"];
            app.description = input["description"].as_str().map(str::to_owned);
            app.provider_name = input["providerName"].as_str().map(str::to_owned);
            app.integration_system_id = input["integrationSystemID"].as_str().map(str::to_owned);
            Ok(json!({"updateApplication": {"id": app.id}}))
        }
        "UnregisterApplication" => {
            let app = s.apps.remove(&text("id")).ok_or("application not found")?;
            Ok(json!({"unregisterApplication": {"id": app.id}}))
        }
        "SetApplicationLabel" => {
            let app = s
                .apps
                .get_mut(&text("applicationID"))
                .ok_or("application not found")?;
            app.labels.insert(text("key"), v["value"].clone());
            Ok(json!({"setApplicationLabel": {"key": text("key")}}))
        }
        "AddBundle" => {
            let id = text("applicationID");
            if !s.apps.contains_key(&id) {
                return Err("application not found".into());
            }
            let made = bundle(s, &v["in"]);
            let bundle_id = made.id.clone();
            s.apps.get_mut(&id).expect("found").bundles.push(made);
            Ok(json!({"addBundle": {"id": bundle_id}}))
        }
        "UpdateBundle" => {
            let id = text("id");
            let input = &v["in"];
            let found = s
                .apps
                .values_mut()
                .flat_map(|a| a.bundles.iter_mut())
                .find(|b| b.id == id)
                .ok_or("bundle not found")?;
            found.name = input["name"].as_str().unwrap_or_default().into();
            found.description = input["description"].as_str().map(str::to_owned);
            found.auth_headers = input["defaultInstanceAuth"]["additionalHeadersSerialized"]
                .as_str()
                .map(str::to_owned);
            Ok(json!({"updateBundle": {"id": id}}))
        }
        "AddAPIDefinitionToBundle" => {
            let id = text("bundleID");
            let made = api(s, &v["in"]);
            let api_id = made.id.clone();
            s.apps
                .values_mut()
                .flat_map(|a| a.bundles.iter_mut())
                .find(|b| b.id == id)
                .ok_or("bundle not found")?
                .apis
                .push(made);
            Ok(json!({"addAPIDefinitionToBundle": {"id": api_id}}))
        }
        "UpdateAPIDefinition" => {
            let id = text("id");
            let mut made = api(s, &v["in"]);
            made.id = id.clone();
            let found = s
                .apps
                .values_mut()
                .flat_map(|a| a.bundles.iter_mut())
                .flat_map(|b| b.apis.iter_mut())
                .find(|a| a.id == id)
                .ok_or("API definition not found")?;
            *found = made;
            Ok(json!({"updateAPIDefinition": {"id": id}}))
        }
        other => Err(format!("the fake does not serve {other}")),
    }
}
