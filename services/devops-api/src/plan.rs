//! The plan: the exact statements that bring what exists to what is declared, computed
//! from the catalogs. Nothing to do gives an empty plan; the statements a dry run shows
//! are the ones a real run executes (a password shows as `'<redacted>'`).
//!
//! Convergence is authoritative over what the tenant owns: its roles' attributes,
//! settings and memberships (both ways), its database's and schema's ACLs, the ACLs of
//! the tables, sequences and functions its roles own in its schema, and the default
//! privileges there. Whatever is not declared is taken back; whatever is missing is
//! granted. Nothing outside the tenant's objects appears in a plan, but the revocation of
//! what an outsider was given on them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::{
    catalog::{Entry, Local, PUBLIC, RoleState, State},
    names::{ident, literal},
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

/// Where the password of a statement comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// Generated when the plan runs (never for a dry run), for this login.
    Generate(String),
    /// A verifier the client gave.
    Given(String),
}

/// A step, and the password its statement carries in place of `'<redacted>'`.
#[derive(Clone, PartialEq, Eq)]
pub struct Statement {
    pub step: Step,
    pub password: Option<Password>,
    /// Whether it changes a row other tenants' statements change too (the database's
    /// ACL, the `public` schema, an extension): such plans run under the database's lock.
    pub shared: bool,
    /// Whether it takes back what someone outside the tenant's roles holds on the
    /// tenant's objects (revoke does that too).
    pub stranger: bool,
}

impl std::fmt::Debug for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Statement").field(&self.step.sql).finish()
    }
}

impl Statement {
    /// The statement to execute: a verifier in place of the redacted password
    /// (`verifiers`: the generated ones, by login).
    pub fn sql(&self, verifiers: &BTreeMap<String, String>) -> Option<String> {
        match &self.password {
            None => Some(self.step.sql.clone()),
            Some(Password::Given(verifier)) => {
                Some(self.step.sql.replacen(REDACTED, &literal(verifier), 1))
            }
            Some(Password::Generate(login)) => verifiers
                .get(login)
                .map(|v| self.step.sql.replacen(REDACTED, &literal(v), 1)),
        }
    }
}

fn statement(action: &str, object: impl Into<String>, sql: String) -> Statement {
    Statement {
        step: Step {
            action: action.into(),
            object: object.into(),
            sql,
        },
        password: None,
        shared: false,
        stranger: false,
    }
}

fn shared(action: &str, object: impl Into<String>, sql: String) -> Statement {
    Statement {
        shared: true,
        ..statement(action, object, sql)
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

    /// The logins whose password is generated when the plan runs.
    pub fn generated(&self) -> Vec<String> {
        self.statements
            .iter()
            .filter_map(|s| match &s.password {
                Some(Password::Generate(login)) => Some(login.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether it changes rows shared with other tenants of the database.
    pub fn shared(&self) -> bool {
        self.statements.iter().any(|s| s.shared)
    }
}

/// Why no plan can be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("database {0:?} does not exist; set database.create to create it")]
    NoDatabase(String),
    #[error(
        "extension {0} is installed in another schema of this database (a database holds one \
         copy of an extension, in one schema): it cannot be given to this tenant"
    )]
    ExtensionElsewhere(String),
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

/// What the plan needs besides the spec and the catalogs.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// What the API recorded of the tenant's logins' given verifiers (their hashes).
    pub recorded: BTreeMap<String, String>,
    /// Logins the tenant created that its spec no longer declares: they stay, unable to
    /// log in and in no group, until the tenant is dropped.
    pub removed_logins: Vec<String>,
    /// Whether the tenant created (or is to create) its database: then the database's
    /// ACL is the tenant's to converge.
    pub owns_database: bool,
    /// Every role any tenant owns (OIDs): on a database a tenant created, other tenants'
    /// grants are not strangers'.
    pub tenant_roles: BTreeSet<u32>,
}

/// The roles of a tenant, by what they are.
struct Roles<'a> {
    owner: String,
    writer: String,
    reader: String,
    groups: [String; 3],
    logins: Vec<&'a LoginSpec>,
    removed: &'a [String],
}

impl Roles<'_> {
    fn is_tenant(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g == name)
            || self.logins.iter().any(|l| l.name == name)
            || self.removed.iter().any(|l| l == name)
    }
}

/// Whether `grantee` holds `privilege` in `acl`.
fn holds(acl: &[Entry], grantee: &str, privilege: &str) -> bool {
    acl.iter()
        .any(|e| e.grantee == grantee && e.privilege == privilege)
}

fn grantee(name: &str) -> String {
    if name == PUBLIC {
        PUBLIC.to_owned()
    } else {
        ident(name)
    }
}

