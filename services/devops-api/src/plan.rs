//! The plan: the exact statements that bring what exists to what is declared, computed
//! from the catalogs. Nothing to do gives an empty plan; the statements a dry run shows
//! are the ones a real run executes (a password shows as `'<redacted>'`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::{
    catalog::{Local, State},
    names::{ident, literal},
    scram,
    spec::{Group, LoginSpec, Resolved},
};

/// How a password appears in a plan, the audit log and any response.
pub const REDACTED: &str = "'<redacted>'";

/// One step as a plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Step {
    /// `create role`, `grant`, `alter default privileges`, ...
    pub action: String,
    /// What it is about: `role acme_owner`, `schema acme`, ...
    pub object: String,
    /// The statement (passwords redacted).
    pub sql: String,
}

/// A step and the statement executed for it (the same, but with the password's
/// verifier in place of `'<redacted>'`).
#[derive(Clone, PartialEq, Eq)]
pub struct Statement {
    pub step: Step,
    pub execute: String,
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Statement").field(&self.step.sql).finish()
    }
}

fn statement(action: &str, object: String, sql: String) -> Statement {
    Statement {
        step: Step {
            action: action.into(),
            object,
            sql: sql.clone(),
        },
        execute: sql,
    }
}

/// A generated password, for the one response that returns it.
#[derive(Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Credential {
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// A PUT's plan.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// `CREATE DATABASE`, which cannot run in a transaction: its own step, first.
    pub create_database: Option<Statement>,
    /// The rest, in one transaction.
    pub statements: Vec<Statement>,
    /// Passwords generated for new logins.
    pub credentials: Vec<Credential>,
    /// For each login given a SCRAM verifier: the hash of it, recorded so that a re-PUT
    /// of the same verifier changes nothing.
    pub verifiers: BTreeMap<String, String>,
}

impl Plan {
    /// Every step in execution order.
    pub fn steps(&self) -> Vec<Step> {
        self.create_database
            .iter()
            .chain(&self.statements)
            .map(|s| s.step.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.create_database.is_none() && self.statements.is_empty()
    }
}

/// Why no plan can be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("database {0:?} does not exist; set database.create to create it")]
    NoDatabase(String),
    #[error("cannot generate a password: {0}")]
    Random(#[from] getrandom::Error),
}

/// The hash a login's given verifier is recorded as.
pub fn verifier_hash(verifier: &str) -> String {
    let digest = Sha256::digest(verifier.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a database that does not exist yet will hold once created from `template1`.
fn fresh_local() -> Local {
    Local {
        public_schema_grants: BTreeSet::from(["USAGE".to_owned()]),
        ..Local::default()
    }
}

const TABLE_WRITER: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];
const SEQUENCE_WRITER: [&str; 3] = ["USAGE", "SELECT", "UPDATE"];

/// The plan of a PUT: `recorded` is what the API recorded of the tenant's logins' given
/// verifiers; `api_database` whether the API created (or is to create) the database.
pub fn put(
    r: &Resolved,
    state: &State,
    recorded: &BTreeMap<String, String>,
    api_database: bool,
) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let out = &mut plan.statements;
    let owner = r.group(Group::Owner);
    let groups: Vec<String> = Group::ALL.iter().map(|g| r.group(*g)).collect();

    if !state.database_exists {
        if !r.create_database {
            return Err(PlanError::NoDatabase(r.database.clone()));
        }
        let mut sql = format!("CREATE DATABASE {}", ident(&r.database));
        if let Some(encoding) = &r.encoding {
            sql.push_str(&format!(
                " ENCODING {} TEMPLATE template0",
                literal(encoding)
            ));
        }
        plan.create_database = Some(statement(
            "create database",
            format!("database {}", r.database),
            sql,
        ));
    }

    // The group roles.
    for group in &groups {
        match state.roles.get(group) {
            None => out.push(statement(
                "create role",
                format!("role {group}"),
                format!("CREATE ROLE {} NOLOGIN", ident(group)),
            )),
            Some(role) if role.can_login => out.push(statement(
                "alter role",
                format!("role {group}"),
                format!("ALTER ROLE {} NOLOGIN", ident(group)),
            )),
            Some(_) => {}
        }
    }

    // The logins, their memberships and settings.
    for login in &r.logins {
        plan_login(r, login, state, recorded, &mut plan)?;
    }
    let out = &mut plan.statements;

    // The database: CONNECT for the groups; nothing for PUBLIC on a database of the API.
    let database_grants = if state.database_exists {
        state.database_grants.clone()
    } else {
        BTreeSet::from([
            ("PUBLIC".to_owned(), "CONNECT".to_owned()),
            ("PUBLIC".to_owned(), "TEMPORARY".to_owned()),
        ])
    };
    for group in &groups {
        if !database_grants.contains(&(group.clone(), "CONNECT".to_owned())) {
            out.push(statement(
                "grant",
                format!("database {}", r.database),
                format!(
                    "GRANT CONNECT ON DATABASE {} TO {}",
                    ident(&r.database),
                    ident(group)
                ),
            ));
        }
    }
    if r.revoke_public && api_database && database_grants.iter().any(|(g, _)| g == "PUBLIC") {
        out.push(statement(
            "revoke",
            format!("database {}", r.database),
            format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(&r.database)),
        ));
    }

