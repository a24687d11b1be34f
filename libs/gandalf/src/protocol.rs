//! Stream metadata, message vocabulary, envelope builders and checks.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use tonic::metadata::MetadataMap;

use crate::wire::{
    Command, Config, Configuration, ConfigurationDatabase, Envelope, Event, Header, Secret,
    envelope::Body,
};

/// Metadata key: the logical name of the component opening the stream.
pub const LOGICAL_NAME: &str = "x-gandalf-logical-name";
/// Metadata key: `connector` or `aggregator`.
pub const COMPONENT_TYPE: &str = "x-gandalf-component-type";
/// Metadata key: the connector's type (connectors only), used to route commands.
pub const CONNECTOR_TYPE: &str = "x-gandalf-connector-type";

/// `Secret.command` of the first envelope on every stream.
pub const VALIDATION: &str = "VALIDATION";
/// `Secret.command` of the answer; payload `"true"` or `"false"`.
pub const VALIDATION_REPLY: &str = "VALIDATION_REPLY";
/// `Secret.command` an aggregator sends a member when the last stream of connector
/// `target_logical_name` on it closed: the member stops routing to it through there.
pub const LEAVE: &str = "LEAVE";
/// `Secret.command` of a connector's accepted validation that an aggregator sends on to
/// the other members: bound like a VALIDATION, answered with nothing.
pub const ANNOUNCE: &str = "ANNOUNCE";
/// `Secret.context` key of a refused VALIDATION_REPLY saying why.
pub const REASON_KEY: &str = "reason";
/// `Secret.context` key holding the secret.
pub const SECRET_KEY: &str = "secret";
/// `Event.event` acknowledging a command (`reference_uuid` = the command's uuid).
pub const ON_GOING: &str = "ON_GOING";
/// `Event.topic` of errors reported by an aggregator.
pub const ERROR_TOPIC: &str = "error";
/// A message whose tenant is not the aggregator's.
pub const WRONG_TENANT: &str = "WRONG_TENANT";
/// A command no connection acknowledged, or with no connection to try.
pub const UNDELIVERABLE: &str = "UNDELIVERABLE";
/// A request the sender may not make (e.g. a connector asking for the tenant's database).
pub const FORBIDDEN: &str = "FORBIDDEN";
/// A command refused at once: its sender, or the router, has too many in flight.
pub const BUSY: &str = "BUSY";
/// A message the receiver could not read (no header, empty uuid, no known body).
pub const MALFORMED: &str = "MALFORMED";
/// `context` key naming the connector type a command is for.
pub const CONNECTOR_TYPE_KEY: &str = "connector_type";
/// Requests and replies of Configuration, ConfigurationDatabase and Config bodies.
pub const SAVE: &str = "SAVE";
pub const REQUEST: &str = "REQUEST";
pub const REPLY: &str = "REPLY";

/// The receiver's default when `header.timeout_ms` is 0.
pub const DEFAULT_TIMEOUT_MS: u32 = 1000;
/// Contract version this code speaks.
pub const MAJOR: u32 = 1;
pub const MINOR: u32 = 0;

/// What opens a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentType {
    Connector,
    Aggregator,
}

impl ComponentType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connector => "connector",
            Self::Aggregator => "aggregator",
        }
    }
}

/// Who opened a stream, from its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub logical_name: String,
    pub component_type: ComponentType,
    /// Connectors only.
    pub connector_type: Option<String>,
}

