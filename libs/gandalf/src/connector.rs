//! The connector client: what a connector author needs to talk to an aggregator.
//!
//! ```no_run
//! # async fn run() -> Result<(), gandalf::connector::ConnectorError> {
//! use gandalf::connector::{Connector, ConnectorOptions};
//! let connector = Connector::connect(ConnectorOptions::new(
//!     "http://127.0.0.1:9200", "billing-1", "erp", "acme", "tenant-secret",
//! ))
//! .await?;
//! // Send a command to any connector of type "crm" and wait for its acknowledgement.
//! let ack = connector.send_command("crm", "SYNC_CUSTOMERS", r#"{"full":true}"#, 1000).await?;
//! // Serve commands sent to this connector.
//! while let Some(incoming) = connector.next_command().await {
//!     connector.acknowledge(&incoming).await?;
//! }
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Mutex as AsyncMutex, broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, transport::Endpoint};

use crate::{
    protocol::{self, ComponentType, Peer},
    wire::{Command, Envelope, Event, Header, aggregator_client::AggregatorClient, envelope::Body},
};

/// How to reach an aggregator and who this connector is.
#[derive(Debug, Clone)]
pub struct ConnectorOptions {
    /// The aggregator's gRPC address, e.g. `http://127.0.0.1:9200`.
    pub endpoint: String,
    pub logical_name: String,
    pub connector_type: String,
    pub tenant: String,
    pub secret: String,
    /// How long connecting and the secret validation may take.
    pub connect_timeout: Duration,
    /// Interval of this connector's heartbeats; an aggregator that sent heartbeats and
    /// then stays silent three to four intervals is taken for gone and the stream closed.
    pub heartbeat_interval: Duration,
    /// HTTP/2 keepalive PING interval (and timeout).
    pub keepalive: Duration,
}

impl ConnectorOptions {
    pub fn new(
        endpoint: &str,
        logical_name: &str,
        connector_type: &str,
        tenant: &str,
        secret: &str,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            logical_name: logical_name.into(),
            connector_type: connector_type.into(),
            tenant: tenant.into(),
            secret: secret.into(),
            connect_timeout: Duration::from_secs(5),
            heartbeat_interval: crate::heartbeat::DEFAULT_INTERVAL,
            keepalive: Duration::from_secs(20),
        }
    }
}

/// What can go wrong for a connector.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("secret rejected: {0}")]
    Rejected(String),
    #[error("the aggregator closed the stream: {0}")]
    Closed(String),
    #[error("no answer within {0} ms")]
    Timeout(u32),
    #[error("command {uuid} was not delivered: {event} ({detail})")]
    NotDelivered {
        uuid: String,
        event: String,
        detail: String,
    },
}

/// A command received by this connector.
#[derive(Debug, Clone)]
pub struct IncomingCommand {
    pub header: Header,
    pub command: Command,
}

/// How long past a command's timeout the client waits for the aggregator's report.
const ANSWER_MARGIN_MS: u64 = 500;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Event>>>>;

/// A validated connection to an aggregator.
pub struct Connector {
    tenant: String,
    logical_name: String,
    outbound: mpsc::Sender<Envelope>,
    pending: Pending,
    events: broadcast::Sender<Arc<Envelope>>,
    commands: AsyncMutex<mpsc::Receiver<IncomingCommand>>,
    closed: Arc<Mutex<Option<String>>>,
}

