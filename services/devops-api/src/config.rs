//! devops-api's configuration (`--config`, env `DEVOPS_API__...`): the keys the spec
//! fixes (`listen`, `admin_listen`, `database.url`, `auth.tokens_file`,
//! `auth.identity_header`, `auth.trusted_proxies`) and the limits beside them.

use std::{net::SocketAddr, path::PathBuf};

use platform::{config::Validate, secret::SecretUrl};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Prefix of the environment overrides: `DEVOPS_API__DATABASE__URL`, ...
pub const ENV_PREFIX: &str = "DEVOPS_API";

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The API's address.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub tenants: TenantsConfig,
    /// The largest request body accepted, in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// How long requests under way get to finish on SIGTERM, in seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            tenants: TenantsConfig::default(),
            max_body_bytes: 64 * 1024,
            shutdown_grace_secs: 20,
        }
    }
}

/// The admin connection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A role with CREATEROLE (and CREATEDB to create databases); its database holds the
    /// API's own schema `devops_api` (tenants and the audit log).
    #[schemars(with = "String")]
    pub url: SecretUrl,
    /// Connections to each database (the admin one and each tenant's); at least 2.
    pub max_connections: u32,
    /// Tenant databases the API keeps connections to at once (the least recently used
    /// is closed beyond it).
    pub max_databases: usize,
    /// Wait for a connection, in seconds (then 503).
    pub acquire_timeout_secs: u64,
    /// `lock_timeout` of every transaction: the wait for another PUT of the same tenant,
    /// or for a lock on a catalog, in milliseconds.
    pub lock_timeout_ms: u64,
    /// `statement_timeout` of every statement, in milliseconds.
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::from_static("postgres://postgres@localhost/postgres"),
            max_connections: 8,
            max_databases: 32,
            acquire_timeout_secs: 5,
            lock_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
        }
    }
}

/// What a tenant may ask for.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TenantsConfig {
    /// Extensions a tenant may ask for (others are a 422). The default holds trusted
    /// extensions that create nothing outside the schema they are put in and reach
    /// nothing outside the database; `file_fdw`, `dblink`, `postgres_fdw`, `pageinspect`
    /// and the like read files, other servers or raw pages, and are not for tenants.
    pub allowed_extensions: Vec<String>,
    /// The most logins one tenant may declare.
    pub max_logins: usize,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            allowed_extensions: [
                "pgcrypto",
                "citext",
                "uuid-ossp",
                "hstore",
                "pg_trgm",
                "btree_gin",
                "btree_gist",
                "unaccent",
                "ltree",
            ]
            .map(String::from)
            .to_vec(),
            max_logins: 50,
        }
    }
}

/// Who may call the API.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// One `actor:token` per line (blank lines and `#` comments ignored); read again when
    /// it changes, so a rotated Kubernetes Secret takes effect without a restart.
    pub tokens_file: Option<PathBuf>,
    /// The header nginx `auth_request` sets to the authenticated user.
    pub identity_header: String,
    /// Only peers in these networks may use the identity header (CIDR, or an address).
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            identity_header: "X-Auth-Request-User".into(),
            trusted_proxies: vec!["127.0.0.1/32".into()],
        }
    }
}

impl Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push(format!("listen and admin_listen are both {}", self.listen));
        }
        if !matches!(
            self.database.url.scheme().as_str(),
            "postgres" | "postgresql"
        ) {
            problems.push(format!(
                "database.url: {} is not a postgres:// URL",
                self.database.url.redacted()
            ));
        }
        if self.database.max_connections < 2 {
            problems.push(
                "database.max_connections: must be at least 2 (a change holds one while CREATE DATABASE uses another)"
                    .into(),
            );
        }
        if self.database.max_databases == 0 {
            problems.push("database.max_databases: must be at least 1".into());
        }
        for extension in &self.tenants.allowed_extensions {
            if let Err(why) = crate::names::check_extension(extension) {
                problems.push(format!("tenants.allowed_extensions: {why}"));
            }
        }
        if self.tenants.max_logins == 0 || self.tenants.max_logins > 1000 {
            problems.push("tenants.max_logins: must be 1..=1000".into());
        }
        if self.max_body_bytes < 1024 {
            problems.push("max_body_bytes: must be at least 1024".into());
        }
        for proxy in &self.auth.trusted_proxies {
            if let Err(why) = crate::auth::Network::parse(proxy) {
                problems.push(format!("auth.trusted_proxies: {proxy:?}: {why}"));
            }
        }
        if axum::http::HeaderName::try_from(self.auth.identity_header.as_str()).is_err() {
            problems.push(format!(
                "auth.identity_header: {:?} is not a header name",
                self.auth.identity_header
            ));
        }
        if self.auth.tokens_file.is_none() && self.auth.trusted_proxies.is_empty() {
            problems.push(
                "auth: neither tokens_file nor trusted_proxies is set: nobody could call the API"
                    .into(),
            );
        }
        problems
    }
}
