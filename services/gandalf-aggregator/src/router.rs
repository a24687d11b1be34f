//! The aggregator's routing: every envelope from every connection goes through
//! [`Router::handle`], which applies the rules in order: well-formed, answers to a
//! command under way, tenant, dedup, then by body.
//!
//! Topology rules (several members, several aggregators per tenant):
//! - dedup is on the uuid alone, except that a command's two passes through one
//!   aggregator (to the cluster, and back from it to a connector here) are two legs;
//! - an event from a connector goes to every other connection; an event from a member
//!   goes to the connectors only (the member has already sent it to every other
//!   aggregator), so no event comes back to where it started;
//! - a command is dispatched in its own task as a [`gandalf::legs::Leg`]: only an event
//!   from a connection the leg sent the command to answers it, and the answer goes back
//!   to the leg's origin alone.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gandalf::{
    dedup::{ExpiringMap, Seen},
    frame::{Frame, Received},
    legs::{Budget, Legs, Offer, Pacing, Tries},
    outbox::{Outbox, Refused},
    protocol,
    streams::Settings,
    wire::{Command, Envelope, Event, Header, envelope::Body},
};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::{
    commandlog::{CommandLog, CommandRecord},
    config::Config,
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

/// The second half of a dedup key. Every message counts once by its uuid, except a
/// command, which may pass more than once: on its way to the cluster and, when a
/// candidate target sits here too, on its way back to that connector, once per
/// candidate the cluster tries (the hash of the target names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Once,
    CommandToCluster,
    CommandFromCluster(u64),
}

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
    stream: Settings,
    next_id: AtomicU64,
    connections: RwLock<BTreeMap<ConnId, Connection>>,
    /// (uuid, pass) -> until when it counts as seen.
    seen: Mutex<Seen>,
    /// The legs of the commands under way, and their limits.
    legs: Arc<Legs>,
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
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            logical_name: config.logical_name.clone(),
            tenant: config.tenant.clone(),
            max_timeout_ms: config.max_timeout_ms,
            stream: config.stream(),
            next_id: AtomicU64::new(1),
            connections: RwLock::default(),
            seen: Mutex::default(),
            legs: Legs::new(
                config.max_commands_per_connection,
                config.max_commands_in_flight,
            ),
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

    /// How every stream is run: queue, heartbeats, keepalive, largest message.
    pub fn stream(&self) -> Settings {
        self.stream
    }

    /// Starts the heartbeats of a stream of this aggregator; they end with `stop`.
    pub fn beat(&self, outbox: &Outbox, stop: tokio_util::sync::CancellationToken) {
        gandalf::heartbeat::beat(
            outbox.clone(),
            self.stream.heartbeat,
            self.tenant.clone(),
            "aggregator",
            self.logical_name.clone(),
            stop,
        );
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

    /// Sends a connector's accepted validation to every member as an ANNOUNCE (the one
    /// that accepted it binds it again, which changes nothing), so that each member can
    /// route commands to it through here.
    pub fn announce(&self, validation: &Envelope) {
        for id in self.cluster_ids() {
            let mut copy = validation.clone();
            if let Some(header) = copy.header.as_mut() {
                header.uuid = uuid::Uuid::new_v4().to_string();
            }
            if let Some(Body::Secret(secret)) = copy.body.as_mut() {
                secret.command = protocol::ANNOUNCE.into();
            }
            self.send_to(id, copy);
        }
    }

    pub fn remove(&self, id: ConnId) {
        lock(&self.validations).remove(&id);
        let (removed, left) = {
            let mut connections = write(&self.connections);
            let removed = connections.remove(&id);
            // The last stream of a connector here: the members stop routing to it here.
            let left = match &removed {
                Some(Connection {
                    peer: Peer::Connector { logical_name, .. },
                    ..
                }) if !connections.values().any(|c| {
                    matches!(&c.peer, Peer::Connector { logical_name: other, .. } if other == logical_name)
                }) =>
                {
                    Some(logical_name.clone())
                }
                _ => None,
            };
            (removed, left)
        };
        if let Some(conn) = removed {
            tracing::info!(id, peer = ?conn.peer, "connection removed");
            metrics::gauge!("gandalf_aggregator_connections").decrement(1.0);
            if let Some(name) = left {
                let leave = protocol::envelope(
                    &self.tenant,
                    Body::Secret(gandalf::wire::Secret {
                        command: protocol::LEAVE.into(),
                        target_logical_name: name,
                        ..Default::default()
                    }),
                );
                for member in self.cluster_ids() {
                    self.send_to(member, leave.clone());
                }
            }
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

    /// Queues for one connection without waiting; false when it is gone, closed or its
    /// queue is full.
    pub fn send_to(&self, id: ConnId, envelope: Envelope) -> bool {
        self.send_frame(id, Frame::encode(&envelope))
    }

    /// [`Router::send_to`] for a message passed on as it was received.
    fn send_frame(&self, id: ConnId, frame: Frame) -> bool {
        let refused = match read(&self.connections).get(&id) {
            Some(connection) => match connection.outbox.push_frame(frame) {
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
                let (messages, bytes) = (self.stream.queue.messages, self.stream.queue.bytes);
                tracing::warn!(
                    connection = %self.name_of(id),
                    stall_ms = self.stream.queue.stall.as_millis() as u64,
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

    /// Routes one envelope from connector connection `from` (see [`Router::handle`]).
    pub async fn handle_from_connector(self: &Arc<Self>, from: ConnId, received: Received) {
        self.handle(from, false, received).await
    }

    /// Routes one envelope from member connection `from` (see [`Router::handle`]).
    pub async fn handle_from_member(self: &Arc<Self>, from: ConnId, received: Received) {
        self.handle(from, true, received).await
    }

    /// Applies the routing rules to one envelope from connection `from`; the read loop
    /// says which side it is, so no lookup per message. It waits on no other connection,
    /// but for room on a full link to a member (see `route_event`).
    async fn handle(self: &Arc<Self>, from: ConnId, from_cluster: bool, received: Received) {
        // A plain event, the bulk of the traffic, is routed on its header and passed on
        // as received, its body never decoded; the rules below give it the same route.
        if let Some(header) = received.message.plain_event(&self.tenant) {
            if !self.first_sighting(header, Pass::Once) {
                return dropped("duplicate");
            }
            routed_event().increment(1);
            return self.route_event(from, from_cluster, received.frame).await;
        }
        let (envelope, frame) = match received.into_envelope() {
            Ok(parts) => parts,
            Err(problem) => {
                // Cannot happen for what the decoder let through (it checked every
                // string); kept an error rather than a panic.
                dropped("malformed");
                tracing::warn!(from = %self.name_of(from), %problem, "undecodable envelope");
                return;
            }
        };
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
        // An answer to a command under way goes back along the command's legs, before
        // dedup: on a command's way back through this aggregator it passes here twice.
        if let Body::Event(event) = body
            && !event.reference_uuid.is_empty()
        {
            match self.legs.offer(&event.reference_uuid, from, &envelope) {
                Offer::Taken => return routed(body).increment(1),
                Offer::Unsolicited => {
                    dropped("unsolicited_answer");
                    tracing::warn!(from = %self.name_of(from), command = %event.reference_uuid, "an answer to a command from a connection it was not sent to; dropped");
                    return;
                }
                Offer::NoLeg => {}
            }
        }
        let pass = match body {
            Body::Command(command) if from_cluster => {
                use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
                Pass::CommandFromCluster(
                    BuildHasherDefault::<DefaultHasher>::default().hash_one(&command.target),
                )
            }
            Body::Command(_) => Pass::CommandToCluster,
            _ => Pass::Once,
        };
        if !self.first_sighting(header, pass) {
            dropped("duplicate");
            return;
        }
        routed(body).increment(1);
        match body {
            Body::Event(event)
                if event.topic == protocol::ERROR_TOPIC && !event.reference_uuid.is_empty() =>
            {
                self.route_error(from, from_cluster, event, frame)
            }
            Body::Event(_) => self.route_event(from, from_cluster, frame).await,
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
            _ if from_cluster => self.route_from_cluster(header, body, || envelope.clone(), frame),
            _ => self.relay_to_cluster(from, header, body),
        }
    }

    /// Dedup: false when this uuid already made this pass within its timeout.
    fn first_sighting(&self, header: &Header, pass: Pass) -> bool {
        let now = Instant::now();
        let ttl =
            Duration::from_millis(u64::from(protocol::timeout_ms(header, self.max_timeout_ms)));
        let mut seen = lock(&self.seen);
        let before = seen.evicted();
        let first = seen.first((&header.uuid, pass), now, now + ttl);
        if seen.evicted() > before {
            metrics::counter!("gandalf_aggregator_dedup_evicted_total").increment(1);
        }
        first
    }

    /// An error event about no command under way: about a message relayed for a
    /// connector, it goes to that connector, and only when it comes from the cluster,
    /// where the message went; otherwise it is logged, not spread.
    fn route_error(&self, from: ConnId, from_cluster: bool, event: &Event, frame: Frame) {
        let origin = from_cluster
            .then(|| {
                lock(&self.relayed)
                    .get(&event.reference_uuid, Instant::now())
                    .copied()
            })
            .flatten();
        match origin {
            Some(origin) => {
                self.send_frame(origin, frame);
            }
            None => {
                tracing::info!(from = %self.name_of(from), event = %event.event, reference = %event.reference_uuid, detail = %event.payload, "error event about nothing under way here")
            }
        }
    }

    /// An event: from a connector to every other connection; from a member to the
    /// connectors only (the member has sent it to every other aggregator itself).
    async fn route_event(&self, from: ConnId, from_cluster: bool, frame: Frame) {
        // Queue the received bytes (shared, not copied) to every other connection without
        // waiting, under one read lock; a full queue drops the event for that connection
        // only. The link to a member is the exception: every producer shares it, so a
        // full one makes this producer's read loop wait for room (up to the stall limit)
        // instead of losing the event.
        let mut refusals = Vec::new();
        let mut uplinks = Vec::new();
        {
            let connections = read(&self.connections);
            let targets = connections.iter().filter(|(id, c)| {
                **id != from && !(from_cluster && matches!(c.peer, Peer::Cluster { .. }))
            });
            for (id, connection) in targets {
                match connection.outbox.try_push(frame.clone()) {
                    Ok(()) => {}
                    Err((Refused::Full, Some(back)))
                        if matches!(connection.peer, Peer::Cluster { .. }) =>
                    {
                        uplinks.push((*id, connection.outbox.clone(), back));
                    }
                    Err((refused, _)) => refusals.push((*id, refused)),
                }
            }
        }
        for (id, outbox, back) in uplinks {
            if let Err(refused) = outbox.push_wait(back).await {
                refusals.push((id, refused));
            }
        }
        for (id, refused) in refusals {
            self.refused(id, refused);
        }
    }

    /// Tries the selected connections in turn until one answers within the command's
    /// budget; the answer, or UNDELIVERABLE, goes back to the origin alone.
    async fn dispatch_command(
        self: Arc<Self>,
        origin: ConnId,
        from_cluster: bool,
        header: Header,
        command: Command,
    ) {
        let budget = Budget::of(&header, self.max_timeout_ms);
        // Connectors are limited each; a member's commands count against the total only.
        let mut leg = match self.legs.open(&header.uuid, origin, !from_cluster) {
            Ok(leg) => leg,
            Err(busy) => {
                dropped("busy");
                tracing::warn!(origin = %self.name_of(origin), command = %header.uuid, %busy, "command refused: too many in flight");
                self.send_to(
                    origin,
                    protocol::error_event(
                        &self.tenant,
                        protocol::BUSY,
                        &header.uuid,
                        &busy.to_string(),
                    ),
                );
                return;
            }
        };
        let targets = if from_cluster {
            self.connector_ids_named(&command.target)
        } else {
            self.cluster_ids()
        };
        let started = Instant::now();
        // Towards members the whole budget (a member that cannot deliver says so at
        // once); towards the connections of one connector a share each.
        let pacing = if from_cluster {
            Pacing::EqualShares
        } else {
            Pacing::WholeBudget
        };
        let Tries {
            answer,
            refusal,
            tried,
        } = leg
            .try_in_turn(
                &targets,
                |id| *id,
                budget,
                pacing,
                |id, timeout_ms| {
                    let envelope = Envelope {
                        header: Some(Header {
                            timeout_ms,
                            ..header.clone()
                        }),
                        body: Some(Body::Command(command.clone())),
                    };
                    self.send_to(*id, envelope)
                },
            )
            .await;
        drop(leg);
        let latency = started.elapsed();
        let (outcome, by) = match answer {
            Some((by, ack)) => {
                metrics::histogram!("gandalf_aggregator_command_latency_seconds")
                    .record(latency.as_secs_f64());
                self.send_to(origin, ack);
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
                        "no connection answered (tried {tried} of {} within {} ms)",
                        targets.len(),
                        protocol::timeout_ms(&header, self.max_timeout_ms)
                    )
                };
                tracing::info!(command = %header.uuid, %detail, "command undeliverable");
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
                leg: if from_cluster {
                    "to_connector"
                } else {
                    "to_cluster"
                },
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
        let (name, address, connector_type) =
            match read(&self.connections).get(&from).map(|c| c.peer.clone()) {
                Some(Peer::Connector {
                    logical_name,
                    address,
                    connector_type,
                }) => (logical_name, address, connector_type),
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
                // The type is the one bound at the stream's validation, whatever the
                // message says: a connector cannot re-register as another type.
                s.context
                    .insert(protocol::CONNECTOR_TYPE_KEY.into(), connector_type);
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
    fn route_from_cluster(
        &self,
        header: &Header,
        body: &Body,
        envelope: impl FnOnce() -> Envelope,
        frame: Frame,
    ) {
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
            let _ = waiter.send(envelope());
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
            self.send_frame(id, frame.clone());
        }
    }
}

/// The routed-messages counter of a body's kind.
fn routed(body: &Body) -> &'static metrics::Counter {
    ROUTED.of(body)
}

fn routed_event() -> &'static metrics::Counter {
    ROUTED.event()
}

static ROUTED: std::sync::LazyLock<protocol::KindCounters> = std::sync::LazyLock::new(|| {
    protocol::KindCounters::new("gandalf_aggregator_messages_routed_total")
});

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