    // In the database.
    let fresh;
    let local = match &state.local {
        Some(local) => local,
        None => {
            fresh = fresh_local();
            &fresh
        }
    };
    let schema = ident(&r.schema);
    match &local.schema_owner {
        None => out.push(statement(
            "create schema",
            format!("schema {}", r.schema),
            format!("CREATE SCHEMA {schema} AUTHORIZATION {}", ident(&owner)),
        )),
        Some(current) if *current != owner => out.push(statement(
            "alter schema",
            format!("schema {}", r.schema),
            format!("ALTER SCHEMA {schema} OWNER TO {}", ident(&owner)),
        )),
        Some(_) => {}
    }
    let schema_grants = if local.schema_owner.is_some() {
        local.schema_grants.clone()
    } else {
        BTreeSet::new()
    };
    for group in [Group::Writer, Group::Reader] {
        let role = r.group(group);
        if !schema_grants.contains(&(role.clone(), "USAGE".to_owned())) {
            out.push(statement(
                "grant",
                format!("schema {}", r.schema),
                format!("GRANT USAGE ON SCHEMA {schema} TO {}", ident(&role)),
            ));
        }
        if schema_grants.contains(&(role.clone(), "CREATE".to_owned())) {
            out.push(statement(
                "revoke",
                format!("schema {}", r.schema),
                format!("REVOKE CREATE ON SCHEMA {schema} FROM {}", ident(&role)),
            ));
        }
    }
    if r.revoke_public && schema_grants.iter().any(|(g, _)| g == "PUBLIC") {
        out.push(statement(
            "revoke",
            format!("schema {}", r.schema),
            format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC"),
        ));
    }

    // Default privileges: what the owner creates later, the writer writes and the reader
    // reads.
    let defaults = if local.schema_owner.as_deref() == Some(owner.as_str()) {
        local.default_grants.clone()
    } else {
        BTreeSet::new()
    };
    for (kind, objects, group, privileges) in [
        ("r", "TABLES", Group::Writer, &TABLE_WRITER[..]),
        ("r", "TABLES", Group::Reader, &["SELECT"][..]),
        ("S", "SEQUENCES", Group::Writer, &SEQUENCE_WRITER[..]),
        ("S", "SEQUENCES", Group::Reader, &["SELECT"][..]),
    ] {
        let role = r.group(group);
        let missing: Vec<&str> = privileges
            .iter()
            .copied()
            .filter(|p| !defaults.contains(&(kind.to_owned(), role.clone(), (*p).to_owned())))
            .collect();
        if !missing.is_empty() {
            out.push(statement(
                "alter default privileges",
                format!("schema {}", r.schema),
                format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {schema} GRANT {} ON {objects} TO {}",
                    ident(&owner),
                    missing.join(", "),
                    ident(&role)
                ),
            ));
        }
    }

    for extension in &r.extensions {
        if !local.extensions.contains(extension) {
            out.push(statement(
                "create extension",
                format!("extension {extension}"),
                format!(
                    "CREATE EXTENSION IF NOT EXISTS {} SCHEMA {schema}",
                    ident(extension)
                ),
            ));
        }
    }
    if r.revoke_public && local.public_schema_grants.contains("CREATE") {
        out.push(statement(
            "revoke",
            "schema public".into(),
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC".into(),
        ));
    }
    Ok(plan)
}

