//! The cluster's shared state and routing: which aggregators are connected, which
//! connectors sit behind them, stored logical configurations, and the event log.
//!
//! The connector registry follows the aggregators: a relayed VALIDATION adds the
//! aggregator as one way to the connector (a connector with streams to two aggregators
//! has two), a LEAVE or the aggregator's stream closing removes it. A name is bound to
//! its connector type while any way to it is live. A command is a
//! [`gandalf::legs::Leg`] here too: sent through one way after another until one
//! acknowledges within the command's budget, answered only from where it went, and the
//! answer sent to the aggregator it came from alone.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use gandalf::{
    dedup::Seen,
    frame::Frame,
    legs::{Budget, Legs, Offer, Pacing},
    outbox::{Outbox, Refused},
    protocol::{self, REPLY, REQUEST, SAVE},
    wire::{Command, Configuration, Envelope, Header, envelope::Body},
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{config::Config, storage::Storage};

/// One connected aggregator.
#[derive(Debug, Clone)]
struct AggregatorConn {
    tenant: String,
    /// Shared with every event it sends, in the log.
    logical_name: Arc<str>,
    outbox: Outbox,
}

/// A connector, as learned from relayed validations.
#[derive(Debug, Clone)]
struct ConnectorEntry {
    connector_type: String,
    /// The aggregators it has a stream to, oldest first.
    vias: Vec<u64>,
}

/// An event as kept in the log.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedEvent {
    pub uuid: String,
    pub topic: String,
    pub event: String,
    pub reference_uuid: String,
    pub payload: String,
    /// Logical name of the aggregator it came from.
    pub origin: String,
    pub received_at_ms: i64,
}

/// A tenant's kept events, and their size.
#[derive(Debug, Default)]
struct EventLog {
    entries: VecDeque<Kept>,
    bytes: usize,
}

/// An event in the log: as received, in a buffer of its own.
#[derive(Debug, Clone)]
struct Kept {
    frame: Frame,
    origin: Option<Arc<str>>,
    received_at_ms: i64,
}

impl Kept {
    fn decode(self) -> Option<LoggedEvent> {
        let Ok(Envelope {
            header: Some(header),
            body: Some(Body::Event(event)),
        }) = self.frame.decode()
        else {
            return None;
        };
        Some(LoggedEvent {
            uuid: header.uuid,
            topic: event.topic,
            event: event.event,
            reference_uuid: event.reference_uuid,
            payload: event.payload,
            origin: self.origin.as_deref().unwrap_or_default().to_owned(),
            received_at_ms: self.received_at_ms,
        })
    }
}

/// Everything the cluster knows.
pub struct Cluster {
    config: Config,
    next_id: AtomicU64,
    aggregators: RwLock<HashMap<u64, AggregatorConn>>,
    /// (tenant, connector logical name) -> where it is.
    connectors: RwLock<HashMap<(String, String), ConnectorEntry>>,
    /// Configuration requests, handled in order by one task over the storage.
    configurations: mpsc::Sender<ConfigurationJob>,
    events: Mutex<HashMap<String, EventLog>>,
    /// Round-robin position per (tenant, connector type).
    round_robin: Mutex<HashMap<(String, String), usize>>,
    /// Event uuids seen lately: an event sent to several members by several ways is
    /// logged and passed on once.
    seen: Mutex<Seen>,
    /// The commands under way here.
    legs: Arc<Legs>,
}

/// A registered aggregator stream: unregisters itself (and its connectors) when dropped.
pub struct Registration {
    cluster: Arc<Cluster>,
    pub id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cluster.unregister(self.id);
    }
}

