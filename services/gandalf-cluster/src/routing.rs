//! The cluster's shared state and routing: which aggregators are connected, which
//! connectors sit behind them, stored logical configurations, and the event log.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use gandalf::{
    outbox::{Outbox, Refused},
    protocol::{self, REPLY, REQUEST, SAVE},
    wire::{Envelope, envelope::Body},
};
use serde::Serialize;

use crate::config::Config;

/// One connected aggregator.
#[derive(Debug, Clone)]
struct AggregatorConn {
    tenant: String,
    logical_name: String,
    outbox: Outbox,
}

/// A connector, as learned from a relayed validation.
#[derive(Debug, Clone)]
struct ConnectorEntry {
    connector_type: String,
    via: u64,
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

/// Everything the cluster knows.
pub struct Cluster {
    config: Config,
    next_id: AtomicU64,
    aggregators: RwLock<HashMap<u64, AggregatorConn>>,
    /// (tenant, connector logical name) -> where it is.
    connectors: RwLock<HashMap<(String, String), ConnectorEntry>>,
    /// (tenant, logical name) -> stored logical configuration.
    configurations: RwLock<HashMap<(String, String), String>>,
    events: Mutex<HashMap<String, VecDeque<LoggedEvent>>>,
    /// Round-robin position per (tenant, connector type).
    round_robin: Mutex<HashMap<(String, String), usize>>,
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
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            next_id: AtomicU64::new(1),
            aggregators: RwLock::default(),
            connectors: RwLock::default(),
            configurations: RwLock::default(),
            events: Mutex::default(),
            round_robin: Mutex::default(),
        })
    }

    /// The bounds of each aggregator stream's outgoing queue.
    pub fn queue_limits(&self) -> gandalf::outbox::Limits {
        self.config.queue_limits()
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
        write(&self.connectors).retain(|_, entry| entry.via != id);
    }

    /// Connected aggregators as (tenant, logical name), for readiness and tests.
    pub fn aggregators(&self) -> Vec<(String, String)> {
        let mut list: Vec<_> = read(&self.aggregators)
            .values()
            .map(|a| (a.tenant.clone(), a.logical_name.clone()))
            .collect();
        list.sort();
        list
    }

    /// The events logged for `tenant`, oldest first.
    pub fn events(&self, tenant: &str) -> Vec<LoggedEvent> {
        lock(&self.events)
            .get(tenant)
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Handles one well-formed envelope (checked by the caller) from aggregator `from`.
    pub fn route(&self, from: u64, tenant: &str, envelope: Envelope) {
        // Events move on (and into the log) by value; the rest is answered from references.
        if matches!(envelope.body, Some(Body::Event(_))) {
            return self.route_event(from, tenant, envelope);
        }
        let (Some(header), Some(body)) = (&envelope.header, &envelope.body) else {
            return;
        };
        let reply_to_origin = |envelope: Envelope| self.send_to(from, envelope);
        match body {
            Body::Secret(secret) if secret.command == protocol::VALIDATION => {
                // A connector's validation, relayed by its aggregator.
                let presented = secret
                    .context
                    .get(protocol::SECRET_KEY)
                    .map(String::as_str)
                    .unwrap_or("");
                let accepted = self.accepts_connector(tenant, presented);
                let connector = secret.target_logical_name.clone();
                if accepted && !connector.is_empty() {
                    let connector_type = secret
                        .context
                        .get(protocol::CONNECTOR_TYPE_KEY)
                        .cloned()
                        .unwrap_or_default();
                    write(&self.connectors).insert(
                        (tenant.to_owned(), connector.clone()),
                        ConnectorEntry {
                            connector_type,
                            via: from,
                        },
                    );
                }
                tracing::info!(tenant, connector = %connector, accepted, "connector validation");
                let mut reply = protocol::validation_reply(tenant, accepted, &connector);
                // The reply names the request it answers (context.request_uuid).
                if let Some(Body::Secret(s)) = reply.body.as_mut() {
                    s.target_address = secret.target_address.clone();
                    s.context.insert("request_uuid".into(), header.uuid.clone());
                }
                reply_to_origin(reply);
            }
            Body::Secret(_) | Body::Heartbeat(_) => {}
            Body::Configuration(configuration) => {
                let key = (tenant.to_owned(), configuration.target_logical_name.clone());
                let stored = match configuration.command.as_str() {
                    SAVE => {
                        write(&self.configurations).insert(key, configuration.payload.clone());
                        Some(configuration.payload.clone())
                    }
                    REQUEST => read(&self.configurations).get(&key).cloned(),
                    _ => return,
                };
                let mut reply = protocol::configuration(
                    tenant,
                    REPLY,
                    &configuration.target_logical_name,
                    stored.as_deref().unwrap_or(""),
                );
                if let Some(Body::Configuration(c)) = reply.body.as_mut() {
                    c.target_address = configuration.target_address.clone();
                    c.context.insert("request_uuid".into(), header.uuid.clone());
                    c.context
                        .insert("found".into(), stored.is_some().to_string());
                }
                reply_to_origin(reply);
            }
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
                let wanted = command
                    .context
                    .get(protocol::CONNECTOR_TYPE_KEY)
                    .cloned()
                    .unwrap_or_default();
                match self.pick_connector(tenant, &wanted, &command.target) {
                    Some((name, via)) => {
                        let mut forwarded = Envelope {
                            header: Some(header.clone()),
                            body: Some(body.clone()),
                        };
                        if let Some(Body::Command(c)) = forwarded.body.as_mut() {
                            c.target = name;
                        }
                        self.send_to(via, forwarded);
                    }
                    None => {
                        tracing::info!(tenant, connector_type = %wanted, "no connector for the command");
                        metrics::counter!("gandalf_cluster_dropped_total", "reason" => "undeliverable").increment(1);
                        reply_to_origin(protocol::error_event(
                            tenant,
                            protocol::UNDELIVERABLE,
                            &header.uuid,
                            &format!("no connector of type {wanted:?} is connected"),
                        ));
                    }
                }
            }
            Body::Config(config) => {
                let target = read(&self.connectors)
                    .get(&(tenant.to_owned(), config.target.clone()))
                    .map(|e| e.via);
                match target {
                    Some(via) => {
                        self.send_to(
                            via,
                            Envelope {
                                header: Some(header.clone()),
                                body: Some(body.clone()),
                            },
                        );
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

    /// A connector for a command: the one named in `target` when given, else one of
    /// `connector_type` (round robin).
    fn pick_connector(
        &self,
        tenant: &str,
        connector_type: &str,
        target: &str,
    ) -> Option<(String, u64)> {
        let connectors = read(&self.connectors);
        if !target.is_empty() {
            return connectors
                .get(&(tenant.to_owned(), target.to_owned()))
                .map(|e| (target.to_owned(), e.via));
        }
        let mut candidates: Vec<(&String, u64)> = connectors
            .iter()
            .filter(|((t, _), e)| t == tenant && e.connector_type == connector_type)
            .map(|((_, name), e)| (name, e.via))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        candidates.sort();
        let mut positions = lock(&self.round_robin);
        let position = positions
            .entry((tenant.to_owned(), connector_type.to_owned()))
            .or_default();
        let (name, via) = candidates[*position % candidates.len()];
        *position = position.wrapping_add(1);
        Some((name.clone(), via))
    }

    /// An event: to every other aggregator of the tenant, then into the log (moved
    /// there, not copied).
    fn route_event(&self, from: u64, tenant: &str, envelope: Envelope) {
        // Queued to every other aggregator of the tenant under one read lock, without waiting.
        let size = gandalf::outbox::encoded_size(&envelope);
        let mut refusals = Vec::new();
        let origin = {
            let aggregators = read(&self.aggregators);
            for (id, aggregator) in aggregators.iter() {
                if *id != from
                    && aggregator.tenant == tenant
                    && let Err(refused) = aggregator.outbox.push_sized(envelope.clone(), size)
                {
                    refusals.push((*id, refused));
                }
            }
            aggregators
                .get(&from)
                .map(|a| a.logical_name.clone())
                .unwrap_or_default()
        };
        for (id, refused) in refusals {
            self.refused(id, refused);
        }
        let Envelope {
            header: Some(header),
            body: Some(Body::Event(event)),
        } = envelope
        else {
            return;
        };
        let entry = LoggedEvent {
            uuid: header.uuid,
            topic: event.topic,
            event: event.event,
            reference_uuid: event.reference_uuid,
            payload: event.payload,
            origin,
            received_at_ms: protocol::now_ms(),
        };
        let mut logs = lock(&self.events);
        let log = match logs.get_mut(tenant) {
            Some(log) => log,
            None => logs.entry(tenant.to_owned()).or_default(),
        };
        if log.len() >= self.config.event_log_capacity {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// Queues for one aggregator without waiting; a full queue drops the message for it
    /// (counted), a stalled one is closed.
    pub fn send_to(&self, id: u64, envelope: Envelope) {
        let refused = match read(&self.aggregators).get(&id) {
            Some(aggregator) => match aggregator.outbox.push(envelope) {
                Ok(()) => return,
                Err(refused) => refused,
            },
            None => Refused::Closed,
        };
        self.refused(id, refused);
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

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}
