//! The `gandalf.v1.Aggregator` gRPC service: one stream per connector. A stream starts
//! with the connector's secret validation, relayed to the cluster; only then does
//! routing start.

use std::{collections::HashMap, sync::Arc, time::Duration};

use gandalf::{
    frame::{Connect, Received},
    heartbeat::Watch,
    outbox::{self, Outbox, ResponseStream},
    protocol::{self, ComponentType},
    wire::{Envelope, Secret, envelope::Body},
};
use platform::shutdown::Drain;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::router::{Peer, Router};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC face of the aggregator for connectors.
pub struct AggregatorService {
    router: Arc<Router>,
    shutdown: CancellationToken,
    /// Tracks every stream's handler, so that the shutdown drain waits for them.
    drain: Drain,
}

impl AggregatorService {
    pub fn new(router: Arc<Router>, shutdown: CancellationToken, drain: Drain) -> Self {
        Self {
            router,
            shutdown,
            drain,
        }
    }
}

#[tonic::async_trait]
impl Connect for AggregatorService {
    const SERVICE: &'static str = "gandalf.v1.Aggregator";
    const PATH: &'static str = "/gandalf.v1.Aggregator/Connect";
    type Stream = ResponseStream;

    async fn connect(
        &self,
        request: Request<Streaming<Received>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let peer = protocol::Peer::require(request.metadata(), ComponentType::Connector)
            .map_err(Status::invalid_argument)?;
        let (outbound, stream) = outbox::outbox(self.router.stream().queue);
        self.drain.spawn(serve_connector(
            self.router.clone(),
            peer,
            address,
            request.into_inner(),
            outbound,
            self.shutdown.clone(),
        ));
        Ok(Response::new(stream.responses()))
    }
}

fn refuse(outbound: &Outbox, tenant: &str, name: &str, status: Status) {
    let _ = outbound.push(protocol::validation_reply(tenant, false, name));
    outbound.close_with(status);
}

/// The connector's validation, relayed to the cluster: the relayed envelope when accepted;
/// on refusal the stream has been told why.
async fn handshake(
    router: &Router,
    peer: &protocol::Peer,
    address: &str,
    inbound: &mut Streaming<Received>,
    outbound: &Outbox,
) -> Option<Envelope> {
    let tenant = router.tenant().to_owned();
    let name = peer.logical_name.clone();
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(received))) => match received.into_envelope() {
            Ok((envelope, _)) => envelope,
            Err(_) => return None,
        },
        Ok(_) => return None,
        Err(_) => {
            outbound.close_with(Status::deadline_exceeded(
                "no VALIDATION within 5 s of opening the stream",
            ));
            return None;
        }
    };
    let presented = match protocol::check(&first) {
        Ok((header, Body::Secret(secret))) if secret.command == protocol::VALIDATION => {
            if header.tenant != tenant {
                refuse(
                    outbound,
                    &tenant,
                    &name,
                    Status::permission_denied(format!(
                        "tenant {:?} is not served by this aggregator",
                        header.tenant
                    )),
                );
                return None;
            }
            secret
                .context
                .get(protocol::SECRET_KEY)
                .cloned()
                .unwrap_or_default()
        }
        _ => {
            outbound.close_with(Status::invalid_argument(
                "the first envelope must be Secret{command: VALIDATION}",
            ));
            return None;
        }
    };
    let request = protocol::envelope(
        &tenant,
        Body::Secret(Secret {
            command: protocol::VALIDATION.into(),
            target_logical_name: name.clone(),
            target_address: address.to_owned(),
            context: HashMap::from([
                (protocol::SECRET_KEY.to_owned(), presented),
                (
                    protocol::CONNECTOR_TYPE_KEY.to_owned(),
                    peer.connector_type.clone().unwrap_or_default(),
                ),
            ]),
            payload: String::new(),
        }),
    );
    let verdict = match router.ask_cluster(request.clone(), HANDSHAKE_TIMEOUT).await {
        Ok(Envelope {
            body: Some(Body::Secret(reply)),
            ..
        }) if reply.payload == "true" => Ok(()),
        Ok(Envelope {
            body: Some(Body::Secret(reply)),
            ..
        }) => Err(reply
            .context
            .get(protocol::REASON_KEY)
            .cloned()
            .unwrap_or_else(|| "secret rejected by the cluster".to_owned())),
        Ok(other) => {
            tracing::warn!(reply = ?other, "unexpected reply to a connector validation");
            Err("the cluster's answer was not a validation reply".to_owned())
        }
        Err(reason) => {
            outbound.close_with(Status::unavailable(format!(
                "cannot validate the secret now: {reason}"
            )));
            return None;
        }
    };
    if let Err(reason) = verdict {
        tracing::warn!(connector = %name, %reason, "connector refused");
        refuse(outbound, &tenant, &name, Status::permission_denied(reason));
        return None;
    }
    let _ = outbound.push(protocol::validation_reply(&tenant, true, &name));
    router.announce(&request);
    Some(request)
}

async fn serve_connector(
    router: Arc<Router>,
    peer: protocol::Peer,
    address: String,
    mut inbound: Streaming<Received>,
    outbound: Outbox,
    shutdown: CancellationToken,
) {
    let Some(validation) = handshake(&router, &peer, &address, &mut inbound, &outbound).await
    else {
        return;
    };
    let id = router.add(
        Peer::Connector {
            logical_name: peer.logical_name.clone(),
            connector_type: peer.connector_type.clone().unwrap_or_default(),
            address,
        },
        outbound.clone(),
    );
    router.remember_validation(id, validation);
    let beating = shutdown.child_token();
    router.beat(&outbound, beating.clone());
    let mut watch = Watch::new(router.stream().heartbeat);
    // Made once, not per message: each registers with its token when first polled.
    let (ending, stalled) = (shutdown.cancelled(), outbound.stalled());
    tokio::pin!(ending, stalled);
    loop {
        let message = tokio::select! {
            () = &mut ending => break,
            // Routing took it out for not reading; the stream ends with the reason.
            () = &mut stalled => break,
            () = watch.silent() => {
                tracing::warn!(connector = %peer.logical_name, idle_ms = watch.idle_limit().as_millis() as u64, "closing a connector stream gone silent after heartbeats");
                metrics::counter!("gandalf_aggregator_connections_closed_total", "reason" => "silent").increment(1);
                outbound.close_with(Status::unavailable("no message or heartbeat within the idle limit"));
                break;
            }
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(received)) => {
                watch.heard(received.is_heartbeat());
                router.handle_from_connector(id, received).await
            }
            Ok(None) => break,
            Err(status) => {
                // An undecodable message ends the stream (tonic's choice); say so.
                tracing::info!(connector = %peer.logical_name, %status, "connector stream ended with an error");
                break;
            }
        }
    }
    beating.cancel();
    router.remove(id);
}