impl Cluster {
    /// The cluster; starts the task that serves configuration requests from `storage`.
    pub fn new(config: Config, storage: Storage) -> Arc<Self> {
        let (configurations, jobs) = mpsc::channel(CONFIGURATION_QUEUE);
        let cluster = Arc::new(Self {
            next_id: AtomicU64::new(1),
            aggregators: RwLock::default(),
            connectors: RwLock::default(),
            configurations,
            events: Mutex::default(),
            round_robin: Mutex::default(),
            seen: Mutex::default(),
            legs: Legs::new(config.max_commands_in_flight, config.max_commands_in_flight),
            config,
        });
        tokio::spawn(serve_configurations(
            Arc::downgrade(&cluster),
            storage,
            jobs,
        ));
        cluster
    }

    /// How every aggregator stream is run: queue, heartbeats, keepalive, largest message.
    pub fn stream(&self) -> gandalf::streams::Settings {
        self.config.stream()
    }

    /// Whether `secret` opens a Cluster stream for `tenant` as an aggregator.
    pub fn accepts_aggregator(&self, tenant: &str, secret: &str) -> bool {
        self.config
            .tenants
            .get(tenant)
            .is_some_and(|t| t.accepts_aggregator(secret))
    }

    /// Whether `secret` validates a connector of `tenant`.
    pub fn accepts_connector(&self, tenant: &str, secret: &str) -> bool {
        self.config
            .tenants
            .get(tenant)
            .is_some_and(|t| t.accepts_connector(secret))
    }

    pub fn register(
        self: &Arc<Self>,
        tenant: &str,
        logical_name: &str,
        outbox: Outbox,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        write(&self.aggregators).insert(
            id,
            AggregatorConn {
                tenant: tenant.into(),
                logical_name: logical_name.into(),
                outbox,
            },
        );
        metrics::gauge!("gandalf_cluster_aggregators").increment(1.0);
        Registration {
            cluster: self.clone(),
            id,
        }
    }

    fn unregister(&self, id: u64) {
        if write(&self.aggregators).remove(&id).is_some() {
            metrics::gauge!("gandalf_cluster_aggregators").decrement(1.0);
        }
        write(&self.connectors).retain(|_, entry| {
            entry.vias.retain(|via| *via != id);
            !entry.vias.is_empty()
        });
    }

    /// Registers connector `name` of `connector_type` as reachable through aggregator
    /// `via`; refused (the reason) when the name is held by a connector of another type.
    fn bind(&self, tenant: &str, name: &str, connector_type: &str, via: u64) -> Result<(), String> {
        let mut connectors = write(&self.connectors);
        let entry = connectors
            .entry((tenant.to_owned(), name.to_owned()))
            .or_insert_with(|| ConnectorEntry {
                connector_type: connector_type.to_owned(),
                vias: Vec::new(),
            });
        if entry.connector_type != connector_type {
            return Err(format!(
                "the name {name:?} is held by a connector of type {:?}",
                entry.connector_type
            ));
        }
        if !entry.vias.contains(&via) {
            entry.vias.push(via);
        }
        Ok(())
    }

    /// Connector `name` has no stream to aggregator `via` any more.
    fn leave(&self, tenant: &str, name: &str, via: u64) {
        let mut connectors = write(&self.connectors);
        let key = (tenant.to_owned(), name.to_owned());
        if let Some(entry) = connectors.get_mut(&key) {
            entry.vias.retain(|v| *v != via);
            if entry.vias.is_empty() {
                connectors.remove(&key);
            }
        }
    }

    /// Connected aggregators as (tenant, logical name), for readiness and tests.
    pub fn aggregators(&self) -> Vec<(String, String)> {
        let mut list: Vec<_> = read(&self.aggregators)
            .values()
            .map(|a| (a.tenant.clone(), a.logical_name.to_string()))
            .collect();
        list.sort();
        list
    }

    /// The events logged for `tenant`, oldest first.
    pub fn events(&self, tenant: &str) -> Vec<LoggedEvent> {
        let kept: Vec<Kept> = lock(&self.events)
            .get(tenant)
            .map(|log| log.entries.iter().cloned().collect())
            .unwrap_or_default();
        // Decoded outside the lock; every kept frame was read whole on arrival.
        kept.into_iter().filter_map(Kept::decode).collect()
    }

