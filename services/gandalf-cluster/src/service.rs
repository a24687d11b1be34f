//! The `gandalf.v1.Cluster` gRPC service: one stream per aggregator.
//!
//! A stream starts with the aggregator's own secret validation; after it, every
//! envelope is checked (header, uuid, known body, tenant) and routed by [`Cluster`].

use std::{sync::Arc, time::Duration};

use gandalf::{
    frame::{Connect, Received},
    heartbeat::Watch,
    outbox::{self, Outbox, ResponseStream},
    protocol::{self, ComponentType, Peer},
    wire::envelope::Body,
};
use platform::shutdown::Drain;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::routing::Cluster;

/// How long a new stream may take to send its VALIDATION.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC face of the cluster.
pub struct ClusterService {
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
    /// Tracks every stream's handler, so that the shutdown drain waits for them.
    drain: Drain,
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>, shutdown: CancellationToken, drain: Drain) -> Self {
        Self {
            cluster,
            shutdown,
            drain,
        }
    }
}

#[tonic::async_trait]
impl Connect for ClusterService {
    const SERVICE: &'static str = "gandalf.v1.Cluster";
    const PATH: &'static str = "/gandalf.v1.Cluster/Connect";
    type Stream = ResponseStream;

    async fn connect(
        &self,
        request: Request<Streaming<Received>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = Peer::require(request.metadata(), ComponentType::Aggregator)
            .map_err(Status::invalid_argument)?;
        let (outbound, stream) = outbox::outbox(self.cluster.stream().queue);
        self.drain.spawn(serve_stream(
            self.cluster.clone(),
            peer,
            request.into_inner(),
            outbound,
            self.shutdown.clone(),
        ));
        Ok(Response::new(stream.responses()))
    }
}

/// Validates the aggregator's secret: its tenant when accepted. On rejection the stream
/// gets `VALIDATION_REPLY false`, then PERMISSION_DENIED.
async fn handshake(
    cluster: &Cluster,
    peer: &Peer,
    inbound: &mut Streaming<Received>,
    outbound: &Outbox,
) -> Option<String> {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message()).await;
    let envelope = match first {
        Ok(Ok(Some(received))) => match received.into_envelope() {
            Ok((envelope, _)) => envelope,
            Err(_) => return None,
        },
        Ok(Ok(None)) | Ok(Err(_)) => return None,
        Err(_) => {
            outbound.close_with(Status::deadline_exceeded(
                "no VALIDATION within 5 s of opening the stream",
            ));
            return None;
        }
    };
    let (tenant, presented) = match protocol::check(&envelope) {
        Ok((header, Body::Secret(secret))) if secret.command == protocol::VALIDATION => (
            header.tenant.clone(),
            secret
                .context
                .get(protocol::SECRET_KEY)
                .cloned()
                .unwrap_or_default(),
        ),
        _ => {
            outbound.close_with(Status::invalid_argument(
                "the first envelope must be Secret{command: VALIDATION}",
            ));
            return None;
        }
    };
    let accepted = cluster.accepts_aggregator(&tenant, &presented);
    let _ = outbound.push(protocol::validation_reply(&tenant, accepted, ""));
    if accepted {
        tracing::info!(aggregator = %peer.logical_name, tenant = %tenant, "aggregator validated");
        Some(tenant)
    } else {
        tracing::warn!(aggregator = %peer.logical_name, tenant = %tenant, "aggregator secret rejected");
        metrics::counter!("gandalf_cluster_rejected_total").increment(1);
        outbound.close_with(Status::permission_denied(format!(
            "secret rejected for tenant {tenant:?}"
        )));
        None
    }
}