fn plan_login(
    r: &Resolved,
    login: &LoginSpec,
    state: &State,
    recorded: &BTreeMap<String, String>,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let name = ident(&login.name);
    let object = format!("role {}", login.name);
    let limit = login.connection_limit.unwrap_or(-1);
    let given = login
        .password
        .as_ref()
        .and_then(|p| p.scram_verifier.clone());
    if let Some(verifier) = &given {
        plan.verifiers
            .insert(login.name.clone(), verifier_hash(verifier));
    }
    let group = r.group(login.member_of);
    let owner = r.group(Group::Owner);
    let out = &mut plan.statements;
    match state.roles.get(&login.name) {
        None => {
            let verifier = match &given {
                Some(verifier) => verifier.clone(),
                None => {
                    let password = scram::generate()?;
                    let verifier = scram::verifier(&password)?;
                    plan.credentials.push(crate::plan::Credential {
                        login: login.name.clone(),
                        password,
                    });
                    verifier
                }
            };
            let mut sql = format!("CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}");
            if let Some(until) = login.valid_until {
                sql.push_str(&format!(" VALID UNTIL {}", literal(&timestamp(until))));
            }
            out.push(Statement {
                step: Step {
                    action: "create role".into(),
                    object: object.clone(),
                    sql: format!("{sql} PASSWORD {REDACTED}"),
                },
                execute: format!("{sql} PASSWORD {}", literal(&verifier)),
            });
        }
        Some(role) => {
            if !role.can_login {
                out.push(statement(
                    "alter role",
                    object.clone(),
                    format!("ALTER ROLE {name} LOGIN"),
                ));
            }
            if role.connection_limit != limit {
                out.push(statement(
                    "alter role",
                    object.clone(),
                    format!("ALTER ROLE {name} CONNECTION LIMIT {limit}"),
                ));
            }
            let same_until = match (role.valid_until, login.valid_until) {
                (Some(a), Some(b)) => a.unix_timestamp() == b.unix_timestamp(),
                (None, None) => true,
                _ => false,
            };
            if !same_until {
                let until = login.valid_until.map_or("infinity".to_owned(), timestamp);
                out.push(statement(
                    "alter role",
                    object.clone(),
                    format!("ALTER ROLE {name} VALID UNTIL {}", literal(&until)),
                ));
            }
            if let Some(verifier) = &given
                && recorded.get(&login.name) != Some(&verifier_hash(verifier))
            {
                out.push(Statement {
                    step: Step {
                        action: "alter role".into(),
                        object: object.clone(),
                        sql: format!("ALTER ROLE {name} PASSWORD {REDACTED}"),
                    },
                    execute: format!("ALTER ROLE {name} PASSWORD {}", literal(verifier)),
                });
            }
        }
    }
    let member_of: Vec<String> = state
        .roles
        .get(&login.name)
        .map(|r| r.member_of.clone())
        .unwrap_or_default();
    if !member_of.contains(&group) {
        out.push(statement(
            "grant",
            object.clone(),
            format!("GRANT {} TO {name}", ident(&group)),
        ));
    }
    for other in Group::ALL.iter().map(|g| r.group(*g)) {
        if other != group && member_of.contains(&other) {
            out.push(statement(
                "revoke",
                object.clone(),
                format!("REVOKE {} FROM {name}", ident(&other)),
            ));
        }
    }
    // A login of the owner group acts as the owner role, so what it creates belongs to
    // the owner and the default privileges apply to it.
    let settings: Vec<String> = state
        .roles
        .get(&login.name)
        .map(|r| r.settings.clone())
        .unwrap_or_default();
    let acts_as_owner = settings.iter().any(|s| *s == format!("role={owner}"));
    if login.member_of == Group::Owner && !acts_as_owner {
        out.push(statement(
            "alter role",
            object,
            format!("ALTER ROLE {name} SET role = {}", literal(&owner)),
        ));
    } else if login.member_of != Group::Owner && acts_as_owner {
        out.push(statement(
            "alter role",
            object,
            format!("ALTER ROLE {name} RESET role"),
        ));
    }
    Ok(())
}