/// One object's ACL, converged: each wanted grantee holds exactly its privileges, without
/// grant option; every other entry the owner granted goes, unless `keep` says it is left
/// alone. Entries granted by someone else than the owner hang on a grant option the owner
/// gave: they go with it (`CASCADE`), which is how PostgreSQL lets them be taken back
/// (before 16, `GRANTED BY` another role is refused).
struct Acl<'a> {
    /// `TABLE "s"."t"`, `SCHEMA "s"`, `DATABASE "d"`: what GRANT and REVOKE name.
    target: String,
    /// The plan's object: `table s.t`, ...
    object: String,
    owner: &'a str,
    wanted: Vec<(&'a str, &'a [&'a str])>,
    /// Whether the statements change a row other tenants change too.
    shared: bool,
}

impl Acl<'_> {
    fn converge(&self, acl: &[Entry], keep: impl Fn(&Entry) -> bool, out: &mut Vec<Statement>) {
        let make = |sql: String, stranger: bool| Statement {
            stranger,
            shared: self.shared,
            ..statement(
                if sql.starts_with("GRANT") {
                    "grant"
                } else {
                    "revoke"
                },
                self.object.clone(),
                sql,
            )
        };
        for (role, privileges) in &self.wanted {
            let missing: Vec<&str> = privileges
                .iter()
                .copied()
                .filter(|p| !holds(acl, role, p))
                .collect();
            if !missing.is_empty() {
                out.push(make(
                    format!(
                        "GRANT {} ON {} TO {}",
                        missing.join(", "),
                        self.target,
                        ident(role)
                    ),
                    false,
                ));
            }
        }
        // grantee -> (everything, the privileges it should not hold, the grant options)
        let mut extra: BTreeMap<&str, (bool, Vec<&str>, Vec<&str>)> = BTreeMap::new();
        for e in acl {
            if e.grantee == self.owner || e.grantor != self.owner || keep(e) {
                continue;
            }
            let slot = extra.entry(e.grantee.as_str()).or_default();
            match self.wanted.iter().find(|(role, _)| *role == e.grantee) {
                Some((_, privileges)) if privileges.contains(&e.privilege.as_str()) => {
                    if e.grantable {
                        slot.2.push(&e.privilege);
                    }
                }
                Some(_) => slot.1.push(&e.privilege),
                None => slot.0 = true,
            }
        }
        for (who, (all, privileges, options)) in extra {
            let stranger = !self.wanted.iter().any(|(role, _)| *role == who);
            // PUBLIC never holds a grant option: nothing hangs on its entries.
            let cascade = if who == PUBLIC { "" } else { " CASCADE" };
            if all {
                out.push(make(
                    format!(
                        "REVOKE ALL ON {} FROM {}{cascade}",
                        self.target,
                        grantee(who)
                    ),
                    stranger,
                ));
                continue;
            }
            if !privileges.is_empty() {
                out.push(make(
                    format!(
                        "REVOKE {} ON {} FROM {}{cascade}",
                        privileges.join(", "),
                        self.target,
                        grantee(who)
                    ),
                    stranger,
                ));
            }
            if !options.is_empty() {
                // What the grantee passed on goes with its grant option.
                out.push(make(
                    format!(
                        "REVOKE GRANT OPTION FOR {} ON {} FROM {} CASCADE",
                        options.join(", "),
                        self.target,
                        grantee(who)
                    ),
                    true,
                ));
            }
        }
    }
}

