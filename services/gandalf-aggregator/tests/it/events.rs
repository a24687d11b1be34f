//! Events, dedup, tenants and malformed envelopes.

use std::time::Duration;

use gandalf::{
    protocol,
    wire::{Envelope, Header, envelope::Body},
};

use crate::helpers::{Aggregator, Cluster, next_event};

#[tokio::test]
async fn an_event_reaches_every_connection_but_its_origin() {
    let cluster = Cluster::start(None).await;
    let left = Aggregator::start("agg-left", &cluster).await;
    let right = Aggregator::start("agg-right", &cluster).await;
    let origin = left.connector("a", "erp").await;
    let neighbour = left.connector("b", "erp").await;
    let remote = right.connector("c", "crm").await;
    let (mut at_origin, mut at_neighbour, mut at_remote) = (
        origin.subscribe(),
        neighbour.subscribe(),
        remote.subscribe(),
    );

    let uuid = origin
        .send_event("orders", "ORDER_CREATED", r#"{"id":1}"#)
        .await
        .expect("send");
    for rx in [&mut at_neighbour, &mut at_remote] {
        let got = next_event(rx, "ORDER_CREATED").await;
        assert_eq!(got.header.map(|h| h.uuid), Some(uuid.clone()));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next_event_any(&mut at_origin))
            .await
            .is_err(),
        "the origin does not get its own event"
    );
    let log = cluster.events().await;
    assert!(
        log["events"]
            .as_array()
            .expect("log")
            .iter()
            .any(|e| e["uuid"] == uuid.as_str())
    );
    left.stop().await;
    right.stop().await;
    cluster.stop().await;
}

async fn next_event_any(rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Envelope>>) {
    loop {
        if let Ok(envelope) = rx.recv().await
            && let Some(Body::Event(_)) = envelope.body
        {
            return;
        }
    }
}

#[tokio::test]
async fn the_same_uuid_sent_twice_is_delivered_once() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("a", "erp").await;
    let receiver = aggregator.connector("b", "erp").await;
    let mut rx = receiver.subscribe();

    let event = protocol::event(
        protocol::ERROR_TOPIC.trim_start_matches("error"),
        "t",
        "TWICE",
        "",
        "",
    );
    let mut event = event;
    if let Some(h) = event.header.as_mut() {
        h.tenant = "acme".into();
    }
    sender.send(event.clone()).await.expect("send");
    sender.send(event).await.expect("send again");
    sender.send_event("t", "AFTER", "").await.expect("send");

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(envelope)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let Some(Body::Event(e)) = &envelope.body {
            seen.push(e.event.clone());
            if e.event == "AFTER" {
                break;
            }
        }
    }
    assert_eq!(seen, ["TWICE", "AFTER"]);
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_wrong_tenant_message_is_refused_back_to_the_origin_and_reported_to_the_cluster() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("a", "erp").await;
    let receiver = aggregator.connector("b", "erp").await;
    let (mut at_sender, mut at_receiver) = (sender.subscribe(), receiver.subscribe());

    let foreign = protocol::event("globex", "t", "FOREIGN", "", "");
    let uuid = foreign
        .header
        .as_ref()
        .map(|h| h.uuid.clone())
        .expect("uuid");
    sender.send(foreign).await.expect("send");

    let error = next_event(&mut at_sender, protocol::WRONG_TENANT).await;
    let Some(Body::Event(error)) = error.body else {
        panic!("event")
    };
    assert_eq!(
        (error.topic.as_str(), error.reference_uuid.as_str()),
        (protocol::ERROR_TOPIC, uuid.as_str())
    );
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            next_event(&mut at_receiver, "FOREIGN")
        )
        .await
        .is_err(),
        "not forwarded"
    );
    // The cluster got the error event (it logs events).
    let mut reported = false;
    for _ in 0..20 {
        let log = cluster.events().await;
        if log["events"]
            .as_array()
            .expect("log")
            .iter()
            .any(|e| e["event"] == protocol::WRONG_TENANT && e["reference_uuid"] == uuid.as_str())
        {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reported, "{:#}", cluster.events().await);
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn malformed_envelopes_get_an_error_event_and_everyone_else_is_served() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let bad = aggregator.connector("bad", "erp").await;
    let good = aggregator.connector("good", "erp").await;
    let other = aggregator.connector("other", "erp").await;
    let (mut at_bad, mut at_other) = (bad.subscribe(), other.subscribe());

    bad.send(Envelope {
        header: None,
        body: Some(Body::Heartbeat(Default::default())),
    })
    .await
    .expect("send");
    next_event(&mut at_bad, protocol::MALFORMED).await;
    bad.send(Envelope {
        header: Some(Header {
            tenant: "acme".into(),
            ..Header::default()
        }),
        body: Some(Body::Event(Default::default())),
    })
    .await
    .expect("send");
    next_event(&mut at_bad, protocol::MALFORMED).await;
    let mut no_body = protocol::event("acme", "t", "x", "", "");
    no_body.body = None;
    bad.send(no_body).await.expect("send");
    next_event(&mut at_bad, protocol::MALFORMED).await;

    // The bad connector is still connected, and the others are served.
    good.send_event("t", "STILL_WORKS", "").await.expect("send");
    next_event(&mut at_other, "STILL_WORKS").await;
    next_event(&mut at_bad, "STILL_WORKS").await;
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn configuration_and_config_from_a_connector_are_relayed_and_answered_to_it() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let connector = aggregator.connector("billing-1", "erp").await;
    let bystander = aggregator.connector("crm-1", "crm").await;
    let (mut rx, mut other) = (connector.subscribe(), bystander.subscribe());

    // Configuration: saved with the cluster; the reply targets the connector (stamped by
    // the aggregator) and reaches it, and only it.
    connector
        .send(protocol::configuration(
            "acme",
            protocol::SAVE,
            "",
            r#"{"batch":50}"#,
        ))
        .await
        .expect("send");
    let reply = configuration_reply(&mut rx).await;
    assert_eq!(reply.command, protocol::REPLY);
    assert_eq!(reply.target_logical_name, "billing-1");
    assert_eq!(reply.payload, r#"{"batch":50}"#);
    assert!(
        !reply.target_address.is_empty(),
        "the connector's address was stamped"
    );
    let leaked = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            if let Ok(envelope) = other.recv().await
                && let Some(Body::Configuration(_)) = envelope.body
            {
                return;
            }
        }
    })
    .await;
    assert!(leaked.is_err(), "the reply went to its target only");

    // Config for a connector nobody knows: the cluster's UNDELIVERABLE comes back to the
    // connector that sent it.
    let config = protocol::config("acme", protocol::REQUEST, "nobody-here", "{}");
    let uuid = config
        .header
        .as_ref()
        .map(|h| h.uuid.clone())
        .expect("uuid");
    connector.send(config).await.expect("send");
    let error = next_event(&mut rx, protocol::UNDELIVERABLE).await;
    let Some(Body::Event(error)) = error.body else {
        panic!("event")
    };
    assert_eq!(error.reference_uuid, uuid);
    aggregator.stop().await;
    cluster.stop().await;
}

