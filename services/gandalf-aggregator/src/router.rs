//! The aggregator's routing: every envelope from every connection goes through
//! [`Router::handle`], which applies the rules in order: well-formed, tenant, dedup, then
//! by body. Commands are dispatched in their own task, trying the selected connections
//! one by one until one acknowledges.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gandalf::{
    outbox::{Limits, Outbox, Refused},
    protocol,
    wire::{Command, Envelope, Event, Header, envelope::Body},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    commandlog::{CommandLog, CommandRecord},
    dedup::{ExpiringMap, Seen},
};

/// A connection's id, unique for the process's life.
pub type ConnId = u64;

/// What is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Peer {
    Connector {
        logical_name: String,
        connector_type: String,
        address: String,
    },
    Cluster {
        member: String,
    },
}

struct Connection {
    peer: Peer,
    outbox: Outbox,
    connected_at_ms: i64,
}

/// A uuid as a dedup key: its 128 bits when it is a UUID (no allocation per message),
/// else the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DedupKey {
    Uuid(u128),
    Text(String),
}

impl DedupKey {
    fn of(uuid: &str) -> Self {
        match uuid::Uuid::try_parse(uuid) {
            Ok(parsed) => Self::Uuid(parsed.as_u128()),
            Err(_) => Self::Text(uuid.to_owned()),
        }
    }
}

/// A command dispatch waiting for the event that answers it: (who answered, the event).
type AnswerWaiter = mpsc::UnboundedSender<(ConnId, Event)>;

/// One connection as `GET /v1/connections` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub id: ConnId,
    #[serde(flatten)]
    pub peer: Peer,
    pub connected_at_ms: i64,
}

/// Routing state shared by every connection task.
pub struct Router {
    logical_name: String,
    tenant: String,
    max_timeout_ms: u32,
    limits: Limits,
    next_id: AtomicU64,
    connections: RwLock<BTreeMap<ConnId, Connection>>,
    /// (uuid, came from the cluster) -> until when it counts as seen.
    seen: Mutex<Seen<(DedupKey, bool)>>,
    /// Command uuid -> the dispatch tasks waiting for an answering event.
    answers: Mutex<HashMap<String, Vec<AnswerWaiter>>>,
    /// Request uuid -> a task waiting for the cluster's reply (validations, init steps).
    replies: Mutex<HashMap<String, oneshot::Sender<Envelope>>>,
    /// Uuid of a message relayed for a connector -> that connector, so that an error
    /// about it finds its way back.
    relayed: Mutex<ExpiringMap<String, ConnId>>,
    command_log: RwLock<Option<CommandLog>>,
    /// Each connector's relayed validation, replayed to a member that (re)connects so the
    /// member learns which connectors sit here.
    validations: Mutex<HashMap<ConnId, Envelope>>,
}

impl Router {
    pub fn new(logical_name: &str, tenant: &str, max_timeout_ms: u32, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            logical_name: logical_name.into(),
            tenant: tenant.into(),
            max_timeout_ms,
            limits,
            next_id: AtomicU64::new(1),
            connections: RwLock::default(),
            seen: Mutex::default(),
            answers: Mutex::default(),
            replies: Mutex::default(),
            relayed: Mutex::default(),
            command_log: RwLock::default(),
            validations: Mutex::default(),
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn logical_name(&self) -> &str {
        &self.logical_name
    }

    /// The bounds of every connection's outgoing queue.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Turns the command log on (init step 4).
    pub fn set_command_log(&self, log: CommandLog) {
        *write(&self.command_log) = Some(log);
    }

    /// The command log, when the tenant has a database.
    pub fn command_log(&self) -> Option<CommandLog> {
        read(&self.command_log).clone()
    }

    pub fn add(&self, peer: Peer, outbox: Outbox) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::info!(id, peer = ?peer, "connection added");
        write(&self.connections).insert(
            id,
            Connection {
                peer,
                outbox,
                connected_at_ms: protocol::now_ms(),
            },
        );
        metrics::gauge!("gandalf_aggregator_connections").increment(1.0);
        id
    }

    /// Remembers a connector's validation for [`Router::replay_validations`].
    pub fn remember_validation(&self, id: ConnId, validation: Envelope) {
        lock(&self.validations).insert(id, validation);
    }

