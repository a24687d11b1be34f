//! The job's configuration: the `database` section and the aggregation service's own
//! `provisionClientsConfig` section, read from the same YAML the service uses (every
//! other key of that file is ignored).

use std::{collections::BTreeMap, time::Duration};

use platform::{config::Validate, secret::SecretUrl};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prefix of the environment overrides: `PROVISIONER__DATABASE__URL`, ...
pub const ENV_PREFIX: &str = "PROVISIONER";

/// The whole configuration. Keys beside `database` and `provisionClientsConfig` belong to
/// the aggregation service whose YAML this is, and are ignored; inside those two sections
/// an unknown key is an error.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(default)]
pub struct Config {
    /// The aggregation database.
    pub database: DatabaseConfig,
    /// The clients to provision (the aggregation service's `provisionClientsConfig`).
    #[serde(rename = "provisionClientsConfig")]
    pub provision: ProvisionConfig,
}

/// Where the aggregation database is and how the job uses it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:5432/db` or `sqlite://file.db` (created if missing).
    pub url: SecretUrl,
    /// How long to wait for the database to answer at start, in seconds or with a unit
    /// (`30s`, `2m`).
    #[serde(with = "platform::config::duration_secs")]
    #[schemars(with = "u64")]
    pub connect_timeout_secs: Duration,
    /// How long to wait for another run's lock before giving up (exit 0), in seconds or
    /// with a unit.
    #[serde(with = "platform::config::duration_secs")]
    #[schemars(with = "u64")]
    pub lock_wait_secs: Duration,
    /// Clients written (created or repaired) per transaction.
    pub batch_size: usize,
    /// PostgreSQL `statement_timeout` of the job's connections, in seconds or with a unit (`90s`, `2m`; 0: none): a
    /// statement that runs longer is cancelled and reported.
    #[serde(with = "platform::config::duration_secs")]
    #[schemars(with = "u64")]
    pub statement_timeout_secs: Duration,
    /// PostgreSQL `lock_timeout` of the job's connections, in seconds or with a unit (`90s`, `2m`; 0: none): how long
    /// a statement may wait for a row or table lock another session holds.
    #[serde(with = "platform::config::duration_secs")]
    #[schemars(with = "u64")]
    pub lock_timeout_secs: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::from_static("sqlite://provisioner.db"),
            connect_timeout_secs: Duration::from_secs(10),
            lock_wait_secs: Duration::from_secs(60),
            batch_size: 500,
            statement_timeout_secs: Duration::from_secs(60),
            lock_timeout_secs: Duration::from_secs(10),
        }
    }
}

impl DatabaseConfig {
    /// [`DatabaseConfig::connect_timeout_secs`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout_secs
    }

    /// [`DatabaseConfig::lock_wait_secs`] as a duration.
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait_secs
    }
}

/// `provisionClientsConfig`: which clients must exist, and on which cluster. Strict: a
/// misspelt key (`enable:`, `clusterID:`) is an error naming it, never silently ignored.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionConfig {
    /// `false` opts this cluster out: the job logs it and exits 0 without touching the database.
    pub enabled: bool,
    /// The original service's name for `enabled`, accepted with a warning; the two must
    /// agree when both are given.
    #[serde(
        rename = "shouldProvisionClients",
        skip_serializing_if = "Option::is_none"
    )]
    pub should_provision_clients: Option<bool>,
    /// Cluster of every client that does not name its own.
    #[serde(rename = "clusterId")]
    pub cluster_id: String,
    /// `clientName -> { aggregatorIdentifier, clusterId? }`.
    pub clients: BTreeMap<String, ClientSpec>,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            should_provision_clients: None,
            cluster_id: "oxford-production".into(),
            clients: BTreeMap::new(),
        }
    }
}

impl ProvisionConfig {
    /// Whether this cluster provisions clients: `enabled`, or the legacy
    /// `shouldProvisionClients` when only that one says `false`.
    pub fn is_enabled(&self) -> bool {
        self.enabled && self.should_provision_clients != Some(false)
    }

    /// The cluster a client belongs on: its own `clusterId`, else the default.
    pub fn cluster_of<'a>(&'a self, spec: &'a ClientSpec) -> &'a str {
        spec.cluster_id.as_deref().unwrap_or(&self.cluster_id)
    }
}

/// One declared client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// Stored as the client's `aggregator_configurations.aggregator_info`.
    #[serde(rename = "aggregatorIdentifier")]
    pub aggregator_identifier: String,
    /// Overrides the default cluster for this client.
    #[serde(rename = "clusterId", default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// Largest batch: keeps one multi-row INSERT under SQLite's and PostgreSQL's bind limits.
pub const MAX_BATCH_SIZE: usize = 5000;

