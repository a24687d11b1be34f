//! The HTTP API: routes, request ids, authentication and each caller's scope, the
//! request deadline, problem responses (RFC 9457) and the OpenAPI 3 document generated
//! from the handlers and types below.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    extract::{
        ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::{
    auth::{Authenticator, Identity, Refused, Scope},
    plan::{Credential, Step},
    spec::{DatabaseSpec, Group, LoginSpec, PasswordSpec, TenantSpec},
    store::AuditEntry,
    tenants::{
        Caller, ChangeResult, Existing, Failure, PutResult, TenantSummary, TenantView, Tenants,
    },
};

/// The header carrying the request id (taken from the request, or made).
pub const REQUEST_ID: &str = "x-request-id";
/// Seconds a client is told to wait after a 503 or a busy tenant.
const RETRY_AFTER_SECS: u32 = 5;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub tenants: Tenants,
    pub auth: Arc<Authenticator>,
    pub readiness: platform::ops::Readiness,
}

/// The request's id.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The authenticated caller's name.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// A problem (RFC 9457), served as `application/problem+json`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub request_id: String,
    /// Each problem of a refused body, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The statement that failed (everything else was rolled back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_statement: Option<Step>,
}

/// A problem about to be sent: its status and the fields the request id completes.
#[derive(Debug)]
pub struct ProblemResponse {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<String>,
    failed_statement: Option<Step>,
    retry_after: bool,
    authenticate: bool,
}

impl ProblemResponse {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            failed_statement: None,
            retry_after: false,
            authenticate: false,
        }
    }
}

impl IntoResponse for ProblemResponse {
    fn into_response(self) -> Response {
        // The request id and path are filled in by the request-id middleware, which sees
        // every response: the handler does not know them here.
        let problem = Problem {
            kind: format!("https://devops-api.invalid/problems/{}", self.kind),
            title: self.title.into(),
            status: self.status.as_u16(),
            detail: self.detail,
            instance: None,
            request_id: String::new(),
            errors: self.errors,
            failed_statement: self.failed_statement,
        };
        let mut response = (self.status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"devops-api\""),
            );
        }
        response
    }
}

impl From<Failure> for ProblemResponse {
    fn from(failure: Failure) -> Self {
        let detail = failure.to_string();
        match failure {
            Failure::Invalid(errors) => Self {
                errors,
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "The request cannot be applied",
                    detail,
                )
            },
            Failure::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
            }
            Failure::Conflict(_) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict with what exists",
                detail,
            ),
            Failure::Busy(_) => Self {
                retry_after: true,
                ..Self::new(StatusCode::CONFLICT, "busy", "The tenant is busy", detail)
            },
            Failure::TooMany(_) => Self {
                retry_after: true,
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many",
                    "Too many changes under way",
                    detail,
                )
            },
            Failure::Unavailable(_) => Self {
                retry_after: true,
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "The database is unavailable",
                    detail,
                )
            },
            Failure::Statement { step, .. } => Self {
                failed_statement: Some(step),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "statement-failed",
                    "A statement failed; nothing was changed",
                    detail,
                )
            },
            // The cause is logged with the request id; the answer carries only the id.
            Failure::Internal(_) => {
                tracing::error!(error = %detail, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "an internal error occurred; the server log has its cause under this request id",
                )
            }
        }
    }
}

fn json_problem(rejection: JsonRejection) -> ProblemResponse {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => ProblemResponse::new(
            StatusCode::BAD_REQUEST,
            "bad-json",
            "The body is not JSON",
            e.body_text(),
        ),
        JsonRejection::JsonDataError(e) => {
            let detail = e.body_text();
            ProblemResponse {
                errors: vec![detail.clone()],
                ..ProblemResponse::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "The body does not match the tenant spec",
                    detail,
                )
            }
        }
        JsonRejection::MissingJsonContentType(e) => ProblemResponse::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "media-type",
            "Send Content-Type: application/json",
            e.body_text(),
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ProblemResponse::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "The body is too large",
                e.body_text(),
            )
        }
        other => ProblemResponse::new(
            other.status(),
            "bad-request",
            "The body cannot be read",
            other.body_text(),
        ),
    }
}

fn query_problem(rejection: QueryRejection) -> ProblemResponse {
    ProblemResponse::new(
        StatusCode::BAD_REQUEST,
        "bad-query",
        "The query string is not valid",
        rejection.body_text(),
    )
}

/// `?dryRun=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// Plan only: compute and return the statements, change nothing.
    #[serde(rename = "dryRun", default)]
    pub dry_run: bool,
}

/// `?mode=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// `revoke`: logins stop, grants are taken back, data is kept. `drop`: the tenant's
    /// objects, schema and roles go (and its database, if the API created it).
    pub mode: DeleteMode,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    Revoke,
    Drop,
}

