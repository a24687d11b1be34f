//! gandalf-aggregator's configuration (`--config`, env `GANDALF_AGGREGATOR__...`). The
//! first seven keys are fixed by the product's contract.

use std::net::SocketAddr;

use platform::config::Validate;
use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Prefix of the environment overrides: `GANDALF_AGGREGATOR__TENANT`, ...
pub const ENV_PREFIX: &str = "GANDALF_AGGREGATOR";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This aggregator's name, as the cluster and connectors see it.
    pub logical_name: String,
    /// The one tenant this aggregator serves.
    pub tenant: String,
    /// Validated with the cluster at start.
    #[serde(serialize_with = "platform::secret::redact")]
    #[schemars(with = "String")]
    pub secret: SecretString,
    /// gRPC address for connectors.
    pub listen: SocketAddr,
    /// Admin HTTP: `/healthz`, `/readyz`, `/metrics`, `/v1/connections`, `/v1/commands`.
    pub admin_listen: SocketAddr,
    /// Cluster members (`http://host:port`).
    pub cluster: Vec<String>,
    /// Cap on `header.timeout_ms`.
    pub max_timeout_ms: u32,
    /// Give up starting when no cluster member answered within this many seconds (0: never).
    pub startup_timeout_secs: u64,
    /// Longest pause between reconnection attempts to a member, in milliseconds.
    pub reconnect_backoff_max_ms: u64,
    /// How long in-flight commands get to finish on SIGTERM, in seconds.
    pub shutdown_grace_secs: u64,
    /// Messages queued for one connection at most; beyond, messages for it are dropped
    /// (counted) and routing goes on for everyone else.
    pub queue_messages: usize,
    /// The same bound in encoded bytes.
    pub queue_bytes: usize,
    /// A connection whose queue stays full this long stopped reading: it is closed.
    pub stall_timeout_ms: u64,
    /// Commands one connector may have in flight; beyond, a command is answered at once
    /// with `Event{error, BUSY}`.
    pub max_commands_per_connection: usize,
    /// Commands in flight through this aggregator in all (connectors' and members').
    pub max_commands_in_flight: usize,
    /// Interval of the `Heartbeat` sent on every stream; a peer that sends heartbeats
    /// and then stays silent for three to four intervals is taken for gone and its stream closed.
    pub heartbeat_interval_ms: u64,
    /// HTTP/2 keepalive PING interval on every connection (server and client); an
    /// unanswered PING closes the connection after the same time again.
    pub keepalive_interval_ms: u64,
    /// Largest envelope accepted or sent, encoded, in bytes; a stream that sends a larger
    /// one is ended with OUT_OF_RANGE (the others go on).
    pub max_message_bytes: usize,
}

impl Config {
    /// The settings of every stream: queue, heartbeats, keepalive, largest message.
    pub fn stream(&self) -> gandalf::streams::Settings {
        gandalf::streams::Settings::from_keys(
            self.queue_messages,
            self.queue_bytes,
            self.stall_timeout_ms,
            self.heartbeat_interval_ms,
            self.keepalive_interval_ms,
            self.max_message_bytes,
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        let stream = gandalf::streams::Settings::default();
        Self {
            logical_name: String::new(),
            tenant: String::new(),
            secret: SecretString::from(""),
            listen: SocketAddr::from(([127, 0, 0, 1], 9200)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9201)),
            cluster: vec!["http://127.0.0.1:9100".into()],
            max_timeout_ms: 5000,
            startup_timeout_secs: 60,
            reconnect_backoff_max_ms: 5000,
            shutdown_grace_secs: 10,
            queue_messages: stream.queue.messages,
            queue_bytes: stream.queue.bytes,
            stall_timeout_ms: stream.queue.stall.as_millis() as u64,
            max_commands_per_connection: 256,
            max_commands_in_flight: 10_000,
            heartbeat_interval_ms: stream.heartbeat.as_millis() as u64,
            keepalive_interval_ms: stream.keepalive.as_millis() as u64,
            max_message_bytes: stream.max_message_bytes,
        }
    }
}

impl Validate for Config {
    fn problems(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        let mut problems = Vec::new();
        if self.logical_name.trim().is_empty() {
            problems.push("logical_name: must be set".into());
        }
        if self.tenant.trim().is_empty() {
            problems.push("tenant: must be set".into());
        }
        if self.secret.expose_secret().trim().is_empty() {
            problems.push("secret: must be set".into());
        }
        if self.cluster.is_empty() {
            problems.push("cluster: at least one member URL is needed".into());
        }
        for member in &self.cluster {
            if !(member.starts_with("http://") || member.starts_with("https://")) {
                problems.push(format!(
                    "cluster: {member:?} must start with http:// or https://"
                ));
            }
        }
        // Port 0 picks a free port for each, so only a fixed port can collide.
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push(format!("listen and admin_listen are both {}", self.listen));
        }
        if self.max_timeout_ms == 0 {
            problems.push("max_timeout_ms: must be at least 1".into());
        }
        problems.extend(self.stream().problems());
        if self.max_commands_per_connection == 0 {
            problems.push("max_commands_per_connection: must be at least 1".into());
        }
        if self.max_commands_in_flight < self.max_commands_per_connection {
            problems.push(format!(
                "max_commands_in_flight: {} is below max_commands_per_connection ({})",
                self.max_commands_in_flight, self.max_commands_per_connection
            ));
        }
        problems
    }
}

#[cfg(test)]
mod env_tests {
    #[test]
    fn every_key_can_be_set_from_the_environment() {
        platform::config::assert_env_overrides::<super::Config>(super::ENV_PREFIX);
    }
}
