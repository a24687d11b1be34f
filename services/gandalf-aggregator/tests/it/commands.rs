//! Commands: routed by connector type, acknowledged, tried connection by connection,
//! UNDELIVERABLE when nobody answers, logged.

use std::{sync::Arc, time::Duration};

use gandalf::{connector::ConnectorError, protocol};

use crate::helpers::{Aggregator, Cluster, acknowledge_all};

#[tokio::test]
async fn a_command_reaches_a_connector_of_the_type_and_its_acknowledgement_comes_back() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;
    let receiver = Arc::new(aggregator.connector("crm-1", "crm").await);

    let serve = {
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let incoming = receiver.next_command().await.expect("a command");
            receiver.acknowledge(&incoming).await.expect("ack");
            incoming
        })
    };
    let ack = sender
        .send_command("crm", "SYNC_CUSTOMERS", r#"{"full":true}"#, 1000)
        .await
        .expect("acknowledged");
    assert_eq!(ack.event, protocol::ON_GOING);
    assert_eq!(ack.topic, "SYNC_CUSTOMERS");
    let incoming = serve.await.expect("join");
    assert_eq!(incoming.command.target, "crm-1");
    assert_eq!(incoming.command.payload, r#"{"full":true}"#);
    assert_eq!(ack.reference_uuid, incoming.header.uuid);
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn commands_cross_aggregators_through_the_cluster() {
    let cluster = Cluster::start(None).await;
    let left = Aggregator::start("agg-left", &cluster).await;
    let right = Aggregator::start("agg-right", &cluster).await;
    let sender = left.connector("billing-1", "erp").await;
    let receiver = Arc::new(right.connector("crm-1", "crm").await);
    let _serve = acknowledge_all(receiver);

    let ack = sender
        .send_command("crm", "SYNC", "{}", 1000)
        .await
        .expect("acknowledged");
    assert_eq!(ack.event, protocol::ON_GOING);
    left.stop().await;
    right.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn an_unknown_target_is_undeliverable_and_nothing_breaks() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;

    let started = std::time::Instant::now();
    match sender
        .send_command("nobody-has-this-type", "SYNC", "{}", 300)
        .await
    {
        Err(ConnectorError::NotDelivered { event, .. }) => {
            assert_eq!(event, protocol::UNDELIVERABLE)
        }
        other => panic!("expected UNDELIVERABLE, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered promptly: {:?}",
        started.elapsed()
    );

    // Still serving: a command to a real connector goes through.
    let receiver = Arc::new(aggregator.connector("crm-1", "crm").await);
    let _serve = acknowledge_all(receiver);
    assert!(sender.send_command("crm", "SYNC", "{}", 1000).await.is_ok());
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_acknowledges_is_skipped_for_the_next() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;
    // Two connections of the same connector: the first takes commands and never answers.
    let silent = aggregator.connector("crm-1", "crm").await;
    let answering = Arc::new(aggregator.connector("crm-1", "crm").await);
    let _serve = acknowledge_all(answering);

    let started = std::time::Instant::now();
    let ack = sender
        .send_command("crm", "SYNC", "{}", 400)
        .await
        .expect("the second connection answers");
    let took = started.elapsed();
    assert_eq!(ack.event, protocol::ON_GOING);
    // One budget for the whole sequence: each of the two connections gets a share of
    // what is left, so the second is tried, and answers, within the command's 400 ms.
    assert!(
        took >= Duration::from_millis(120) && took < Duration::from_millis(400),
        "the first connection was waited for its share, the whole within the timeout: {took:?}"
    );
    let skipped = tokio::time::timeout(Duration::from_secs(1), silent.next_command()).await;
    assert!(
        matches!(skipped, Ok(Some(_))),
        "the silent connection was tried first"
    );

    // Both silent: UNDELIVERABLE after trying each.
    drop(_serve);
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn when_no_connection_answers_the_sender_gets_undeliverable() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;
    let _silent = aggregator.connector("crm-1", "crm").await;

    match sender.send_command("crm", "SYNC", "{}", 200).await {
        Err(ConnectorError::NotDelivered { event, detail, .. }) => {
            assert_eq!(event, protocol::UNDELIVERABLE);
            assert!(detail.contains("no connection answered"), "{detail}");
        }
        other => panic!("expected UNDELIVERABLE, got {other:?}"),
    }
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn routed_commands_are_logged_in_the_tenant_database_one_record_per_aggregator_and_leg() {
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        panic!("TEST_DATABASE_URL is not set: run the tests with `make test`");
    };
    let url = fresh_database(&admin).await;
    let cluster = Cluster::start(Some(url)).await;
    // Two aggregators share the tenant database.
    let left = Aggregator::start("agg-left", &cluster).await;
    let right = Aggregator::start("agg-right", &cluster).await;
    let sender = left.connector("billing-1", "erp").await;
    let local = Arc::new(left.connector("crm-1", "crm").await);
    let remote = Arc::new(right.connector("ledger-1", "ledger").await);
    let _serve = (acknowledge_all(local), acknowledge_all(remote));

    // To a connector of the same aggregator: two legs there; to the other's: one each.
    let here = sender
        .send_command("crm", "SYNC", "{}", 1000)
        .await
        .expect("acknowledged");
    let there = sender
        .send_command("ledger", "POST", "{}", 1000)
        .await
        .expect("acknowledged");
    let lost = sender.send_command("nobody", "PING", "{}", 200).await;
    assert!(lost.is_err());

    // Written in batches off the routing path: poll briefly.
    let mut commands = serde_json::Value::Null;
    for _ in 0..50 {
        commands = crate::helpers::get_json(&format!("{}/v1/commands?since=0", left.admin)).await;
        if commands["commands"]
            .as_array()
            .is_some_and(|c| c.len() == 5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = commands["commands"].as_array().expect("list");
    assert_eq!(list.len(), 5, "{commands:#}");
    let record = |uuid: &str, aggregator: &str, leg: &str| {
        list.iter()
            .find(|c| c["uuid"] == uuid && c["aggregator"] == aggregator && c["leg"] == leg)
            .unwrap_or_else(|| panic!("no {aggregator}/{leg} record of {uuid}: {commands:#}"))
    };
    let outward = record(&here.reference_uuid, "agg-left", "to_cluster");
    assert_eq!(outward["outcome"], "acknowledged");
    assert_eq!(outward["origin"], "billing-1");
    let inward = record(&here.reference_uuid, "agg-left", "to_connector");
    assert_eq!(inward["acknowledged_by"], "crm-1");
    assert_eq!(inward["outcome"], "acknowledged");
    record(&there.reference_uuid, "agg-left", "to_cluster");
    assert_eq!(
        record(&there.reference_uuid, "agg-right", "to_connector")["acknowledged_by"],
        "ledger-1"
    );
    assert!(
        list.iter()
            .any(|c| c["outcome"] == "undeliverable" && c["command"] == "PING")
    );
    let only_right = crate::helpers::get_json(&format!(
        "{}/v1/commands?since=0&aggregator=agg-right",
        left.admin
    ))
    .await;
    assert_eq!(
        only_right["commands"].as_array().map(Vec::len),
        Some(1),
        "{only_right:#}"
    );

    let bad = reqwest::get(format!("{}/v1/commands?since=yesterday", left.admin))
        .await
        .expect("get");
    assert_eq!(bad.status(), 400);
    left.stop().await;
    right.stop().await;
    cluster.stop().await;
}

pub async fn fresh_database(admin: &str) -> String {
    use sqlx::Connection;
    let name = format!("gandalf_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("admin connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create");
    let (base, _) = admin.rsplit_once('/').expect("db in url");
    format!("{base}/{name}")
}

#[tokio::test]
async fn a_timeout_of_0_is_the_default_of_1000_ms_on_every_hop_the_client_included() {
    // The aggregator's cap (max_timeout_ms) is 2000 ms here: 0 must not mean the cap.
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;
    let first = aggregator.connector("crm-1", "crm").await;
    let second = aggregator.connector("crm-2", "crm").await;

    let started = std::time::Instant::now();
    let outcome = sender.send_command("crm", "SYNC", "{}", 0).await;
    let took = started.elapsed();
    // The aggregator tries both within 1000 ms and reports; the client waits for that
    // report (not 0 ms, and not only until the aggregator's cap).
    match outcome {
        Err(ConnectorError::NotDelivered { event, .. }) => {
            assert_eq!(event, protocol::UNDELIVERABLE)
        }
        other => panic!("expected UNDELIVERABLE after the default timeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1500),
        "the whole sequence within the default 1000 ms: {took:?}"
    );
    // Each candidate got the command once; none gets it again after the client is done.
    for connection in [&first, &second] {
        let got = tokio::time::timeout(Duration::from_millis(200), connection.next_command()).await;
        assert!(matches!(got, Ok(Some(_))), "each candidate was tried");
        let again =
            tokio::time::timeout(Duration::from_millis(500), connection.next_command()).await;
        assert!(again.is_err(), "tried once only: {again:?}");
    }
    aggregator.stop().await;
    cluster.stop().await;
}
