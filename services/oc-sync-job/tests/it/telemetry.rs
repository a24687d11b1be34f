//! Traces over OTLP: one span for the run, one per applied application, one per API call.

use platform::otlp_collector::OtlpCollector;

use crate::helpers::{Setup, instances};

#[tokio::test]
async fn every_api_call_is_a_span_under_the_run_exported_before_exit() {
    let collector = OtlpCollector::start().await.expect("collector");
    let setup = Setup::new(instances(3)).await;
    let run = setup
        .run_with_env(
            &["-o", "json"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = run.summary();
    let calls = summary["calls"]["open_connectors"].as_u64().expect("calls")
        + summary["calls"]["compass"].as_u64().expect("calls");

    let spans = collector.finish().await;
    assert!(
        spans.iter().all(|s| s.service == "oc-sync-job"),
        "{spans:?}"
    );
    let root = spans
        .iter()
        .find(|s| s.name == "oc_sync_run")
        .unwrap_or_else(|| panic!("no run span: {spans:?}"));
    let api_calls: Vec<_> = spans.iter().filter(|s| s.name == "api.call").collect();
    assert_eq!(
        api_calls.len() as u64,
        calls,
        "one span per call (no retries here)"
    );
    assert!(api_calls.iter().all(|s| s.trace_id == root.trace_id));
    let applied: Vec<_> = spans.iter().filter(|s| s.name == "apply").collect();
    assert_eq!(applied.len(), 3);
    assert!(applied.iter().all(|s| s.is_child_of(root)));
    // Each create's calls (its OpenAPI document, its registration) are under its span.
    for apply in &applied {
        let operations: Vec<&str> = api_calls
            .iter()
            .filter(|c| c.is_child_of(apply))
            .filter_map(|c| c.attribute("operation"))
            .collect();
        let application = apply.attribute("application").expect("application");
        assert_eq!(operations.len(), 2, "{application}: {operations:?}");
        assert!(operations.iter().any(|o| o.starts_with("GET /instances/")));
        assert!(operations.contains(&format!("registerApplication {application}").as_str()));
    }
    // Names and ids, never a secret.
    let everything = format!("{spans:?}");
    for secret in [
        crate::fake_oc::USER_SECRET,
        crate::fake_compass::CLIENT_SECRET,
        "instance-token-",
    ] {
        assert!(!everything.contains(secret), "{secret} exported");
    }
}
