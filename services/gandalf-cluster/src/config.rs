//! gandalf-cluster's configuration (`--config`, env `GANDALF_CLUSTER__...`).

use std::{collections::BTreeMap, net::SocketAddr};

use platform::{config::Validate, secret::SecretUrl};
use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Prefix of the environment overrides: `GANDALF_CLUSTER__LISTEN`, ...
pub const ENV_PREFIX: &str = "GANDALF_CLUSTER";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address the aggregators connect to.
    pub listen: SocketAddr,
    /// Admin HTTP address: `/healthz`, `/readyz`, `/metrics`, `/v1/events`.
    pub admin_listen: SocketAddr,
    /// Tenants, their accepted secrets and database.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Events kept per tenant for `GET /v1/events` (oldest dropped first).
    pub event_log_capacity: usize,
    /// The same bound in encoded bytes (the newest event is kept whatever its size).
    pub event_log_bytes: usize,
    /// How long in-flight streams get to finish on SIGTERM, in seconds.
    pub shutdown_grace_secs: u64,
    /// Messages queued for one aggregator stream at most; beyond, messages for it are
    /// dropped (counted) and routing goes on for the others.
    pub queue_messages: usize,
    /// The same bound in encoded bytes.
    pub queue_bytes: usize,
    /// A stream whose queue stays full this long stopped reading: it is closed.
    pub stall_timeout_ms: u64,
    /// Where logical configurations are kept: absent = in memory (lost on restart).
    pub storage: Option<StorageConfig>,
    /// Cap on `header.timeout_ms` of the commands routed here.
    pub max_timeout_ms: u32,
    /// Commands under way here at most; beyond, one is answered at once with
    /// `Event{error, BUSY}`.
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
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            tenants: BTreeMap::new(),
            event_log_capacity: 1000,
            event_log_bytes: 16 * 1024 * 1024,
            shutdown_grace_secs: 10,
            queue_messages: stream.queue.messages,
            queue_bytes: stream.queue.bytes,
            stall_timeout_ms: stream.queue.stall.as_millis() as u64,
            storage: None,
            max_timeout_ms: 5000,
            max_commands_in_flight: 10_000,
            heartbeat_interval_ms: stream.heartbeat.as_millis() as u64,
            keepalive_interval_ms: stream.keepalive.as_millis() as u64,
            max_message_bytes: stream.max_message_bytes,
        }
    }
}

/// One tenant.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Accepted secrets of this tenant's connectors; of its aggregators too while
    /// `aggregator_secrets` is empty (the layout before the two were kept apart).
    #[serde(serialize_with = "platform::secret::redact_all")]
    #[schemars(with = "Vec<String>")]
    pub secrets: Vec<SecretString>,
    /// Accepted secrets of this tenant's aggregators. Set them: a connector's secret then
    /// cannot open a Cluster stream as an aggregator.
    #[serde(serialize_with = "platform::secret::redact_all")]
    #[schemars(with = "Vec<String>")]
    pub aggregator_secrets: Vec<SecretString>,
    /// What CONFIGURATION_DATABASE returns to this tenant's aggregators; none: they run
    /// without a command log.
    pub database: Option<DatabaseInfo>,
}

/// A tenant's database.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseInfo {
    pub url: SecretUrl,
}

/// SQL storage of logical configurations.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `postgres://user:password@host/db` or `sqlite:///var/lib/gandalf/cluster.db`
    /// (created when missing). Members sharing one database share the configurations.
    pub url: SecretUrl,
}

impl TenantConfig {
    /// Whether `secret` is one of this tenant's aggregator secrets (its `secrets` while
    /// `aggregator_secrets` is empty).
    pub fn accepts_aggregator(&self, secret: &str) -> bool {
        let list = if self.aggregator_secrets.is_empty() {
            &self.secrets
        } else {
            &self.aggregator_secrets
        };
        any_matches(list, secret)
    }

    /// Whether `secret` is one of this tenant's connector secrets.
    pub fn accepts_connector(&self, secret: &str) -> bool {
        any_matches(&self.secrets, secret)
    }
}

fn any_matches(list: &[SecretString], secret: &str) -> bool {
    list.iter()
        .any(|known| platform::secret::constant_time_eq(secret, known))
}

impl Config {
    /// Tenants whose aggregators still validate with the connector secrets.
    pub fn tenants_without_aggregator_secrets(&self) -> Vec<&str> {
        self.tenants
            .iter()
            .filter(|(_, t)| t.aggregator_secrets.is_empty())
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

impl Validate for Config {
    fn problems(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        let mut problems = Vec::new();
        // Port 0 picks a free port for each, so only a fixed port can collide.
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push(format!("listen and admin_listen are both {}", self.listen));
        }
        if self.event_log_capacity == 0 {
            problems.push("event_log_capacity: must be at least 1".into());
        }
        problems.extend(self.stream().problems());
        if let Some(storage) = &self.storage {
            let scheme = storage.url.scheme();
            if !matches!(scheme.as_str(), "postgres" | "postgresql" | "sqlite") {
                problems.push(format!(
                    "storage.url: unsupported scheme {scheme:?}: use postgres:// or sqlite://"
                ));
            }
        }
        if self.max_timeout_ms == 0 {
            problems.push("max_timeout_ms: must be at least 1".into());
        }
        if self.max_commands_in_flight == 0 {
            problems.push("max_commands_in_flight: must be at least 1".into());
        }
        for (name, tenant) in &self.tenants {
            if name.trim().is_empty() {
                problems.push("tenants: a tenant name is empty".into());
            }
            if tenant.secrets.is_empty() {
                problems.push(format!(
                    "tenants.{name}.secrets: at least one secret is needed"
                ));
            }
            if tenant
                .secrets
                .iter()
                .any(|s| s.expose_secret().trim().is_empty())
            {
                problems.push(format!("tenants.{name}.secrets: a secret is empty"));
            }
            if tenant
                .aggregator_secrets
                .iter()
                .any(|s| s.expose_secret().trim().is_empty())
            {
                problems.push(format!(
                    "tenants.{name}.aggregator_secrets: a secret is empty"
                ));
            }
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

#[cfg(test)]
mod secret_tests {
    use secrecy::SecretString;

    use super::TenantConfig;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from(*s)).collect()
    }

    #[test]
    fn aggregator_secrets_keep_connector_secrets_out_of_aggregator_streams() {
        let tenant = TenantConfig {
            secrets: secrets(&["connector"]),
            aggregator_secrets: secrets(&["aggregator"]),
            database: None,
        };
        assert!(tenant.accepts_aggregator("aggregator"));
        assert!(!tenant.accepts_aggregator("connector"));
        assert!(tenant.accepts_connector("connector"));
        assert!(!tenant.accepts_connector("aggregator"));
    }

    #[test]
    fn without_aggregator_secrets_the_secrets_serve_both_as_before() {
        let tenant = TenantConfig {
            secrets: secrets(&["shared"]),
            ..TenantConfig::default()
        };
        assert!(tenant.accepts_aggregator("shared"));
        assert!(tenant.accepts_connector("shared"));
        assert!(!tenant.accepts_aggregator("other"));
    }
}
