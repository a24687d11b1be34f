//! The topology rules: slow and stalled peers, several members and aggregators.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gandalf::{
    protocol::{self, ComponentType},
    wire::{
        Envelope, aggregator_client::AggregatorClient, cluster_client::ClusterClient,
        envelope::Body,
    },
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Streaming};

use crate::helpers::{AGG_SECRET, Aggregator, CONNECTOR_SECRET, Cluster, TENANT};

/// A connector that validates and then never reads again: its stream and the channel
/// behind it are held open.
pub struct SilentConnector {
    pub inbound: Streaming<Envelope>,
    pub outbound: tokio::sync::mpsc::Sender<Envelope>,
}

impl SilentConnector {
    pub async fn connect(aggregator: &Aggregator, name: &str, connector_type: &str) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(aggregator.grpc.clone())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        let mut client = AggregatorClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(protocol::validation(TENANT, CONNECTOR_SECRET))
            .await
            .expect("queued");
        let mut request = Request::new(ReceiverStream::new(rx));
        protocol::Peer {
            logical_name: name.into(),
            component_type: ComponentType::Connector,
            connector_type: Some(connector_type.into()),
        }
        .write_metadata(request.metadata_mut())
        .expect("metadata");
        let mut inbound = client.connect(request).await.expect("stream").into_inner();
        match protocol::await_validation(&mut inbound, Duration::from_secs(5)).await {
            protocol::Validation::Accepted => {}
            other => panic!("validation: {other:?}"),
        }
        Self {
            inbound,
            outbound: tx,
        }
    }
}

/// An aggregator's stream to the cluster that validates and then never reads again.
pub struct SilentAggregator {
    pub inbound: Streaming<Envelope>,
    pub outbound: tokio::sync::mpsc::Sender<Envelope>,
}

impl SilentAggregator {
    pub async fn connect(cluster: &Cluster, name: &str) -> Self {
        match Self::try_connect(cluster, name, AGG_SECRET).await {
            Ok(silent) => silent,
            Err(reason) => panic!("validation: {reason}"),
        }
    }

    /// Opens a Cluster stream as aggregator `name` with `secret`; the refusal's reason.
    pub async fn try_connect(cluster: &Cluster, name: &str, secret: &str) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(cluster.grpc.clone())
            .expect("url")
            .connect()
            .await
            .expect("connects");
        let mut client = ClusterClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(protocol::validation(TENANT, secret))
            .await
            .expect("queued");
        let mut request = Request::new(ReceiverStream::new(rx));
        protocol::Peer {
            logical_name: name.into(),
            component_type: ComponentType::Aggregator,
            connector_type: None,
        }
        .write_metadata(request.metadata_mut())
        .expect("metadata");
        let mut inbound = match client.connect(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
        };
        match protocol::await_validation(&mut inbound, Duration::from_secs(5)).await {
            protocol::Validation::Accepted => Ok(Self {
                inbound,
                outbound: tx,
            }),
            other => Err(format!("{other:?}")),
        }
    }
}

async fn metrics(admin: &str) -> String {
    reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Sends `count` events named `name` of about a KiB each, 100 every 20 ms (at most 5,000
/// a second: within what the whole path sustains on 2 cores, so healthy queues do not
/// overflow); fails when routing holds the sender back for 30 s.
pub async fn flood(sender: &gandalf::connector::Connector, name: &str, count: usize) {
    let payload = "p".repeat(1024);
    tokio::time::timeout(Duration::from_secs(30), async {
        for i in 0..count {
            sender
                .send_event("orders", name, &payload)
                .await
                .expect("send");
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .expect("routing held the sender back for 30 s");
}

/// Waits (up to 10 s) until `routed` says the stalled peer left routing, keeping a trickle
/// of events going from `sender`: a push is what notices a stall.
async fn until_gone<F, Fut>(sender: &gandalf::connector::Connector, mut routed: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(still) = routed().await {
        assert!(Instant::now() < deadline, "still routed to: {still}");
        sender
            .send_event("orders", "TRICKLE", "")
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a stream to its end (within 10 s): the status it ended with, if any.
async fn end_of(inbound: &mut Streaming<Envelope>) -> Option<tonic::Code> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the silent stream ends once read")
}

fn is_event(envelope: &Envelope, name: &str) -> bool {
    matches!(&envelope.body, Some(Body::Event(e)) if e.event == name)
}

/// Counts the events named `name` a connector receives, in the background.
pub fn count_events(
    connector: &gandalf::connector::Connector,
    name: &'static str,
) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let mut rx = connector.subscribe();
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(envelope) if is_event(&envelope, name) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                // They reached the connector; only this subscription fell behind.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    counter.fetch_add(usize::try_from(n).unwrap_or(usize::MAX), Ordering::Relaxed);
                }
                Err(_) => return,
            }
        }
    });
    count
}

