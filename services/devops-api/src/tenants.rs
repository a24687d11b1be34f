//! The operations on a tenant: PUT (plan, and apply it), GET (what exists and the drift),
//! rotate, DELETE (revoke or drop).
//!
//! One lock, one truth: every change takes the tenant's advisory lock in the API's own
//! database and keeps that transaction open while the catalog changes in the tenant's
//! database; the record, what the tenant owns (by OID) and the audit entry are written in
//! it, and it commits right after the tenant database's transaction (when the tenant lives
//! in the API's database, both are the same transaction). Plans that change rows shared
//! with other tenants (the database's ACL, `public`, extensions) also take the database's
//! lock; a transaction that still collides is retried, then answered 409 + Retry-After.
//!
//! Nothing that is not the tenant's, by OID, is ever altered, granted, rotated, revoked or
//! dropped: a name that exists and is not its own is a 409 before any SQL changes anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use sqlx::{Acquire as _, PgConnection, Postgres, Transaction, pool::PoolConnection};
use utoipa::ToSchema;

use crate::{
    catalog::{self, RoleState, State},
    names::ident,
    plan::{self, Credential, Password, Plan, REDACTED, Statement, Step},
    scram,
    spec::{Group, Limits, Resolved, TenantSpec},
    store::{Kind, NewAudit, Owned, Store, TenantRecord},
};

/// Attempts of a change whose transaction collided with another's on a shared catalog row.
const ATTEMPTS: u32 = 3;

/// Why an operation did not happen (each maps to one HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// 422: the request is well-formed but cannot be applied as it is.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: it conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// 409 with Retry-After: another change held a lock too long, or collided with this
    /// one; trying again later works.
    #[error("{0}")]
    Busy(String),
    /// 503 with Retry-After: the database cannot be reached, refuses the API's
    /// credentials, or is too slow.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// 422: a statement failed; everything was rolled back.
    #[error("statement {index} failed, nothing was changed: {error}")]
    Statement {
        index: usize,
        step: Step,
        error: String,
    },
    /// 429 with Retry-After: the caller has as many changes under way as it may.
    #[error("{0}")]
    TooMany(String),
    /// 500: what should not happen (the cause is logged, not answered).
    #[error("{0}")]
    Internal(String),
}

/// SQLSTATEs that say "try again": lock not available, serialization failure, deadlock.
fn contended(code: &str, message: &str) -> bool {
    matches!(code, "55P03" | "40001" | "40P01")
        || (code == "XX000" && message.contains("tuple concurrently"))
}

/// SQLSTATEs that say the database cannot serve the API now: connection exceptions,
/// authentication, insufficient resources (memory, the lock table, connections), shutting
/// down, a timed-out statement.
fn unavailable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("28")
        || code.starts_with("57P")
        // Insufficient resources: disk, memory, locks, connections.
        || code.starts_with("53")
        || code == "57014"
}

impl Failure {
    /// A database error outside a planned statement.
    pub(crate) fn database(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default().into_owned();
                if contended(&code, db.message()) {
                    tracing::info!(%code, error = %db.message(), "contended");
                    Self::Busy("another change is under way; try again".into())
                } else if unavailable(&code) {
                    tracing::warn!(%code, error = %db.message(), "the database refused or is unavailable");
                    Self::Unavailable(
                        "the admin connection failed or timed out; try again later".into(),
                    )
                } else if matches!(code.as_str(), "3D000" | "55000" | "42P04" | "42501") {
                    Self::Invalid(vec![format!("{} (SQLSTATE {code})", db.message())])
                } else {
                    Self::Internal(format!("database error {code}: {}", db.message()))
                }
            }
            sqlx::Error::PoolTimedOut => {
                Self::Unavailable("no connection within the acquire timeout".into())
            }
            sqlx::Error::PoolClosed => Self::Unavailable("shutting down".into()),
            other => {
                tracing::warn!(error = %other, "the database is unavailable");
                Self::Unavailable("the database cannot be reached; try again later".into())
            }
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, Self::Busy(_))
    }
}

/// A PUT's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PutResult {
    pub tenant: String,
    pub dry_run: bool,
    pub plan: Vec<Step>,
    /// Generated passwords, in this response only (never in a dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// Whether this PUT brought the tenant into being (201).
    #[serde(skip)]
    pub created: bool,
}

/// What exists of a tenant and how it differs from its spec.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub tenant: String,
    /// `active`, `revoked` or `dropped`.
    pub status: String,
    pub database: String,
    /// The recorded spec (a given verifier shows as `<redacted>`).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub exists: Existing,
    /// The statements a PUT of the spec would run now (empty: no drift).
    pub drift: Vec<Step>,
    /// What a PUT could not repair: a missing database, a name taken by someone else.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Existing {
    pub database: bool,
    pub schema: bool,
    pub schema_owner: Option<String>,
    /// The tenant's roles as they are (its own only, by OID).
    pub roles: Vec<RoleState>,
    pub extensions: Vec<String>,
}

/// One line of the list.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantSummary {
    pub tenant: String,
    pub database: String,
    pub status: String,
}

/// A DELETE's or a rotation's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeResult {
    pub tenant: String,
    pub plan: Vec<Step>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    /// Sessions of the tenant's logins ended (revoke, drop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated_sessions: Option<i64>,
}

/// Who asks, for the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: String,
    pub request_id: String,
}

/// The tenants, over the store.
#[derive(Debug, Clone)]
pub struct Tenants {
    store: Arc<Store>,
    limits: Arc<Limits>,
    /// Changes under way, by caller (an entry lives while its count is above 0: the map
    /// holds at most as many entries as there are requests under way).
    in_flight: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// A caller's change under way; its slot is given back when it is dropped.
struct Slot {
    in_flight: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    actor: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = in_flight.get_mut(&self.actor) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.actor);
            }
        }
    }
}

/// The connection a change runs its statements on: the admin transaction itself when the
/// tenant lives in the API's database, or a transaction in the tenant's database.
enum Work<'c> {
    Same,
    Other(Transaction<'c, Postgres>),
}

impl Work<'_> {
    /// Commits the tenant database's transaction (the admin one is committed after it).
    async fn commit(self) -> Result<(), Failure> {
        match self {
            Self::Same => Ok(()),
            Self::Other(tx) => tx.commit().await.map_err(Failure::database),
        }
    }
}