    /// Sends every connected connector's validation to member `member` (a fresh header
    /// each) and waits for the answers, so that a restarted member can route commands to
    /// them again. Returns how many the member accepted.
    pub async fn replay_validations(&self, member: ConnId) -> usize {
        let validations: Vec<Envelope> = lock(&self.validations).values().cloned().collect();
        let mut accepted = 0;
        for mut validation in validations {
            if let Some(header) = validation.header.as_mut() {
                header.uuid = uuid::Uuid::new_v4().to_string();
                header.timestamp_ms = protocol::now_ms();
            }
            let reply = self
                .ask(&[member], validation, Duration::from_secs(5))
                .await;
            if matches!(reply, Ok(Envelope { body: Some(Body::Secret(s)), .. }) if s.payload == "true")
            {
                accepted += 1;
            }
        }
        accepted
    }

    pub fn remove(&self, id: ConnId) {
        lock(&self.validations).remove(&id);
        if let Some(conn) = write(&self.connections).remove(&id) {
            tracing::info!(id, peer = ?conn.peer, "connection removed");
            metrics::gauge!("gandalf_aggregator_connections").decrement(1.0);
        }
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        read(&self.connections)
            .iter()
            .map(|(id, c)| ConnectionInfo {
                id: *id,
                peer: c.peer.clone(),
                connected_at_ms: c.connected_at_ms,
            })
            .collect()
    }

    /// How many cluster members are connected.
    pub fn cluster_connections(&self) -> usize {
        self.cluster_ids().len()
    }