/// `[a-z0-9][a-z0-9._-]{0,127}`: also a valid key of a Kubernetes Secret.
pub fn check_client_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("client name must not be empty".into());
    };
    if bytes.len() > 128 {
        return Err(format!(
            "client name {name:?} is longer than 128 characters"
        ));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "client name {name:?} must start with a lowercase letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "client name {name:?} contains {bad:?}: only a-z, 0-9, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

impl Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let scheme = self.database.url.scheme();
        if !matches!(scheme.as_str(), "postgres" | "postgresql" | "sqlite") {
            problems.push(format!(
                "database.url: unsupported scheme {scheme:?}: use postgres:// or sqlite://"
            ));
        }
        if self.database.batch_size == 0 || self.database.batch_size > MAX_BATCH_SIZE {
            problems.push(format!(
                "database.batch_size: {} is out of range 1..={MAX_BATCH_SIZE}",
                self.database.batch_size
            ));
        }
        if self.database.connect_timeout_secs < Duration::from_secs(1) {
            problems.push("database.connect_timeout_secs: must be at least 1s".into());
        }
        if self
            .provision
            .should_provision_clients
            .is_some_and(|legacy| legacy != self.provision.enabled)
            && !self.provision.enabled
        {
            problems.push(
                "provisionClientsConfig: enabled: false and shouldProvisionClients: true disagree; \
                 keep only enabled"
                    .into(),
            );
        }
        if !self.provision.is_enabled() {
            // An opted-out cluster is not checked further: its clients are never read.
            return problems;
        }
        if self.provision.cluster_id.trim().is_empty() {
            problems.push("provisionClientsConfig.clusterId: must not be empty".into());
        }
        for (name, spec) in &self.provision.clients {
            if let Err(problem) = check_client_name(name) {
                problems.push(format!("provisionClientsConfig.clients: {problem}"));
            }
            if spec.aggregator_identifier.trim().is_empty() {
                problems.push(format!(
                    "provisionClientsConfig.clients.{name}.aggregatorIdentifier: must not be empty"
                ));
            }
            if spec
                .cluster_id
                .as_deref()
                .is_some_and(|c| c.trim().is_empty())
            {
                problems.push(format!(
                    "provisionClientsConfig.clients.{name}.clusterId: must not be empty when given"
                ));
            }
        }
        problems
    }

    fn warnings(&self) -> Vec<String> {
        match self.provision.should_provision_clients {
            Some(_) => vec![format!(
                "provisionClientsConfig.shouldProvisionClients is the legacy name of \
                 provisionClientsConfig.enabled; read as enabled: {}; rename it",
                self.provision.is_enabled()
            )],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // figment::Jail closures return figment::Error, whose size is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn every_key_can_be_set_from_the_environment() {
        platform::config::assert_env_overrides::<Config>(ENV_PREFIX);
        // The camelCase keys the README documents, with no alias on the fields.
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "PROVISIONER__PROVISIONCLIENTSCONFIG__CLUSTERID",
                "oxford-staging",
            );
            jail.set_env(
                "PROVISIONER__PROVISIONCLIENTSCONFIG__CLIENTS__ACME__AGGREGATORIDENTIFIER",
                "Acme AB",
            );
            jail.set_env("PROVISIONER__DATABASE__URL", "sqlite://x.db");
            jail.set_env("PROVISIONER__DATABASE__BATCH_SIZE", "7");
            let config: Config = platform::config::load(ENV_PREFIX, None)
                .map_err(|e| figment::Error::from(e.to_string()))?;
            assert_eq!(config.provision.cluster_id, "oxford-staging");
            assert_eq!(
                config.provision.clients["acme"].aggregator_identifier,
                "Acme AB"
            );
            assert_eq!(config.database.batch_size, 7);
            Ok(())
        });
    }

    #[test]
    fn client_names_follow_the_documented_pattern() {
        for good in [
            "a",
            "company-inc-testing",
            "0day",
            "a.b_c-d",
            &"x".repeat(128),
        ] {
            assert!(check_client_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-lead",
            ".dot",
            "Upper",
            "sp ace",
            "ümlaut",
            &"x".repeat(129),
        ] {
            assert!(check_client_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut config = Config::default();
        config.database.batch_size = 0;
        config.provision.clients.insert(
            "Bad Name".into(),
            ClientSpec {
                aggregator_identifier: " ".into(),
                cluster_id: Some(String::new()),
            },
        );
        let problems = config.problems();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("database.batch_size"));
        assert!(problems[1].contains("\"Bad Name\""));
        assert!(problems[2].ends_with("aggregatorIdentifier: must not be empty"));
        assert!(problems[3].ends_with("clusterId: must not be empty when given"));
    }

    #[test]
    fn a_disabled_cluster_is_not_checked_further() {
        let mut config = Config::default();
        config.provision.enabled = false;
        config.provision.clients.insert(
            "Bad Name".into(),
            ClientSpec {
                aggregator_identifier: String::new(),
                cluster_id: None,
            },
        );
        assert!(config.problems().is_empty());
    }
}
