//! The streams to the cluster members: one supervisor task per member that connects,
//! validates the aggregator's secret, feeds the router, and reconnects with backoff when
//! the member drops.

use std::{sync::Arc, time::Duration};

use gandalf::{
    outbox::{self, Outbox},
    protocol::{self, ComponentType},
    wire::{Envelope, cluster_client::ClusterClient},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Streaming, transport::Endpoint};

use crate::router::{Peer, Router};

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
                read(&router, id, inbound, &outbound, &shutdown).await;
                replay.abort();
                router.remove(id);
                let _ = events.send(MemberEvent::Disconnected(member.clone())).await;
                tracing::warn!(member = %member, "cluster member disconnected; reconnecting");
            }
            Err(Failure::Rejected(reason)) => {
                tracing::error!(member = %member, %reason, "cluster member rejected this aggregator's secret");
                let _ = events
                    .send(MemberEvent::Rejected(member.clone(), reason))
                    .await;
                return;
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
) -> Result<(Outbox, Streaming<Envelope>), Failure> {
    let unreachable = |e: String| Failure::Unreachable(e);
    let channel = Endpoint::from_shared(member.to_owned())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (tx, rx) = outbox::outbox(router.limits());
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
    let mut inbound = match ClusterClient::new(channel).connect(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::PermissionDenied => {
            return Err(Failure::Rejected(status.message().to_owned()));
        }
        Err(status) => return Err(unreachable(status.to_string())),
    };
    match protocol::await_validation(&mut inbound, Duration::from_secs(5)).await {
        protocol::Validation::Accepted => Ok((tx, inbound)),
        protocol::Validation::Rejected(reason) => Err(Failure::Rejected(reason)),
        protocol::Validation::Failed(reason) => Err(unreachable(reason)),
    }
}

async fn read(
    router: &Arc<Router>,
    id: u64,
    mut inbound: Streaming<Envelope>,
    outbound: &Outbox,
    shutdown: &CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            // The member stopped reading: routing took it out; reconnect.
            () = outbound.stalled() => return,
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(envelope)) => router.handle(id, envelope).await,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "cluster stream error");
                return;
            }
        }
    }
}