/// The connection statements run on.
fn on<'a>(admin: &'a mut PgConnection, work: &'a mut Work<'_>) -> &'a mut PgConnection {
    match work {
        Work::Same => admin,
        Work::Other(tx) => tx,
    }
}

/// The advisory lock keys: one per tenant, one for new tenant names, one per database.
fn lock_key(kind: &str, name: &str) -> String {
    format!("devops-api/{kind}/{name}")
}

impl Tenants {
    pub fn new(store: Arc<Store>, limits: Limits) -> Self {
        Self {
            store,
            limits: Arc::new(limits),
            in_flight: Arc::default(),
        }
    }

    /// A slot for one more change of `caller`, or 429.
    fn slot(&self, caller: &Caller) -> Result<Slot, Failure> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = in_flight.entry(caller.actor.clone()).or_insert(0);
        if *count >= self.limits.max_changes_per_caller {
            metrics::counter!("devops_api_changes_refused_total").increment(1);
            return Err(Failure::TooMany(format!(
                "{} changes of this caller are under way (config key \
                 tenants.max_changes_per_caller); try again when one is done",
                self.limits.max_changes_per_caller
            )));
        }
        *count += 1;
        Ok(Slot {
            in_flight: Arc::clone(&self.in_flight),
            actor: caller.actor.clone(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A transaction with the configured timeouts.
    async fn begin<'c>(
        &self,
        conn: &'c mut PoolConnection<Postgres>,
    ) -> Result<Transaction<'c, Postgres>, Failure> {
        let config = self.store.config();
        let mut tx = conn.begin().await.map_err(Failure::database)?;
        // SET LOCAL takes no parameters: the values are numbers the config holds.
        for setting in [
            format!("SET LOCAL lock_timeout = {}", config.lock_timeout_ms),
            format!(
                "SET LOCAL statement_timeout = {}",
                config.statement_timeout_ms
            ),
        ] {
            sqlx::query(&setting)
                .execute(&mut *tx)
                .await
                .map_err(Failure::database)?;
        }
        Ok(tx)
    }

    /// Where a change in `database` runs its statements: the admin transaction when the
    /// tenant lives in the API's database (or its database does not exist yet), else a
    /// transaction on a connection to it (kept in `conn`).
    async fn work<'c>(
        &self,
        database: &str,
        exists: bool,
        conn: &'c mut Option<PoolConnection<Postgres>>,
    ) -> Result<Work<'c>, Failure> {
        if !exists || database == self.store.admin_database() {
            return Ok(Work::Same);
        }
        let acquired = self
            .store
            .pool(database)
            .acquire()
            .await
            .map_err(Failure::database)?;
        Ok(Work::Other(self.begin(conn.insert(acquired)).await?))
    }

    /// Takes a lock until the end of the transaction (its wait measured, bounded by
    /// `lock_timeout`): the row of `key` in `devops_api.locks`, locked FOR UPDATE. Not an
    /// advisory lock: any login that can connect to the API's database could take one of
    /// those (their keys are no secret) and hold every change of a tenant, or its
    /// revocation; the API's schema is the admin's alone.
    async fn lock(conn: &mut PgConnection, key: &str) -> Result<(), Failure> {
        let waited = Instant::now();
        let select = "SELECT 1 FROM devops_api.locks WHERE key = $1 FOR UPDATE";
        let locked = sqlx::query(select)
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(Failure::database)?
            .rows_affected();
        if locked == 0 {
            // The key's first use: its row, then its lock (one round trip after that).
            sqlx::query("INSERT INTO devops_api.locks (key) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(key)
                .execute(&mut *conn)
                .await
                .map_err(Failure::database)?;
            sqlx::query(select)
                .bind(key)
                .execute(&mut *conn)
                .await
                .map_err(Failure::database)?;
        }
        metrics::histogram!("devops_api_lock_wait_seconds").record(waited.elapsed().as_secs_f64());
        Ok(())
    }

    fn resolve(
        &self,
        tenant: &str,
        spec: &TenantSpec,
        recorded: bool,
    ) -> Result<Resolved, Failure> {
        crate::spec::resolve(
            tenant,
            spec,
            self.store.admin_database(),
            &self.limits,
            recorded,
        )
        .map_err(Failure::Invalid)
    }

    /// `PUT /v1/tenants/{tenant}`. The change runs on a task of its own: a client that
    /// goes away, or the request timeout, does not cut it short between its commits.
    pub async fn put(
        &self,
        tenant: &str,
        spec: &TenantSpec,
        dry_run: bool,
        caller: &Caller,
    ) -> Result<PutResult, Failure> {
        let slot = self.slot(caller)?;
        let (this, tenant, spec, caller) = (
            self.clone(),
            tenant.to_owned(),
            spec.clone(),
            caller.clone(),
        );
        detached(async move {
            let _slot = slot;
            this.put_inner(&tenant, &spec, dry_run, &caller).await
        })
        .await
    }

    async fn put_inner(
        &self,
        tenant: &str,
        spec: &TenantSpec,
        dry_run: bool,
        caller: &Caller,
    ) -> Result<PutResult, Failure> {
        let r = self.resolve(tenant, spec, false)?;
        self.attempts(caller, tenant, "put", dry_run, || {
            self.put_attempt(&r, spec, dry_run, caller)
        })
        .await
    }

    /// Runs a change again while it collides with another (up to [`ATTEMPTS`], waiting a
    /// little longer each time), and audits the failure it ends with.
    async fn attempts<T, F, Fut>(
        &self,
        caller: &Caller,
        tenant: &str,
        action: &str,
        dry_run: bool,
        mut change: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 1;
        loop {
            match change().await {
                Err(failure) if failure.retryable() && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(failure) => {
                    self.audit_failure(caller, tenant, action, dry_run, &failure)
                        .await;
                    return Err(failure);
                }
                Ok(done) => return Ok(done),
            }
        }
    }

    async fn put_attempt(
        &self,
        r: &Resolved,
        spec: &TenantSpec,
        dry_run: bool,
        caller: &Caller,
    ) -> Result<PutResult, Failure> {
        let mut admin_conn = self.acquire_admin().await?;
        let mut admin = self.begin(&mut admin_conn).await?;
        Self::lock(&mut admin, &lock_key("tenant", &r.tenant)).await?;
        let previous = Store::tenant(&mut admin, &r.tenant)
            .await
            .map_err(Failure::database)?;
        let live = previous.as_ref().filter(|p| is_live(&p.status));
        if let Some(live) = live
            && live.database != r.database
        {
            return Err(Failure::Conflict(format!(
                "tenant {} lives in database {}; its database cannot change (DELETE it first)",
                r.tenant, live.database
            )));
        }
        if live.is_none() {
            // New names are taken one at a time, so two overlapping tenants cannot both
            // pass this check.
            Self::lock(&mut admin, &lock_key("names", "")).await?;
            let overlapping = Store::overlapping(&mut admin, &r.tenant)
                .await
                .map_err(Failure::database)?;
            if !overlapping.is_empty() {
                // Which tenant is not said: it may be outside the caller's scope.
                return Err(Failure::Conflict(format!(
                    "tenant {} would share role names with another tenant: one name followed \
                     by '_' begins the other (a tenant's roles are all named <tenant>_...)",
                    r.tenant
                )));
            }
        }
        let mut record = previous.clone().unwrap_or_else(|| TenantRecord {
            name: r.tenant.clone(),
            spec: serde_json::Value::Null,
            database: r.database.clone(),
            verifiers: BTreeMap::new(),
            status: "pending".into(),
            owned: Vec::new(),
        });
        if !is_live(&record.status) {
            // Verifiers recorded for a dropped tenant are not this PUT's.
            record.verifiers.clear();
        }
        if let Some(earlier) = record
            .owned
            .iter()
            .find(|o| o.kind == Kind::Database && o.name != r.database)
        {
            return Err(Failure::Conflict(format!(
                "tenant {} created database {} in an earlier attempt: PUT it with that database, \
                 or DELETE it with mode=drop to remove that database",
                r.tenant, earlier.name
            )));
        }
        let names = self.role_names(r, &record);
        let mut state = catalog::read_global(&mut admin, &names, &r.database)
            .await
            .map_err(Failure::database)?;
        self.check_names(&mut admin, r, &record, &state).await?;
        let mut steps = Vec::new();
        if state.database.is_none() && r.create_database && !dry_run {
            steps.push(self.create_database(r, &mut record).await?);
            state.database = catalog::read_global(&mut admin, &[], &r.database)
                .await
                .map_err(Failure::database)?
                .database;
        }
        let mut tenant_conn = None;
        let mut work = self
            .work(&r.database, state.database.is_some(), &mut tenant_conn)
            .await?;
        let mut plan = self
            .plan_put(r, &record, &mut admin, &mut work, &mut state, false)
            .await?;
        if plan.shared() {
            // Rows other tenants change too: under the database's lock, read again.
            Self::lock(&mut admin, &lock_key("database", &r.database)).await?;
            plan = self
                .plan_put(r, &record, &mut admin, &mut work, &mut state, true)
                .await?;
        }
        if let Some(create) = &plan.create_database {
            steps.push(create.step.clone());
        }
        if dry_run {
            steps.extend(plan.statements.iter().map(|s| s.step.clone()));
            return Ok(PutResult {
                tenant: r.tenant.clone(),
                dry_run,
                plan: steps,
                credentials: Vec::new(),
                created: false,
            });
        }
        let (credentials, verifiers) = generate(plan.generated()).await?;
        let offset = steps.len();
        execute(
            on(&mut admin, &mut work),
            &plan.statements,
            &verifiers,
            offset,
        )
        .await?;
        metrics::histogram!("devops_api_plan_statements")
            .record((offset + plan.statements.len()) as f64);
        // What the tenant owns now: its roles and schema as they are after the statements
        // (read in the transaction that made them), the database it created.
        let (current, schema_oid) = if plan.statements.is_empty() {
            // Nothing ran: what the catalogs said before is what they say now.
            let roles: BTreeMap<String, u32> = state
                .roles
                .iter()
                .map(|(name, role)| (name.clone(), role.oid))
                .collect();
            (roles, state.local.as_ref().and_then(|l| l.schema_oid))
        } else {
            let conn = on(&mut admin, &mut work);
            let roles = catalog::role_oids(conn, &names)
                .await
                .map_err(Failure::database)?;
            let schema = catalog::schema_oid(conn, &r.schema)
                .await
                .map_err(Failure::database)?;
            (roles, schema)
        };
        let database_oid = state.database.as_ref().map_or(0, |d| d.oid);
        let removed = removed_logins(r, &record, &state);
        let mut owned: Vec<Owned> = record
            .owned
            .iter()
            .filter(|o| o.kind == Kind::Database)
            .cloned()
            .collect();
        for (name, oid) in &current {
            let role_kind = role_kind(r, name);
            let keep =
                r.roles().contains(name) || (removed.contains(name) && record.owns_role(*oid));
            if keep {
                owned.push(Owned {
                    kind: Kind::Role,
                    scope: 0,
                    oid: *oid,
                    name: name.clone(),
                    role_kind: Some(role_kind.into()),
                });
            }
        }
        if let Some(oid) = schema_oid {
            owned.push(Owned {
                kind: Kind::Schema,
                scope: database_oid,
                oid,
                name: r.schema.clone(),
                role_kind: None,
            });
        }
        let created = !is_live(&record.status);
        let removed_oids: Vec<u32> = removed
            .iter()
            .filter_map(|name| current.get(name).copied())
            .collect();
        let before = record.clone();
        record.spec = serde_json::to_value(spec.redacted()).unwrap_or_default();
        record.database = r.database.clone();
        record.verifiers = plan.verifiers.clone();
        record.status = "active".into();
        owned.sort();
        record.owned = owned;
        let mut previous_owned = before.owned.clone();
        previous_owned.sort();
        if record.spec != before.spec
            || record.verifiers != before.verifiers
            || record.status != before.status
            || record.owned != previous_owned
        {
            Store::save_tenant(&mut admin, &record)
                .await
                .map_err(Failure::database)?;
        }
        steps.extend(plan.statements.iter().map(|s| s.step.clone()));
        let outcome = if steps.is_empty() {
            "unchanged"
        } else {
            "applied"
        };
        Self::audit(
            &mut admin, caller, &r.tenant, "put", false, &steps, outcome, None,
        )
        .await?;
        work.commit().await?;
        admin.commit().await.map_err(Failure::database)?;
        if !removed_oids.is_empty() {
            // Logins the spec no longer declares keep no session.
            if let Err(error) = self.terminate(&removed_oids).await {
                tracing::warn!(error = %error, "cannot end the sessions of removed logins");
            }
        }
        Ok(PutResult {
            tenant: r.tenant.clone(),
            dry_run,
            plan: steps,
            credentials,
            created,
        })
    }

    /// Every role name the tenant's plan looks at: its groups, its logins, and the logins
    /// it created before that its spec no longer declares.
    fn role_names(&self, r: &Resolved, record: &TenantRecord) -> Vec<String> {
        let mut names = r.roles();
        for owned in &record.owned {
            if owned.kind == Kind::Role && !names.contains(&owned.name) {
                names.push(owned.name.clone());
            }
        }
        names
    }

    /// Records (committed at once) that the tenant created its database, by OID.
    async fn own_database(
        &self,
        r: &Resolved,
        record: &mut TenantRecord,
        oid: u32,
    ) -> Result<(), Failure> {
        self.store
            .record_created_database(&r.tenant, &r.database, oid)
            .await
            .map_err(Failure::database)?;
        record.owned.push(Owned {
            kind: Kind::Database,
            scope: 0,
            oid,
            name: r.database.clone(),
            role_kind: None,
        });
        Ok(())
    }

    /// Refuses (before any change) a database that is a template or closed, a schema
    /// named like a role, and any role of the tenant's names that is not its own.
    async fn check_names(
        &self,
        admin: &mut PgConnection,
        r: &Resolved,
        record: &TenantRecord,
        state: &State,
    ) -> Result<(), Failure> {
        let mut invalid = Vec::new();
        if let Some(database) = &state.database {
            if database.is_template {
                invalid.push(format!(
                    "database {:?} is a template: every database created later would copy the tenant",
                    r.database
                ));
            }
            if database.encoding == "SQL_ASCII" {
                invalid.push(format!(
                    "database {:?} is SQL_ASCII: names in it need not be text the API can read; \
                     put the tenant in a UTF8 database",
                    r.database
                ));
            }
            if !database.allow_connections {
                invalid.push(format!(
                    "database {:?} does not allow connections",
                    r.database
                ));
            }
        }
        if catalog::role_named(admin, &r.schema)
            .await
            .map_err(Failure::database)?
            && !r.roles().contains(&r.schema)
        {
            invalid.push(format!(
                "schema {:?} is reserved: a role has that name (the schema would be on its \
                 search_path as \"$user\")",
                r.schema
            ));
        }
        if !invalid.is_empty() {
            return Err(Failure::Invalid(invalid));
        }
        if let Some(database) = &state.database
            && record.created_database() != Some(database.oid)
            && Store::owner_of(admin, Kind::Database, 0, database.oid)
                .await
                .map_err(Failure::database)?
                .is_some()
        {
            return Err(Failure::Conflict(format!(
                "database {} was created by another tenant: it is that tenant's",
                r.database
            )));
        }
        for name in r.roles() {
            if let Some(role) = state.roles.get(&name)
                && !record.owns_role(role.oid)
            {
                let owner = Store::owner_of(admin, Kind::Role, 0, role.oid)
                    .await
                    .map_err(Failure::database)?;
                return Err(Failure::Conflict(match owner {
                    Some(_) => format!("role {name} exists and belongs to another tenant"),
                    None => format!(
                        "role {name} exists and is not managed by the API: it is not taken over"
                    ),
                }));
            }
        }
        Ok(())
    }

    /// `CREATE DATABASE` (its own step, outside any transaction), recorded as the
    /// tenant's at once, by OID.
    async fn create_database(
        &self,
        r: &Resolved,
        record: &mut TenantRecord,
    ) -> Result<Step, Failure> {
        let plan =
            plan::put(r, &State::default(), &plan::Context::default()).map_err(plan_failure)?;
        let Some(create) = plan.create_database else {
            return Err(Failure::Internal("no CREATE DATABASE planned".into()));
        };
        let started = Instant::now();
        match sqlx::query(&create.step.sql)
            .execute(self.store.admin())
            .await
        {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {
                // Made meanwhile by someone else: it is not this tenant's.
                return Err(Failure::Busy(format!(
                    "database {} was created meanwhile by someone else; try again",
                    r.database
                )));
            }
            Err(err) => return Err(statement_failure(0, &create, err)),
        }
        metrics::histogram!("devops_api_statement_seconds").record(started.elapsed().as_secs_f64());
        let mut admin = self.acquire_admin().await?;
        let database = catalog::read_global(&mut admin, &[], &r.database)
            .await
            .map_err(Failure::database)?
            .database
            .ok_or_else(|| Failure::Internal("the database just created is missing".into()))?;
        self.own_database(r, record, database.oid).await?;
        Ok(create.step)
    }

    /// Reads the tenant's side of the catalogs (on the work connection, so it sees what
    /// this transaction did; the cluster-wide part again only with `reread`, under the
    /// database's lock) and makes the plan. 409 when the schema is not the tenant's.
    async fn plan_put(
        &self,
        r: &Resolved,
        record: &TenantRecord,
        admin: &mut PgConnection,
        work: &mut Work<'_>,
        state: &mut State,
        reread: bool,
    ) -> Result<Plan, Failure> {
        let names = self.role_names(r, record);
        let database = state.database.clone();
        if let Some(database) = &database {
            let mut read = if reread {
                catalog::read_global(on(admin, work), &names, &r.database)
                    .await
                    .map_err(Failure::database)?
            } else {
                state.clone()
            };
            if r.database == self.store.admin_database() || matches!(work, Work::Other(_)) {
                read.local = Some(
                    catalog::read_local(on(admin, work), &r.schema)
                        .await
                        .map_err(Failure::database)?,
                );
            }
            *state = read;
            if let Some(local) = &state.local
                && let Some(oid) = local.schema_oid
                && !self.owns_schema(record, state, database.oid, oid)
            {
                let owner = Store::owner_of(admin, Kind::Schema, database.oid, oid)
                    .await
                    .map_err(Failure::database)?;
                return Err(Failure::Conflict(match owner {
                    Some(_) => format!(
                        "schema {} in database {} belongs to another tenant",
                        r.schema, r.database
                    ),
                    None => format!(
                        "schema {} exists in database {} and is not managed by the API: it is not taken over",
                        r.schema, r.database
                    ),
                }));
            }
        }
        let owns_database = match &state.database {
            Some(d) => record.created_database() == Some(d.oid),
            None => r.create_database,
        };
        let context = plan_context(admin, r, record, state, owns_database).await?;
        plan::put(r, state, &context).map_err(plan_failure)
    }

    /// Whether the schema with this OID is the tenant's: recorded as created by it, or
    /// owned by its owner role (what the previous version of the API recorded by name).
    fn owns_schema(&self, record: &TenantRecord, state: &State, database: u32, oid: u32) -> bool {
        let recorded = record
            .owned
            .iter()
            .any(|o| o.kind == Kind::Schema && o.scope == database && o.oid == oid);
        let by_owner = state
            .local
            .as_ref()
            .and_then(|l| l.schema_owner_oid)
            .is_some_and(|owner| {
                record.owned.iter().any(|o| {
                    o.kind == Kind::Role
                        && o.role_kind.as_deref() == Some("owner")
                        && o.oid == owner
                })
            });
        recorded || by_owner
    }

    /// `GET /v1/tenants/{tenant}`.
    pub async fn get(&self, tenant: &str) -> Result<TenantView, Failure> {
        crate::names::check("tenant", tenant).map_err(|e| Failure::Invalid(vec![e]))?;
        // One admin connection for the whole read (outside the tenant's lock: a GET).
        let mut admin = self.acquire_admin().await?;
        let record = Store::tenant(&mut admin, tenant)
            .await
            .map_err(Failure::database)?;
        let (record, r) = self.resolve_record(tenant, record, true)?;
        let names = self.role_names(&r, &record);
        let mut state = catalog::read_global(&mut admin, &names, &r.database)
            .await
            .map_err(Failure::database)?;
        if state.database.is_some() {
            // The admin connection itself when the tenant lives in the API's database: a
            // second one from the same pool, while holding the first, is how a flood of
            // GETs would empty the pool and wait on itself.
            let local = if r.database == self.store.admin_database() {
                catalog::read_local(&mut admin, &r.schema).await
            } else {
                let mut conn = self
                    .store
                    .pool(&r.database)
                    .acquire()
                    .await
                    .map_err(Failure::database)?;
                catalog::read_local(&mut conn, &r.schema).await
            };
            state.local = Some(local.map_err(Failure::database)?);
        }
        let mut problems = Vec::new();
        // Only the tenant's own roles are shown and planned for.
        let strangers: Vec<String> = state
            .roles
            .values()
            .filter(|role| !record.owns_role(role.oid))
            .map(|role| role.name.clone())
            .collect();
        for name in &strangers {
            state.roles.remove(name);
            problems.push(format!("role {name} exists and is not the tenant's"));
        }
        if let (Some(database), Some(local)) = (&state.database, &state.local)
            && let Some(oid) = local.schema_oid
            && !self.owns_schema(&record, &state, database.oid, oid)
        {
            problems.push(format!(
                "schema {} exists and is not the tenant's",
                r.schema
            ));
        }
        let drift = if record.status == "active" && problems.is_empty() {
            let owns_database = state
                .database
                .as_ref()
                .is_some_and(|d| record.created_database() == Some(d.oid));
            let context = plan_context(&mut admin, &r, &record, &state, owns_database).await?;
            match plan::put(&r, &state, &context) {
                Ok(plan) => plan.steps(),
                Err(plan::PlanError::NoDatabase(database)) => {
                    problems.push(format!("database {database} does not exist"));
                    Vec::new()
                }
                Err(err @ plan::PlanError::ExtensionElsewhere(_)) => {
                    problems.push(err.to_string());
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let local = state.local.clone().unwrap_or_default();
        Ok(TenantView {
            tenant: tenant.to_owned(),
            status: record.status,
            database: record.database,
            spec: record.spec,
            exists: Existing {
                database: state.database.is_some(),
                schema: local.schema_owner.is_some(),
                schema_owner: local.schema_owner.clone(),
                roles: state.roles.values().cloned().collect(),
                extensions: r
                    .extensions
                    .iter()
                    .filter(|e| local.extensions.get(*e) == Some(&r.schema))
                    .cloned()
                    .collect(),
            },
            drift,
            problems,
        })
    }

    /// `GET /v1/tenants`.
    pub async fn list(&self) -> Result<Vec<TenantSummary>, Failure> {
        let records = self.store.tenants().await.map_err(Failure::database)?;
        Ok(records
            .into_iter()
            .filter(|r| r.status != "pending")
            .map(|r| TenantSummary {
                tenant: r.name,
                database: r.database,
                status: r.status,
            })
            .collect())
    }

    /// The recorded tenant, resolved: 404 when it is not known, or was dropped and
    /// `dropped_ok` is false.
    fn resolve_record(
        &self,
        tenant: &str,
        record: Option<TenantRecord>,
        dropped_ok: bool,
    ) -> Result<(TenantRecord, Resolved), Failure> {
        let record = record
            .filter(|r| is_live(&r.status) || (dropped_ok && r.status == "dropped"))
            .ok_or_else(|| Failure::NotFound(format!("tenant {tenant} is not known")))?;
        let spec: TenantSpec = serde_json::from_value(record.spec.clone())
            .map_err(|e| Failure::Internal(format!("the recorded spec cannot be read: {e}")))?;
        let r = self.resolve(tenant, &spec, true)?;
        Ok((record, r))
    }

    /// `POST /v1/tenants/{tenant}/logins/{login}/rotate` (on a task of its own, like PUT).
    pub async fn rotate(
        &self,
        tenant: &str,
        login: &str,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        let slot = self.slot(caller)?;
        let (this, tenant, login, caller) = (
            self.clone(),
            tenant.to_owned(),
            login.to_owned(),
            caller.clone(),
        );
        detached(async move {
            let _slot = slot;
            this.rotate_inner(&tenant, &login, &caller).await
        })
        .await
    }

    async fn rotate_inner(
        &self,
        tenant: &str,
        login: &str,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        self.attempts(caller, tenant, "rotate", false, || {
            self.rotate_attempt(tenant, login, caller)
        })
        .await
    }

    async fn rotate_attempt(
        &self,
        tenant: &str,
        login: &str,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        crate::names::check("tenant", tenant).map_err(|e| Failure::Invalid(vec![e]))?;
        crate::names::check("login", login).map_err(|e| Failure::Invalid(vec![e]))?;
        let mut admin_conn = self.acquire_admin().await?;
        let mut admin = self.begin(&mut admin_conn).await?;
        Self::lock(&mut admin, &lock_key("tenant", tenant)).await?;
        let record = Store::tenant(&mut admin, tenant)
            .await
            .map_err(Failure::database)?;
        let (record, r) = self.resolve_record(tenant, record, false)?;
        let declared = r.logins.iter().find(|l| l.name == login).ok_or_else(|| {
            Failure::NotFound(format!("tenant {tenant} declares no login {login}"))
        })?;
        if declared.client_password() {
            return Err(Failure::Conflict(format!(
                "login {login}'s password is given as a SCRAM verifier: PUT a new verifier instead"
            )));
        }
        let state = catalog::read_global(&mut admin, &[login.to_owned()], &r.database)
            .await
            .map_err(Failure::database)?;
        let Some(role) = state.roles.get(login) else {
            return Err(Failure::NotFound(format!(
                "login {login} does not exist yet: PUT the tenant first"
            )));
        };
        if !record.owns_role(role.oid) {
            return Err(Failure::Conflict(format!(
                "role {login} exists and is not the tenant's: its password is not changed"
            )));
        }
        let statement = Statement {
            step: Step {
                action: "alter role".into(),
                object: format!("role {login}"),
                sql: format!("ALTER ROLE {} PASSWORD {REDACTED}", ident(login)),
            },
            password: Some(Password::Generate(login.to_owned())),
            shared: false,
            stranger: false,
        };
        let (credentials, verifiers) = generate(vec![login.to_owned()]).await?;
        execute(&mut admin, std::slice::from_ref(&statement), &verifiers, 0).await?;
        let steps = vec![statement.step];
        Self::audit(
            &mut admin, caller, tenant, "rotate", false, &steps, "applied", None,
        )
        .await?;
        admin.commit().await.map_err(Failure::database)?;
        Ok(ChangeResult {
            tenant: tenant.to_owned(),
            plan: steps,
            credentials,
            terminated_sessions: None,
        })
    }

    /// `DELETE /v1/tenants/{tenant}?mode=revoke|drop` (on a task of its own, like PUT).
    pub async fn delete(
        &self,
        tenant: &str,
        drop: bool,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        let slot = self.slot(caller)?;
        let (this, tenant, caller) = (self.clone(), tenant.to_owned(), caller.clone());
        detached(async move {
            let _slot = slot;
            this.delete_inner(&tenant, drop, &caller).await
        })
        .await
    }

    async fn delete_inner(
        &self,
        tenant: &str,
        drop: bool,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        crate::names::check("tenant", tenant).map_err(|e| Failure::Invalid(vec![e]))?;
        let action = if drop { "drop" } else { "revoke" };
        self.attempts(caller, tenant, action, false, || {
            self.delete_attempt(tenant, drop, caller)
        })
        .await
    }

    async fn delete_attempt(
        &self,
        tenant: &str,
        drop: bool,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        let action = if drop { "drop" } else { "revoke" };
        let mut admin_conn = self.acquire_admin().await?;
        let mut admin = self.begin(&mut admin_conn).await?;
        Self::lock(&mut admin, &lock_key("tenant", tenant)).await?;
        let record = Store::tenant(&mut admin, tenant)
            .await
            .map_err(Failure::database)?;
        if let Some(pending) = record.as_ref().filter(|r| r.status == "pending" && drop) {
            // A first PUT that created a database and failed after: the database is all
            // there is of the tenant.
            let databases: Vec<String> = pending
                .owned
                .iter()
                .filter(|o| o.kind == Kind::Database)
                .map(|o| o.name.clone())
                .collect();
            admin.rollback().await.map_err(Failure::database)?;
            let mut steps = Vec::new();
            for database in databases {
                steps.push(self.drop_database(tenant, &database, caller).await?);
            }
            return Ok(ChangeResult {
                tenant: tenant.to_owned(),
                plan: steps,
                credentials: Vec::new(),
                terminated_sessions: Some(0),
            });
        }
        let (mut record, r) = self.resolve_record(tenant, record, true)?;
        if record.status == "dropped" && !drop {
            return Err(Failure::Conflict(format!("tenant {tenant} was dropped")));
        }
        let names = self.role_names(&r, &record);
        let global = catalog::read_global(&mut admin, &names, &r.database)
            .await
            .map_err(Failure::database)?;
        // Only the roles the tenant owns, by OID: a name someone else holds now is left.
        let owned_roles: Vec<String> = names
            .iter()
            .filter(|n| {
                global
                    .roles
                    .get(*n)
                    .is_some_and(|role| record.owns_role(role.oid))
            })
            .cloned()
            .collect();
        let owned_logins: Vec<String> = owned_roles
            .iter()
            .filter(|n| !Group::ALL.iter().any(|g| **n == r.group(*g)))
            .cloned()
            .collect();
        let login_oids: Vec<u32> = owned_logins
            .iter()
            .filter_map(|n| global.roles.get(n).map(|role| role.oid))
            .collect();
        let database_oid = global.database.as_ref().map(|d| d.oid);
        let drop_database =
            drop && database_oid.is_some() && record.created_database() == database_oid;
        if global.database.is_some() {
            // Taken before the check below: a tenant moving into the database now waits.
            Self::lock(&mut admin, &lock_key("database", &r.database)).await?;
        }
        if drop_database {
            Self::no_other_tenants(&mut admin, &r.database, tenant).await?;
        }
        let mut terminated = 0;
        let mut elsewhere = Vec::new();
        if drop {
            // Open transactions of the logins would hold locks DROP OWNED waits for.
            terminated += self
                .terminate(&login_oids)
                .await
                .map_err(Failure::database)?;
            // What other databases hold of the roles (another tenant's grants to them,
            // default privileges naming them): their DROP ROLE waits for it to go.
            let role_oids: Vec<u32> = owned_roles
                .iter()
                .filter_map(|n| global.roles.get(n).map(|role| role.oid))
                .collect();
            elsewhere = self
                .drop_owned_elsewhere(&mut admin, &owned_roles, &role_oids, &r)
                .await?;
        }
        let mut tenant_conn = None;
        let mut work = self
            .work(&r.database, global.database.is_some(), &mut tenant_conn)
            .await?;
        let owner = r.group(Group::Owner);
        let statements = match &global.database {
            Some(database) => {
                let local = catalog::read_local(on(&mut admin, &mut work), &r.schema)
                    .await
                    .map_err(Failure::database)?;
                let schema_ours = local.schema_oid.is_some_and(|oid| {
                    let probe = State {
                        local: Some(local.clone()),
                        ..State::default()
                    };
                    self.owns_schema(&record, &probe, database.oid, oid)
                });
                if drop {
                    let schema = schema_ours.then_some(r.schema.as_str());
                    plan::drop(&owned_roles, &owner, schema, true)
                } else {
                    // Only the tenant's own roles are looked at, and strangers lose what
                    // they were given on its objects before its own grants are taken back.
                    let mut state = State {
                        local: schema_ours.then_some(local),
                        ..global.clone()
                    };
                    state.roles.retain(|name, _| owned_roles.contains(name));
                    state.memberships.retain(|m| {
                        owned_roles.contains(&m.role) || owned_roles.contains(&m.member)
                    });
                    let owns_database = record.created_database() == Some(database.oid);
                    let context =
                        plan_context(&mut admin, &r, &record, &state, owns_database).await?;
                    let mut statements = plan::strangers(&r, &state, &context);
                    statements.extend(plan::revoke(&r, &owned_logins, &state));
                    statements
                }
            }
            // No database: only the roles are left.
            None if drop => plan::drop(&owned_roles, &owner, None, false),
            None => plan::revoke(&r, &owned_logins, &global),
        };
        execute(on(&mut admin, &mut work), &statements, &BTreeMap::new(), 0).await?;
        let mut steps: Vec<Step> = elsewhere;
        steps.extend(statements.into_iter().map(|s| s.step));
        record.status = action_status(drop).into();
        if drop {
            // What is left of it: the database it created, until that is dropped below.
            record
                .owned
                .retain(|o| o.kind == Kind::Database && drop_database);
        }
        Store::save_tenant(&mut admin, &record)
            .await
            .map_err(Failure::database)?;
        let outcome = if steps.is_empty() {
            "unchanged"
        } else {
            "applied"
        };
        Self::audit(
            &mut admin, caller, tenant, action, false, &steps, outcome, None,
        )
        .await?;
        work.commit().await?;
        admin.commit().await.map_err(Failure::database)?;
        // Back to its pool now: dropping the database closes that pool, which waits for it.
        std::mem::drop(tenant_conn);
        // After the change committed: no session of the tenant's logins survives it.
        terminated += self
            .terminate(&login_oids)
            .await
            .map_err(Failure::database)?;
        if drop_database {
            steps.push(self.drop_database(tenant, &r.database, caller).await?);
        }
        Ok(ChangeResult {
            tenant: tenant.to_owned(),
            plan: steps,
            credentials: Vec::new(),
            terminated_sessions: Some(terminated),
        })
    }

    /// Drops the database the tenant created (no other tenant lives in it: checked under
    /// the tenant's lock), then forgets it.
    async fn drop_database(
        &self,
        tenant: &str,
        database: &str,
        caller: &Caller,
    ) -> Result<Step, Failure> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(database));
        let statement = Statement {
            step: Step {
                action: "drop database".into(),
                object: format!("database {database}"),
                sql: sql.clone(),
            },
            password: None,
            shared: false,
            stranger: false,
        };
        // Under the tenant's and the database's locks, checked again: no tenant moved in
        // since the drop committed (one that tries now waits for the database's lock).
        let mut admin_conn = self.acquire_admin().await?;
        let mut admin = self.begin(&mut admin_conn).await?;
        Self::lock(&mut admin, &lock_key("tenant", tenant)).await?;
        Self::lock(&mut admin, &lock_key("database", database)).await?;
        Self::no_other_tenants(&mut admin, database, tenant).await?;
        if let Some(mut record) = Store::tenant(&mut admin, tenant)
            .await
            .map_err(Failure::database)?
        {
            record.owned.retain(|o| o.kind != Kind::Database);
            if record.status == "pending" {
                record.status = "dropped".into();
            }
            Store::save_tenant(&mut admin, &record)
                .await
                .map_err(Failure::database)?;
        }
        // Audited in the transaction that commits right after the drop: a drop that fails
        // rolls its record and audit entry back.
        Self::audit(
            &mut admin,
            caller,
            tenant,
            "drop",
            false,
            std::slice::from_ref(&statement.step),
            "applied",
            None,
        )
        .await?;
        self.store.forget(database).await;
        sqlx::query(&sql)
            .execute(self.store.admin())
            .await
            .map_err(|e| statement_failure(0, &statement, e))?;
        admin.commit().await.map_err(Failure::database)?;
        Ok(statement.step)
    }

    /// `DROP OWNED BY` the tenant's roles in every other database where something depends
    /// on them, each in a transaction of its own, committed before the drop itself.
    async fn drop_owned_elsewhere(
        &self,
        admin: &mut PgConnection,
        roles: &[String],
        oids: &[u32],
        r: &Resolved,
    ) -> Result<Vec<Step>, Failure> {
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        let databases = catalog::databases_depending_on(admin, oids, &r.database)
            .await
            .map_err(Failure::database)?;
        let mut steps = Vec::new();
        for database in databases {
            let statements: Vec<Statement> = plan::drop(roles, &r.group(Group::Owner), None, true)
                .into_iter()
                .filter(|s| s.step.action == "drop owned")
                .map(|mut s| {
                    s.step.object = format!("{} in database {database}", s.step.object);
                    s
                })
                .collect();
            let mut conn = None;
            let mut work = self.work(&database, true, &mut conn).await?;
            execute(
                on(admin, &mut work),
                &statements,
                &BTreeMap::new(),
                steps.len(),
            )
            .await?;
            work.commit().await?;
            steps.extend(statements.into_iter().map(|s| s.step));
        }
        Ok(steps)
    }

    /// 409 when another live tenant has its schema in `database`.
    async fn no_other_tenants(
        admin: &mut PgConnection,
        database: &str,
        tenant: &str,
    ) -> Result<(), Failure> {
        let others = Store::tenants_in(admin, database, tenant)
            .await
            .map_err(Failure::database)?;
        if others.is_empty() {
            return Ok(());
        }
        Err(Failure::Conflict(format!(
            "database {database} holds other tenants ({}): drop them first, or it is not dropped",
            others.join(", ")
        )))
    }

    /// Ends the sessions of these roles; how many.
    async fn terminate(&self, roles: &[u32]) -> Result<i64, sqlx::Error> {
        if roles.is_empty() {
            return Ok(0);
        }
        let mut conn = self.store.admin().acquire().await?;
        catalog::terminate_sessions(&mut conn, roles).await
    }

    async fn acquire_admin(&self) -> Result<PoolConnection<Postgres>, Failure> {
        self.store
            .admin()
            .acquire()
            .await
            .map_err(Failure::database)
    }

    /// Appends the audit entry of a change, in its transaction.
    #[allow(clippy::too_many_arguments)]
    async fn audit(
        conn: &mut PgConnection,
        caller: &Caller,
        tenant: &str,
        action: &str,
        dry_run: bool,
        plan: &[Step],
        outcome: &str,
        detail: Option<String>,
    ) -> Result<(), Failure> {
        let entry = NewAudit {
            actor: &caller.actor,
            request_id: &caller.request_id,
            tenant,
            action,
            dry_run,
            plan: serde_json::to_value(plan).unwrap_or_default(),
            outcome,
            detail,
        };
        Store::audit(conn, entry)
            .await
            .map(drop)
            .map_err(Failure::database)
    }

    /// Appends the audit entry of a change that did not happen (on its own: the change's
    /// transaction rolled back). Dry runs and refusals before any SQL are in the request
    /// log only.
    async fn audit_failure(
        &self,
        caller: &Caller,
        tenant: &str,
        action: &str,
        dry_run: bool,
        failure: &Failure,
    ) {
        if dry_run || matches!(failure, Failure::Invalid(_) | Failure::NotFound(_)) {
            return;
        }
        let plan = match failure {
            Failure::Statement { step, .. } => vec![step.clone()],
            _ => Vec::new(),
        };
        let written = async {
            let mut conn = self.store.admin().acquire().await?;
            Store::audit(
                &mut conn,
                NewAudit {
                    actor: &caller.actor,
                    request_id: &caller.request_id,
                    tenant,
                    action,
                    dry_run,
                    plan: serde_json::to_value(&plan).unwrap_or_default(),
                    outcome: "failed",
                    detail: Some(failure.to_string()),
                },
            )
            .await
        }
        .await;
        if let Err(error) = written {
            tracing::error!(%error, tenant, action, "cannot write the audit entry of a failure");
        }
    }
}

/// Runs a change to its end on a task of its own, in the request's span.
async fn detached<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, Failure>> + Send + 'static,
) -> Result<T, Failure> {
    use tracing::Instrument as _;
    tokio::spawn(change.instrument(tracing::Span::current()))
        .await
        .map_err(|e| Failure::Internal(format!("the change stopped: {e}")))?
}

