//! The tenant as a client declares it (`PUT /v1/tenants/{name}`), checked before any SQL.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::names;

/// The desired state of one tenant. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantSpec {
    /// The tenant's schema (default: the tenant's name).
    #[serde(default)]
    pub schema: Option<String>,
    /// The database the schema lives in (default: the API's own database).
    #[serde(default)]
    pub database: Option<DatabaseSpec>,
    /// Roles that log in, each a member of one of the tenant's groups.
    #[serde(default)]
    pub logins: Vec<LoginSpec>,
    /// Extensions created in the database (in the tenant's schema) when missing.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Take from PUBLIC what it would otherwise have: CREATE on the `public` schema and,
    /// on a database the API created, CONNECT and TEMPORARY (default true).
    #[serde(default)]
    pub revoke_public: Option<bool>,
}

/// The tenant's database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DatabaseSpec {
    pub name: String,
    /// Create it when it does not exist (default false: it must exist).
    #[serde(default)]
    pub create: bool,
    /// The encoding of a database the API creates (`UTF8` when not given).
    #[serde(default)]
    pub encoding: Option<String>,
}

/// The group a login belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Owns the schema and what is created in it.
    Owner,
    /// Reads and writes the tables and sequences.
    Writer,
    /// Reads them.
    Reader,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Owner, Group::Writer, Group::Reader];

    pub fn suffix(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Writer => "writer",
            Self::Reader => "reader",
        }
    }
}

/// A role that logs in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginSpec {
    /// `<tenant>_<anything>`: a login belongs to one tenant.
    pub name: String,
    pub member_of: Group,
    /// Concurrent connections allowed (default: no limit).
    #[serde(default)]
    pub connection_limit: Option<i32>,
    /// When the password stops working (RFC 3339); default: never.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<OffsetDateTime>,
    /// Generated (default, returned once, on creation) or given as a SCRAM verifier.
    #[serde(default)]
    pub password: Option<PasswordSpec>,
}

/// How a login's password is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PasswordSpec {
    /// Generate one when the login is created (returned in that response only).
    #[serde(default)]
    pub generate: bool,
    /// A SCRAM-SHA-256 verifier made by the client (`SCRAM-SHA-256$4096:...`): the clear
    /// password never reaches the API.
    #[serde(default)]
    pub scram_verifier: Option<String>,
}

/// What a recorded spec shows in place of a SCRAM verifier a client gave: the verifier
/// itself is never kept or returned (its hash is, to tell whether a re-PUT changes it).
pub const REDACTED_VERIFIER: &str = "<redacted>";

impl TenantSpec {
    /// The spec as it is recorded and shown: every given verifier replaced by
    /// [`REDACTED_VERIFIER`].
    pub fn redacted(&self) -> Self {
        let mut spec = self.clone();
        for login in &mut spec.logins {
            if let Some(password) = &mut login.password
                && password.scram_verifier.is_some()
            {
                password.scram_verifier = Some(REDACTED_VERIFIER.to_owned());
            }
        }
        spec
    }
}

impl LoginSpec {
    /// The verifier the client gave in this request (not a recorded, redacted one).
    pub fn given_verifier(&self) -> Option<&str> {
        self.password
            .as_ref()
            .and_then(|p| p.scram_verifier.as_deref())
            .filter(|v| *v != REDACTED_VERIFIER)
    }

    /// Whether the client manages this login's password (a verifier, given or recorded).
    pub fn client_password(&self) -> bool {
        self.password
            .as_ref()
            .is_some_and(|p| p.scram_verifier.is_some())
    }
}

/// What the operator allows a tenant (config `tenants`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub allowed_extensions: Vec<String>,
    pub max_logins: usize,
    pub max_changes_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let config = crate::config::TenantsConfig::default();
        Self {
            allowed_extensions: config.allowed_extensions,
            max_logins: config.max_logins,
            max_changes_per_caller: config.max_changes_per_caller,
        }
    }
}

/// A spec with its defaults filled in, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tenant: String,
    pub schema: String,
    pub database: String,
    pub create_database: bool,
    pub encoding: Option<String>,
    pub logins: Vec<LoginSpec>,
    pub extensions: Vec<String>,
    pub revoke_public: bool,
}