impl Peer {
    /// Reads and checks the stream metadata; the error says which key is wrong.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, String> {
        let get = |key: &str| -> Result<Option<String>, String> {
            match metadata.get(key) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.trim().to_owned()))
                    .map_err(|_| format!("metadata {key} is not valid ASCII")),
            }
        };
        let logical_name = get(LOGICAL_NAME)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("metadata {LOGICAL_NAME} is missing"))?;
        let component_type = match get(COMPONENT_TYPE)?.as_deref() {
            Some("connector") => ComponentType::Connector,
            Some("aggregator") => ComponentType::Aggregator,
            Some(other) => {
                return Err(format!(
                    "metadata {COMPONENT_TYPE} is {other:?}: use connector or aggregator"
                ));
            }
            None => return Err(format!("metadata {COMPONENT_TYPE} is missing")),
        };
        let connector_type = get(CONNECTOR_TYPE)?.filter(|v| !v.is_empty());
        if component_type == ComponentType::Connector && connector_type.is_none() {
            return Err(format!(
                "metadata {CONNECTOR_TYPE} is missing (required for connectors)"
            ));
        }
        Ok(Self {
            logical_name,
            component_type,
            connector_type,
        })
    }

    /// Reads the metadata of a stream that only `expected` components may open.
    pub fn require(metadata: &MetadataMap, expected: ComponentType) -> Result<Self, String> {
        let peer = Self::from_metadata(metadata)?;
        if peer.component_type != expected {
            return Err(format!(
                "this server takes {0} streams only ({COMPONENT_TYPE}: {0})",
                expected.as_str()
            ));
        }
        Ok(peer)
    }

    /// Writes this peer's metadata onto an outgoing stream request.
    pub fn write_metadata(&self, metadata: &mut MetadataMap) -> Result<(), String> {
        let mut put = |key: &'static str, value: &str| {
            value
                .parse()
                .map(|v| {
                    metadata.insert(key, v);
                })
                .map_err(|_| format!("{key} {value:?} is not valid metadata"))
        };
        put(LOGICAL_NAME, &self.logical_name)?;
        put(COMPONENT_TYPE, self.component_type.as_str())?;
        if let Some(kind) = &self.connector_type {
            put(CONNECTOR_TYPE, kind)?;
        }
        Ok(())
    }
}

/// How a server answered a stream's VALIDATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    Accepted,
    /// The secret was refused; the server's reason.
    Rejected(String),
    /// No usable answer (timeout, closed stream, something else first).
    Failed(String),
}

/// Reads the answer to the VALIDATION a client sent first: `VALIDATION_REPLY "true"`, or
/// `"false"` followed by the server's PERMISSION_DENIED reason. Waits up to `wait`.
/// `T` is what the stream yields: an `Envelope`, or a frame read that may not decode
/// whole (`None`).
pub async fn await_validation<T: Into<Option<Envelope>>>(
    inbound: &mut tonic::Streaming<T>,
    wait: std::time::Duration,
) -> Validation {
    let first = tokio::time::timeout(wait, inbound.message())
        .await
        .map(|r| r.map(|m| m.map(Into::into)));
    match first {
        Ok(Ok(Some(Some(Envelope {
            body: Some(Body::Secret(reply)),
            ..
        }))))
            if reply.command == VALIDATION_REPLY =>
        {
            if reply.payload == "true" {
                return Validation::Accepted;
            }
            // The server closes with its reason right after; do not wait for it forever.
            let reason = match tokio::time::timeout(wait, inbound.message()).await {
                Ok(Err(status)) => status.message().to_owned(),
                _ => "VALIDATION_REPLY false".to_owned(),
            };
            Validation::Rejected(reason)
        }
        Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
            Validation::Rejected(status.message().to_owned())
        }
        Ok(Err(status)) => Validation::Failed(status.to_string()),
        Ok(Ok(None)) => Validation::Failed("the stream ended before the validation reply".into()),
        Ok(Ok(Some(Some(other)))) => {
            Validation::Failed(format!("expected VALIDATION_REPLY first, got {other:?}"))
        }
        Ok(Ok(Some(None))) => Validation::Failed("the first reply does not decode".into()),
        Err(_) => Validation::Failed(format!(
            "no validation reply within {} ms",
            wait.as_millis()
        )),
    }
}

/// Why an envelope cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("envelope has no header")]
    NoHeader,
    #[error("envelope header has an empty uuid")]
    EmptyUuid,
    #[error("envelope has no body, or a body this receiver does not know")]
    NoBody,
}