    fn cluster_ids(&self) -> Vec<ConnId> {
        read(&self.connections)
            .iter()
            .filter(|(_, c)| matches!(c.peer, Peer::Cluster { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    fn connector_ids_named(&self, name: &str) -> Vec<ConnId> {
        read(&self.connections)
            .iter()
            .filter(|(_, c)| matches!(&c.peer, Peer::Connector { logical_name, .. } if logical_name == name))
            .map(|(id, _)| *id)
            .collect()
    }

    fn name_of(&self, id: ConnId) -> String {
        match read(&self.connections).get(&id).map(|c| c.peer.clone()) {
            Some(Peer::Connector { logical_name, .. }) => logical_name,
            Some(Peer::Cluster { member }) => format!("cluster {member}"),
            None => format!("connection {id}"),
        }
    }

    fn is_cluster(&self, id: ConnId) -> bool {
        read(&self.connections)
            .get(&id)
            .is_some_and(|c| matches!(c.peer, Peer::Cluster { .. }))
    }

    /// Queues for one connection without waiting; false when it is gone, closed or its
    /// queue is full.
    pub fn send_to(&self, id: ConnId, envelope: Envelope) -> bool {
        let refused = match read(&self.connections).get(&id) {
            Some(connection) => match connection.outbox.push(envelope) {
                Ok(()) => return true,
                Err(refused) => refused,
            },
            None => Refused::Closed,
        };
        self.refused(id, refused);
        false
    }

    /// Counts a refused push; a stalled connection leaves routing (its owner closes it).
    fn refused(&self, id: ConnId, refused: Refused) {
        match refused {
            Refused::Full => dropped("queue_full"),
            Refused::Closed => dropped("unreachable"),
            Refused::Stalled => {
                dropped("queue_full");
                let (messages, bytes) = (self.limits.messages, self.limits.bytes);
                tracing::warn!(
                    connection = %self.name_of(id),
                    stall_ms = self.limits.stall.as_millis() as u64,
                    messages,
                    bytes,
                    "closing a connection that stopped reading: its queue stayed full"
                );
                metrics::counter!("gandalf_aggregator_connections_closed_total", "reason" => "stalled")
                    .increment(1);
                self.remove(id);
            }
        }
    }

    /// Sends a request to the first cluster member that takes it and waits for the
    /// reply naming it (`context.request_uuid`).
    pub async fn ask_cluster(&self, request: Envelope, wait: Duration) -> Result<Envelope, String> {
        self.ask(&self.cluster_ids(), request, wait).await
    }

    /// Sends `request` to the first of `members` that takes it and waits up to `wait`
    /// for the reply naming its uuid.
    async fn ask(
        &self,
        members: &[ConnId],
        request: Envelope,
        wait: Duration,
    ) -> Result<Envelope, String> {
        let uuid = request
            .header
            .as_ref()
            .map(|h| h.uuid.clone())
            .unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        lock(&self.replies).insert(uuid.clone(), tx);
        let mut sent = false;
        for id in members {
            if self.send_to(*id, request.clone()) {
                sent = true;
                break;
            }
        }
        let answer = if sent {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err("the request was dropped".into()),
                Err(_) => Err(format!(
                    "no reply from the cluster within {} ms",
                    wait.as_millis()
                )),
            }
        } else {
            Err("no cluster member is connected".into())
        };
        lock(&self.replies).remove(&uuid);
        answer
    }

    /// Applies the routing rules to one envelope from connection `from`. It waits on no
    /// other connection, but for room on a full link to a member (see `route_event`).
    pub async fn handle(self: &Arc<Self>, from: ConnId, envelope: Envelope) {
        let from_cluster = self.is_cluster(from);
        let (header, body) = match protocol::check(&envelope) {
            Ok(parts) => parts,
            Err(problem) => {
                dropped("malformed");
                tracing::warn!(from = %self.name_of(from), %problem, "malformed envelope");
                let reference = envelope
                    .header
                    .as_ref()
                    .map(|h| h.uuid.as_str())
                    .unwrap_or("");
                self.send_to(
                    from,
                    protocol::error_event(
                        &self.tenant,
                        protocol::MALFORMED,
                        reference,
                        &problem.to_string(),
                    ),
                );
                return;
            }
        };
        if matches!(body, Body::Heartbeat(_)) {
            return;
        }
        if header.tenant != self.tenant {
            dropped("wrong_tenant");
            let error = protocol::error_event(
                &self.tenant,
                protocol::WRONG_TENANT,
                &header.uuid,
                &format!(
                    "tenant {:?} is not this aggregator's tenant {:?}",
                    header.tenant, self.tenant
                ),
            );
            if !from_cluster && let Some(cluster) = self.cluster_ids().first() {
                self.send_to(*cluster, error.clone());
            }
            self.send_to(from, error);
            return;
        }
        if !self.first_sighting(header, from_cluster) {
            dropped("duplicate");
            return;
        }
        routed(body).increment(1);
        match body {
            Body::Event(_) => self.route_event(from, envelope).await,
            Body::Command(command) => {
                let router = self.clone();
                let (header, command) = (header.clone(), command.clone());
                tokio::spawn(async move {
                    router
                        .dispatch_command(from, from_cluster, header, command)
                        .await
                });
            }
            // The tenant's database credentials are for aggregators (the command log).
            Body::ConfigurationDatabase(_) if !from_cluster => {
                dropped("forbidden");
                tracing::warn!(connector = %self.name_of(from), "a connector asked for the tenant's database; refused");
                self.send_to(
                    from,
                    protocol::error_event(
                        &self.tenant,
                        protocol::FORBIDDEN,
                        &header.uuid,
                        "ConfigurationDatabase is for aggregators; a connector may not ask for it",
                    ),
                );
            }
            _ if from_cluster => self.route_from_cluster(header, body, envelope.clone()),
            _ => self.relay_to_cluster(from, header, body),
        }
    }

    /// Dedup: false when this uuid already came the same way within its timeout.
    fn first_sighting(&self, header: &Header, from_cluster: bool) -> bool {
        let now = Instant::now();
        let ttl =
            Duration::from_millis(u64::from(protocol::timeout_ms(header, self.max_timeout_ms)));
        lock(&self.seen).first((DedupKey::of(&header.uuid), from_cluster), now, now + ttl)
    }

    async fn route_event(&self, from: ConnId, envelope: Envelope) {
        if let Some(Body::Event(event)) = &envelope.body
            && !event.reference_uuid.is_empty()
        {
            let waiting = lock(&self.answers)
                .get(&event.reference_uuid)
                .cloned()
                .unwrap_or_default();
            let answered = !waiting.is_empty();
            for waiter in waiting {
                let _ = waiter.send((from, event.clone()));
            }
            if event.topic == protocol::ERROR_TOPIC {
                // An error about a message of ours: to whoever it concerns, not to all.
                if !answered {
                    let origin = lock(&self.relayed)
                        .get(&event.reference_uuid, Instant::now())
                        .copied();
                    match origin {
                        Some(origin) => {
                            self.send_to(origin, envelope);
                        }
                        None => {
                            tracing::info!(event = %event.event, reference = %event.reference_uuid, detail = %event.payload, "error reported by the cluster")
                        }
                    }
                }
                return;
            }
        }
        // Queue to every other connection without waiting, under one read lock; a full
        // queue drops the event for that connection only. The link to a member is the
        // exception: every producer shares it, so a full one makes this producer's read
        // loop wait for room (up to the stall limit) instead of losing the event.
        let size = gandalf::outbox::encoded_size(&envelope);
        let mut refusals = Vec::new();
        let mut uplinks = Vec::new();
        {
            let connections = read(&self.connections);
            let mut targets = connections.iter().filter(|(id, _)| **id != from).peekable();
            let mut envelope = Some(envelope);
            while let Some((id, connection)) = targets.next() {
                // The last target takes the envelope itself: one clone fewer per event.
                let item = if targets.peek().is_some() {
                    envelope.clone()
                } else {
                    envelope.take()
                };
                let Some(item) = item else { break };
                match connection.outbox.try_push(item, size) {
                    Ok(()) => {}
                    Err((Refused::Full, Some(item)))
                        if matches!(connection.peer, Peer::Cluster { .. }) =>
                    {
                        uplinks.push((*id, connection.outbox.clone(), *item));
                    }
                    Err((refused, _)) => refusals.push((*id, refused)),
                }
            }
        }
        for (id, outbox, item) in uplinks {
            if let Err(refused) = outbox.push_wait(item, size).await {
                refusals.push((id, refused));
            }
        }
        for (id, refused) in refusals {
            self.refused(id, refused);
        }
    }

    /// Tries the selected connections in turn until one answers within the timeout;
    /// UNDELIVERABLE to the origin when none does.
    async fn dispatch_command(
        self: Arc<Self>,
        origin: ConnId,
        from_cluster: bool,
        header: Header,
        command: Command,
    ) {
        // Towards connectors each connection gets the command's own timeout. Towards
        // the cluster a member gets up to max_timeout_ms: beyond it the command may be
        // retried connection by connection within its timeout, and a member that cannot
        // deliver says so at once (UNDELIVERABLE), which moves on to the next member.
        let own = Duration::from_millis(u64::from(protocol::timeout_ms(
            &header,
            self.max_timeout_ms,
        )));
        let timeout = if from_cluster {
            own
        } else {
            Duration::from_millis(u64::from(self.max_timeout_ms))
        };
        let targets = if from_cluster {
            self.connector_ids_named(&command.target)
        } else {
            self.cluster_ids()
        };
        let envelope = Envelope {
            header: Some(header.clone()),
            body: Some(Body::Command(command.clone())),
        };
        let (tx, mut answers) = mpsc::unbounded_channel();
        lock(&self.answers)
            .entry(header.uuid.clone())
            .or_default()
            .push(tx.clone());
        let started = Instant::now();

        let mut acknowledged_by = None;
        let mut refusal = None;
        for target in &targets {
            if !self.send_to(*target, envelope.clone()) {
                continue;
            }
            let answer = tokio::time::timeout(timeout, answers.recv()).await;
            match answer {
                // This connection said no (e.g. the cluster knows no such connector).
                Ok(Some((_, event))) if event.topic == protocol::ERROR_TOPIC => {
                    refusal = Some(event.payload);
                    continue;
                }
                Ok(Some((by, _))) => {
                    acknowledged_by = Some(by);
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!(command = %header.uuid, target = %self.name_of(*target), "no answer; trying the next connection");
                }
            }
        }
        {
            // Only this task's waiter goes: a command that comes back through the
            // cluster to a connector of this same aggregator has a second one.
            let mut all = lock(&self.answers);
            if let Some(list) = all.get_mut(&header.uuid) {
                list.retain(|w| !w.same_channel(&tx));
                if list.is_empty() {
                    all.remove(&header.uuid);
                }
            }
        }
        let latency = started.elapsed();
        let (outcome, by) = match acknowledged_by {
            Some(by) => {
                metrics::histogram!("gandalf_aggregator_command_latency_seconds")
                    .record(latency.as_secs_f64());
                ("acknowledged", Some(self.name_of(by)))
            }
            None => {
                dropped("undeliverable");
                let detail = if let Some(refusal) = refusal.filter(|r| !r.is_empty()) {
                    refusal
                } else if targets.is_empty() {
                    if from_cluster {
                        format!("no connector named {:?} is connected here", command.target)
                    } else {
                        "no cluster member is connected".to_owned()
                    }
                } else {
                    format!(
                        "no connection answered (tried {} within {} ms each)",
                        targets.len(),
                        timeout.as_millis()
                    )
                };
                tracing::info!(command = %header.uuid, %detail, "command undeliverable");
                let error = protocol::error_event(
                    &self.tenant,
                    protocol::UNDELIVERABLE,
                    &header.uuid,
                    &detail,
                );
                // A command that came back through the cluster to this same aggregator
                // has its first leg waiting here; the cluster does not echo the error
                // to its origin, so that leg is told directly.
                if let (Some(Body::Event(event)), Some(waiting)) =
                    (&error.body, lock(&self.answers).get(&header.uuid).cloned())
                {
                    for waiter in waiting {
                        let _ = waiter.send((origin, event.clone()));
                    }
                }
                self.send_to(
                    origin,
                    protocol::error_event(
                        &self.tenant,
                        protocol::UNDELIVERABLE,
                        &header.uuid,
                        &detail,
                    ),
                );
                ("undeliverable", None)
            }
        };
        if let Some(log) = self.command_log() {
            log.record(CommandRecord {
                uuid: header.uuid,
                command: command.command,
                origin: self.name_of(origin),
                outcome,
                acknowledged_by: by,
                latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
            });
        }
    }

    /// Config, Configuration, Secret from a connector: to one
    /// cluster member, stamped with the connector as the reply target.
    fn relay_to_cluster(&self, from: ConnId, header: &Header, body: &Body) {
        let (name, address) = match read(&self.connections).get(&from).map(|c| c.peer.clone()) {
            Some(Peer::Connector {
                logical_name,
                address,
                ..
            }) => (logical_name, address),
            _ => return,
        };
        let mut body = body.clone();
        match &mut body {
            Body::Configuration(c) => {
                c.target_logical_name = name;
                c.target_address = address;
            }
            Body::Secret(s) => {
                s.target_logical_name = name;
                s.target_address = address;
            }
            Body::Config(c) => {
                c.context.insert("reply_to".into(), name);
            }
            _ => {}
        }
        // Kept for twice the longest timeout: an error about it can only come before that.
        let now = Instant::now();
        let horizon = Duration::from_millis(u64::from(self.max_timeout_ms) * 2);
        lock(&self.relayed).insert(header.uuid.clone(), from, now, now + horizon);
        let envelope = Envelope {
            header: Some(header.clone()),
            body: Some(body),
        };
        for id in self.cluster_ids() {
            if self.send_to(id, envelope.clone()) {
                return;
            }
        }
        self.send_to(
            from,
            protocol::error_event(
                &self.tenant,
                protocol::UNDELIVERABLE,
                &header.uuid,
                "no cluster member is connected",
            ),
        );
    }

    /// Replies and configuration from the cluster: to the waiting request, else to the
    /// connector they target; a reply with no target is for the aggregator itself.
    fn route_from_cluster(&self, header: &Header, body: &Body, envelope: Envelope) {
        let (context, target) = match body {
            Body::Configuration(c) => (&c.context, c.target_logical_name.clone()),
            Body::Secret(s) => (&s.context, s.target_logical_name.clone()),
            Body::Config(c) => (&c.context, c.target.clone()),
            // For the aggregator's own request only: never on to a connector.
            Body::ConfigurationDatabase(c) => (&c.context, String::new()),
            _ => return,
        };
        if let Some(request) = context.get("request_uuid")
            && let Some(waiter) = lock(&self.replies).remove(request)
        {
            let _ = waiter.send(envelope);
            return;
        }
        if target.is_empty() || target == self.logical_name {
            tracing::debug!(uuid = %header.uuid, kind = protocol::kind(body), "reply for the aggregator with no request waiting");
            return;
        }
        let ids = self.connector_ids_named(&target);
        if ids.is_empty() {
            dropped("unknown_target");
            tracing::info!(target = %target, kind = protocol::kind(body), "no connector of that name here");
        }
        for id in ids {
            self.send_to(id, envelope.clone());
        }
    }
}

/// The routed-messages counter of a body's kind.
fn routed(body: &Body) -> &'static metrics::Counter {
    static COUNTERS: std::sync::LazyLock<protocol::KindCounters> = std::sync::LazyLock::new(|| {
        protocol::KindCounters::new("gandalf_aggregator_messages_routed_total")
    });
    COUNTERS.of(body)
}

fn dropped(reason: &'static str) {
    metrics::counter!("gandalf_aggregator_messages_dropped_total", "reason" => reason).increment(1);
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
