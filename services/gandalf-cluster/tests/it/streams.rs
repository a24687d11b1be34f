//! Stream opening: validation, refusals, malformed envelopes, health.

use gandalf::{
    protocol,
    wire::{Envelope, Header, envelope::Body},
};
use tonic::Code;

use crate::helpers::{Aggregator, TestCluster, secret_reply};

#[tokio::test]
async fn an_aggregator_with_a_good_secret_is_validated_and_listed() {
    let cluster = TestCluster::start().await;
    let _a = Aggregator::connected(&cluster, "agg-1", "acme", "s2").await;
    let listed: serde_json::Value = reqwest::get(format!("{}/v1/aggregators", cluster.admin))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["aggregators"],
        serde_json::json!([{ "tenant": "acme", "logical_name": "agg-1" }])
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_bad_secret_gets_validation_reply_false_then_permission_denied() {
    let cluster = TestCluster::start().await;
    for (tenant, secret) in [("acme", "wrong"), ("globex", "s1"), ("nobody", "s1")] {
        let (mut aggregator, reply) = Aggregator::open(&cluster, "agg-x", tenant, secret)
            .await
            .expect("open");
        assert_eq!(
            secret_reply(&reply),
            Some(("VALIDATION_REPLY".into(), "false".into())),
            "{tenant}"
        );
        let status = aggregator.end_status().await.expect("a status");
        assert_eq!(status.code(), Code::PermissionDenied, "{tenant}");
        assert!(status.message().contains(tenant), "{}", status.message());
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_stream_without_metadata_or_validation_is_refused() {
    use gandalf::wire::cluster_client::ClusterClient;
    use tokio_stream::wrappers::ReceiverStream;

    let cluster = TestCluster::start().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(protocol::validation("acme", "s1"))
        .await
        .expect("queue");
    let status = ClusterClient::new(cluster.channel().await)
        .connect(tonic::Request::new(ReceiverStream::new(rx)))
        .await
        .expect_err("no metadata");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("x-gandalf-logical-name"),
        "{}",
        status.message()
    );

    // A first envelope that is not VALIDATION.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(protocol::event("acme", "t", "e", "", ""))
        .await
        .expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    gandalf::protocol::Peer {
        logical_name: "agg-1".into(),
        component_type: gandalf::protocol::ComponentType::Aggregator,
        connector_type: None,
    }
    .write_metadata(request.metadata_mut())
    .expect("metadata");
    let mut stream = ClusterClient::new(cluster.channel().await)
        .connect(request)
        .await
        .expect("open")
        .into_inner();
    let status = stream.message().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("VALIDATION"),
        "{}",
        status.message()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn malformed_envelopes_get_an_error_event_and_the_stream_keeps_serving() {
    let cluster = TestCluster::start().await;
    let mut a = Aggregator::connected(&cluster, "agg-1", "acme", "s1").await;

    a.send(Envelope {
        header: None,
        body: Some(Body::Heartbeat(Default::default())),
    })
    .await;
    let reply = a.next().await;
    assert_error(&reply, protocol::MALFORMED, "");

    let empty_uuid = Envelope {
        header: Some(Header {
            tenant: "acme".into(),
            ..Header::default()
        }),
        body: Some(Body::Heartbeat(Default::default())),
    };
    a.send(empty_uuid).await;
    assert_error(&a.next().await, protocol::MALFORMED, "");

    let mut no_body = protocol::event("acme", "t", "e", "", "");
    no_body.body = None;
    let uuid = no_body
        .header
        .as_ref()
        .map(|h| h.uuid.clone())
        .expect("uuid");
    a.send(no_body).await;
    assert_error(&a.next().await, protocol::MALFORMED, &uuid);

    let other_tenant = protocol::event("globex", "t", "e", "", "");
    let uuid = other_tenant
        .header
        .as_ref()
        .map(|h| h.uuid.clone())
        .expect("uuid");
    a.send(other_tenant).await;
    assert_error(&a.next().await, protocol::WRONG_TENANT, &uuid);

    // Still serving.
    a.send(protocol::configuration_database(
        "acme",
        protocol::REQUEST,
        "",
    ))
    .await;
    assert!(matches!(
        a.next().await.body,
        Some(Body::ConfigurationDatabase(_))
    ));
    cluster.stop().await;
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let cluster = TestCluster::start().await;
    let response = HealthClient::new(cluster.channel().await)
        .check(HealthCheckRequest {
            service: "gandalf.v1.Cluster".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);
    let ready = reqwest::get(format!("{}/readyz", cluster.admin))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    cluster.stop().await;
}

pub fn assert_error(envelope: &Envelope, kind: &str, reference: &str) {
    match &envelope.body {
        Some(Body::Event(event)) => {
            assert_eq!(event.topic, protocol::ERROR_TOPIC, "{envelope:?}");
            assert_eq!(event.event, kind, "{envelope:?}");
            assert_eq!(event.reference_uuid, reference, "{envelope:?}");
        }
        other => panic!("expected an error event, got {other:?}"),
    }
}
