//! Logs and traces for every service.
//!
//! - `RUST_LOG` filters (default `info`).
//! - `LOG_FORMAT=json|text`; without it, JSON inside a container (Kubernetes sets
//!   `KUBERNETES_SERVICE_HOST`) and text elsewhere. Logs go to stderr, so a job's stdout
//!   carries only its summary.
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` set: spans are exported over OTLP/gRPC (the standard
//!   `OTEL_*` variables tune the exporter). Unset: nothing is exported and nothing fails.
//! - The W3C trace-context propagator is installed, and [`inject`] / [`extract`] carry
//!   the current trace across HTTP headers (tonic metadata converts to and from them).
//! - The process-wide metrics recorder (rendered by the admin endpoint's `/metrics`) is
//!   installed here, so metric handles taken and descriptions given at start-up, before
//!   the endpoint serves, are recorded (a handle taken with no recorder installed stays a
//!   no-op for good).
//!
//! [`init`] returns a [`TelemetryGuard`]; [`TelemetryGuard::shutdown`] flushes the spans
//! still buffered, so a job's last spans are not lost when it exits.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Service;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (log collectors).
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT`, or the default for where the process runs.
    pub fn from_env() -> Result<Self, TelemetryError> {
        match std::env::var("LOG_FORMAT") {
            Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
                "json" => Ok(Self::Json),
                "text" => Ok(Self::Text),
                _ => Err(TelemetryError::LogFormat(value)),
            },
            Err(_) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Ok(Self::Json),
            Err(_) => Ok(Self::Text),
        }
    }
}

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("LOG_FORMAT={0:?} is not valid: use json or text")]
    LogFormat(String),
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(String),
    #[error("cannot build the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; flush it with [`TelemetryGuard::shutdown`] before exit.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (bounded: a dead collector cannot hold up exit).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            // The SDK blocks while flushing; keep that off the async workers.
            let flushed = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(Duration::from_secs(5))
            })
            .await;
            if let Ok(Err(err)) = flushed {
                eprintln!("warning: traces not fully exported on exit: {err}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

/// Installs the global subscriber. Call once, inside the tokio runtime, after the config
/// has loaded (config errors are printed to stderr before telemetry exists).
pub fn init(service: Service) -> Result<TelemetryGuard, TelemetryError> {
    init_with_filter(service, None)
}

/// [`init`] with another filter than `info` when `RUST_LOG` is unset (a service whose
/// config file names its log level); `RUST_LOG` still wins.
pub fn init_with_filter(
    service: Service,
    default_filter: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    let format = LogFormat::from_env()?;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        _ => EnvFilter::try_new(default_filter.unwrap_or("info"))
            .map_err(|e| TelemetryError::Filter(e.to_string()))?,
    };

    let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
    };

    let provider = otlp_provider(service)?;
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.name))
            .boxed()
    });

    crate::ops::metrics_handle();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }

    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .with(filter)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;

    Ok(TelemetryGuard { provider })
}

fn otlp_provider(service: Service) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    if !endpoint_set {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build(),
    ))
}

/// What the exported spans say about their source.
fn resource(service: Service) -> Resource {
    Resource::builder()
        .with_service_name(service.name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            service.version,
        ))
        .build()
}

/// Makes `span` (created with `parent: None`) a child of the current span in the
/// exported trace only, not in `tracing`'s own span tree.
///
/// Use it for work handed to threads or tasks that may hold the span after the caller
/// has moved on (SQLite's connection workers keep the span of their last command until
/// they exit): a real child would keep the caller's span open with it, so the caller's
/// span could end after the exit flush and be lost.
///
/// ```
/// let span = platform::telemetry::linked(tracing::info_span!(parent: None, "db", operation = "read"));
/// ```
pub fn linked(span: tracing::Span) -> tracing::Span {
    // Fails only when no OpenTelemetry layer is installed: then there is nothing to link.
    let _ = span.set_parent(tracing::Span::current().context());
    span
}

/// Writes the current span's trace context into outgoing HTTP (or gRPC) headers.
pub fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Reads a caller's trace context from incoming headers; make it the parent of the
/// handling span with `span.set_parent(extract(&headers))`.
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{Key, Value, trace::TraceContextExt};

    use super::*;

    #[test]
    fn the_resource_carries_the_service_s_own_name_and_version() {
        let resource = resource(Service {
            name: "some-service",
            version: "7.3.1",
        });
        assert_eq!(
            resource.get(&Key::new("service.name")),
            Some(Value::from("some-service"))
        );
        assert_eq!(
            resource.get(&Key::new("service.version")),
            Some(Value::from("7.3.1")),
            "the service's version, not the platform crate's ({})",
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn a_traceparent_header_is_read_back_as_the_remote_parent() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = extract(&headers);
        let span = context.span();
        let span_context = span.span_context();
        assert!(span_context.is_remote());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut out = HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(&mut out));
        });
        assert_eq!(
            out.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