/// `?tenant=&since=&limit=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Entries at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<time::OffsetDateTime>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

fn caller(actor: &Actor, id: &RequestId) -> Caller {
    Caller {
        actor: actor.0.clone(),
        request_id: id.0.clone(),
    }
}

/// Why a tenant in a path or a query is refused before any database work.
#[derive(Debug)]
enum TenantRefused {
    /// 422: not a tenant name.
    Invalid(String),
    /// 403: outside the caller's scope.
    OutOfScope(String),
}

impl From<TenantRefused> for ProblemResponse {
    fn from(refused: TenantRefused) -> Self {
        match refused {
            TenantRefused::Invalid(why) => Failure::Invalid(vec![why]).into(),
            TenantRefused::OutOfScope(tenant) => ProblemResponse::new(
                StatusCode::FORBIDDEN,
                "out-of-scope",
                "Outside the caller's scope",
                format!("tenant {tenant} is outside the caller's scope"),
            ),
        }
    }
}

/// The tenant's name checked (422), then the caller's scope (403): both before any
/// database work.
fn tenant_in_scope(scope: &Scope, tenant: &str) -> Result<(), TenantRefused> {
    crate::names::check("tenant", tenant).map_err(TenantRefused::Invalid)?;
    if scope.allows(tenant) {
        return Ok(());
    }
    tracing::warn!(tenant, "tenant outside the caller's scope refused");
    Err(TenantRefused::OutOfScope(tenant.to_owned()))
}

/// Declares the tenant; applies the plan (or, with `dryRun=true`, only returns it).
#[utoipa::path(put, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "The tenant: ^[a-z_][a-z0-9_]{0,62}$"), PutQuery),
    request_body = TenantSpec,
    responses(
        (status = 201, description = "Created", body = PutResult),
        (status = 200, description = "Changed, unchanged (empty plan), or planned", body = PutResult),
        (status = 400, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No credential", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong credential, or a tenant outside the caller's scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflict or busy", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid names or spec, or a statement failed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or the request timed out", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("identity" = [])))]
async fn put_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(scope): Extension<Scope>,
    Extension(id): Extension<RequestId>,
    Path(name): Path<String>,
    query: Result<Query<PutQuery>, QueryRejection>,
    body: Result<Json<TenantSpec>, JsonRejection>,
) -> Result<Response, ProblemResponse> {
    // The name and the scope first: refused whatever the query and the body say.
    tenant_in_scope(&scope, &name)?;
    let Query(query) = query.map_err(query_problem)?;
    let Json(spec) = body.map_err(json_problem)?;
    let result = state
        .tenants
        .put(&name, &spec, query.dry_run, &caller(&actor, &id))
        .await?;
    let status = if result.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, no_store(), Json(result)).into_response())
}

/// A response that may carry a password is never cached.
fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// The tenant's spec, what exists, and the drift.
#[utoipa::path(get, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 403, description = "Outside the caller's scope", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("identity" = [])))]
async fn get_tenant(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ProblemResponse> {
    tenant_in_scope(&scope, &name)?;
    Ok(Json(state.tenants.get(&name).await?))
}

/// Every tenant the API manages within the caller's scope.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<TenantSummary>)),
    security(("bearer" = []), ("identity" = [])))]
async fn list_tenants(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
) -> Result<Json<Vec<TenantSummary>>, ProblemResponse> {
    let mut tenants = state.tenants.list().await?;
    tenants.retain(|t| scope.allows(&t.tenant));
    Ok(Json(tenants))
}

/// Revokes (keeps the data) or drops the tenant; both idempotent.
#[utoipa::path(delete, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path), DeleteQuery),
    responses((status = 200, body = ChangeResult), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 403, description = "Outside the caller's scope", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("identity" = [])))]
async fn delete_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(scope): Extension<Scope>,
    Extension(id): Extension<RequestId>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<ChangeResult>, ProblemResponse> {
    tenant_in_scope(&scope, &name)?;
    let Query(query) = query.map_err(query_problem)?;
    let drop = matches!(query.mode, DeleteMode::Drop);
    Ok(Json(
        state
            .tenants
            .delete(&name, drop, &caller(&actor, &id))
            .await?,
    ))
}

/// A new password for the login, returned in this response only.
#[utoipa::path(post, path = "/v1/tenants/{name}/logins/{login}/rotate", tag = "tenants",
    params(("name" = String, Path), ("login" = String, Path)),
    responses((status = 200, body = ChangeResult), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 403, description = "Outside the caller's scope", body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("identity" = [])))]
async fn rotate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(scope): Extension<Scope>,
    Extension(id): Extension<RequestId>,
    Path((name, login)): Path<(String, String)>,
) -> Result<Response, ProblemResponse> {
    tenant_in_scope(&scope, &name)?;
    let done = state
        .tenants
        .rotate(&name, &login, &caller(&actor, &id))
        .await?;
    Ok((no_store(), Json(done)).into_response())
}