    /// Handles one well-formed envelope (checked by the caller) from aggregator `from`,
    /// `frame` as it came (plain events take [`Cluster::spread_event`] straight).
    pub fn route(self: &Arc<Self>, from: u64, tenant: &str, envelope: &Envelope, frame: Frame) {
        if matches!(envelope.body, Some(Body::Event(_))) {
            return self.route_event(from, tenant, envelope, frame);
        }
        let (Some(header), Some(body)) = (&envelope.header, &envelope.body) else {
            return;
        };
        let reply_to_origin = |envelope: Envelope| {
            self.send_to(from, envelope);
        };
        match body {
            Body::Secret(secret)
                if secret.command == protocol::VALIDATION
                    || secret.command == protocol::ANNOUNCE =>
            {
                // A connector's validation, relayed by its aggregator.
                let presented = secret
                    .context
                    .get(protocol::SECRET_KEY)
                    .map(String::as_str)
                    .unwrap_or("");
                let connector = secret.target_logical_name.clone();
                let connector_type = secret
                    .context
                    .get(protocol::CONNECTOR_TYPE_KEY)
                    .map(String::as_str)
                    .unwrap_or("");
                let verdict = if !self.accepts_connector(tenant, presented) {
                    Err("secret rejected by the cluster".to_owned())
                } else if connector.is_empty() {
                    Ok(())
                } else {
                    self.bind(tenant, &connector, connector_type, from)
                };
                tracing::info!(tenant, connector = %connector, connector_type, accepted = verdict.is_ok(), command = %secret.command, "connector validation");
                if secret.command == protocol::ANNOUNCE {
                    return;
                }
                let mut reply = protocol::validation_reply(tenant, verdict.is_ok(), &connector);
                // The reply names the request it answers (context.request_uuid).
                if let Some(Body::Secret(s)) = reply.body.as_mut() {
                    s.target_address = secret.target_address.clone();
                    s.context.insert("request_uuid".into(), header.uuid.clone());
                    if let Err(reason) = verdict {
                        s.context.insert(protocol::REASON_KEY.into(), reason);
                    }
                }
                reply_to_origin(reply);
            }
            Body::Secret(secret) if secret.command == protocol::LEAVE => {
                tracing::info!(tenant, connector = %secret.target_logical_name, "connector left an aggregator");
                self.leave(tenant, &secret.target_logical_name, from);
            }
            Body::Secret(_) | Body::Heartbeat(_) => {}
            Body::Configuration(configuration)
                if matches!(configuration.command.as_str(), SAVE | REQUEST) =>
            {
                let job = ConfigurationJob {
                    from,
                    tenant: tenant.to_owned(),
                    uuid: header.uuid.clone(),
                    configuration: configuration.clone(),
                };
                if self.configurations.try_send(job).is_err() {
                    metrics::counter!("gandalf_cluster_dropped_total", "reason" => "storage_busy")
                        .increment(1);
                    reply_to_origin(configuration_reply(
                        tenant,
                        &header.uuid,
                        configuration,
                        Err("the configuration storage is busy; try again".into()),
                    ));
                }
            }
            Body::Configuration(_) => {}
            Body::ConfigurationDatabase(request) if request.command == REQUEST => {
                let database = self
                    .config
                    .tenants
                    .get(tenant)
                    .and_then(|t| t.database.as_ref());
                let payload = database
                    .map(|d| serde_json::json!({ "url": d.url.expose() }).to_string())
                    .unwrap_or_default();
                let mut reply = protocol::configuration_database(tenant, REPLY, &payload);
                if let Some(Body::ConfigurationDatabase(c)) = reply.body.as_mut() {
                    c.context
                        .insert("configured".into(), database.is_some().to_string());
                    c.context.insert("request_uuid".into(), header.uuid.clone());
                }
                reply_to_origin(reply);
            }
            Body::ConfigurationDatabase(_) => {}
            Body::Command(command) => {
                let cluster = self.clone();
                let (tenant, header, command) =
                    (tenant.to_owned(), header.clone(), command.clone());
                tokio::spawn(async move { cluster.dispatch(from, &tenant, header, command).await });
            }
            Body::Config(config) => {
                let target = read(&self.connectors)
                    .get(&(tenant.to_owned(), config.target.clone()))
                    .and_then(|e| e.vias.first().copied());
                match target {
                    // Unchanged: passed on as received.
                    Some(via) => {
                        self.send_frame(via, frame);
                    }
                    None => reply_to_origin(protocol::error_event(
                        tenant,
                        protocol::UNDELIVERABLE,
                        &header.uuid,
                        &format!("no connector named {:?}", config.target),
                    )),
                }
            }
            Body::Event(_) => {}
        }
    }

