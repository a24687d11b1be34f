//! The `gandalf.v1.Aggregator` gRPC service: one stream per connector. A stream starts
//! with the connector's secret validation, relayed to the cluster; only then does
//! routing start.

use std::{collections::HashMap, sync::Arc, time::Duration};

use gandalf::{
    protocol::{self, ComponentType},
    wire::{Envelope, Secret, aggregator_server, envelope::Body},
};
use platform::shutdown::Drain;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::router::{Outbound, Peer, Router};

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
impl aggregator_server::Aggregator for AggregatorService {
    type ConnectStream = ReceiverStream<Result<Envelope, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let address = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let peer = protocol::Peer::require(request.metadata(), ComponentType::Connector)
            .map_err(Status::invalid_argument)?;
        let (outbound, rx) = mpsc::channel(1024);
        self.drain.spawn(serve_connector(
            self.router.clone(),
            peer,
            address,
            request.into_inner(),
            outbound,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Outgoing = mpsc::Sender<Result<Envelope, Status>>;

async fn refuse(outbound: &Outgoing, tenant: &str, name: &str, status: Status) {
    let _ = outbound
        .send(Ok(protocol::validation_reply(tenant, false, name)))
        .await;
    let _ = outbound.send(Err(status)).await;
}

/// The connector's validation, relayed to the cluster: the relayed envelope when accepted;
/// on refusal the stream has been told why.
async fn handshake(
    router: &Router,
    peer: &protocol::Peer,
    address: &str,
    inbound: &mut Streaming<Envelope>,
    outbound: &Outgoing,
) -> Option<Envelope> {
    let tenant = router.tenant().to_owned();
    let name = peer.logical_name.clone();
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(envelope))) => envelope,
        Ok(_) => return None,
        Err(_) => {
            let _ = outbound
                .send(Err(Status::deadline_exceeded(
                    "no VALIDATION within 5 s of opening the stream",
                )))
                .await;
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
                )
                .await;
                return None;
            }
            secret
                .context
                .get(protocol::SECRET_KEY)
                .cloned()
                .unwrap_or_default()
        }
        _ => {
            let _ = outbound
                .send(Err(Status::invalid_argument(
                    "the first envelope must be Secret{command: VALIDATION}",
                )))
                .await;
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
    let accepted = match router.ask_cluster(request.clone(), HANDSHAKE_TIMEOUT).await {
        Ok(Envelope {
            body: Some(Body::Secret(reply)),
            ..
        }) => reply.payload == "true",
        Ok(other) => {
            tracing::warn!(reply = ?other, "unexpected reply to a connector validation");
            false
        }
        Err(reason) => {
            let _ = outbound
                .send(Err(Status::unavailable(format!(
                    "cannot validate the secret now: {reason}"
                ))))
                .await;
            return None;
        }
    };
    if !accepted {
        tracing::warn!(connector = %name, "connector secret rejected");
        refuse(
            outbound,
            &tenant,
            &name,
            Status::permission_denied("secret rejected by the cluster"),
        )
        .await;
        return None;
    }
    let _ = outbound
        .send(Ok(protocol::validation_reply(&tenant, true, &name)))
        .await;
    Some(request)
}

async fn serve_connector(
    router: Arc<Router>,
    peer: protocol::Peer,
    address: String,
    mut inbound: Streaming<Envelope>,
    outbound: Outgoing,
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
        Outbound::Connector(outbound),
    );
    router.remember_validation(id, validation);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(envelope)) => router.handle(id, envelope).await,
            Ok(None) => break,
            Err(status) => {
                // An undecodable message ends the stream (tonic's choice); say so.
                tracing::info!(connector = %peer.logical_name, %status, "connector stream ended with an error");
                break;
            }
        }
    }
    router.remove(id);
}