/// Who did what, when, with which plan (oldest first), of the tenants in the caller's
/// scope.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>),
              (status = 403, description = "`tenant` is outside the caller's scope", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("identity" = [])))]
async fn audit(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ProblemResponse> {
    let Query(query) = query.map_err(query_problem)?;
    if let Some(tenant) = &query.tenant {
        tenant_in_scope(&scope, tenant)?;
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let within = scope.like_patterns();
    let entries = state
        .tenants
        .store()
        .audit_entries(
            query.tenant.as_deref(),
            within.as_deref(),
            query.since,
            limit,
        )
        .await
        .map_err(Failure::database)?;
    Ok(Json(entries))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "devops-api", description = "Tenant databases on PostgreSQL: roles, schema, grants, default privileges and logins, declared and idempotent."),
    paths(put_tenant, get_tenant, list_tenants, delete_tenant, rotate, audit),
    components(schemas(TenantSpec, DatabaseSpec, LoginSpec, PasswordSpec, Group, PutResult, Step, Credential,
                       TenantView, Existing, TenantSummary, ChangeResult, AuditEntry, Problem, DeleteMode)),
    modifiers(&Security),
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "identity",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Request-User"))),
        );
    }
}

/// The OpenAPI 3 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// The API's router (the caller serves it with `ConnectInfo<SocketAddr>`): bodies up to
/// `max_body_bytes`, every routed request answered within `request_timeout`.
pub fn router(state: AppState, max_body_bytes: usize, request_timeout: Duration) -> Router {
    let v1 = Router::new()
        .route("/v1/tenants", get(list_tenants))
        .route(
            "/v1/tenants/{name}",
            get(get_tenant).put(put_tenant).delete(delete_tenant),
        )
        .route("/v1/tenants/{name}/logins/{login}/rotate", post(rotate))
        .route("/v1/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(state.clone(), ready));
    Router::new()
        .merge(v1)
        .route("/openapi.json", get(openapi_json))
        .route_layer(middleware::from_fn_with_state(request_timeout, deadline))
        .route_layer(middleware::from_fn(count))
        .fallback(|| async {
            ProblemResponse::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ProblemResponse::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "Method not allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// 503 before anything else while the database is not ready (migrations not run, or it
/// does not answer).
async fn ready(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.readiness.is_ready() {
        return ProblemResponse::from(Failure::Unavailable(format!(
            "not ready: {}",
            state.readiness.not_ready().join(", ")
        )))
        .into_response();
    }
    next.run(request).await
}

/// 503 with Retry-After when the request is not answered within the request timeout. Its
/// work is dropped there: a transaction under way is rolled back.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "request not answered within the request timeout"
            );
            ProblemResponse {
                retry_after: true,
                ..ProblemResponse::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "The request took too long",
                    format!("no answer within {} s; try again", timeout.as_secs()),
                )
            }
            .into_response()
        }
    }
}

/// The caller's [`Actor`] and [`Scope`] into the request, or 401/403.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    match state.auth.authenticate(request.headers(), peer) {
        Ok(Identity { actor, scope }) => {
            tracing::Span::current().record("actor", actor.as_str());
            request.extensions_mut().insert(Actor(actor));
            request.extensions_mut().insert(scope);
            next.run(request).await
        }
        Err(refused) => {
            let (status, kind, title) = match refused {
                Refused::Missing => (
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                ),
                Refused::Wrong => (
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "The credential is not valid",
                ),
            };
            ProblemResponse {
                authenticate: refused == Refused::Missing,
                ..ProblemResponse::new(status, kind, title, refused.to_string())
            }
            .into_response()
        }
    }
}

/// The request id (the client's, if it sent a usable one), in the span, the response
/// header and every problem body; and the request counted by route and status.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        actor = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let response = complete_problem(response, &id, &path).await;
    let status = response.status().as_u16();
    span.record("status", status);
    let _entered = span.enter();
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "served");
    if response.extensions().get::<Counted>().is_none() {
        metrics::counter!("devops_api_requests_total", "route" => "unmatched", "status" => status.to_string())
            .increment(1);
    }
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Marks a response counted by its route.
#[derive(Debug, Clone, Copy)]
struct Counted;

/// Counts a routed request by its route template and status.
async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut response = next.run(request).await;
    metrics::counter!(
        "devops_api_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response.extensions_mut().insert(Counted);
    response
}

/// Puts the request id and path into a problem body.
async fn complete_problem(response: Response, id: &str, path: &str) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if !is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("requestId".into(), id.into());
        object.insert("instance".into(), path.into());
    }
    let body = serde_json::to_vec(&value).unwrap_or_default();
    let mut response = Response::from_parts(parts, axum::body::Body::from(body));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}