/// Checks what every receiver needs: a header with a uuid, and a known body.
pub fn check(envelope: &Envelope) -> Result<(&Header, &Body), Malformed> {
    let header = envelope.header.as_ref().ok_or(Malformed::NoHeader)?;
    if header.uuid.trim().is_empty() {
        return Err(Malformed::EmptyUuid);
    }
    let body = envelope.body.as_ref().ok_or(Malformed::NoBody)?;
    Ok((header, body))
}

/// The body's kind, for logs and metric labels.
pub fn kind(body: &Body) -> &'static str {
    match body {
        Body::Command(_) => "command",
        Body::Event(_) => "event",
        Body::Config(_) => "config",
        Body::Configuration(_) => "configuration",
        Body::ConfigurationDatabase(_) => "configuration_database",
        Body::Secret(_) => "secret",
        Body::Heartbeat(_) => "heartbeat",
    }
}

/// One counter per body kind (label `type`), registered once: per-message lookups of a
/// labelled counter cost more than the routing around them.
pub struct KindCounters([metrics::Counter; 7]);

impl KindCounters {
    pub fn new(name: &'static str) -> Self {
        Self(
            [
                "command",
                "event",
                "config",
                "configuration",
                "configuration_database",
                "secret",
                "heartbeat",
            ]
            .map(|kind| metrics::counter!(name, "type" => kind)),
        )
    }

    /// The events' counter.
    pub fn event(&self) -> &metrics::Counter {
        &self.0[1]
    }

    /// The counter of `body`'s kind.
    pub fn of(&self, body: &Body) -> &metrics::Counter {
        let index = match body {
            Body::Command(_) => 0,
            Body::Event(_) => 1,
            Body::Config(_) => 2,
            Body::Configuration(_) => 3,
            Body::ConfigurationDatabase(_) => 4,
            Body::Secret(_) => 5,
            Body::Heartbeat(_) => 6,
        };
        &self.0[index]
    }
}

/// The effective timeout of a message: its own, the default when 0, capped by `max_ms`.
pub fn timeout_ms(header: &Header, max_ms: u32) -> u32 {
    let own = if header.timeout_ms == 0 {
        DEFAULT_TIMEOUT_MS
    } else {
        header.timeout_ms
    };
    own.min(max_ms)
}

