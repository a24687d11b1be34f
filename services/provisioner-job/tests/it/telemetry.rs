//! Traces reach an OTLP collector and are flushed before the job exits.

use platform::otlp_collector::OtlpCollector;

use crate::helpers::{Backend, TestDb, run_with};

#[tokio::test]
async fn spans_are_exported_over_otlp_and_flushed_on_exit() {
    let collector = OtlpCollector::start().await.expect("collector");
    let endpoint = collector.endpoint().to_owned();

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
    let spans = collector.finish().await;
    assert!(
        !spans.is_empty(),
        "no spans exported; the job said:\n{}",
        out.stderr
    );
    assert!(
        spans.iter().all(|s| s.service == "provisioner-job"),
        "{spans:?}"
    );
    let span_names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let run = spans
        .iter()
        .find(|s| s.name == "provisioner_run")
        .unwrap_or_else(|| panic!("no run span: {span_names:?}"));

    // Database operations are children of the run in the exported trace.
    let db_children = spans
        .iter()
        .filter(|s| s.name == "db" && s.is_child_of(run))
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