fn is_live(status: &str) -> bool {
    matches!(status, "active" | "revoked")
}

fn action_status(drop: bool) -> &'static str {
    if drop { "dropped" } else { "revoked" }
}

/// What a role of the tenant is: `owner`, `writer`, `reader` or `login`.
fn role_kind(r: &Resolved, name: &str) -> &'static str {
    Group::ALL
        .iter()
        .find(|g| r.group(**g) == name)
        .map_or("login", |g| g.suffix())
}

/// What a plan of the tenant needs besides the catalogs; on a database the tenant
/// created, every tenant's roles (their grants there are not strangers').
async fn plan_context(
    admin: &mut PgConnection,
    r: &Resolved,
    record: &TenantRecord,
    state: &State,
    owns_database: bool,
) -> Result<plan::Context, Failure> {
    let tenant_roles = if owns_database {
        Store::tenant_role_oids(admin)
            .await
            .map_err(Failure::database)?
            .into_iter()
            .collect()
    } else {
        BTreeSet::new()
    };
    Ok(plan::Context {
        recorded: record.verifiers.clone(),
        removed_logins: removed_logins(r, record, state),
        owns_database,
        tenant_roles,
    })
}

/// Logins the tenant created (recorded by OID, still there) that its spec no longer
/// declares.
fn removed_logins(r: &Resolved, record: &TenantRecord, state: &State) -> Vec<String> {
    record
        .owned
        .iter()
        .filter(|o| o.kind == Kind::Role && o.role_kind.as_deref() == Some("login"))
        .filter(|o| !r.logins.iter().any(|l| l.name == o.name))
        .filter(|o| {
            state
                .roles
                .get(&o.name)
                .is_some_and(|role| role.oid == o.oid)
        })
        .map(|o| o.name.clone())
        .collect()
}

