//! Metric handles taken and descriptions given at start-up, before the admin endpoint
//! serves, are the ones `/metrics` renders. A handle taken while no recorder is installed
//! belongs to the no-op recorder for good, so the recorder must exist from the start.
//!
//! Its own test binary: the recorder is process-wide, and another test serving `/metrics`
//! first would install it and hide a missing install.

use platform::ops::{OpsServer, Readiness};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn handles_and_descriptions_from_start_up_are_rendered() {
    let _telemetry = platform::telemetry::init(platform::service!()).expect("telemetry");
    metrics::describe_gauge!("start_up_queue_rows", "Rows queued (described at start-up)");
    let gauge = metrics::gauge!("start_up_queue_rows");

    let server = OpsServer::bind("127.0.0.1:0".parse().expect("addr"), Readiness::default())
        .await
        .expect("bind");
    let counter = metrics::counter!("between_bind_and_run_total");
    let base = format!("http://{}", server.local_addr().expect("addr"));
    gauge.set(7.0);
    counter.increment(2);
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));

    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("start_up_queue_rows 7"), "{text}");
    assert!(
        text.contains("# HELP start_up_queue_rows Rows queued (described at start-up)"),
        "{text}"
    );
    assert!(text.contains("between_bind_and_run_total 2"), "{text}");

    stop.cancel();
    task.await.expect("join").expect("serve");
}