/// The plan of a PUT.
pub fn put(r: &Resolved, state: &State, context: &Context) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let roles = Roles {
        owner: r.group(Group::Owner),
        writer: r.group(Group::Writer),
        reader: r.group(Group::Reader),
        groups: Group::ALL.map(|g| r.group(g)),
        logins: r.logins.iter().collect(),
        removed: &context.removed_logins,
    };

    if !state.database_exists() {
        if !r.create_database {
            return Err(PlanError::NoDatabase(r.database.clone()));
        }
        // Always from template0: template1 is open to every login (PUBLIC may connect),
        // so a tenant could plant what every database created later would copy, or keep
        // a session there and make every CREATE DATABASE fail.
        let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", ident(&r.database));
        if let Some(encoding) = &r.encoding {
            sql.push_str(&format!(" ENCODING {}", literal(encoding)));
        }
        plan.create_database = Some(statement(
            "create database",
            format!("database {}", r.database),
            sql,
        ));
    }

    // The group roles: NOLOGIN, no attribute but INHERIT.
    for group in &roles.groups {
        match state.roles.get(group) {
            None => plan.statements.push(statement(
                "create role",
                format!("role {group}"),
                format!("CREATE ROLE {} NOLOGIN", ident(group)),
            )),
            Some(role) => {
                if let Some(s) = alter_attributes(role, false, -1, None) {
                    plan.statements.push(s);
                }
            }
        }
    }
    for login in &r.logins {
        plan_login(login, state, context, &mut plan);
    }
    for login in &context.removed_logins {
        if let Some(role) = state.roles.get(login)
            && let Some(s) = alter_attributes(role, false, role.connection_limit, role.valid_until)
        {
            plan.statements.push(s);
        }
    }
    memberships(r, &roles, state, &mut plan.statements);
    settings(&roles, state, &mut plan.statements);
    database_acl(r, &roles, state, context, &mut plan.statements);

    // In the database.
    let fresh;
    let local = match &state.local {
        Some(local) => local,
        None => {
            fresh = fresh_local();
            &fresh
        }
    };
    schema(r, &roles, local, &mut plan.statements);
    let schema = ident(&r.schema);
    for extension in &r.extensions {
        if let Some(elsewhere) = local.extensions.get(extension)
            && *elsewhere != r.schema
        {
            return Err(PlanError::ExtensionElsewhere(extension.clone()));
        }
        if !local.extensions.contains_key(extension) {
            plan.statements.push(shared(
                "create extension",
                format!("extension {extension}"),
                format!(
                    "CREATE EXTENSION IF NOT EXISTS {} SCHEMA {schema}",
                    ident(extension)
                ),
            ));
        }
    }
    // `public` belongs to the database: only a tenant that created it decides for it.
    if r.revoke_public && context.owns_database && local.public_schema_grants.contains("CREATE") {
        plan.statements.push(shared(
            "revoke",
            "schema public",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC".into(),
        ));
    }
    plan.verifiers = r
        .logins
        .iter()
        .filter_map(|l| {
            l.given_verifier()
                .map(|v| (l.name.clone(), verifier_hash(v)))
        })
        .collect();
    // A recorded (redacted) verifier keeps its recorded hash.
    for login in &r.logins {
        if login.client_password()
            && login.given_verifier().is_none()
            && let Some(hash) = context.recorded.get(&login.name)
        {
            plan.verifiers.insert(login.name.clone(), hash.clone());
        }
    }
    Ok(plan)
}

/// `ALTER ROLE` with the attributes that differ from a plain role of the tenant: no
/// SUPERUSER, CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS, INHERIT, and the given
/// LOGIN, connection limit and expiry.
fn alter_attributes(
    role: &RoleState,
    login: bool,
    limit: i32,
    until: Option<time::OffsetDateTime>,
) -> Option<Statement> {
    let mut changes: Vec<String> = Vec::new();
    for (wrong, fix) in [
        (role.superuser, "NOSUPERUSER"),
        (role.create_db, "NOCREATEDB"),
        (role.create_role, "NOCREATEROLE"),
        (role.replication, "NOREPLICATION"),
        (role.bypass_rls, "NOBYPASSRLS"),
        (!role.inherit, "INHERIT"),
    ] {
        if wrong {
            changes.push(fix.into());
        }
    }
    if role.can_login != login {
        changes.push(if login { "LOGIN" } else { "NOLOGIN" }.into());
    }
    if role.connection_limit != limit {
        changes.push(format!("CONNECTION LIMIT {limit}"));
    }
    let same_until = match (role.valid_until, until) {
        (Some(a), Some(b)) => a.unix_timestamp() == b.unix_timestamp(),
        (None, None) => true,
        _ => false,
    };
    if !same_until {
        let until = until.map_or("infinity".to_owned(), timestamp);
        changes.push(format!("VALID UNTIL {}", literal(&until)));
    }
    (!changes.is_empty()).then(|| {
        statement(
            "alter role",
            format!("role {}", role.name),
            format!("ALTER ROLE {} {}", ident(&role.name), changes.join(" ")),
        )
    })
}

fn plan_login(login: &LoginSpec, state: &State, context: &Context, plan: &mut Plan) {
    let name = ident(&login.name);
    let object = format!("role {}", login.name);
    let limit = login.connection_limit.unwrap_or(-1);
    match state.roles.get(&login.name) {
        None => {
            let mut sql = format!("CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}");
            if let Some(until) = login.valid_until {
                sql.push_str(&format!(" VALID UNTIL {}", literal(&timestamp(until))));
            }
            let password = match login.given_verifier() {
                Some(verifier) => Password::Given(verifier.to_owned()),
                None => Password::Generate(login.name.clone()),
            };
            plan.statements.push(Statement {
                password: Some(password),
                ..statement("create role", object, format!("{sql} PASSWORD {REDACTED}"))
            });
        }
        Some(role) => {
            if let Some(s) = alter_attributes(role, true, limit, login.valid_until) {
                plan.statements.push(s);
            }
            if let Some(verifier) = login.given_verifier()
                && context.recorded.get(&login.name) != Some(&verifier_hash(verifier))
            {
                plan.statements.push(Statement {
                    password: Some(Password::Given(verifier.to_owned())),
                    ..statement(
                        "alter role",
                        object,
                        format!("ALTER ROLE {name} PASSWORD {REDACTED}"),
                    )
                });
            }
        }
    }
}

