//! The aggregator's admin API beyond the ops endpoints.

use std::sync::Arc;

use axum::{
    Json, Router as HttpRouter,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::router::Router;

#[derive(Debug, Deserialize)]
struct CommandsQuery {
    since: Option<String>,
    aggregator: Option<String>,
}

/// `GET /v1/connections`, `GET /v1/commands?since=&aggregator=`.
pub fn routes(router: Arc<Router>) -> HttpRouter {
    HttpRouter::new()
        .route("/v1/connections", get(connections))
        .route("/v1/commands", get(commands))
        .with_state(router)
}

async fn connections(State(router): State<Arc<Router>>) -> Response {
    Json(json!({ "connections": router.connections() })).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `since`: RFC 3339 (`2026-11-22T10:00:00Z`) or unix milliseconds; default: the last hour.
fn parse_since(raw: Option<&str>) -> Result<OffsetDateTime, String> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(OffsetDateTime::now_utc() - time::Duration::hours(1));
    };
    if let Ok(ms) = raw.parse::<i64>() {
        return OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|e| format!("since={raw}: {e}"));
    }
    OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|_| format!("since={raw:?}: use RFC 3339 or unix milliseconds"))
}

async fn commands(
    State(router): State<Arc<Router>>,
    Query(query): Query<CommandsQuery>,
) -> Response {
    let since = match parse_since(query.since.as_deref()) {
        Ok(since) => since,
        Err(message) => return bad_request(message),
    };
    let Some(log) = router.command_log() else {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({ "error": "the tenant has no database configured; the command log is off" }),
            ),
        )
            .into_response();
    };
    let aggregator = query.aggregator.as_deref().filter(|a| !a.is_empty());
    match log.since(since, aggregator).await {
        Ok(records) => Json(json!({ "commands": records })).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "reading the command log failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the command log cannot be read now" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_unix_millis() {
        assert_eq!(
            parse_since(Some("1700000000000")).map(|t| t.unix_timestamp()),
            Ok(1_700_000_000)
        );
        assert_eq!(
            parse_since(Some("2026-11-22T10:00:00Z")).map(|t| t.unix_timestamp()),
            Ok(1_795_341_600)
        );
        assert!(parse_since(Some("yesterday")).is_err());
        assert!(parse_since(None).is_ok());
    }
}