    /// Where a command may go, in the order to try: (connector, aggregator) for the
    /// connector named in `target` when given, else for every connector of
    /// `connector_type`, starting from the next in round robin.
    fn candidates(&self, tenant: &str, connector_type: &str, target: &str) -> Vec<(String, u64)> {
        let connectors = read(&self.connectors);
        if !target.is_empty() {
            return connectors
                .get(&(tenant.to_owned(), target.to_owned()))
                .map(|e| e.vias.iter().map(|via| (target.to_owned(), *via)).collect())
                .unwrap_or_default();
        }
        let mut names: Vec<(&String, &ConnectorEntry)> = connectors
            .iter()
            .filter(|((t, _), e)| t == tenant && e.connector_type == connector_type)
            .map(|((_, name), e)| (name, e))
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        names.sort_by(|a, b| a.0.cmp(b.0));
        let start = {
            let mut positions = lock(&self.round_robin);
            let position = positions
                .entry((tenant.to_owned(), connector_type.to_owned()))
                .or_default();
            let start = *position % names.len();
            *position = position.wrapping_add(1);
            start
        };
        names.rotate_left(start);
        names
            .into_iter()
            .flat_map(|(name, e)| e.vias.iter().map(move |via| (name.clone(), *via)))
            .collect()
    }

    /// Routes a command: through each candidate in turn until one acknowledges within
    /// the command's budget; the acknowledgement, or UNDELIVERABLE, to the origin alone.
    async fn dispatch(&self, from: u64, tenant: &str, header: Header, command: Command) {
        let wanted = command
            .context
            .get(protocol::CONNECTOR_TYPE_KEY)
            .cloned()
            .unwrap_or_default();
        let undeliverable = |detail: &str| {
            metrics::counter!("gandalf_cluster_dropped_total", "reason" => "undeliverable")
                .increment(1);
            tracing::info!(tenant, command = %header.uuid, connector_type = %wanted, detail, "command undeliverable");
            self.send_to(
                from,
                protocol::error_event(tenant, protocol::UNDELIVERABLE, &header.uuid, detail),
            );
        };
        let budget = Budget::of(&header, self.config.max_timeout_ms);
        let mut leg = match self.legs.open(&header.uuid, from, false) {
            Ok(leg) => leg,
            Err(busy) => {
                metrics::counter!("gandalf_cluster_dropped_total", "reason" => "busy").increment(1);
                self.send_to(
                    from,
                    protocol::error_event(tenant, protocol::BUSY, &header.uuid, &busy.to_string()),
                );
                return;
            }
        };
        let candidates = self.candidates(tenant, &wanted, &command.target);
        if candidates.is_empty() {
            return undeliverable(&if command.target.is_empty() {
                format!("no connector of type {wanted:?} is connected")
            } else {
                format!("no connector named {:?} is connected", command.target)
            });
        }
        let tries = leg
            .try_in_turn(
                &candidates,
                |(_, via)| *via,
                budget,
                Pacing::WholeBudget,
                |(name, via), timeout_ms| {
                    let forwarded = Envelope {
                        header: Some(Header {
                            timeout_ms,
                            ..header.clone()
                        }),
                        body: Some(Body::Command(Command {
                            target: name.clone(),
                            ..command.clone()
                        })),
                    };
                    self.send_to(*via, forwarded)
                },
            )
            .await;
        if let Some((via, answer)) = tries.answer {
            let answer = Frame::encode(&answer);
            self.send_frame(from, answer.clone());
            self.log_event(tenant, via, &answer);
            return;
        }
        undeliverable(&match tries.refusal {
            Some(refusal) if candidates.len() == 1 => refusal,
            Some(refusal) => format!("{} candidates tried; the last: {refusal}", candidates.len()),
            None => format!(
                "no acknowledgement within {} ms",
                protocol::timeout_ms(&header, self.config.max_timeout_ms)
            ),
        });
    }