pub async fn wait_count(count: &AtomicUsize, want: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while count.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    count.load(Ordering::Relaxed)
}

/// A connector that stops reading fills its queue; routing never waits for it: the
/// others get every event at full speed, and once its queue has stayed full for the
/// stall limit the connection is closed (it reads RESOURCE_EXHAUSTED when it reads again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_stops_reading_is_closed_and_slows_no_one() {
    const EVENTS: usize = 6000;
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("sender", "erp").await;
    let healthy = aggregator.connector("healthy", "erp").await;
    let mut silent = SilentConnector::connect(&aggregator, "silent", "erp").await;
    let received = count_events(&healthy, "FLOOD");

    let started = Instant::now();
    flood(&sender, "FLOOD", EVENTS).await;
    let got = wait_count(&received, EVENTS, Duration::from_secs(20)).await;
    // Messages are dropped only for a full queue (counted); the healthy path keeps up.
    assert!(
        got * 10 >= EVENTS * 9,
        "the healthy connector got {got} of {EVENTS} in {:?}",
        started.elapsed()
    );

    // The stalled connection is gone from routing, and its stream says why.
    until_gone(&sender, || async {
        let connections = aggregator.connections().await;
        let names: Vec<String> = connections["connections"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["logical_name"].as_str().map(str::to_owned))
            .collect();
        names
            .iter()
            .any(|n| n == "silent")
            .then(|| format!("{names:?}"))
    })
    .await;
    assert_eq!(
        end_of(&mut silent.inbound).await,
        Some(tonic::Code::ResourceExhausted)
    );
    let metrics = metrics(&aggregator.admin).await;
    assert!(
        metrics.contains(r#"gandalf_aggregator_connections_closed_total{reason="stalled"} 1"#),
        "{metrics}"
    );
    aggregator.stop().await;
    cluster.stop().await;
}

/// The same on the cluster: an aggregator stream that stops reading does not hold back
/// the events the member forwards to the other aggregators, and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_stream_that_stops_reading_is_closed_by_the_member_and_slows_no_one() {
    const EVENTS: usize = 6000;
    let cluster = Cluster::start(None).await;
    let left = Aggregator::start("agg-left", &cluster).await;
    let right = Aggregator::start("agg-right", &cluster).await;
    let mut silent = SilentAggregator::connect(&cluster, "agg-silent").await;
    let sender = left.connector("sender", "erp").await;
    let remote = right.connector("remote", "erp").await;
    let received = count_events(&remote, "FLOOD");

    let started = Instant::now();
    flood(&sender, "FLOOD", EVENTS).await;
    let got = wait_count(&received, EVENTS, Duration::from_secs(20)).await;
    assert!(
        got * 10 >= EVENTS * 9,
        "the remote connector got {got} of {EVENTS} in {:?}",
        started.elapsed()
    );

    until_gone(&sender, || async {
        let list = crate::helpers::get_json(&format!("{}/v1/aggregators", cluster.admin)).await;
        list.to_string()
            .contains("agg-silent")
            .then(|| list.to_string())
    })
    .await;
    assert_eq!(
        end_of(&mut silent.inbound).await,
        Some(tonic::Code::ResourceExhausted)
    );
    let metrics = metrics(&cluster.admin).await;
    assert!(
        metrics.contains(r#"gandalf_cluster_connections_closed_total{reason="stalled"} 1"#),
        "{metrics}"
    );
    left.stop().await;
    right.stop().await;
    cluster.stop().await;
}