/// New passwords for these logins and their verifiers, computed off the async runtime
/// (PBKDF2 is seconds of CPU for many logins), once per change.
async fn generate(
    logins: Vec<String>,
) -> Result<(Vec<Credential>, BTreeMap<String, String>), Failure> {
    if logins.is_empty() {
        return Ok((Vec::new(), BTreeMap::new()));
    }
    let made = tokio::task::spawn_blocking(move || {
        logins
            .into_iter()
            .map(|login| {
                let password = scram::generate()?;
                let verifier = scram::verifier(&password)?;
                Ok((Credential { login, password }, verifier))
            })
            .collect::<Result<Vec<_>, getrandom::Error>>()
    })
    .await
    .map_err(|e| Failure::Internal(format!("password generation stopped: {e}")))?
    .map_err(|e| Failure::Internal(format!("cannot generate a password: {e}")))?;
    let verifiers = made
        .iter()
        .map(|(c, v)| (c.login.clone(), v.clone()))
        .collect();
    Ok((made.into_iter().map(|(c, _)| c).collect(), verifiers))
}

/// Runs the statements in order; the first failure names its statement.
async fn execute(
    tx: &mut PgConnection,
    statements: &[Statement],
    verifiers: &BTreeMap<String, String>,
    offset: usize,
) -> Result<(), Failure> {
    for (at, statement) in statements.iter().enumerate() {
        let Some(sql) = statement.sql(verifiers) else {
            return Err(Failure::Internal(format!(
                "no password was generated for statement {}",
                offset + at
            )));
        };
        let started = Instant::now();
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| statement_failure(offset + at, statement, e))?;
        metrics::histogram!("devops_api_statement_seconds").record(started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn statement_failure(index: usize, statement: &Statement, err: sqlx::Error) -> Failure {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default().into_owned();
            if contended(&code, db.message()) {
                Failure::Busy(
                    "a lock was not granted in time, or another change collided with this one; \
                     nothing was changed, try again"
                        .into(),
                )
            } else if unavailable(&code) {
                Failure::database(sqlx::Error::Database(db))
            } else {
                Failure::Statement {
                    index,
                    step: statement.step.clone(),
                    error: format!("{} (SQLSTATE {code})", db.message()),
                }
            }
        }
        other => Failure::database(other),
    }
}

fn plan_failure(err: plan::PlanError) -> Failure {
    match err {
        plan::PlanError::NoDatabase(_) => Failure::Invalid(vec![err.to_string()]),
        plan::PlanError::ExtensionElsewhere(_) => Failure::Conflict(err.to_string()),
    }
}