    /// An event read whole: an answer goes along its command's leg; anything else
    /// takes [`Cluster::spread_event`].
    fn route_event(&self, from: u64, tenant: &str, envelope: &Envelope, frame: Frame) {
        let (Some(header), Some(Body::Event(event))) = (&envelope.header, &envelope.body) else {
            return;
        };
        if !event.reference_uuid.is_empty() {
            match self.legs.offer(&event.reference_uuid, from, envelope) {
                Offer::Taken => return,
                Offer::Unsolicited => {
                    metrics::counter!("gandalf_cluster_dropped_total", "reason" => "unsolicited_answer").increment(1);
                    tracing::warn!(tenant, command = %event.reference_uuid, "an answer to a command from an aggregator it was not sent to; dropped");
                    return;
                }
                // An error about nothing under way here (e.g. a WRONG_TENANT report):
                // for the log, not for the other aggregators.
                Offer::NoLeg if event.topic == protocol::ERROR_TOPIC => {
                    return self.log_event(tenant, from, &frame);
                }
                Offer::NoLeg => {}
            }
        }
        self.spread_event(from, tenant, header, frame)
    }

    /// An event answering nothing, from aggregator `from`: once per uuid, queued as
    /// received to every other aggregator of the tenant and kept in its log.
    pub fn spread_event(&self, from: u64, tenant: &str, header: &Header, frame: Frame) {
        let now = std::time::Instant::now();
        let ttl = std::time::Duration::from_millis(u64::from(protocol::timeout_ms(
            header,
            self.config.max_timeout_ms,
        )));
        if !lock(&self.seen).first(&header.uuid, now, now + ttl) {
            metrics::counter!("gandalf_cluster_dropped_total", "reason" => "duplicate")
                .increment(1);
            return;
        }
        // Queued to every other aggregator of the tenant under one read lock, without
        // waiting; the origin's name for the log is taken under the same lock.
        let mut refusals = Vec::new();
        let origin = {
            let aggregators = read(&self.aggregators);
            let mut origin = None;
            for (id, aggregator) in aggregators.iter() {
                if *id == from {
                    origin = Some(aggregator.logical_name.clone());
                } else if aggregator.tenant == tenant
                    && let Err(refused) = aggregator.outbox.push_frame(frame.clone())
                {
                    refusals.push((*id, refused));
                }
            }
            origin
        };
        for (id, refused) in refusals {
            self.refused(id, refused);
        }
        self.keep_event(tenant, origin, &frame);
    }

    /// Keeps an event from aggregator `from` in the tenant's log.
    fn log_event(&self, tenant: &str, from: u64, frame: &Frame) {
        let origin = read(&self.aggregators)
            .get(&from)
            .map(|a| a.logical_name.clone());
        self.keep_event(tenant, origin, frame);
    }

    /// Keeps an event in the tenant's log as its bytes (decoded when the log is read),
    /// dropping the oldest past `event_log_capacity` events or `event_log_bytes`.
    fn keep_event(&self, tenant: &str, origin: Option<Arc<str>>, frame: &Frame) {
        let entry = Kept {
            frame: frame.detached(),
            origin,
            received_at_ms: protocol::now_ms(),
        };
        let mut logs = lock(&self.events);
        let log = match logs.get_mut(tenant) {
            Some(log) => log,
            None => logs.entry(tenant.to_owned()).or_default(),
        };
        log.bytes += entry.frame.len();
        log.entries.push_back(entry);
        while log.entries.len() > self.config.event_log_capacity
            || (log.bytes > self.config.event_log_bytes && log.entries.len() > 1)
        {
            match log.entries.pop_front() {
                Some(oldest) => log.bytes -= oldest.frame.len(),
                None => break,
            }
        }
    }

