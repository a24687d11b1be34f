//! The streams to the cluster members: one supervisor task per member that connects,
//! validates the aggregator's secret, feeds the router, and reconnects with backoff when
//! the member drops.

use std::{sync::Arc, time::Duration};

use gandalf::{
    frame::Received,
    heartbeat::Watch,
    outbox::{self, Outbox},
    protocol::{self, ComponentType},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Streaming, transport::Endpoint};

use crate::router::{Peer, Router};

/// How long connecting to a member and opening its stream may take, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the member may take to answer the aggregator's VALIDATION.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(5);

/// What a member supervisor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Connected(String),
    Disconnected(String),
    /// The member rejected the aggregator's secret: fatal.
    Rejected(String, String),
}

enum Failure {
    Rejected(String),
    Unreachable(String),
}

/// Keeps one member connected until `shutdown`; reports on `events`.
pub async fn supervise(
    router: Arc<Router>,
    member: String,
    secret: SecretString,
    backoff_max: Duration,
    events: mpsc::Sender<MemberEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match open(&router, &member, &secret).await {
            Ok((outbound, inbound)) => {
                backoff = Duration::from_millis(100);
                let id = router.add(
                    Peer::Cluster {
                        member: member.clone(),
                    },
                    outbound.clone(),
                );
                // A restarted member knows none of the connectors here: tell it again
                // (the answers come back through the read loop below).
                let replay = {
                    let (router, member) = (router.clone(), member.clone());
                    tokio::spawn(async move {
                        let accepted = router.replay_validations(id).await;
                        if accepted > 0 {
                            tracing::info!(member = %member, connectors = accepted, "connectors announced to the member");
                        }
                    })
                };
                let _ = events.send(MemberEvent::Connected(member.clone())).await;
                let beating = shutdown.child_token();
                router.beat(&outbound, beating.clone());
                read(&router, id, &member, inbound, &outbound, &shutdown).await;
                beating.cancel();
                replay.abort();
                router.remove(id);
                let _ = events.send(MemberEvent::Disconnected(member.clone())).await;
                tracing::warn!(member = %member, "cluster member disconnected; reconnecting");
            }
            // Fatal before start-up (the aggregator exits); after it, the member is
            // retried with backoff while the others serve (its secrets may be rolling).
            Err(Failure::Rejected(reason)) => {
                tracing::error!(member = %member, %reason, retry_ms = backoff.as_millis() as u64, "cluster member rejected this aggregator's secret");
                metrics::counter!("gandalf_aggregator_member_rejections_total").increment(1);
                let _ = events
                    .send(MemberEvent::Rejected(member.clone(), reason))
                    .await;
            }
            Err(Failure::Unreachable(reason)) => {
                tracing::debug!(member = %member, %reason, "cluster member not reachable");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(backoff_max);
    }
}

async fn open(
    router: &Router,
    member: &str,
    secret: &SecretString,
) -> Result<(Outbox, Streaming<Received>), Failure> {
    let unreachable = |e: String| Failure::Unreachable(e);
    let endpoint = Endpoint::from_shared(member.to_owned())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = router
        .stream()
        .endpoint(endpoint)
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (tx, rx) = outbox::outbox(router.stream().queue);
    let _ = tx.push(protocol::validation(
        router.tenant(),
        secret.expose_secret(),
    ));
    let mut request = Request::new(rx);
    protocol::Peer {
        logical_name: router.logical_name().to_owned(),
        component_type: ComponentType::Aggregator,
        connector_type: None,
    }
    .write_metadata(request.metadata_mut())
    .map_err(unreachable)?;
    let opened = tokio::time::timeout(
        CONNECT_TIMEOUT,
        gandalf::frame::connect_cluster(channel, request, router.stream().max_message_bytes),
    )
    .await
    .map_err(|_| {
        unreachable(format!(
            "the stream did not open within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))
    })?;
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::PermissionDenied => {
            return Err(Failure::Rejected(status.message().to_owned()));
        }
        Err(status) => return Err(unreachable(status.to_string())),
    };
    match protocol::await_validation(&mut inbound, VALIDATION_TIMEOUT).await {
        protocol::Validation::Accepted => Ok((tx, inbound)),
        protocol::Validation::Rejected(reason) => Err(Failure::Rejected(reason)),
        protocol::Validation::Failed(reason) => Err(unreachable(reason)),
    }
}

async fn read(
    router: &Arc<Router>,
    id: u64,
    member: &str,
    mut inbound: Streaming<Received>,
    outbound: &Outbox,
    shutdown: &CancellationToken,
) {
    let mut watch = Watch::new(router.stream().heartbeat);
    // Made once, not per message: each registers with its token when first polled.
    let (ending, stalled) = (shutdown.cancelled(), outbound.stalled());
    tokio::pin!(ending, stalled);
    loop {
        let message = tokio::select! {
            () = &mut ending => return,
            // The member stopped reading: routing took it out; reconnect.
            () = &mut stalled => return,
            // Half-open: the member's heartbeats stopped; reconnect.
            () = watch.silent() => {
                tracing::warn!(member, idle_ms = watch.idle_limit().as_millis() as u64, "cluster member silent past the idle limit; reconnecting");
                metrics::counter!("gandalf_aggregator_connections_closed_total", "reason" => "silent").increment(1);
                return;
            }
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(received)) => {
                watch.heard(received.is_heartbeat());
                router.handle_from_member(id, received).await
            }
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "cluster stream error");
                return;
            }
        }
    }
}