/// A connector's configuration REPLY, within 5 s.
async fn configuration_reply(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Envelope>>,
) -> gandalf::wire::Configuration {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(envelope) = rx.recv().await
                && let Some(Body::Configuration(c)) = &envelope.body
            {
                return c.clone();
            }
        }
    })
    .await
    .expect("a configuration reply")
}

#[tokio::test]
async fn logical_configurations_in_sql_storage_survive_a_cluster_restart() {
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        panic!("TEST_DATABASE_URL is not set: run the tests with `make test`");
    };
    let dir = std::env::temp_dir().join(format!("gandalf-stored-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let storages = [
        format!("sqlite://{}/cluster.db", dir.display()),
        crate::commands::fresh_database(&admin).await,
    ];
    for storage in storages {
        let cluster = Cluster::start_stored(&storage).await;
        let aggregator = Aggregator::start("agg-1", &cluster).await;
        let connector = aggregator.connector("billing-1", "erp").await;
        let mut rx = connector.subscribe();
        connector
            .send(protocol::configuration(
                "acme",
                protocol::SAVE,
                "",
                r#"{"batch":50}"#,
            ))
            .await
            .expect("send");
        assert_eq!(
            configuration_reply(&mut rx).await.payload,
            r#"{"batch":50}"#
        );
        drop(connector);
        aggregator.stop().await;
        cluster.stop().await;

        // A new cluster process on the same storage still has it.
        let cluster = Cluster::start_stored(&storage).await;
        let aggregator = Aggregator::start("agg-1", &cluster).await;
        let connector = aggregator.connector("billing-1", "erp").await;
        let mut rx = connector.subscribe();
        connector
            .send(protocol::configuration("acme", protocol::REQUEST, "", ""))
            .await
            .expect("send");
        let reply = configuration_reply(&mut rx).await;
        assert_eq!(
            reply.context.get("found").map(String::as_str),
            Some("true"),
            "{storage}"
        );
        assert_eq!(reply.payload, r#"{"batch":50}"#, "{storage}");
        aggregator.stop().await;
        cluster.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