/// Each of the tenant's roles is a member of exactly what it should be (a login of its
/// group, a group or a removed login of nothing), and the tenant's groups have no member
/// but the tenant's logins (and the admin, which PostgreSQL 16 makes a member of the
/// roles it creates).
fn memberships(r: &Resolved, roles: &Roles<'_>, state: &State, out: &mut Vec<Statement>) {
    let by = |grantor: &str| {
        if state.server.version >= 160_000 {
            format!(" GRANTED BY {}", ident(grantor))
        } else {
            String::new()
        }
    };
    let mut members: Vec<(&str, Option<String>)> =
        roles.groups.iter().map(|g| (g.as_str(), None)).collect();
    members.extend(
        roles
            .logins
            .iter()
            .map(|l| (l.name.as_str(), Some(r.group(l.member_of)))),
    );
    members.extend(roles.removed.iter().map(|l| (l.as_str(), None)));
    for (member, wanted) in members {
        let exists = state.roles.contains_key(member);
        let held: Vec<&crate::catalog::Membership> = state
            .memberships
            .iter()
            .filter(|m| m.member == member)
            .collect();
        for m in &held {
            if Some(&m.role) != wanted.as_ref() {
                out.push(statement(
                    "revoke",
                    format!("role {member}"),
                    format!(
                        "REVOKE {} FROM {}{}",
                        ident(&m.role),
                        ident(member),
                        by(&m.grantor)
                    ),
                ));
            }
        }
        if let Some(group) = wanted
            && !held.iter().any(|m| m.role == group)
            && (exists || roles.logins.iter().any(|l| l.name == member))
        {
            out.push(statement(
                "grant",
                format!("role {member}"),
                format!("GRANT {} TO {}", ident(&group), ident(member)),
            ));
        }
    }
    if state.server.grants_itself() {
        // Every role of the tenant, as it is created (or found without it): the admin
        // acts for it.
        let admin = &state.server.admin;
        let all = roles
            .groups
            .iter()
            .map(String::as_str)
            .chain(roles.logins.iter().map(|l| l.name.as_str()))
            .chain(roles.removed.iter().map(String::as_str));
        for role in all {
            if !state
                .memberships
                .iter()
                .any(|m| m.role == role && m.member == *admin)
            {
                out.push(statement(
                    "grant",
                    format!("role {role}"),
                    format!("GRANT {} TO {}", ident(role), ident(admin)),
                ));
            }
        }
    }
    for m in &state.memberships {
        if roles.groups.contains(&m.role)
            && !roles.is_tenant(&m.member)
            && m.member != state.server.admin
        {
            out.push(Statement {
                stranger: true,
                ..statement(
                    "revoke",
                    format!("role {}", m.role),
                    format!(
                        "REVOKE {} FROM {}{}",
                        ident(&m.role),
                        ident(&m.member),
                        by(&m.grantor)
                    ),
                )
            });
        }
    }
}

/// No setting on the tenant's roles, in any database, but `role = <tenant>_owner` on the
/// owner group's logins (so what they create belongs to the owner role and its default
/// privileges apply).
fn settings(roles: &Roles<'_>, state: &State, out: &mut Vec<Statement>) {
    let wanted = format!("role={}", roles.owner);
    let mut all: Vec<(&str, bool)> = roles.groups.iter().map(|g| (g.as_str(), false)).collect();
    all.extend(
        roles
            .logins
            .iter()
            .map(|l| (l.name.as_str(), l.member_of == Group::Owner)),
    );
    all.extend(roles.removed.iter().map(|l| (l.as_str(), false)));
    for (name, acts_as_owner) in all {
        let settings = state
            .roles
            .get(name)
            .map(|r| r.settings.as_slice())
            .unwrap_or_default();
        let mut has_wanted = false;
        for setting in settings {
            let global = setting.database.is_none();
            if acts_as_owner && global && setting.setting == wanted {
                has_wanted = true;
                continue;
            }
            if acts_as_owner && global && setting.name() == "role" {
                // Replaced by the SET below.
                continue;
            }
            let sql = match &setting.database {
                None => format!("ALTER ROLE {} RESET {}", ident(name), ident(setting.name())),
                Some(db) => format!(
                    "ALTER ROLE {} IN DATABASE {} RESET {}",
                    ident(name),
                    ident(db),
                    ident(setting.name())
                ),
            };
            out.push(statement("alter role", format!("role {name}"), sql));
        }
        if acts_as_owner && !has_wanted {
            out.push(statement(
                "alter role",
                format!("role {name}"),
                format!(
                    "ALTER ROLE {} SET role = {}",
                    ident(name),
                    literal(&roles.owner)
                ),
            ));
        }
    }
}