/// A connector asking for the tenant's database gets an error event, never the
/// credentials (they are for aggregators, for the command log).
#[tokio::test]
async fn a_connector_cannot_ask_for_the_tenant_database() {
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        panic!("TEST_DATABASE_URL is not set: run the tests with `make test`");
    };
    let url = crate::commands::fresh_database(&admin).await;
    let cluster = Cluster::start(Some(url.clone())).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let connector = aggregator.connector("curious", "erp").await;
    let mut rx = connector.subscribe();
    let request = protocol::configuration_database(TENANT, protocol::REQUEST, "");
    let uuid = request
        .header
        .as_ref()
        .map(|h| h.uuid.clone())
        .expect("uuid");
    connector.send(request).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let envelope = rx.recv().await.expect("open");
            match &envelope.body {
                Some(Body::ConfigurationDatabase(_)) => return envelope,
                Some(Body::Event(e)) if e.reference_uuid == uuid => return envelope,
                _ => {}
            }
        }
    })
    .await
    .expect("an answer");
    match &answer.body {
        Some(Body::Event(e)) => {
            assert_eq!(
                (e.topic.as_str(), e.event.as_str()),
                ("error", protocol::FORBIDDEN)
            );
            assert!(!e.payload.contains("postgres"), "{}", e.payload);
            assert!(!e.payload.contains(&url), "{}", e.payload);
        }
        other => panic!("the database reached a connector: {other:?}"),
    }
    aggregator.stop().await;
    cluster.stop().await;
}