/// A timestamp as PostgreSQL reads it (UTC, seconds).
fn timestamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// `DELETE ?mode=revoke`: the logins stop logging in and every grant is taken back; the
/// data and its ownership stay.
pub fn revoke(r: &Resolved, state: &State) -> Vec<Statement> {
    let mut out = Vec::new();
    let groups: Vec<String> = Group::ALL.iter().map(|g| r.group(*g)).collect();
    for login in &r.logins {
        let Some(role) = state.roles.get(&login.name) else {
            continue;
        };
        let name = ident(&login.name);
        let object = format!("role {}", login.name);
        if role.can_login {
            out.push(statement(
                "alter role",
                object.clone(),
                format!("ALTER ROLE {name} NOLOGIN"),
            ));
        }
        for group in role.member_of.iter().filter(|g| groups.contains(g)) {
            out.push(statement(
                "revoke",
                object.clone(),
                format!("REVOKE {} FROM {name}", ident(group)),
            ));
        }
    }
    for group in &groups {
        if state
            .database_grants
            .contains(&(group.clone(), "CONNECT".to_owned()))
        {
            out.push(statement(
                "revoke",
                format!("database {}", r.database),
                format!(
                    "REVOKE CONNECT ON DATABASE {} FROM {}",
                    ident(&r.database),
                    ident(group)
                ),
            ));
        }
    }
    if let Some(local) = &state.local {
        for group in [Group::Writer, Group::Reader] {
            let role = r.group(group);
            if local
                .schema_grants
                .contains(&(role.clone(), "USAGE".to_owned()))
            {
                out.push(statement(
                    "revoke",
                    format!("schema {}", r.schema),
                    format!(
                        "REVOKE USAGE ON SCHEMA {} FROM {}",
                        ident(&r.schema),
                        ident(&role)
                    ),
                ));
            }
        }
    }
    out
}

