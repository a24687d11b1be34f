//! An OTLP trace collector for the services' tests (feature `otlp-collector`): a gRPC
//! `TraceService` on 127.0.0.1 that keeps every span exported to it, so a test can run a
//! binary with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at it and check what arrived.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A span as it was exported, with its service's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSpan {
    /// `service.name` of the resource that exported it.
    pub service: String,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    /// Its attributes, string-rendered.
    pub attributes: Vec<(String, String)>,
}

impl ExportedSpan {
    /// The value of one attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `parent` is this span's parent in the same trace.
    pub fn is_child_of(&self, parent: &ExportedSpan) -> bool {
        self.trace_id == parent.trace_id && self.parent_span_id == parent.span_id
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running collector.
pub struct OtlpCollector {
    endpoint: String,
    received: Received,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl OtlpCollector {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let received = Received::default();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(received.clone()))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        Ok(Self {
            endpoint,
            received,
            stop,
            server,
        })
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Stops the collector and gives every span it received, in arrival order.
    pub async fn finish(self) -> Vec<ExportedSpan> {
        self.stop.cancel();
        let _ = self.server.await;
        let requests =
            std::mem::take(&mut *self.received.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut spans = Vec::new();
        for resource_spans in requests.iter().flat_map(|r| r.resource_spans.iter()) {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(render)
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .iter()
                .flat_map(|s| s.spans.iter())
            {
                spans.push(ExportedSpan {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: span.trace_id.clone(),
                    span_id: span.span_id.clone(),
                    parent_span_id: span.parent_span_id.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                kv.value.as_ref().map(render).unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
        spans
    }
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