/// CONNECT on the database for each group, nothing more for the tenant's roles; on a
/// database the tenant created, nothing for PUBLIC (with `revokePublic`) or strangers
/// (other tenants living there keep theirs).
fn database_acl(
    r: &Resolved,
    roles: &Roles<'_>,
    state: &State,
    context: &Context,
    out: &mut Vec<Statement>,
) {
    let (acl, owner) = match &state.database {
        Some(d) => (d.acl.clone(), d.owner.clone()),
        // What CREATE DATABASE will make: PUBLIC may connect and create temporary tables.
        None => (
            ["CONNECT", "TEMPORARY"]
                .map(|p| Entry {
                    grantee: PUBLIC.into(),
                    grantee_oid: 0,
                    privilege: p.into(),
                    grantor: state.server.admin.clone(),
                    grantable: false,
                })
                .to_vec(),
            state.server.admin.clone(),
        ),
    };
    let connect: &[&str] = &["CONNECT"];
    let converge = Acl {
        target: format!("DATABASE {}", ident(&r.database)),
        object: format!("database {}", r.database),
        owner: &owner,
        wanted: roles.groups.iter().map(|g| (g.as_str(), connect)).collect(),
        shared: true,
    };
    converge.converge(
        &acl,
        |e| {
            if roles.is_tenant(&e.grantee) {
                return false;
            }
            // A database the tenant did not create: only its own roles' entries are its
            // business. One it created: strangers go, but not the admin, other tenants
            // living there, nor PUBLIC without revokePublic.
            !context.owns_database
                || e.grantee == state.server.admin
                || (e.grantee == PUBLIC && !r.revoke_public)
                || context.tenant_roles.contains(&e.grantee_oid)
        },
        out,
    );
}

/// The schema, owned by the owner group, USAGE for the writer and the reader and nothing
/// for anyone else; the default privileges of the owner there; the ACLs of what the
/// tenant's roles own in it.
fn schema(r: &Resolved, roles: &Roles<'_>, local: &Local, out: &mut Vec<Statement>) {
    let schema = ident(&r.schema);
    let object = format!("schema {}", r.schema);
    let owner = &roles.owner;
    let ours = match &local.schema_owner {
        None => {
            out.push(statement(
                "create schema",
                object.clone(),
                format!("CREATE SCHEMA {schema} AUTHORIZATION {}", ident(owner)),
            ));
            false
        }
        Some(current) if current != owner => {
            out.push(statement(
                "alter schema",
                object.clone(),
                format!("ALTER SCHEMA {schema} OWNER TO {}", ident(owner)),
            ));
            true
        }
        Some(_) => true,
    };
    let current_owner = local.schema_owner.clone().unwrap_or_else(|| owner.clone());
    let acl: &[Entry] = if ours { &local.schema_acl } else { &[] };
    let usage: &[&str] = &["USAGE"];
    let converge = Acl {
        target: format!("SCHEMA {schema}"),
        object,
        owner: &current_owner,
        wanted: vec![
            (roles.writer.as_str(), usage),
            (roles.reader.as_str(), usage),
        ],
        shared: false,
    };
    converge.converge(
        acl,
        |e| e.grantee == *owner || (e.grantee == PUBLIC && !r.revoke_public),
        out,
    );
    default_privileges(r, roles, if ours { Some(local) } else { None }, out);
    if ours {
        objects(roles, local, out);
    }
}

fn default_privileges(
    r: &Resolved,
    roles: &Roles<'_>,
    local: Option<&Local>,
    out: &mut Vec<Statement>,
) {
    let schema = ident(&r.schema);
    let object = format!("schema {}", r.schema);
    let owner = &roles.owner;
    let existing = local.map(|l| l.default_acl.clone()).unwrap_or_default();
    let wanted: [(&str, &str, &String, &[&str]); 4] = [
        ("r", "TABLES", &roles.writer, &TABLE_WRITER),
        ("r", "TABLES", &roles.reader, &["SELECT"]),
        ("S", "SEQUENCES", &roles.writer, &SEQUENCE_WRITER),
        ("S", "SEQUENCES", &roles.reader, &["SELECT"]),
    ];
    for (kind, objects, role, privileges) in wanted {
        let missing: Vec<&str> = privileges
            .iter()
            .copied()
            .filter(|p| {
                !existing.iter().any(|e| {
                    e.role == *owner
                        && e.object_type == kind
                        && e.grantee == *role
                        && e.privilege == *p
                })
            })
            .collect();
        if !missing.is_empty() {
            out.push(statement(
                "alter default privileges",
                object.clone(),
                format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {schema} GRANT {} ON {objects} TO {}",
                    ident(owner),
                    missing.join(", "),
                    ident(role)
                ),
            ));
        }
    }
    // What is there and not wanted: extra privileges of the writer and the reader, and
    // every other entry (another grantee, another role's defaults, other object types).
    let mut extra: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    let mut options: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in &existing {
        let wanted_here = wanted.iter().any(|(kind, _, role, privileges)| {
            e.role == *owner
                && e.object_type == *kind
                && e.grantee == **role
                && privileges.contains(&e.privilege.as_str())
        });
        if !wanted_here {
            extra
                .entry((e.role.clone(), e.object_type.clone(), e.grantee.clone()))
                .or_default()
                .push(e.privilege.clone());
        } else if e.grantable {
            options
                .entry((e.object_type.clone(), e.grantee.clone()))
                .or_default()
                .push(e.privilege.clone());
        }
    }
    for ((kind, who), privileges) in options {
        let objects = if kind == "r" { "TABLES" } else { "SEQUENCES" };
        out.push(Statement {
            stranger: true,
            ..statement(
                "alter default privileges",
                object.clone(),
                format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {schema} REVOKE GRANT OPTION FOR {} ON {objects} FROM {}",
                    ident(owner),
                    privileges.join(", "),
                    ident(&who)
                ),
            )
        });
    }
    for ((role, kind, who), privileges) in extra {
        let objects = match kind.as_str() {
            "r" => "TABLES",
            "S" => "SEQUENCES",
            "f" => "FUNCTIONS",
            "T" => "TYPES",
            "n" => "SCHEMAS",
            _ => continue,
        };
        let tenant_grantee = who == roles.writer || who == roles.reader;
        let what = if role == *owner && tenant_grantee {
            privileges.join(", ")
        } else {
            "ALL".to_owned()
        };
        out.push(Statement {
            stranger: !tenant_grantee,
            ..statement(
                "alter default privileges",
                object.clone(),
                format!(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {schema} REVOKE {what} ON {objects} FROM {}",
                    ident(&role),
                    grantee(&who)
                ),
            )
        });
    }
}