impl Connector {
    /// Opens the stream and validates the secret; fails with
    /// [`ConnectorError::Rejected`] when the aggregator says no.
    pub async fn connect(options: ConnectorOptions) -> Result<Self, ConnectorError> {
        let connect_error = |reason: String| ConnectorError::Connect {
            endpoint: options.endpoint.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(options.endpoint.clone())
            .map_err(|e| connect_error(e.to_string()))?
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(options.keepalive)
            .keep_alive_timeout(options.keepalive)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut client = AggregatorClient::new(channel);

        let (outbound, outbound_rx) = mpsc::channel(1024);
        outbound
            .send(protocol::validation(&options.tenant, &options.secret))
            .await
            .map_err(|_| connect_error("stream closed before validation".into()))?;
        let mut request = Request::new(ReceiverStream::new(outbound_rx));
        Peer {
            logical_name: options.logical_name.clone(),
            component_type: ComponentType::Connector,
            connector_type: Some(options.connector_type.clone()),
        }
        .write_metadata(request.metadata_mut())
        .map_err(connect_error)?;

        let wait = options.connect_timeout;
        let mut inbound = match tokio::time::timeout(wait, client.connect(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if status.code() == Code::PermissionDenied => {
                return Err(ConnectorError::Rejected(status.message().to_owned()));
            }
            Ok(Err(status)) => return Err(connect_error(status.to_string())),
            Err(_) => return Err(connect_error("no answer to the stream request".into())),
        };

        // The first message must be the validation reply.
        match protocol::await_validation(&mut inbound, wait).await {
            protocol::Validation::Accepted => {}
            protocol::Validation::Rejected(reason) => return Err(ConnectorError::Rejected(reason)),
            protocol::Validation::Failed(reason) => return Err(connect_error(reason)),
        }

        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(4096);
        let (commands_tx, commands_rx) = mpsc::channel(1024);
        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        tokio::spawn(read_loop(
            inbound,
            crate::heartbeat::Watch::new(options.heartbeat_interval),
            pending.clone(),
            events.clone(),
            commands_tx,
            closed.clone(),
        ));
        tokio::spawn(beat(
            outbound.downgrade(),
            options.heartbeat_interval,
            crate::heartbeat::heartbeat(&options.tenant, "connector", &options.logical_name),
        ));

        Ok(Self {
            tenant: options.tenant,
            logical_name: options.logical_name,
            outbound,
            pending,
            events,
            commands: AsyncMutex::new(commands_rx),
            closed,
        })
    }

    /// This connector's logical name.
    pub fn logical_name(&self) -> &str {
        &self.logical_name
    }

    /// Sends a command for a connector of `connector_type` and waits up to `timeout_ms`
    /// for the event that answers it: its `ON_GOING` acknowledgement, or an error event
    /// (`UNDELIVERABLE`, `WRONG_TENANT`) as [`ConnectorError::NotDelivered`].
    pub async fn send_command(
        &self,
        connector_type: &str,
        command: &str,
        payload: &str,
        timeout_ms: u32,
    ) -> Result<Event, ConnectorError> {
        let envelope =
            protocol::command(&self.tenant, connector_type, command, payload, timeout_ms);
        let uuid = envelope
            .header
            .as_ref()
            .map(|h| h.uuid.clone())
            .unwrap_or_default();
        self.request(envelope, &uuid, timeout_ms).await
    }

    /// Sends any envelope and waits for the event referencing `uuid`.
    pub async fn request(
        &self,
        envelope: Envelope,
        uuid: &str,
        timeout_ms: u32,
    ) -> Result<Event, ConnectorError> {
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(uuid.to_owned(), tx);
        if let Err(err) = self.send(envelope).await {
            self.lock_pending().remove(uuid);
            return Err(err);
        }
        // Every hop finishes within the command's own timeout (0: the default of
        // 1000 ms), the aggregator's whole try-next sequence included, and reports
        // UNDELIVERABLE by then: wait that long, plus room for the report to arrive.
        let own = if timeout_ms == 0 {
            protocol::DEFAULT_TIMEOUT_MS
        } else {
            timeout_ms
        };
        let wait = Duration::from_millis(u64::from(own) + ANSWER_MARGIN_MS);
        let answer = tokio::time::timeout(wait, rx).await;
        self.lock_pending().remove(uuid);
        match answer {
            Ok(Ok(event)) if event.topic == protocol::ERROR_TOPIC => {
                Err(ConnectorError::NotDelivered {
                    uuid: uuid.to_owned(),
                    event: event.event,
                    detail: event.payload,
                })
            }
            Ok(Ok(event)) => Ok(event),
            Ok(Err(_)) => Err(ConnectorError::Closed(self.close_reason())),
            Err(_) => Err(ConnectorError::Timeout(timeout_ms)),
        }
    }

    /// Publishes an event; returns its uuid.
    pub async fn send_event(
        &self,
        topic: &str,
        event: &str,
        payload: &str,
    ) -> Result<String, ConnectorError> {
        let envelope = protocol::event(&self.tenant, topic, event, "", payload);
        let uuid = envelope
            .header
            .as_ref()
            .map(|h| h.uuid.clone())
            .unwrap_or_default();
        self.send(envelope).await?;
        Ok(uuid)
    }

    /// Sends an envelope as it is (tests use it to send malformed ones).
    pub async fn send(&self, envelope: Envelope) -> Result<(), ConnectorError> {
        self.outbound
            .send(envelope)
            .await
            .map_err(|_| ConnectorError::Closed(self.close_reason()))
    }

    /// The next command sent to this connector; `None` once the stream is closed.
    pub async fn next_command(&self) -> Option<IncomingCommand> {
        self.commands.lock().await.recv().await
    }

    /// Acknowledges a command (`ON_GOING`).
    pub async fn acknowledge(&self, incoming: &IncomingCommand) -> Result<(), ConnectorError> {
        self.send(protocol::on_going(
            &self.tenant,
            &incoming.command,
            &incoming.header.uuid,
        ))
        .await
    }

    /// Every envelope that is not a command for this connector (events, replies, errors),
    /// from now on; shared by every subscriber, not copied for each.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.events.subscribe()
    }

    /// Why the stream closed, once it has.
    pub fn close_reason(&self) -> String {
        self.closed
            .lock()
            .map(|c| c.clone().unwrap_or_else(|| "stream closed".into()))
            .unwrap_or_else(|_| "stream closed".into())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Event>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends a heartbeat every `interval` while the connector lives (the task holds no strong
/// sender, so dropping the connector still closes the stream); a full queue skips a beat.
async fn beat(outbound: mpsc::WeakSender<Envelope>, interval: Duration, template: Envelope) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(outbound) = outbound.upgrade() else {
            return;
        };
        let mut heartbeat = template.clone();
        if let Some(header) = heartbeat.header.as_mut() {
            header.uuid = uuid::Uuid::new_v4().to_string();
            header.timestamp_ms = protocol::now_ms();
        }
        if let Err(mpsc::error::TrySendError::Closed(_)) = outbound.try_send(heartbeat) {
            return;
        }
    }
}

async fn read_loop(
    mut inbound: tonic::Streaming<Envelope>,
    mut watch: crate::heartbeat::Watch,
    pending: Pending,
    events: broadcast::Sender<Arc<Envelope>>,
    commands: mpsc::Sender<IncomingCommand>,
    closed: Arc<Mutex<Option<String>>>,
) {
    let reason = loop {
        let message = tokio::select! {
            () = watch.silent() => {
                break format!(
                    "the aggregator sent nothing, not even a heartbeat, for {} ms",
                    watch.idle_limit().as_millis()
                );
            }
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(envelope)) => {
                watch.saw(&envelope);
                match (&envelope.header, &envelope.body) {
                    (_, Some(Body::Heartbeat(_))) => continue,
                    (Some(header), Some(Body::Command(command))) => {
                        let incoming = IncomingCommand {
                            header: header.clone(),
                            command: command.clone(),
                        };
                        if commands.send(incoming).await.is_err() {
                            break "connector dropped".to_owned();
                        }
                        continue;
                    }
                    (_, Some(Body::Event(event))) if !event.reference_uuid.is_empty() => {
                        let waiter = pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&event.reference_uuid);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(event.clone());
                        }
                    }
                    _ => {}
                }
                // Nobody subscribed is fine: the send only fails then.
                let _ = events.send(Arc::new(envelope));
            }
            Ok(None) => break "the aggregator ended the stream".to_owned(),
            Err(status) => break status.to_string(),
        }
    };
    tracing::debug!(reason = %reason, "connector stream closed");
    if let Ok(mut slot) = closed.lock() {
        *slot = Some(reason);
    }
    // Waiters learn of the close through their dropped senders.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