impl Resolved {
    /// The group role of `group`: `<tenant>_owner`, ...
    pub fn group(&self, group: Group) -> String {
        format!("{}_{}", self.tenant, group.suffix())
    }

    /// Every role the tenant has: its groups, then its logins.
    pub fn roles(&self) -> Vec<String> {
        Group::ALL
            .iter()
            .map(|g| self.group(*g))
            .chain(self.logins.iter().map(|l| l.name.clone()))
            .collect()
    }
}

/// Checks `spec` for `tenant` (every problem, one line each) and fills in its defaults;
/// `default_database` is the API's own database. A verifier must be a real one
/// (`recorded` specs, read back from the store, carry [`REDACTED_VERIFIER`] instead).
pub fn resolve(
    tenant: &str,
    spec: &TenantSpec,
    default_database: &str,
    limits: &Limits,
    recorded: bool,
) -> Result<Resolved, Vec<String>> {
    let mut problems = Vec::new();
    let mut check = |what: &str, name: &str| {
        if let Err(why) = names::check(what, name) {
            problems.push(why);
        }
    };
    check("tenant", tenant);
    let schema = spec.schema.clone().unwrap_or_else(|| tenant.to_owned());
    check("schema", &schema);
    let database = spec
        .database
        .as_ref()
        .map_or_else(|| default_database.to_owned(), |d| d.name.clone());
    if spec.database.is_some() {
        check("database", &database);
    }
    for login in &spec.logins {
        check("login", &login.name);
    }
    if tenant.starts_with("pg_") {
        problems.push(format!(
            "tenant {tenant:?} is reserved: role names starting with pg_ are PostgreSQL's"
        ));
    }
    if let Some(why) = names::reserved_schema(&schema) {
        problems.push(format!("schema {schema:?} is reserved: {why}"));
    }
    // The tenant's namespace, which no other tenant's names can enter (overlapping tenant
    // names are refused): a schema elsewhere could be another tenant's login's "$user".
    // (A recorded spec is what exists: the limits of today do not make it unreadable.)
    if !recorded && schema != tenant && !schema.starts_with(&format!("{tenant}_")) {
        problems.push(format!(
            "schema {schema:?} is outside the tenant's namespace: name it {tenant:?} or \
             \"{tenant}_...\""
        ));
    }
    if Group::ALL
        .iter()
        .any(|g| schema == format!("{tenant}_{}", g.suffix()))
        || spec.logins.iter().any(|l| l.name == schema)
    {
        problems.push(format!(
            "schema {schema:?} is reserved: it is the name of one of the tenant's roles"
        ));
    }
    if let Some(why) = names::reserved_database(&database) {
        problems.push(format!("database {database:?} is reserved: {why}"));
    }
    for extension in &spec.extensions {
        if let Err(why) = names::check_extension(extension) {
            problems.push(why);
        } else if !recorded && !limits.allowed_extensions.contains(extension) {
            problems.push(format!(
                "extension {extension:?} is not allowed: tenants may ask for {} \
                 (an operator adds others to the config key tenants.allowed_extensions)",
                limits.allowed_extensions.join(", ")
            ));
        }
    }
    if !recorded && spec.logins.len() > limits.max_logins {
        problems.push(format!(
            "{} logins declared: a tenant has at most {} (config key tenants.max_logins)",
            spec.logins.len(),
            limits.max_logins
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    // Group suffixes are 7 characters at most: a tenant leaves room for them.
    if tenant.len() > 63 - "_writer".len() {
        problems.push(format!(
            "tenant {tenant:?} is too long: its roles ({tenant}_writer, ...) must fit in 63 characters"
        ));
    }
    for login in &spec.logins {
        if !login.name.starts_with(&format!("{tenant}_")) {
            problems.push(format!(
                "login {:?} must start with \"{tenant}_\": a login belongs to its tenant",
                login.name
            ));
        }
        if Group::ALL
            .iter()
            .any(|g| login.name == format!("{tenant}_{}", g.suffix()))
        {
            problems.push(format!(
                "login {:?} is the name of a group role",
                login.name
            ));
        }
        if !seen.insert(login.name.as_str()) {
            problems.push(format!("login {:?} is declared twice", login.name));
        }
        if let Some(limit) = login.connection_limit
            && limit < -1
        {
            problems.push(format!(
                "login {:?}: connectionLimit {limit} (use -1 for none, or a count)",
                login.name
            ));
        }
        if let Some(password) = &login.password {
            match (&password.scram_verifier, password.generate) {
                (Some(_), true) => problems.push(format!(
                    "login {:?}: password: generate or scramVerifier, not both",
                    login.name
                )),
                (Some(v), false)
                    if !(crate::scram::is_verifier(v) || (recorded && v == REDACTED_VERIFIER)) =>
                {
                    problems.push(format!(
                        "login {:?}: password.scramVerifier is not a SCRAM-SHA-256 verifier \
                     (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>); a clear \
                     password is never accepted",
                        login.name
                    ))
                }
                _ => {}
            }
        }
    }
    for login in &spec.logins {
        if let Some(until) = login.valid_until
            && until
                .checked_to_offset(time::UtcOffset::UTC)
                .is_none_or(|at| !(1..=9999).contains(&at.year()))
        {
            problems.push(format!(
                "login {:?}: validUntil must fall between the years 1 and 9999 in UTC",
                login.name
            ));
        }
    }
    let encoding = spec.database.as_ref().and_then(|d| d.encoding.clone());
    // PostgreSQL reads encoding names ignoring case and anything but letters and digits.
    if let Some(encoding) = &encoding
        && encoding
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .eq_ignore_ascii_case("sqlascii")
    {
        problems.push(
            "database.encoding SQL_ASCII is refused: names in such a database need not be \
             text the API (or any client) can read; use UTF8"
                .into(),
        );
    }
    if let Some(encoding) = &encoding
        && (encoding.is_empty()
            || encoding.len() > 32
            || !encoding
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        problems.push(format!(
            "database.encoding {encoding:?} is not an encoding name"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Resolved {
        tenant: tenant.to_owned(),
        schema,
        database,
        create_database: spec.database.as_ref().is_some_and(|d| d.create),
        encoding,
        logins: spec.logins.clone(),
        extensions: spec.extensions.clone(),
        revoke_public: spec.revoke_public.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<TenantSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn the_spec_s_example_reads_and_resolves() {
        let spec = body(
            r#"{"schema": "acme", "database": {"name": "dev_acme", "create": true},
                "logins": [{"name": "acme_app", "memberOf": "writer", "connectionLimit": 20,
                            "password": {"generate": true}}],
                "extensions": ["pgcrypto"], "revokePublic": true}"#,
        )
        .expect("reads");
        let resolved =
            resolve("acme", &spec, "postgres", &Limits::default(), false).expect("valid");
        assert_eq!(resolved.database, "dev_acme");
        assert!(resolved.create_database);
        assert_eq!(
            resolved.roles(),
            ["acme_owner", "acme_writer", "acme_reader", "acme_app"]
        );
        let empty = resolve(
            "acme",
            &TenantSpec::default(),
            "postgres",
            &Limits::default(),
            false,
        )
        .expect("valid");
        assert_eq!(
            (empty.schema.as_str(), empty.database.as_str()),
            ("acme", "postgres")
        );
        assert!(empty.revoke_public);
    }

    #[test]
    fn unknown_fields_and_hostile_names_are_refused() {
        assert!(body(r#"{"shema": "x"}"#).is_err());
        assert!(body(r#"{"logins": [{"name": "acme_a", "memberOf": "admin"}]}"#).is_err());
        let spec = body(
            r#"{"schema": "a\"; DROP TABLE x; --", "logins": [{"name": "postgres", "memberOf": "owner"},
               {"name": "acme_b", "memberOf": "reader", "password": {"scramVerifier": "hunter2"}}]}"#,
        )
        .expect("reads");
        let problems =
            resolve("Acme", &spec, "postgres", &Limits::default(), false).expect_err("refused");
        let text = problems.join("\n");
        for part in [
            "tenant \"Acme\"",
            "schema",
            "login \"postgres\" must start",
            "not a SCRAM-SHA-256 verifier",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(
            !text.contains("hunter2"),
            "the refused password is not repeated"
        );
    }
}
