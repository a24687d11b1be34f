//! Start-up, readiness, secrets, reconnection.

use std::{sync::Arc, time::Duration};

use gandalf::connector::ConnectorError;
use gandalf_aggregator::StartError;

use crate::helpers::{
    AGG_SECRET, Aggregator, Cluster, acknowledge_all, aggregator_config, get_json,
};

#[tokio::test]
async fn readiness_comes_only_after_initialisation() {
    // The cluster's address is known, but nothing listens there yet.
    let placeholder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = placeholder.local_addr().expect("addr");
    drop(placeholder);
    let aggregator = Aggregator::spawn(aggregator_config(
        "agg-1",
        &[&format!("http://{addr}")],
        AGG_SECRET,
    ))
    .await;

    let health = reqwest::get(format!("{}/healthz", aggregator.admin))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "alive while starting");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        aggregator.ready_status().await,
        503,
        "not ready without a cluster"
    );
    let body = get_json(&format!("{}/readyz", aggregator.admin)).await;
    assert!(
        body["waiting_for"]
            .as_array()
            .is_some_and(|w| !w.is_empty()),
        "{body}"
    );

    let cluster = Cluster::start_at(addr, None).await;
    aggregator.wait_ready().await;
    let connections = aggregator.connections().await;
    assert_eq!(connections["connections"][0]["kind"], "cluster");
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn an_aggregator_whose_own_secret_is_rejected_stops_with_the_reason() {
    let cluster = Cluster::start(None).await;
    let aggregator =
        Aggregator::spawn(aggregator_config("agg-1", &[&cluster.grpc], "wrong-secret")).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), aggregator.task)
        .await
        .expect("stops")
        .expect("join");
    match outcome {
        Err(StartError::SecretRejected { reason, .. }) => {
            assert!(reason.contains("acme"), "{reason}")
        }
        other => panic!("expected a rejected secret, got {other:?}"),
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_connector_with_a_bad_secret_is_refused_with_permission_denied() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    match aggregator
        .try_connector("intruder", "erp", "not-the-secret")
        .await
    {
        Err(ConnectorError::Rejected(reason)) => assert!(reason.contains("rejected"), "{reason}"),
        Err(other) => panic!("expected a rejection, got {other}"),
        Ok(_) => panic!("expected a rejection"),
    }
    // It never became a connection.
    let connections = aggregator.connections().await;
    assert!(
        connections["connections"]
            .as_array()
            .expect("list")
            .iter()
            .all(|c| c["logical_name"] != "intruder"),
        "{connections}"
    );
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn after_a_cluster_member_restart_the_aggregator_reconnects_and_routing_resumes() {
    let cluster = Cluster::start(None).await;
    let addr = cluster.addr;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;
    let receiver = Arc::new(aggregator.connector("crm-1", "crm").await);
    let _serve = acknowledge_all(receiver);
    assert!(
        sender
            .send_command("crm", "BEFORE", "{}", 1000)
            .await
            .is_ok()
    );

    cluster.stop().await;
    // Not ready while the member is gone.
    let mut went_unready = false;
    for _ in 0..100 {
        if aggregator.ready_status().await == 503 {
            went_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(went_unready, "readiness follows the cluster connection");

    let restarted = Cluster::start_at(addr, None).await;
    aggregator.wait_ready().await;
    // The restarted member learns the connectors again from the aggregator.
    let mut delivered = false;
    for _ in 0..50 {
        if sender.send_command("crm", "AFTER", "{}", 500).await.is_ok() {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "routing resumed after the restart");
    aggregator.stop().await;
    restarted.stop().await;
}

#[tokio::test]
async fn the_binary_exits_1_naming_the_step_when_its_secret_is_rejected() {
    let cluster = Cluster::start(None).await;
    let dir = std::env::temp_dir().join(format!("agg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("aggregator.yaml");
    std::fs::write(
        &config,
        format!(
            "logical_name: agg-bin\ntenant: acme\nsecret: not-the-secret\nlisten: 127.0.0.1:0\n\
             admin_listen: 127.0.0.1:0\ncluster: [\"{}\"]\nstartup_timeout_secs: 10\n",
            cluster.grpc
        ),
    )
    .expect("write");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gandalf-aggregator"))
        .arg("--config")
        .arg(&config)
        .env("LOG_FORMAT", "text")
        .env_remove("RUST_LOG")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("exits")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step 2/5 (secret)"), "{stderr}");
    assert!(
        stderr.contains("rejected this aggregator's secret"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "the secret is never printed"
    );
    let _ = std::fs::remove_dir_all(&dir);
    cluster.stop().await;
}

#[tokio::test]
async fn bad_config_exits_1_naming_the_keys() {
    let dir = std::env::temp_dir().join(format!("agg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("aggregator.yaml");
    std::fs::write(
        &config,
        "tenant: acme\ncluster: [\"127.0.0.1:9100\"]\nmax_timeout_ms: 0\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gandalf-aggregator"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for problem in [
        "logical_name: must be set",
        "secret: must be set",
        "must start with http://",
        "max_timeout_ms",
    ] {
        assert!(stderr.contains(problem), "{problem}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_1_and_version_is_the_service_s_own() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gandalf-aggregator"))
            .args(args)
            .output()
            .expect("runs")
    };
    let bad = run(&["--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(1), "a usage error is a fatal start");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");

    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("gandalf-aggregator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn print_config_of_an_invalid_config_shows_what_was_loaded_then_the_problems() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("aggregator.yaml");
    std::fs::write(
        &config,
        "tenant: acme\nsecret: hush-hush\ncluster: [\"127.0.0.1:9100\"]\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gandalf-aggregator"))
        .arg("--print-config")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("tenant: acme"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:9100"), "{stdout}");
    assert!(!stdout.contains("hush-hush"), "the secret stays redacted");
    assert!(stderr.contains("logical_name: must be set"), "{stderr}");
    assert!(stderr.contains("must start with http://"), "{stderr}");
}

/// Where a fake cluster member hangs.
#[derive(Clone, Copy)]
enum Hang {
    /// Never answers the stream's opening (no response headers).
    Opening,
    /// Opens the stream and never sends the VALIDATION_REPLY.
    Validation,
    /// Answers VALIDATION_REPLY false and then holds the stream open, without the reason.
    Reason,
}

/// A member that speaks the wire format up to the point where it hangs, counting the
/// streams opened to it.
struct HangingMember {
    hang: Hang,
    opened: Arc<std::sync::atomic::AtomicUsize>,
}

type FrameStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<gandalf::frame::Frame, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl gandalf::frame::Connect for HangingMember {
    const SERVICE: &'static str = "gandalf.v1.Cluster";
    const PATH: &'static str = "/gandalf.v1.Cluster/Connect";
    type Stream = FrameStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<gandalf::frame::Received>>,
    ) -> Result<tonic::Response<FrameStream>, tonic::Status> {
        use tokio_stream::StreamExt;
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Read what the aggregator sends, so that its side of the stream stays open.
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let stream: FrameStream =
            match self.hang {
                Hang::Opening => std::future::pending().await,
                Hang::Validation => Box::pin(tokio_stream::pending()),
                Hang::Reason => {
                    let refusal = gandalf::frame::Frame::encode(
                        &gandalf::protocol::validation_reply(crate::helpers::TENANT, false, ""),
                    );
                    Box::pin(tokio_stream::iter([Ok(refusal)]).chain(tokio_stream::pending()))
                }
            };
        Ok(tonic::Response::new(stream))
    }
}

/// Serves a [`HangingMember`] on 127.0.0.1: its URL and its count of streams opened.
async fn hanging_member(hang: Hang) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let member = HangingMember {
        hang,
        opened: opened.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(gandalf::frame::FrameServer::new(member, 1024 * 1024))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, opened)
}

#[tokio::test]
async fn a_member_that_hangs_opening_the_stream_or_validating_is_given_up_on_and_retried() {
    let (opening, opened_opening) = hanging_member(Hang::Opening).await;
    let (validation, opened_validation) = hanging_member(Hang::Validation).await;
    let aggregator = Aggregator::spawn(aggregator_config(
        "agg-1",
        &[&opening, &validation],
        AGG_SECRET,
    ))
    .await;

    // Each wait is bounded (2 s to open the stream, 5 s for the VALIDATION_REPLY), so
    // each member is tried again after it; an unbounded wait tries each once, for good.
    let started = std::time::Instant::now();
    let count =
        |opened: &std::sync::atomic::AtomicUsize| opened.load(std::sync::atomic::Ordering::SeqCst);
    while (count(&opened_opening) < 2 || count(&opened_validation) < 2)
        && started.elapsed() < Duration::from_secs(12)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        count(&opened_opening) >= 2,
        "the member that never opens the stream is tried again ({} streams)",
        count(&opened_opening)
    );
    assert!(
        count(&opened_validation) >= 2,
        "the member that never validates is tried again ({} streams)",
        count(&opened_validation)
    );
    assert_eq!(
        aggregator.ready_status().await,
        503,
        "no member validated it"
    );
    aggregator.stop().await;
}

#[tokio::test]
async fn a_member_that_refuses_and_holds_the_stream_stops_the_start_up_with_a_reason() {
    let (member, _) = hanging_member(Hang::Reason).await;
    let aggregator = Aggregator::spawn(aggregator_config("agg-1", &[&member], AGG_SECRET)).await;
    // The reason after a refusal is waited for 5 s at most: then the refusal stands.
    let outcome = tokio::time::timeout(Duration::from_secs(10), aggregator.task)
        .await
        .expect("the start-up ends although the member never says why")
        .expect("join");
    match outcome {
        Err(StartError::SecretRejected {
            member: named,
            reason,
        }) => {
            assert_eq!(named, member);
            assert_eq!(reason, "VALIDATION_REPLY false");
        }
        other => panic!("expected a rejected secret, got {other:?}"),
    }
}