/// With `aggregator_secrets` set, a connector's secret cannot open a Cluster stream as an
/// aggregator (it would receive every event and command of the tenant), while connectors
/// still validate with it through their aggregator.
#[tokio::test]
async fn a_connector_secret_cannot_open_a_cluster_stream_as_an_aggregator() {
    let cluster = Cluster::start(None).await;
    let refused = SilentAggregator::try_connect(&cluster, "impostor", CONNECTOR_SECRET).await;
    match refused {
        Err(reason) => assert!(reason.contains("Rejected"), "{reason}"),
        Ok(_) => panic!("a connector secret opened an aggregator stream"),
    }
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    aggregator.connector("fine", "erp").await;
    assert!(
        aggregator
            .try_connector("bad", "erp", AGG_SECRET)
            .await
            .is_err(),
        "an aggregator secret does not validate a connector"
    );
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_flood_of_commands_to_a_silent_type_is_bounded_and_the_excess_answered_at_once() {
    let cluster = Cluster::start(None).await;
    let aggregator =
        Aggregator::start_with("agg-1", &cluster, |c| c.max_commands_per_connection = 4).await;
    let sender = Arc::new(aggregator.connector("billing-1", "erp").await);
    let _silent = aggregator.connector("crm-1", "crm").await;

    let started = Instant::now();
    let mut pending = Vec::new();
    for _ in 0..10 {
        let sender = sender.clone();
        pending.push(tokio::spawn(async move {
            let outcome = sender.send_command("crm", "SYNC", "{}", 1000).await;
            (outcome, started.elapsed())
        }));
    }
    let mut busy = 0;
    let mut waited = 0;
    for task in pending {
        match task.await.expect("join") {
            (Err(gandalf::connector::ConnectorError::NotDelivered { event, .. }), took)
                if event == protocol::BUSY =>
            {
                assert!(
                    took < Duration::from_millis(500),
                    "BUSY comes at once: {took:?}"
                );
                busy += 1;
            }
            (Err(gandalf::connector::ConnectorError::NotDelivered { event, .. }), took) => {
                assert_eq!(event, protocol::UNDELIVERABLE);
                assert!(took >= Duration::from_millis(500), "{took:?}");
                waited += 1;
            }
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (waited, busy),
        (4, 6),
        "4 in flight at most, the rest refused"
    );
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_half_open_connector_is_dropped_once_its_heartbeats_stop_and_heartbeats_flow_both_ways() {
    let cluster = Cluster::start(None).await;
    let aggregator =
        Aggregator::start_with("agg-1", &cluster, |c| c.heartbeat_interval_ms = 200).await;
    let mut half_open = SilentConnector::connect(&aggregator, "half-open", "erp").await;
    // The aggregator's heartbeats arrive on the stream.
    let first = tokio::time::timeout(Duration::from_secs(2), half_open.inbound.message())
        .await
        .expect("a message within 2 s")
        .expect("stream open")
        .expect("a message");
    assert!(
        matches!(first.body, Some(Body::Heartbeat(_))),
        "a heartbeat: {first:?}"
    );
    // One heartbeat from the connector, then silence with the stream still open.
    half_open
        .outbound
        .send(gandalf::heartbeat::heartbeat(
            TENANT,
            "connector",
            "half-open",
        ))
        .await
        .expect("sent");
    let started = Instant::now();
    until_unlisted(&aggregator, "half-open", Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "held to three intervals of silence, not fewer: {took:?}"
    );
    let text = metrics(&aggregator.admin).await;
    assert!(
        text.lines().any(
            |l| l.starts_with("gandalf_aggregator_connections_closed_total")
                && l.contains("reason=\"silent\"")
        ),
        "{text}"
    );
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_connector_that_never_sends_heartbeats_is_not_held_to_them() {
    let cluster = Cluster::start(None).await;
    let aggregator =
        Aggregator::start_with("agg-1", &cluster, |c| c.heartbeat_interval_ms = 100).await;
    let _quiet = SilentConnector::connect(&aggregator, "quiet", "erp").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let connections = aggregator.connections().await;
    assert!(
        connections["connections"]
            .as_array()
            .expect("list")
            .iter()
            .any(|c| c["logical_name"] == "quiet"),
        "{connections}"
    );
    aggregator.stop().await;
    cluster.stop().await;
}

/// Waits until `aggregator` no longer lists connector `name` (fails after `within`).
async fn until_unlisted(aggregator: &Aggregator, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let connections = aggregator.connections().await;
        let listed = connections["connections"]
            .as_array()
            .is_some_and(|all| all.iter().any(|c| c["logical_name"] == name));
        if !listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still connected: {connections}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_ends_only_its_sender_s_stream() {
    let cluster = Cluster::start(None).await;
    let aggregator =
        Aggregator::start_with("agg-1", &cluster, |c| c.max_message_bytes = 64 * 1024).await;
    let oversize = aggregator.connector("big", "erp").await;
    let sender = aggregator.connector("small", "erp").await;
    let receiver = aggregator.connector("reader", "crm").await;
    let mut at_receiver = receiver.subscribe();

    let _ = oversize
        .send_event("orders", "HUGE", &"x".repeat(128 * 1024))
        .await;
    until_unlisted(&aggregator, "big", Duration::from_secs(5)).await;
    sender
        .send_event("orders", "SMALL", "fits")
        .await
        .expect("send");
    let got = crate::helpers::next_event(&mut at_receiver, "SMALL").await;
    assert!(got.header.is_some());
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_half_open_aggregator_stream_is_closed_by_the_member_once_its_heartbeats_stop() {
    let cluster = Cluster::start_heartbeating(200).await;
    let mut half_open = SilentAggregator::connect(&cluster, "agg-half-open").await;
    half_open
        .outbound
        .send(gandalf::heartbeat::heartbeat(
            TENANT,
            "aggregator",
            "agg-half-open",
        ))
        .await
        .expect("sent");
    let started = Instant::now();
    let code = end_of(&mut half_open.inbound).await;
    let took = started.elapsed();
    assert_eq!(code, Some(tonic::Code::Unavailable), "closed as gone");
    assert!(
        took >= Duration::from_millis(500),
        "held to three intervals of silence, not fewer: {took:?}"
    );
    let list = crate::helpers::get_json(&format!("{}/v1/aggregators", cluster.admin)).await;
    assert!(!list.to_string().contains("agg-half-open"), "{list}");
    cluster.stop().await;
}
