//! Configuration, database info, events and commands between aggregators.

use std::collections::HashMap;

use gandalf::{
    protocol,
    wire::{Envelope, Secret, envelope::Body},
};

use crate::{
    helpers::{Aggregator, TestCluster, secret_reply},
    streams::assert_error,
};

/// What an aggregator sends for a connector that connected to it.
fn relayed_validation(
    tenant: &str,
    connector: &str,
    connector_type: &str,
    secret: &str,
) -> Envelope {
    protocol::envelope(
        tenant,
        Body::Secret(Secret {
            command: protocol::VALIDATION.into(),
            target_logical_name: connector.into(),
            context: HashMap::from([
                (protocol::SECRET_KEY.to_owned(), secret.to_owned()),
                (
                    protocol::CONNECTOR_TYPE_KEY.to_owned(),
                    connector_type.to_owned(),
                ),
            ]),
            ..Secret::default()
        }),
    )
}

#[tokio::test]
async fn logical_configuration_is_saved_and_returned() {
    let cluster = TestCluster::start().await;
    let mut a = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;

    a.send(protocol::configuration(
        "acme",
        protocol::REQUEST,
        "agg-1",
        "",
    ))
    .await;
    let Some(Body::Configuration(before)) = a.next().await.body else {
        panic!("configuration reply")
    };
    assert_eq!(
        (before.command.as_str(), before.payload.as_str()),
        (protocol::REPLY, "")
    );
    assert_eq!(
        before.context.get("found").map(String::as_str),
        Some("false")
    );

    a.send(protocol::configuration(
        "acme",
        protocol::SAVE,
        "agg-1",
        r#"{"workers":4}"#,
    ))
    .await;
    let Some(Body::Configuration(saved)) = a.next().await.body else {
        panic!("configuration reply")
    };
    assert_eq!(saved.payload, r#"{"workers":4}"#);

    // A new stream of the same aggregator gets it back.
    drop(a);
    let mut again = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;
    again
        .send(protocol::configuration(
            "acme",
            protocol::REQUEST,
            "agg-1",
            "",
        ))
        .await;
    let Some(Body::Configuration(back)) = again.next().await.body else {
        panic!("configuration reply")
    };
    assert_eq!(back.payload, r#"{"workers":4}"#);
    assert_eq!(back.context.get("found").map(String::as_str), Some("true"));
    cluster.stop().await;
}

#[tokio::test]
async fn database_configuration_is_returned_per_tenant() {
    let cluster = TestCluster::start().await;
    let mut acme = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;
    let mut globex = Aggregator::connected(&cluster, "agg-2", "globex", "g1").await;

    acme.send(protocol::configuration_database(
        "acme",
        protocol::REQUEST,
        "",
    ))
    .await;
    let Some(Body::ConfigurationDatabase(reply)) = acme.next().await.body else {
        panic!("db reply")
    };
    let payload: serde_json::Value = serde_json::from_str(&reply.payload).expect("json");
    assert_eq!(payload["url"], "postgres://acme:pw@db/acme");

    globex
        .send(protocol::configuration_database(
            "globex",
            protocol::REQUEST,
            "",
        ))
        .await;
    let Some(Body::ConfigurationDatabase(reply)) = globex.next().await.body else {
        panic!("db reply")
    };
    assert_eq!(reply.payload, "");
    assert_eq!(
        reply.context.get("configured").map(String::as_str),
        Some("false")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn the_event_log_is_bounded_in_bytes_as_well_as_in_count() {
    // Room for two of these events (~470 bytes each), not three.
    let cluster = TestCluster::start_with(|c| {
        c.event_log_capacity = 100;
        c.event_log_bytes = 1000;
    })
    .await;
    let a1 = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;
    let mut a2 = Aggregator::connected(&cluster, "agg-2", "acme", "s2").await;
    let logged = || async {
        let log: serde_json::Value =
            reqwest::get(format!("{}/v1/events?tenant=acme", cluster.admin))
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
        log["events"]
            .as_array()
            .expect("list")
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap_or_default().to_owned(),
                    e["payload"].as_str().unwrap_or_default().len(),
                    e["origin"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let payload = "x".repeat(400);
    for i in 0..3 {
        a1.send(protocol::event(
            "acme",
            "orders",
            &format!("E{i}"),
            "",
            &payload,
        ))
        .await;
        a2.next().await;
    }
    let origin = || "agg-1".to_owned();
    assert_eq!(
        logged().await,
        [
            ("E1".to_owned(), 400, origin()),
            ("E2".to_owned(), 400, origin())
        ]
    );
    // One larger than the whole bound is kept alone: the newest is never dropped.
    a1.send(protocol::event(
        "acme",
        "orders",
        "BIG",
        "",
        &"y".repeat(2000),
    ))
    .await;
    a2.next().await;
    assert_eq!(logged().await, [("BIG".to_owned(), 2000, origin())]);
    cluster.stop().await;
}

#[tokio::test]
async fn events_fan_out_to_the_other_aggregators_of_the_tenant_and_are_logged() {
    let cluster = TestCluster::start().await;
    let mut a1 = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;
    let mut a2 = Aggregator::connected(&cluster, "agg-2", "acme", "s2").await;
    let mut g = Aggregator::connected(&cluster, "agg-g", "globex", "g1").await;

    let event = protocol::event("acme", "orders", "CREATED", "", r#"{"id":7}"#);
    let uuid = event.header.as_ref().map(|h| h.uuid.clone()).expect("uuid");
    a1.send(event).await;
    let received = a2.next().await;
    assert_eq!(
        received.header.as_ref().map(|h| h.uuid.clone()),
        Some(uuid.clone())
    );
    a1.expect_silence(200).await;
    g.expect_silence(50).await;

    let log: serde_json::Value = reqwest::get(format!("{}/v1/events?tenant=acme", cluster.admin))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(log["events"][0]["uuid"], uuid);
    assert_eq!(log["events"][0]["origin"], "agg-1");
    assert_eq!(log["events"][0]["event"], "CREATED");

    // Bounded: capacity 3 keeps the newest three.
    for i in 0..4 {
        a1.send(protocol::event("acme", "orders", &format!("E{i}"), "", ""))
            .await;
        a2.next().await;
    }
    let log: serde_json::Value = reqwest::get(format!("{}/v1/events?tenant=acme", cluster.admin))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = log["events"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(names, ["E1", "E2", "E3"]);

    let missing = reqwest::get(format!("{}/v1/events", cluster.admin))
        .await
        .expect("get");
    assert_eq!(missing.status(), 400);
    cluster.stop().await;
}

#[tokio::test]
async fn commands_go_to_an_aggregator_holding_a_connector_of_that_type() {
    let cluster = TestCluster::start().await;
    let mut a1 = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;
    let mut a2 = Aggregator::connected(&cluster, "agg-2", "acme", "s1").await;

    // agg-2 relays the validation of connector billing-1 (type erp).
    a2.send(relayed_validation("acme", "billing-1", "erp", "s2"))
        .await;
    let reply = a2.next().await;
    assert_eq!(
        secret_reply(&reply),
        Some(("VALIDATION_REPLY".into(), "true".into()))
    );
    let Some(Body::Secret(secret)) = &reply.body else {
        panic!("secret")
    };
    assert_eq!(secret.target_logical_name, "billing-1");

    // A rejected connector is not learned.
    a1.send(relayed_validation("acme", "intruder", "crm", "nope"))
        .await;
    assert_eq!(
        secret_reply(&a1.next().await),
        Some(("VALIDATION_REPLY".into(), "false".into()))
    );

    let command = protocol::command("acme", "erp", "SYNC", "{}", 500);
    let uuid = command
        .header
        .as_ref()
        .map(|h| h.uuid.clone())
        .expect("uuid");
    a1.send(command).await;
    let routed = a2.next().await;
    assert_eq!(routed.header.as_ref().map(|h| h.uuid.clone()), Some(uuid));
    let Some(Body::Command(routed)) = routed.body else {
        panic!("command")
    };
    assert_eq!(routed.target, "billing-1");

    // No connector of the type: UNDELIVERABLE back to the sender.
    let lost = protocol::command("acme", "crm", "SYNC", "{}", 500);
    let uuid = lost.header.as_ref().map(|h| h.uuid.clone()).expect("uuid");
    a1.send(lost).await;
    assert_error(&a1.next().await, protocol::UNDELIVERABLE, &uuid);

    // When agg-2 leaves, its connectors go with it.
    drop(a2);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let after = protocol::command("acme", "erp", "SYNC", "{}", 500);
    let uuid = after.header.as_ref().map(|h| h.uuid.clone()).expect("uuid");
    a1.send(after).await;
    assert_error(&a1.next().await, protocol::UNDELIVERABLE, &uuid);
    cluster.stop().await;
}