/// `DELETE ?mode=drop`: everything the tenant's roles own in its database (the schema
/// included) and their privileges, then the roles. (The database itself, when the API
/// created it, is dropped after, as its own step.)
pub fn drop(r: &Resolved, state: &State) -> Vec<Statement> {
    let mut out = Vec::new();
    let existing: Vec<String> = r
        .roles()
        .into_iter()
        .filter(|name| state.roles.contains_key(name))
        .collect();
    if existing.is_empty() {
        if let Some(local) = &state.local
            && local.schema_owner.is_some()
        {
            out.push(statement(
                "drop schema",
                format!("schema {}", r.schema),
                format!("DROP SCHEMA {} CASCADE", ident(&r.schema)),
            ));
        }
        return out;
    }
    // One role at a time, the logins and the grantees of the owner's default privileges
    // before the owner (dropping them together trips over the shared default ACL).
    if state.local.is_some() {
        // The owner's with CASCADE: what depends on the tenant's objects goes with them
        // (an extension created in its schema, a view on its tables).
        let owner = r.group(Group::Owner);
        for name in existing.iter().rev() {
            let cascade = if *name == owner { " CASCADE" } else { "" };
            out.push(statement(
                "drop owned",
                format!("role {name}"),
                format!("DROP OWNED BY {}{cascade}", ident(name)),
            ));
        }
    }
    // Logins before the groups they are members of.
    for name in existing.iter().rev() {
        out.push(statement(
            "drop role",
            format!("role {name}"),
            format!("DROP ROLE {}", ident(name)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::RoleState,
        spec::{PasswordSpec, TenantSpec, resolve},
    };

    fn acme() -> Resolved {
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "logins": [{"name": "acme_app", "memberOf": "owner"},
                       {"name": "acme_ro", "memberOf": "reader", "connectionLimit": 5}],
            "extensions": ["pgcrypto"]
        }))
        .expect("spec");
        resolve("acme", &spec, "postgres").expect("valid")
    }

    fn sql(plan: &[Statement]) -> Vec<&str> {
        plan.iter().map(|s| s.step.sql.as_str()).collect()
    }

    #[test]
    fn an_empty_cluster_gets_everything_and_passwords_only_as_verifiers() {
        let state = State {
            database_exists: true,
            local: Some(fresh_local()),
            ..State::default()
        };
        let plan = put(&acme(), &state, &BTreeMap::new(), false).expect("plan");
        let shown = sql(&plan.statements);
        assert_eq!(shown[0], "CREATE ROLE \"acme_owner\" NOLOGIN");
        assert!(
            shown.contains(
                &"CREATE ROLE \"acme_app\" LOGIN CONNECTION LIMIT -1 PASSWORD '<redacted>'"
            )
        );
        assert!(shown.contains(&"ALTER ROLE \"acme_app\" SET role = 'acme_owner'"));
        assert!(shown.contains(&"CREATE SCHEMA \"acme\" AUTHORIZATION \"acme_owner\""));
        assert!(shown.contains(&"ALTER DEFAULT PRIVILEGES FOR ROLE \"acme_owner\" IN SCHEMA \"acme\" GRANT SELECT ON TABLES TO \"acme_reader\""));
        assert!(shown.contains(&"CREATE EXTENSION IF NOT EXISTS \"pgcrypto\" SCHEMA \"acme\""));
        assert_eq!(plan.credentials.len(), 2);
        for (statement, credential) in plan
            .statements
            .iter()
            .filter(|s| s.step.action == "create role" && s.step.sql.contains("LOGIN "))
            .zip(&plan.credentials)
        {
            assert!(
                statement.execute.contains("PASSWORD 'SCRAM-SHA-256$4096:"),
                "{statement:?}"
            );
            assert!(!statement.execute.contains(&credential.password));
        }
        assert!(!format!("{plan:?}").contains(&plan.credentials[0].password));
    }

    #[test]
    fn what_exists_as_declared_gives_an_empty_plan_and_a_given_verifier_is_set_once() {
        let mut r = acme();
        let verifier = scram::verifier("s3cret").expect("random");
        r.logins[1].password = Some(PasswordSpec {
            generate: false,
            scram_verifier: Some(verifier.clone()),
        });
        let role = |name: &str, login: bool, limit: i32, of: &[&str], settings: &[&str]| {
            (
                name.to_owned(),
                RoleState {
                    name: name.into(),
                    can_login: login,
                    connection_limit: limit,
                    valid_until: None,
                    settings: settings.iter().map(|s| (*s).to_owned()).collect(),
                    member_of: of.iter().map(|s| (*s).to_owned()).collect(),
                },
            )
        };
        let grants = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect::<BTreeSet<_>>()
        };
        let mut defaults = BTreeSet::new();
        for p in TABLE_WRITER {
            defaults.insert(("r".to_owned(), "acme_writer".to_owned(), p.to_owned()));
        }
        for p in SEQUENCE_WRITER {
            defaults.insert(("S".to_owned(), "acme_writer".to_owned(), p.to_owned()));
        }
        defaults.insert((
            "r".to_owned(),
            "acme_reader".to_owned(),
            "SELECT".to_owned(),
        ));
        defaults.insert((
            "S".to_owned(),
            "acme_reader".to_owned(),
            "SELECT".to_owned(),
        ));
        let state = State {
            roles: BTreeMap::from([
                role("acme_owner", false, -1, &[], &[]),
                role("acme_writer", false, -1, &[], &[]),
                role("acme_reader", false, -1, &[], &[]),
                role("acme_app", true, -1, &["acme_owner"], &["role=acme_owner"]),
                role("acme_ro", true, 5, &["acme_reader"], &[]),
            ]),
            database_exists: true,
            database_grants: grants(&[
                ("acme_owner", "CONNECT"),
                ("acme_writer", "CONNECT"),
                ("acme_reader", "CONNECT"),
                ("PUBLIC", "CONNECT"),
            ]),
            local: Some(Local {
                schema_owner: Some("acme_owner".into()),
                schema_grants: grants(&[
                    ("acme_owner", "USAGE"),
                    ("acme_owner", "CREATE"),
                    ("acme_writer", "USAGE"),
                    ("acme_reader", "USAGE"),
                ]),
                default_grants: defaults,
                extensions: BTreeSet::from(["pgcrypto".to_owned(), "plpgsql".to_owned()]),
                public_schema_grants: BTreeSet::from(["USAGE".to_owned()]),
            }),
        };
        let recorded = BTreeMap::from([("acme_ro".to_owned(), verifier_hash(&verifier))]);
        let plan = put(&r, &state, &recorded, false).expect("plan");
        assert!(plan.is_empty(), "{:?}", plan.steps());
        // A new verifier is set, shown redacted.
        let plan = put(&r, &state, &BTreeMap::new(), false).expect("plan");
        assert_eq!(
            sql(&plan.statements),
            ["ALTER ROLE \"acme_ro\" PASSWORD '<redacted>'"]
        );
        // Drift: a grant taken away by hand.
        let mut drifted = state.clone();
        if let Some(local) = drifted.local.as_mut() {
            local
                .schema_grants
                .remove(&("acme_reader".to_owned(), "USAGE".to_owned()));
        }
        let plan = put(&r, &drifted, &recorded, false).expect("plan");
        assert_eq!(
            sql(&plan.statements),
            ["GRANT USAGE ON SCHEMA \"acme\" TO \"acme_reader\""]
        );
        // Revoke and drop.
        let revoked = sql(&revoke(&r, &state)).join("\n");
        assert!(
            revoked.contains("ALTER ROLE \"acme_app\" NOLOGIN"),
            "{revoked}"
        );
        assert!(
            revoked.contains("REVOKE USAGE ON SCHEMA \"acme\" FROM \"acme_reader\""),
            "{revoked}"
        );
        let dropping = drop(&r, &state);
        let dropped = sql(&dropping);
        assert_eq!(dropped[0], "DROP OWNED BY \"acme_ro\"");
        assert_eq!(dropped[4], "DROP OWNED BY \"acme_owner\" CASCADE");
        assert_eq!(dropped.last().copied(), Some("DROP ROLE \"acme_owner\""));
    }

    #[test]
    fn a_missing_database_is_created_only_when_asked() {
        let mut r = acme();
        let refused = put(&r, &State::default(), &BTreeMap::new(), false).expect_err("no database");
        assert!(refused.to_string().contains("database.create"), "{refused}");
        r.create_database = true;
        r.encoding = Some("UTF8".into());
        let plan = put(&r, &State::default(), &BTreeMap::new(), true).expect("plan");
        assert_eq!(
            plan.create_database.as_ref().map(|s| s.step.sql.as_str()),
            Some("CREATE DATABASE \"postgres\" ENCODING 'UTF8' TEMPLATE template0")
        );
        assert!(sql(&plan.statements).contains(&"REVOKE ALL ON DATABASE \"postgres\" FROM PUBLIC"));
    }
}
