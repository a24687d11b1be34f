//! The cluster's connector registry follows reality, names are bound to their type, and
//! only the connection a command went to can answer it.

use std::{sync::Arc, time::Duration};

use gandalf::{
    connector::ConnectorError,
    protocol,
    wire::{Secret, envelope::Body},
};

use crate::helpers::{Aggregator, CONNECTOR_SECRET, Cluster, TENANT, acknowledge_all};

#[tokio::test]
async fn a_connector_on_two_aggregators_stays_reachable_when_it_leaves_one() {
    let cluster = Cluster::start(None).await;
    let left = Aggregator::start("agg-left", &cluster).await;
    let right = Aggregator::start("agg-right", &cluster).await;
    let sender = left.connector("billing-1", "erp").await;
    let on_right = Arc::new(right.connector("crm-1", "crm").await);
    let _serve = acknowledge_all(on_right);
    // The same connector opens a second stream, on the other aggregator, then closes it.
    let on_left = left.connector("crm-1", "crm").await;
    drop(on_left);
    tokio::time::sleep(Duration::from_millis(300)).await;

    for _ in 0..3 {
        let ack = sender
            .send_command("crm", "SYNC", "{}", 1000)
            .await
            .expect("reachable through the aggregator it is still on");
        assert_eq!(ack.event, protocol::ON_GOING);
    }
    left.stop().await;
    right.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_candidate_that_cannot_take_a_command_is_passed_over_for_the_next() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = aggregator.connector("billing-1", "erp").await;
    // Two connectors of the type: the first refuses every command with an error event.
    let refusing = Arc::new(aggregator.connector("crm-a", "crm").await);
    let accepting = Arc::new(aggregator.connector("crm-b", "crm").await);
    let _refuse = {
        let refusing = refusing.clone();
        tokio::spawn(async move {
            while let Some(incoming) = refusing.next_command().await {
                let _ = refusing
                    .send(protocol::error_event(
                        TENANT,
                        protocol::UNDELIVERABLE,
                        &incoming.header.uuid,
                        "crm-a is in maintenance",
                    ))
                    .await;
            }
        })
    };
    let _serve = acknowledge_all(accepting);

    // Round robin starts at either one: every command must still be acknowledged.
    for _ in 0..4 {
        let ack = sender
            .send_command("crm", "SYNC", "{}", 1000)
            .await
            .expect("the next candidate acknowledges");
        assert_eq!(ack.event, protocol::ON_GOING);
    }
    aggregator.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_name_held_by_another_type_is_refused_and_cannot_be_re_registered_mid_stream() {
    let cluster = Cluster::start(None).await;
    let left = Aggregator::start("agg-left", &cluster).await;
    let right = Aggregator::start("agg-right", &cluster).await;
    let sender = left.connector("billing-1", "erp").await;
    let holder = left.connector("crm-1", "crm").await;

    // Another connector claims the live name with another type, on another aggregator.
    match right
        .try_connector("crm-1", "payments", CONNECTOR_SECRET)
        .await
    {
        Err(ConnectorError::Rejected(reason)) => {
            assert!(
                reason.contains("crm-1") && reason.contains("crm"),
                "{reason}"
            )
        }
        Err(other) => panic!("expected PERMISSION_DENIED, got {other}"),
        Ok(_) => panic!("a second connector took a live name with another type"),
    }

    // The holder re-validates mid-stream claiming to be of type "payments".
    let mut revalidation = protocol::validation(TENANT, CONNECTOR_SECRET);
    if let Some(Body::Secret(Secret { context, .. })) = revalidation.body.as_mut() {
        context.insert(protocol::CONNECTOR_TYPE_KEY.into(), "payments".into());
    }
    holder.send(revalidation).await.expect("sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    match sender.send_command("payments", "CHARGE", "{}", 300).await {
        Err(ConnectorError::NotDelivered { event, .. }) => {
            assert_eq!(event, protocol::UNDELIVERABLE)
        }
        other => panic!("the holder was re-registered as payments: {other:?}"),
    }
    let delivered = tokio::time::timeout(Duration::from_millis(200), holder.next_command()).await;
    assert!(
        delivered.is_err(),
        "the holder got a command for another type"
    );
    left.stop().await;
    right.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn only_the_connector_a_command_went_to_can_acknowledge_it() {
    let cluster = Cluster::start(None).await;
    let aggregator = Aggregator::start("agg-1", &cluster).await;
    let sender = Arc::new(aggregator.connector("billing-1", "erp").await);
    let target = aggregator.connector("crm-1", "crm").await;
    let forger = aggregator.connector("mallory", "crm-tools").await;

    let pending = {
        let sender = sender.clone();
        tokio::spawn(async move { sender.send_command("crm", "WIPE", "{}", 500).await })
    };
    // The target receives the command and stays silent; the forger, told its uuid,
    // acknowledges it in the target's place.
    let incoming = tokio::time::timeout(Duration::from_secs(2), target.next_command())
        .await
        .expect("delivered")
        .expect("a command");
    forger
        .send(protocol::on_going(
            TENANT,
            &incoming.command,
            &incoming.header.uuid,
        ))
        .await
        .expect("sent");
    match pending.await.expect("join") {
        Err(ConnectorError::NotDelivered { event, .. }) => {
            assert_eq!(event, protocol::UNDELIVERABLE)
        }
        other => panic!("a forged acknowledgement answered the command: {other:?}"),
    }
    aggregator.stop().await;
    cluster.stop().await;
}