/// A new header: fresh uuid, now, this contract's version.
pub fn header(tenant: &str, timeout_ms: u32) -> Header {
    Header {
        uuid: uuid::Uuid::new_v4().to_string(),
        tenant: tenant.to_owned(),
        timeout_ms,
        timestamp_ms: now_ms(),
        major: MAJOR,
        minor: MINOR,
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// An envelope with a new header.
pub fn envelope(tenant: &str, body: Body) -> Envelope {
    Envelope {
        header: Some(header(tenant, 0)),
        body: Some(body),
    }
}

/// The first envelope of every stream.
pub fn validation(tenant: &str, secret: &str) -> Envelope {
    envelope(
        tenant,
        Body::Secret(Secret {
            command: VALIDATION.into(),
            context: HashMap::from([(SECRET_KEY.to_owned(), secret.to_owned())]),
            ..Secret::default()
        }),
    )
}

/// The answer to a validation; `target` names the connector it is for when relayed.
pub fn validation_reply(tenant: &str, accepted: bool, target: &str) -> Envelope {
    envelope(
        tenant,
        Body::Secret(Secret {
            command: VALIDATION_REPLY.into(),
            target_logical_name: target.to_owned(),
            payload: accepted.to_string(),
            ..Secret::default()
        }),
    )
}

/// An event.
pub fn event(
    tenant: &str,
    topic: &str,
    name: &str,
    reference_uuid: &str,
    payload: &str,
) -> Envelope {
    envelope(
        tenant,
        Body::Event(Event {
            topic: topic.into(),
            event: name.into(),
            reference_uuid: reference_uuid.into(),
            payload: payload.into(),
        }),
    )
}

/// An error event about the message `reference_uuid`.
pub fn error_event(tenant: &str, kind: &str, reference_uuid: &str, detail: &str) -> Envelope {
    event(tenant, ERROR_TOPIC, kind, reference_uuid, detail)
}

/// The acknowledgement of `command`.
pub fn on_going(tenant: &str, command: &Command, command_uuid: &str) -> Envelope {
    event(tenant, &command.command, ON_GOING, command_uuid, "")
}

/// A command for a connector of `connector_type`.
pub fn command(
    tenant: &str,
    connector_type: &str,
    name: &str,
    payload: &str,
    timeout_ms: u32,
) -> Envelope {
    Envelope {
        header: Some(header(tenant, timeout_ms)),
        body: Some(Body::Command(Command {
            target: String::new(),
            command: name.into(),
            context: HashMap::from([(CONNECTOR_TYPE_KEY.to_owned(), connector_type.to_owned())]),
            payload: payload.into(),
        })),
    }
}

/// A logical-configuration request or save.
pub fn configuration(tenant: &str, command: &str, target: &str, payload: &str) -> Envelope {
    envelope(
        tenant,
        Body::Configuration(Configuration {
            target_logical_name: target.into(),
            command: command.into(),
            payload: payload.into(),
            ..Configuration::default()
        }),
    )
}

/// A database-configuration request or reply.
pub fn configuration_database(tenant: &str, command: &str, payload: &str) -> Envelope {
    envelope(
        tenant,
        Body::ConfigurationDatabase(ConfigurationDatabase {
            command: command.into(),
            payload: payload.into(),
            ..ConfigurationDatabase::default()
        }),
    )
}

/// A configuration-exchange message.
pub fn config(tenant: &str, command: &str, target: &str, payload: &str) -> Envelope {
    envelope(
        tenant,
        Body::Config(Config {
            target: target.into(),
            command: command.into(),
            payload: payload.into(),
            ..Config::default()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_envelopes_are_named() {
        assert_eq!(check(&Envelope::default()), Err(Malformed::NoHeader));
        let mut e = validation("acme", "s");
        if let Some(h) = e.header.as_mut() {
            h.uuid.clear();
        }
        assert_eq!(check(&e), Err(Malformed::EmptyUuid));
        let mut e = validation("acme", "s");
        e.body = None;
        assert_eq!(check(&e), Err(Malformed::NoBody));
        assert!(check(&validation("acme", "s")).is_ok());
    }

    #[test]
    fn timeouts_default_and_are_capped() {
        let mut h = header("acme", 0);
        assert_eq!(timeout_ms(&h, 5000), DEFAULT_TIMEOUT_MS);
        h.timeout_ms = 60_000;
        assert_eq!(timeout_ms(&h, 5000), 5000);
        h.timeout_ms = 20;
        assert_eq!(timeout_ms(&h, 5000), 20);
    }

    #[test]
    fn metadata_round_trips_and_errors_name_the_key() {
        let peer = Peer {
            logical_name: "billing-1".into(),
            component_type: ComponentType::Connector,
            connector_type: Some("erp".into()),
        };
        let mut md = MetadataMap::new();
        peer.write_metadata(&mut md).expect("write");
        assert_eq!(Peer::from_metadata(&md), Ok(peer));

        let mut md = MetadataMap::new();
        md.insert(LOGICAL_NAME, "x".parse().expect("ascii"));
        md.insert(COMPONENT_TYPE, "connector".parse().expect("ascii"));
        assert_eq!(
            Peer::from_metadata(&md),
            Err(format!(
                "metadata {CONNECTOR_TYPE} is missing (required for connectors)"
            ))
        );
        md.insert(COMPONENT_TYPE, "robot".parse().expect("ascii"));
        assert!(
            Peer::from_metadata(&md)
                .expect_err("bad type")
                .contains("robot")
        );
    }
}