/// The tables, sequences, routines and types the tenant's roles own in the schema: the
/// writer and the reader hold exactly their privileges, nobody else holds any (PUBLIC
/// keeps the EXECUTE on routines and the USAGE on types PostgreSQL gives it by default;
/// the tenant's other roles keep what the tenant gave them).
fn objects(roles: &Roles<'_>, local: &Local, out: &mut Vec<Statement>) {
    let reads: &[&str] = &["SELECT"];
    for item in &local.objects {
        if !roles.is_tenant(&item.owner) {
            continue;
        }
        let (keyword, wanted): (&str, Vec<(&str, &[&str])>) = match item.kind {
            "TABLE" => (
                "TABLE",
                vec![
                    (roles.writer.as_str(), &TABLE_WRITER),
                    (roles.reader.as_str(), reads),
                ],
            ),
            "SEQUENCE" => (
                "SEQUENCE",
                vec![
                    (roles.writer.as_str(), &SEQUENCE_WRITER),
                    (roles.reader.as_str(), reads),
                ],
            ),
            "TYPE" => ("TYPE", Vec::new()),
            "PROCEDURE" => ("PROCEDURE", Vec::new()),
            _ => ("FUNCTION", Vec::new()),
        };
        let public_by_default = matches!(keyword, "FUNCTION" | "PROCEDURE" | "TYPE");
        let converge = Acl {
            target: format!("{keyword} {}", item.target),
            object: format!("{} {}", item.kind.to_lowercase(), item.target),
            owner: &item.owner,
            wanted,
            shared: false,
        };
        converge.converge(
            &item.acl,
            |e| {
                (e.grantee == PUBLIC && public_by_default)
                    || (roles.is_tenant(&e.grantee)
                        && e.grantee != roles.writer
                        && e.grantee != roles.reader)
            },
            out,
        );
    }
}

