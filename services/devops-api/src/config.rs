//! devops-api's configuration (`--config`, env `DEVOPS_API__...`): the keys the spec
//! fixes (`listen`, `admin_listen`, `database.url`, `auth.tokens_file`,
//! `auth.identity_header`, `auth.trusted_proxies`), who may touch which tenant
//! (`auth.identity_scopes`), and the limits beside them (`http.*`).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

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
    /// What one client can hold of the API's listener.
    pub http: HttpConfig,
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
            http: HttpConfig::default(),
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
    /// Changes (PUT, DELETE, rotate) one caller may have under way at once; beyond it,
    /// 429 with Retry-After, so one caller cannot take every database connection.
    pub max_changes_per_caller: usize,
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
            max_changes_per_caller: 4,
        }
    }
}

/// Who may call the API, and which tenants each caller may touch.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// One `actor:token` (every tenant) or `actor:token:pattern[,pattern...]` (the tenants
    /// matching one of the patterns) per line (blank lines and `#` comments ignored); read
    /// again when it changes, so a rotated Kubernetes Secret takes effect without a restart.
    pub tokens_file: Option<PathBuf>,
    /// The header nginx `auth_request` sets to the authenticated user.
    pub identity_header: String,
    /// Only peers in these networks may use the identity header (CIDR, or an address);
    /// empty (the default): the header is believed from nobody.
    pub trusted_proxies: Vec<String>,
    /// Identity-header actor -> the patterns of the tenants it may touch (`*` any run of
    /// characters, `?` one). An actor not listed is authenticated but touches no tenant.
    pub identity_scopes: BTreeMap<String, Vec<String>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            identity_header: "X-Auth-Request-User".into(),
            trusted_proxies: Vec::new(),
            identity_scopes: BTreeMap::new(),
        }
    }
}

/// What one client can hold of the API's listener: a connection that never finishes its
/// headers is closed, connections are capped, a request has a deadline.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a connection gets to send a request's complete headers (the first request,
    /// or the next one on a kept-alive connection); it is closed beyond them.
    pub header_read_timeout_secs: u64,
    /// Connections open at once; beyond it new connections wait in the listen backlog
    /// until one closes.
    pub max_connections: usize,
    /// Seconds a request may take, its body and its database work included; beyond them
    /// it is answered 503 with Retry-After. More than `database.statement_timeout_ms`, so
    /// that a slow statement ends with its own answer first.
    pub request_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            max_connections: 1024,
            request_timeout_secs: 60,
        }
    }
}

/// The most connections `http.max_connections` may allow.
pub const MAX_CONNECTIONS: usize = 1 << 20;

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
        if self.tenants.max_changes_per_caller == 0 {
            problems.push("tenants.max_changes_per_caller: must be at least 1".into());
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
        for (actor, patterns) in &self.auth.identity_scopes {
            if actor.is_empty() || actor.len() > 128 || actor.chars().any(char::is_control) {
                problems.push(format!(
                    "auth.identity_scopes: {actor:?} is not an actor name (1-128 characters)"
                ));
            }
            for pattern in patterns {
                if let Err(why) = crate::auth::Pattern::parse(pattern) {
                    problems.push(format!("auth.identity_scopes.{actor}: {pattern:?}: {why}"));
                }
            }
        }
        if self.http.header_read_timeout_secs == 0 {
            problems.push("http.header_read_timeout_secs: must be at least 1".into());
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.http.max_connections) {
            problems.push(format!(
                "http.max_connections: must be between 1 and {MAX_CONNECTIONS}"
            ));
        }
        if self.http.request_timeout_secs.saturating_mul(1000) <= self.database.statement_timeout_ms
            || self.http.request_timeout_secs == 0
        {
            problems.push(format!(
                "http.request_timeout_secs: {} s must be more than database.statement_timeout_ms ({} ms), and at least 1",
                self.http.request_timeout_secs, self.database.statement_timeout_ms
            ));
        }
        if self.auth.tokens_file.is_none() && self.auth.trusted_proxies.is_empty() {
            problems.push(
                "auth: neither tokens_file nor trusted_proxies is set: nobody could call the API"
                    .into(),
            );
        } else if self.auth.tokens_file.is_none()
            && self.auth.identity_scopes.values().all(Vec::is_empty)
        {
            problems.push(
                "auth: no tokens_file and no identity_scopes: nobody could touch a tenant".into(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(adjust: impl FnOnce(&mut Config)) -> Vec<String> {
        let mut config = Config::default();
        config.auth.tokens_file = Some("/run/secrets/devops-api/tokens".into());
        adjust(&mut config);
        config.problems()
    }

    #[test]
    fn the_defaults_are_valid_once_someone_can_call() {
        assert_eq!(problems(|_| {}), Vec::<String>::new());
        let nobody = problems(|c| c.auth.tokens_file = None);
        assert!(
            nobody.iter().any(|p| p.contains("nobody could call")),
            "{nobody:?}"
        );
        // The identity header is believed from nobody until proxies are named.
        assert!(Config::default().auth.trusted_proxies.is_empty());
        let only_proxies = problems(|c| {
            c.auth.tokens_file = None;
            c.auth.trusted_proxies = vec!["10.0.0.0/8".into()];
        });
        assert!(
            only_proxies.len() == 1 && only_proxies[0].contains("nobody could touch a tenant"),
            "{only_proxies:?}"
        );
        assert!(
            problems(|c| {
                c.auth.tokens_file = None;
                c.auth.trusted_proxies = vec!["10.0.0.0/8".into()];
                c.auth.identity_scopes = BTreeMap::from([("alice".into(), vec!["a_*".into()])]);
            })
            .is_empty()
        );
    }

    #[test]
    fn a_bad_identity_scope_names_its_key() {
        let found = problems(|c| {
            c.auth.identity_scopes = BTreeMap::from([
                (
                    "alice@example.com".into(),
                    vec!["team_a_*".into(), "Team-B".into()],
                ),
                ("bob".into(), vec![String::new()]),
                (String::new(), vec!["x".into()]),
            ]);
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].starts_with("auth.identity_scopes: \"\""),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("auth.identity_scopes.alice@example.com: \"Team-B\""),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("auth.identity_scopes.bob: \"\""),
            "{found:?}"
        );
    }

    #[test]
    fn the_request_timeout_must_outlast_a_statement() {
        let equal = problems(|c| {
            c.database.statement_timeout_ms = 30_000;
            c.http.request_timeout_secs = 30;
        });
        assert!(
            equal.len() == 1 && equal[0].starts_with("http.request_timeout_secs"),
            "{equal:?}"
        );
        assert!(
            problems(|c| {
                c.database.statement_timeout_ms = 1_000;
                c.http.request_timeout_secs = 2;
            })
            .is_empty()
        );
        assert!(!problems(|c| c.http.request_timeout_secs = 0).is_empty());
        assert!(!problems(|c| c.http.header_read_timeout_secs = 0).is_empty());
        assert!(!problems(|c| c.http.max_connections = 0).is_empty());
        assert!(!problems(|c| c.http.max_connections = usize::MAX).is_empty());
    }
}
