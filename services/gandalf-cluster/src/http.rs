//! The cluster's admin API beyond the ops endpoints: `GET /v1/events?tenant=`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use crate::routing::Cluster;

#[derive(Debug, Deserialize)]
struct EventsQuery {
    tenant: Option<String>,
}

/// Routes merged into the ops server.
pub fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/aggregators", get(aggregators))
        .with_state(cluster)
}

/// The bounded event log of one tenant, oldest first.
async fn events(State(cluster): State<Arc<Cluster>>, Query(query): Query<EventsQuery>) -> Response {
    match query.tenant.filter(|t| !t.is_empty()) {
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "query parameter `tenant` is required" })),
        )
            .into_response(),
        Some(tenant) => {
            let events = cluster.events(&tenant);
            Json(json!({ "tenant": tenant, "events": events })).into_response()
        }
    }
}

/// Connected aggregators.
async fn aggregators(State(cluster): State<Arc<Cluster>>) -> Response {
    let list: Vec<_> = cluster
        .aggregators()
        .into_iter()
        .map(|(tenant, name)| json!({ "tenant": tenant, "logical_name": name }))
        .collect();
    Json(json!({ "aggregators": list })).into_response()
}