/// A timestamp as PostgreSQL reads it (UTC, seconds).
fn timestamp(at: time::OffsetDateTime) -> String {
    // Specs are checked to stay within years 1..=9999 in UTC; a recorded one that does not
    // is written as it was given rather than panic.
    let at = at.checked_to_offset(time::UtcOffset::UTC).unwrap_or(at);
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

/// `DELETE ?mode=revoke`: the logins (`logins`: every one the tenant created) stop logging
/// in and every grant is taken back; the data and its ownership stay.
pub fn revoke(r: &Resolved, logins: &[String], state: &State) -> Vec<Statement> {
    let mut out = Vec::new();
    let groups: Vec<String> = Group::ALL.iter().map(|g| r.group(*g)).collect();
    for login in logins {
        let Some(role) = state.roles.get(login) else {
            continue;
        };
        let name = ident(login);
        let object = format!("role {login}");
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
    if let Some(database) = &state.database {
        for group in &groups {
            if holds(&database.acl, group, "CONNECT") {
                out.push(shared(
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
    }
    if let Some(local) = &state.local {
        for group in [Group::Writer, Group::Reader] {
            let role = r.group(group);
            if holds(&local.schema_acl, &role, "USAGE") {
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

/// What a revoke takes back besides the tenant's own grants: whatever someone outside the
/// tenant's roles was given on its objects (the same statements a PUT would run for them).
pub fn strangers(r: &Resolved, state: &State, context: &Context) -> Vec<Statement> {
    match put(r, state, context) {
        Ok(plan) => plan.statements.into_iter().filter(|s| s.stranger).collect(),
        Err(_) => Vec::new(),
    }
}

/// `DELETE ?mode=drop`: everything the tenant's roles (`roles`: those it owns that exist,
/// groups first, then logins) own in its database (the schema included) and their
/// privileges, then the roles. `schema`: the tenant's own schema, when it exists and no
/// role is left to drop it with. (The database itself, when the tenant created it, is
/// dropped after, as its own step.)
pub fn drop(
    roles: &[String],
    owner: &str,
    schema: Option<&str>,
    in_database: bool,
) -> Vec<Statement> {
    let mut out = Vec::new();
    if roles.is_empty() {
        if let Some(schema) = schema {
            out.push(statement(
                "drop schema",
                format!("schema {schema}"),
                format!("DROP SCHEMA {} CASCADE", ident(schema)),
            ));
        }
        return out;
    }
    // One role at a time, the logins and the grantees of the owner's default privileges
    // before the owner (dropping them together trips over the shared default ACL). The
    // owner's with CASCADE: what depends on the tenant's objects goes with them (an
    // extension created in its schema, a view on its tables).
    if in_database {
        for name in roles.iter().rev() {
            let cascade = if name == owner { " CASCADE" } else { "" };
            out.push(statement(
                "drop owned",
                format!("role {name}"),
                format!("DROP OWNED BY {}{cascade}", ident(name)),
            ));
        }
    }
    for name in roles.iter().rev() {
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
        catalog::{DatabaseState, Membership, Server},
        spec::{Limits, PasswordSpec, TenantSpec, resolve},
    };

    fn acme() -> Resolved {
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "logins": [{"name": "acme_app", "memberOf": "owner"},
                       {"name": "acme_ro", "memberOf": "reader", "connectionLimit": 5}],
            "extensions": ["pgcrypto"]
        }))
        .expect("spec");
        resolve("acme", &spec, "postgres", &Limits::default(), false).expect("valid")
    }

    fn sql(plan: &[Statement]) -> Vec<&str> {
        plan.iter().map(|s| s.step.sql.as_str()).collect()
    }

    fn server() -> Server {
        Server {
            admin: "postgres".into(),
            version: 150_000,
            superuser: true,
        }
    }

    fn database(acl: &[(&str, &str)]) -> DatabaseState {
        DatabaseState {
            oid: 5,
            owner: "postgres".into(),
            is_template: false,
            allow_connections: true,
            encoding: "UTF8".into(),
            acl: acl
                .iter()
                .map(|(g, p)| Entry {
                    grantee: (*g).into(),
                    grantee_oid: 1,
                    privilege: (*p).into(),
                    grantor: "postgres".into(),
                    grantable: false,
                })
                .collect(),
        }
    }

    #[test]
    fn an_empty_cluster_gets_everything_and_passwords_only_as_verifiers() {
        let state = State {
            server: server(),
            database: Some(database(&[])),
            local: Some(fresh_local()),
            ..State::default()
        };
        let plan = put(&acme(), &state, &Context::default()).expect("plan");
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
        assert_eq!(plan.generated(), ["acme_app", "acme_ro"]);
        let verifiers = BTreeMap::from([("acme_app".to_owned(), "SCRAM-x".to_owned())]);
        let create = plan
            .statements
            .iter()
            .find(|s| s.step.sql.starts_with("CREATE ROLE \"acme_app\""))
            .expect("create");
        assert!(
            create
                .sql(&verifiers)
                .is_some_and(|s| s.ends_with("PASSWORD 'SCRAM-x'"))
        );
        assert!(plan.shared(), "CONNECT on the database is a shared row");
    }

    #[test]
    fn hand_made_privileges_and_memberships_are_taken_back() {
        let r = acme();
        let role = |name: &str, login: bool, limit: i32| RoleState {
            name: name.into(),
            oid: 10,
            superuser: false,
            create_role: false,
            create_db: false,
            bypass_rls: false,
            replication: false,
            inherit: true,
            can_login: login,
            connection_limit: limit,
            valid_until: None,
            settings: Vec::new(),
            member_of: Vec::new(),
        };
        let mut app = role("acme_app", true, -1);
        app.superuser = true;
        app.settings = vec![
            crate::catalog::Setting {
                database: None,
                setting: "role=acme_owner".into(),
            },
            crate::catalog::Setting {
                database: None,
                setting: "search_path=evil".into(),
            },
        ];
        let state = State {
            server: server(),
            roles: BTreeMap::from([
                ("acme_owner".into(), role("acme_owner", false, -1)),
                ("acme_writer".into(), role("acme_writer", true, -1)),
                ("acme_reader".into(), role("acme_reader", false, -1)),
                ("acme_app".into(), app),
                ("acme_ro".into(), role("acme_ro", true, 5)),
            ]),
            memberships: vec![
                Membership {
                    role: "acme_owner".into(),
                    member: "acme_app".into(),
                    grantor: "postgres".into(),
                },
                Membership {
                    role: "acme_reader".into(),
                    member: "acme_ro".into(),
                    grantor: "postgres".into(),
                },
                Membership {
                    role: "acme_owner".into(),
                    member: "mallory".into(),
                    grantor: "postgres".into(),
                },
            ],
            database: Some(database(&[
                ("acme_owner", "CONNECT"),
                ("acme_writer", "CONNECT"),
                ("acme_reader", "CONNECT"),
            ])),
            local: None,
        };
        let mut context = Context::default();
        context
            .recorded
            .insert("acme_ro".into(), verifier_hash("x"));
        let plan = put(&r, &state, &context).expect("plan");
        let shown = sql(&plan.statements);
        for expected in [
            "ALTER ROLE \"acme_writer\" NOLOGIN",
            "ALTER ROLE \"acme_app\" NOSUPERUSER",
            "ALTER ROLE \"acme_app\" RESET \"search_path\"",
            "REVOKE \"acme_owner\" FROM \"mallory\"",
        ] {
            assert!(shown.contains(&expected), "{expected}: {shown:#?}");
        }
        assert!(
            !shown.iter().any(|s| s.contains("SET role")),
            "the wanted setting stays: {shown:#?}"
        );
    }

    #[test]
    fn a_given_verifier_is_set_once_and_a_recorded_one_is_left_alone() {
        let mut r = acme();
        r.logins[1].password = Some(PasswordSpec {
            generate: false,
            scram_verifier: Some("SCRAM-SHA-256$4096:c2FsdA==$x:y".into()),
        });
        let state = State {
            server: server(),
            roles: BTreeMap::from([(
                "acme_ro".into(),
                RoleState {
                    name: "acme_ro".into(),
                    oid: 1,
                    superuser: false,
                    create_role: false,
                    create_db: false,
                    bypass_rls: false,
                    replication: false,
                    inherit: true,
                    can_login: true,
                    connection_limit: 5,
                    valid_until: None,
                    settings: Vec::new(),
                    member_of: Vec::new(),
                },
            )]),
            database: Some(database(&[])),
            ..State::default()
        };
        let mut context = Context {
            owns_database: true,
            ..Context::default()
        };
        let plan = put(&r, &state, &context).expect("plan");
        assert!(
            sql(&plan.statements).contains(&"ALTER ROLE \"acme_ro\" PASSWORD '<redacted>'"),
            "{:?}",
            plan.steps()
        );
        context.recorded = plan.verifiers;
        let again = put(&r, &state, &context).expect("plan");
        assert!(
            !sql(&again.statements)
                .iter()
                .any(|s| s.contains("\"acme_ro\" PASSWORD"))
        );
        // Read back from the store, the verifier is redacted: nothing to set.
        r.logins[1].password = Some(PasswordSpec {
            generate: false,
            scram_verifier: Some(crate::spec::REDACTED_VERIFIER.into()),
        });
        context.recorded = BTreeMap::new();
        let recorded = put(&r, &state, &context).expect("plan");
        assert!(
            !sql(&recorded.statements)
                .iter()
                .any(|s| s.contains("\"acme_ro\" PASSWORD"))
        );
    }

    #[test]
    fn a_missing_database_is_created_only_when_asked() {
        let mut r = acme();
        let refused = put(&r, &State::default(), &Context::default()).expect_err("no database");
        assert!(refused.to_string().contains("database.create"), "{refused}");
        r.create_database = true;
        r.encoding = Some("UTF8".into());
        let context = Context {
            owns_database: true,
            ..Context::default()
        };
        let plan = put(&r, &State::default(), &context).expect("plan");
        assert_eq!(
            plan.create_database.as_ref().map(|s| s.step.sql.as_str()),
            Some("CREATE DATABASE \"postgres\" TEMPLATE template0 ENCODING 'UTF8'")
        );
        assert!(sql(&plan.statements).contains(&"REVOKE ALL ON DATABASE \"postgres\" FROM PUBLIC"));
    }

    #[test]
    fn drop_takes_only_the_roles_it_is_given_and_the_owner_last() {
        let roles: Vec<String> = ["acme_owner", "acme_writer", "acme_reader", "acme_app"]
            .map(String::from)
            .to_vec();
        let dropped = drop(&roles, "acme_owner", Some("acme"), true);
        let shown = sql(&dropped);
        assert_eq!(shown[0], "DROP OWNED BY \"acme_app\"");
        assert_eq!(shown[3], "DROP OWNED BY \"acme_owner\" CASCADE");
        assert_eq!(shown.last().copied(), Some("DROP ROLE \"acme_owner\""));
        assert!(drop(&[], "acme_owner", None, true).is_empty());
        assert_eq!(
            sql(&drop(&[], "acme_owner", Some("acme"), true)),
            ["DROP SCHEMA \"acme\" CASCADE"]
        );
    }
}