    /// Queues for one aggregator without waiting; a full queue drops the message for it
    /// (counted), a stalled one is closed. False when it was not queued.
    pub fn send_to(&self, id: u64, envelope: Envelope) -> bool {
        self.send_frame(id, Frame::encode(&envelope))
    }

    /// [`Cluster::send_to`] for a message passed on as it was received.
    fn send_frame(&self, id: u64, frame: Frame) -> bool {
        let refused = match read(&self.aggregators).get(&id) {
            Some(aggregator) => match aggregator.outbox.push_frame(frame) {
                Ok(()) => return true,
                Err(refused) => refused,
            },
            None => Refused::Closed,
        };
        self.refused(id, refused);
        false
    }

    fn refused(&self, id: u64, refused: Refused) {
        let reason = match refused {
            Refused::Full => "queue_full",
            Refused::Closed => "gone",
            Refused::Stalled => {
                let name = read(&self.aggregators)
                    .get(&id)
                    .map(|a| a.logical_name.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    aggregator = %name,
                    stall_ms = self.config.stall_timeout_ms,
                    "closing an aggregator stream that stopped reading: its queue stayed full"
                );
                metrics::counter!("gandalf_cluster_connections_closed_total", "reason" => "stalled")
                    .increment(1);
                self.unregister(id);
                "queue_full"
            }
        };
        metrics::counter!("gandalf_cluster_dropped_total", "reason" => reason).increment(1);
    }
}

/// Configuration requests waiting for the storage at most.
const CONFIGURATION_QUEUE: usize = 1024;

/// A configuration request for the storage task.
struct ConfigurationJob {
    from: u64,
    tenant: String,
    uuid: String,
    configuration: Configuration,
}

/// Serves configuration requests in arrival order, so a SAVE and the REQUEST after it
/// are answered in that order; ends with the cluster.
async fn serve_configurations(
    cluster: std::sync::Weak<Cluster>,
    storage: Storage,
    mut jobs: mpsc::Receiver<ConfigurationJob>,
) {
    while let Some(job) = jobs.recv().await {
        let name = &job.configuration.target_logical_name;
        let stored = match job.configuration.command.as_str() {
            SAVE => storage
                .save(&job.tenant, name, &job.configuration.payload)
                .await
                .map(|()| Some(job.configuration.payload.clone())),
            _ => storage.load(&job.tenant, name).await,
        };
        if let Err(problem) = &stored {
            metrics::counter!("gandalf_cluster_storage_errors_total").increment(1);
            tracing::warn!(tenant = %job.tenant, configuration = %name, %problem, "configuration storage failed");
        }
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.send_to(
            job.from,
            configuration_reply(&job.tenant, &job.uuid, &job.configuration, stored),
        );
    }
}

/// The REPLY to a configuration request: the stored payload (`context.found`), or
/// `context.error` when the storage failed.
fn configuration_reply(
    tenant: &str,
    request_uuid: &str,
    request: &Configuration,
    stored: Result<Option<String>, String>,
) -> Envelope {
    let payload = stored
        .as_ref()
        .ok()
        .and_then(|s| s.as_deref())
        .unwrap_or("");
    let mut reply = protocol::configuration(tenant, REPLY, &request.target_logical_name, payload);
    if let Some(Body::Configuration(c)) = reply.body.as_mut() {
        c.target_address = request.target_address.clone();
        c.context
            .insert("request_uuid".into(), request_uuid.to_owned());
        c.context
            .insert("found".into(), matches!(stored, Ok(Some(_))).to_string());
        if let Err(problem) = stored {
            c.context.insert("error".into(), problem);
        }
    }
    reply
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}
