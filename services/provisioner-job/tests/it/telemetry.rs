//! Traces reach an OTLP collector and are flushed before the job exits.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestDb, run_with};

/// A collector that keeps every export request it receives.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_flushed_on_exit() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );

    let db = TestDb::with_cluster(Backend::Sqlite).await;
    let config = db.config(&[("traced", "Traced AB", None)]);
    let out = run_with(
        &[],
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("RUST_LOG", "info,opentelemetry_sdk=debug"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The job has exited: whatever it exported has arrived.
    stop.cancel();
    server.await.expect("join").expect("server");
    let requests = collector.0.lock().expect("lock").clone();
    let resource_spans: Vec<_> = requests
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .collect();
    assert!(
        !resource_spans.is_empty(),
        "no spans exported; the job said:\n{}",
        out.stderr
    );
    let service_names: Vec<String> = resource_spans
        .iter()
        .filter_map(|rs| rs.resource.as_ref())
        .flat_map(|r| r.attributes.iter())
        .filter(|kv| kv.key == "service.name")
        .filter_map(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            },
        )
        .collect();
    assert!(
        service_names.iter().all(|s| s == "provisioner-job") && !service_names.is_empty(),
        "{service_names:?}"
    );
    let span_names: Vec<&str> = resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .map(|s| s.name.as_str())
        .collect();
    assert!(span_names.contains(&"provisioner_run"), "{span_names:?}");

    // Database operations are children of the run in the exported trace.
    let spans: Vec<_> = resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .collect();
    let run = spans
        .iter()
        .find(|s| s.name == "provisioner_run")
        .expect("run span");
    let db_children = spans
        .iter()
        .filter(|s| s.name == "db" && s.trace_id == run.trace_id && s.parent_span_id == run.span_id)
        .count();
    assert!(
        db_children >= 3,
        "{db_children} db spans under the run: {span_names:?}"
    );
}

#[tokio::test]
async fn an_unset_endpoint_exports_nothing_and_fails_nothing() {
    let db = TestDb::with_cluster(Backend::Sqlite).await;
    let config = db.config(&[("quiet", "Quiet AB", None)]);
    let out = run_with(&[], &config, &[("LOG_FORMAT", "json")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in out.stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
}