async fn serve_stream(
    cluster: Arc<Cluster>,
    peer: Peer,
    mut inbound: Streaming<Received>,
    outbound: Outbox,
    shutdown: CancellationToken,
) {
    let Some(tenant) = handshake(&cluster, &peer, &mut inbound, &outbound).await else {
        return;
    };
    let registration = cluster.register(&tenant, &peer.logical_name, outbound.clone());
    let beating = shutdown.child_token();
    gandalf::heartbeat::beat(
        outbound.clone(),
        cluster.stream().heartbeat,
        tenant.clone(),
        "cluster",
        String::new(),
        beating.clone(),
    );
    let mut watch = Watch::new(cluster.stream().heartbeat);
    // Made once, not per message: each registers with its token when first polled.
    let (ending, stalled) = (shutdown.cancelled(), outbound.stalled());
    tokio::pin!(ending, stalled);
    loop {
        let message = tokio::select! {
            () = &mut ending => break,
            // Routing closed it for not reading; its stream ends with the reason.
            () = &mut stalled => break,
            // Half-open: heartbeats stopped.
            () = watch.silent() => {
                tracing::warn!(aggregator = %peer.logical_name, idle_ms = watch.idle_limit().as_millis() as u64, "closing an aggregator stream gone silent after heartbeats");
                metrics::counter!("gandalf_cluster_connections_closed_total", "reason" => "silent").increment(1);
                outbound.close_with(Status::unavailable("no message or heartbeat within the idle limit"));
                break;
            }
            message = inbound.message() => message,
        };
        let received = match message {
            Ok(Some(received)) => {
                watch.heard(received.is_heartbeat());
                received
            }
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(aggregator = %peer.logical_name, %status, "stream error");
                break;
            }
        };
        // A plain event, the bulk of the traffic, is routed on its header and passed on
        // as received, its body never decoded.
        if let Some(header) = received.message.plain_event(&tenant) {
            routed_event().increment(1);
            cluster.spread_event(registration.id, &tenant, header, received.frame);
            continue;
        }
        let (envelope, frame) = match received.into_envelope() {
            Ok(parts) => parts,
            Err(problem) => {
                // Cannot happen for what the decoder let through (it checked every
                // string); kept an error rather than a panic.
                metrics::counter!("gandalf_cluster_dropped_total", "reason" => "malformed")
                    .increment(1);
                tracing::warn!(aggregator = %peer.logical_name, %problem, "undecodable envelope");
                continue;
            }
        };
        match protocol::check(&envelope) {
            Err(problem) => {
                metrics::counter!("gandalf_cluster_dropped_total", "reason" => "malformed")
                    .increment(1);
                tracing::warn!(aggregator = %peer.logical_name, %problem, "malformed envelope");
                let reference = envelope
                    .header
                    .as_ref()
                    .map(|h| h.uuid.as_str())
                    .unwrap_or("");
                cluster.send_to(
                    registration.id,
                    protocol::error_event(
                        &tenant,
                        protocol::MALFORMED,
                        reference,
                        &problem.to_string(),
                    ),
                );
            }
            Ok((header, _)) if header.tenant != tenant => {
                metrics::counter!("gandalf_cluster_dropped_total", "reason" => "wrong_tenant")
                    .increment(1);
                cluster.send_to(
                    registration.id,
                    protocol::error_event(
                        &tenant,
                        protocol::WRONG_TENANT,
                        &header.uuid,
                        &format!(
                            "tenant {:?} is not this stream's tenant {tenant:?}",
                            header.tenant
                        ),
                    ),
                );
            }
            Ok((_, body)) => {
                routed(body).increment(1);
                cluster.route(registration.id, &tenant, &envelope, frame);
            }
        }
    }
    beating.cancel();
    tracing::info!(aggregator = %peer.logical_name, tenant = %tenant, "aggregator disconnected");
}

/// The routed-messages counter of a body's kind.
fn routed(body: &Body) -> &'static metrics::Counter {
    ROUTED.of(body)
}

fn routed_event() -> &'static metrics::Counter {
    ROUTED.event()
}

static ROUTED: std::sync::LazyLock<protocol::KindCounters> =
    std::sync::LazyLock::new(|| protocol::KindCounters::new("gandalf_cluster_messages_total"));
