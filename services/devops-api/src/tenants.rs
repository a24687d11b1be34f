//! The operations on a tenant: PUT (plan, and apply it in one transaction), GET (what
//! exists and the drift), rotate, DELETE (revoke or drop). Every change runs under a
//! per-tenant advisory lock, with `lock_timeout` and `statement_timeout`, and is audited.

use std::{sync::Arc, time::Instant};

use serde::Serialize;
use sqlx::{Acquire as _, PgConnection};
use utoipa::ToSchema;

use crate::{
    catalog::{self, RoleState, State},
    names::{ident, literal},
    plan::{self, Credential, Plan, REDACTED, Statement, Step},
    scram,
    spec::{Resolved, TenantSpec},
    store::{NewAudit, Store, TenantRecord},
};

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
    /// 409 with Retry-After: another change of the tenant held the lock too long.
    #[error("{0}")]
    Busy(String),
    /// 503 with Retry-After: the database cannot be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// 422: a statement failed; everything was rolled back.
    #[error("statement {index} failed, nothing was changed: {error}")]
    Statement {
        index: usize,
        step: Step,
        error: String,
    },
    /// 500: what should not happen.
    #[error("{0}")]
    Internal(String),
}

impl Failure {
    /// A database error outside a planned statement.
    fn database(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                Self::Busy("another change of this tenant is under way; try again".into())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                Self::Unavailable("a statement timed out".into())
            }
            sqlx::Error::Database(db) => {
                Self::Internal(format!("database error: {}", db.message()))
            }
            sqlx::Error::PoolTimedOut => {
                Self::Unavailable("no connection within the acquire timeout".into())
            }
            sqlx::Error::Io(e) => Self::Unavailable(e.to_string()),
            sqlx::Error::Tls(e) => Self::Unavailable(e.to_string()),
            sqlx::Error::PoolClosed => Self::Unavailable("shutting down".into()),
            other => Self::Unavailable(other.to_string()),
        }
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
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub exists: Existing,
    /// The statements a PUT of the spec would run now (empty: no drift).
    pub drift: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Existing {
    pub database: bool,
    pub schema: bool,
    pub schema_owner: Option<String>,
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
}

impl Tenants {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a change in `database`: a transaction with the timeouts, the tenant's lock
    /// taken (its wait measured).
    async fn begin<'c>(
        &self,
        conn: &'c mut PgConnection,
        tenant: &str,
    ) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, Failure> {
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
        let waited = Instant::now();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('devops-api/tenant/' || $1, 0))",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(Failure::database)?;
        metrics::histogram!("devops_api_lock_wait_seconds").record(waited.elapsed().as_secs_f64());
        Ok(tx)
    }

    /// Everything the plan needs, read on `conn` (a connection to the tenant database, or
    /// `None` when it does not exist: then only the cluster-wide part is read).
    async fn state(&self, r: &Resolved, conn: Option<&mut PgConnection>) -> Result<State, Failure> {
        match conn {
            Some(conn) => {
                let mut state = catalog::read_global(&mut *conn, &r.roles(), &r.database)
                    .await
                    .map_err(Failure::database)?;
                state.local = Some(
                    catalog::read_local(conn, &r.schema)
                        .await
                        .map_err(Failure::database)?,
                );
                Ok(state)
            }
            None => {
                let mut admin = self
                    .store
                    .admin()
                    .acquire()
                    .await
                    .map_err(Failure::database)?;
                catalog::read_global(&mut admin, &r.roles(), &r.database)
                    .await
                    .map_err(Failure::database)
            }
        }
    }

    async fn record(&self, tenant: &str) -> Result<Option<TenantRecord>, Failure> {
        self.store.tenant(tenant).await.map_err(Failure::database)
    }

    /// `PUT /v1/tenants/{tenant}`.
    pub async fn put(
        &self,
        tenant: &str,
        spec: &TenantSpec,
        dry_run: bool,
        caller: &Caller,
    ) -> Result<PutResult, Failure> {
        let r = crate::spec::resolve(tenant, spec, self.store.admin_database())
            .map_err(Failure::Invalid)?;
        let result = self.put_resolved(&r, spec, dry_run).await;
        let (plan, outcome, detail) = match &result {
            Ok(done) if dry_run => (done.plan.clone(), "planned", None),
            Ok(done) if done.plan.is_empty() => (Vec::new(), "unchanged", None),
            Ok(done) => (done.plan.clone(), "applied", None),
            Err(Failure::Statement { step, .. }) => (
                vec![step.clone()],
                "failed",
                Some(
                    result
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
            ),
            Err(err) => (Vec::new(), "failed", Some(err.to_string())),
        };
        self.audit(caller, tenant, "put", dry_run, &plan, outcome, detail)
            .await;
        result
    }

    async fn put_resolved(
        &self,
        r: &Resolved,
        spec: &TenantSpec,
        dry_run: bool,
    ) -> Result<PutResult, Failure> {
        let previous = self.record(&r.tenant).await?;
        let known = previous.as_ref().filter(|p| p.status != "dropped");
        if let Some(known) = known
            && known.database != r.database
        {
            return Err(Failure::Conflict(format!(
                "tenant {} lives in database {}; its database cannot change (DELETE it first)",
                r.tenant, known.database
            )));
        }
        let recorded = known.map(|k| k.verifiers.clone()).unwrap_or_default();
        let before = self.state(r, None).await?;
        if known.is_none()
            && let Some(role) = r
                .roles()
                .into_iter()
                .find(|name| before.roles.contains_key(name))
        {
            return Err(Failure::Conflict(format!(
                "role {role} exists and is not managed by the API: it is not taken over"
            )));
        }
        let mut api_database = known.is_some_and(|k| k.created_database);
        let will_create = !before.database_exists && r.create_database;
        let first =
            plan::put(r, &before, &recorded, api_database || will_create).map_err(plan_failure)?;
        let mut steps = Vec::new();
        if let Some(create) = &first.create_database {
            steps.push(create.step.clone());
            api_database = true;
        }
        if dry_run {
            // What the transaction would run: read in the database when it exists.
            let plan = if before.database_exists {
                let pool = self.store.pool(&r.database);
                let mut conn = pool.acquire().await.map_err(Failure::database)?;
                let state = self.state(r, Some(&mut conn)).await?;
                plan::put(r, &state, &recorded, api_database).map_err(plan_failure)?
            } else {
                first
            };
            steps.extend(plan.statements.iter().map(|s| s.step.clone()));
            return Ok(PutResult {
                tenant: r.tenant.clone(),
                dry_run,
                plan: steps,
                credentials: Vec::new(),
                created: false,
            });
        }
        let mut record = TenantRecord {
            name: r.tenant.clone(),
            spec: serde_json::to_value(spec).unwrap_or_default(),
            database: r.database.clone(),
            created_database: api_database && known.is_some_and(|k| k.created_database),
            verifiers: recorded.clone(),
            status: "active".into(),
        };
        self.store
            .save_tenant(&record)
            .await
            .map_err(Failure::database)?;
        if let Some(create) = &first.create_database {
            let started = Instant::now();
            match sqlx::query(&create.execute)
                .execute(self.store.admin())
                .await
            {
                Ok(_) => {}
                // Made meanwhile by a concurrent PUT: there it is.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
                Err(err) => {
                    return Err(statement_failure(0, create, err));
                }
            }
            metrics::histogram!("devops_api_statement_seconds")
                .record(started.elapsed().as_secs_f64());
            record.created_database = true;
            self.store
                .save_tenant(&record)
                .await
                .map_err(Failure::database)?;
        }
        let pool = self.store.pool(&r.database);
        let mut conn = pool.acquire().await.map_err(Failure::database)?;
        let mut tx = self.begin(&mut conn, &r.tenant).await?;
        let state = self.state(r, Some(&mut tx)).await?;
        let plan = plan::put(r, &state, &recorded, api_database).map_err(plan_failure)?;
        let offset = steps.len();
        execute(&mut tx, &plan.statements, offset).await?;
        tx.commit().await.map_err(Failure::database)?;
        metrics::histogram!("devops_api_plan_statements")
            .record((offset + plan.statements.len()) as f64);
        let created = plan.statements.iter().any(|s| {
            s.step.sql
                == format!(
                    "CREATE ROLE {} NOLOGIN",
                    ident(&r.group(crate::spec::Group::Owner))
                )
        });
        if !plan.verifiers.is_empty() && plan.verifiers != recorded {
            record.verifiers = plan.verifiers.clone();
            self.store
                .save_tenant(&record)
                .await
                .map_err(Failure::database)?;
        }
        let Plan {
            statements,
            credentials,
            ..
        } = plan;
        steps.extend(statements.into_iter().map(|s| s.step));
        Ok(PutResult {
            tenant: r.tenant.clone(),
            dry_run,
            plan: steps,
            credentials,
            created,
        })
    }

    /// `GET /v1/tenants/{tenant}`.
    pub async fn get(&self, tenant: &str) -> Result<TenantView, Failure> {
        crate::names::check("tenant", tenant).map_err(|e| Failure::Invalid(vec![e]))?;
        let record = self
            .record(tenant)
            .await?
            .ok_or_else(|| Failure::NotFound(format!("tenant {tenant} is not known")))?;
        let spec: TenantSpec = serde_json::from_value(record.spec.clone())
            .map_err(|e| Failure::Internal(format!("the recorded spec cannot be read: {e}")))?;
        let r = crate::spec::resolve(tenant, &spec, self.store.admin_database())
            .map_err(Failure::Invalid)?;
        let global = self.state(&r, None).await?;
        let state = if global.database_exists {
            let pool = self.store.pool(&r.database);
            let mut conn = pool.acquire().await.map_err(Failure::database)?;
            self.state(&r, Some(&mut conn)).await?
        } else {
            global
        };
        let drift = if record.status == "active" {
            match plan::put(&r, &state, &record.verifiers, record.created_database) {
                Ok(plan) => plan.steps(),
                Err(plan::PlanError::NoDatabase(_)) => Vec::new(),
                Err(err) => return Err(plan_failure(err)),
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
                database: state.database_exists,
                schema: local.schema_owner.is_some(),
                schema_owner: local.schema_owner.clone(),
                roles: state.roles.values().cloned().collect(),
                extensions: r
                    .extensions
                    .iter()
                    .filter(|e| local.extensions.contains(*e))
                    .cloned()
                    .collect(),
            },
            drift,
        })
    }

    /// `GET /v1/tenants`.
    pub async fn list(&self) -> Result<Vec<TenantSummary>, Failure> {
        let records = self.store.tenants().await.map_err(Failure::database)?;
        Ok(records
            .into_iter()
            .map(|r| TenantSummary {
                tenant: r.name,
                database: r.database,
                status: r.status,
            })
            .collect())
    }

    /// The recorded tenant, resolved (404 when it is not known or was dropped).
    async fn known(
        &self,
        tenant: &str,
        dropped_ok: bool,
    ) -> Result<(TenantRecord, Resolved), Failure> {
        crate::names::check("tenant", tenant).map_err(|e| Failure::Invalid(vec![e]))?;
        let record = self
            .record(tenant)
            .await?
            .filter(|r| dropped_ok || r.status != "dropped")
            .ok_or_else(|| Failure::NotFound(format!("tenant {tenant} is not known")))?;
        let spec: TenantSpec = serde_json::from_value(record.spec.clone())
            .map_err(|e| Failure::Internal(format!("the recorded spec cannot be read: {e}")))?;
        let r = crate::spec::resolve(tenant, &spec, self.store.admin_database())
            .map_err(Failure::Invalid)?;
        Ok((record, r))
    }

    /// `POST /v1/tenants/{tenant}/logins/{login}/rotate`.
    pub async fn rotate(
        &self,
        tenant: &str,
        login: &str,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        let result = self.rotate_inner(tenant, login).await;
        let (plan, outcome, detail) = match &result {
            Ok(done) => (done.plan.clone(), "applied", None),
            Err(err) => (Vec::new(), "failed", Some(err.to_string())),
        };
        self.audit(caller, tenant, "rotate", false, &plan, outcome, detail)
            .await;
        result
    }

    async fn rotate_inner(&self, tenant: &str, login: &str) -> Result<ChangeResult, Failure> {
        crate::names::check("login", login).map_err(|e| Failure::Invalid(vec![e]))?;
        let (record, r) = self.known(tenant, false).await?;
        let declared = r.logins.iter().find(|l| l.name == login).ok_or_else(|| {
            Failure::NotFound(format!("tenant {tenant} declares no login {login}"))
        })?;
        if declared
            .password
            .as_ref()
            .is_some_and(|p| p.scram_verifier.is_some())
        {
            return Err(Failure::Conflict(format!(
                "login {login}'s password is given as a SCRAM verifier: PUT a new verifier instead"
            )));
        }
        let pool = self.store.pool(&record.database);
        let mut conn = pool.acquire().await.map_err(Failure::database)?;
        let mut tx = self.begin(&mut conn, tenant).await?;
        let state = self.state(&r, Some(&mut tx)).await?;
        if !state.roles.contains_key(login) {
            return Err(Failure::NotFound(format!(
                "login {login} does not exist yet: PUT the tenant first"
            )));
        }
        let password = scram::generate().map_err(|e| Failure::Internal(e.to_string()))?;
        let verifier = scram::verifier(&password).map_err(|e| Failure::Internal(e.to_string()))?;
        let statement = Statement {
            step: Step {
                action: "alter role".into(),
                object: format!("role {login}"),
                sql: format!("ALTER ROLE {} PASSWORD {REDACTED}", ident(login)),
            },
            execute: format!(
                "ALTER ROLE {} PASSWORD {}",
                ident(login),
                literal(&verifier)
            ),
        };
        execute(&mut tx, std::slice::from_ref(&statement), 0).await?;
        tx.commit().await.map_err(Failure::database)?;
        Ok(ChangeResult {
            tenant: tenant.to_owned(),
            plan: vec![statement.step],
            credentials: vec![Credential {
                login: login.to_owned(),
                password,
            }],
        })
    }

    /// `DELETE /v1/tenants/{tenant}?mode=revoke|drop`.
    pub async fn delete(
        &self,
        tenant: &str,
        drop: bool,
        caller: &Caller,
    ) -> Result<ChangeResult, Failure> {
        let result = self.delete_inner(tenant, drop).await;
        let (plan, outcome, detail) = match &result {
            Ok(done) if done.plan.is_empty() => (Vec::new(), "unchanged", None),
            Ok(done) => (done.plan.clone(), "applied", None),
            Err(err) => (Vec::new(), "failed", Some(err.to_string())),
        };
        let action = if drop { "drop" } else { "revoke" };
        self.audit(caller, tenant, action, false, &plan, outcome, detail)
            .await;
        result
    }

    async fn delete_inner(&self, tenant: &str, drop: bool) -> Result<ChangeResult, Failure> {
        let (mut record, r) = self.known(tenant, true).await?;
        if record.status == "dropped" && !drop {
            return Err(Failure::Conflict(format!("tenant {tenant} was dropped")));
        }
        let global = self.state(&r, None).await?;
        let mut steps = Vec::new();
        if global.database_exists {
            let pool = self.store.pool(&record.database);
            let mut conn = pool.acquire().await.map_err(Failure::database)?;
            let mut tx = self.begin(&mut conn, tenant).await?;
            let state = self.state(&r, Some(&mut tx)).await?;
            let statements = if drop {
                plan::drop(&r, &state)
            } else {
                plan::revoke(&r, &state)
            };
            execute(&mut tx, &statements, 0).await?;
            tx.commit().await.map_err(Failure::database)?;
            steps.extend(statements.into_iter().map(|s| s.step));
        } else if drop {
            // No database: only the roles are left to drop.
            let statements: Vec<Statement> = plan::drop(&r, &global)
                .into_iter()
                .filter(|s| s.step.action == "drop role")
                .collect();
            let mut admin = self
                .store
                .admin()
                .acquire()
                .await
                .map_err(Failure::database)?;
            let mut tx = self.begin(&mut admin, tenant).await?;
            execute(&mut tx, &statements, 0).await?;
            tx.commit().await.map_err(Failure::database)?;
            steps.extend(statements.into_iter().map(|s| s.step));
        }
        if drop && record.created_database && global.database_exists {
            self.store.forget(&record.database).await;
            let statement = Statement {
                step: Step {
                    action: "drop database".into(),
                    object: format!("database {}", record.database),
                    sql: format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        ident(&record.database)
                    ),
                },
                execute: format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&record.database)
                ),
            };
            sqlx::query(&statement.execute)
                .execute(self.store.admin())
                .await
                .map_err(|e| statement_failure(steps.len(), &statement, e))?;
            steps.push(statement.step);
        }
        record.status = if drop { "dropped" } else { "revoked" }.into();
        self.store
            .save_tenant(&record)
            .await
            .map_err(Failure::database)?;
        Ok(ChangeResult {
            tenant: tenant.to_owned(),
            plan: steps,
            credentials: Vec::new(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        caller: &Caller,
        tenant: &str,
        action: &str,
        dry_run: bool,
        plan: &[Step],
        outcome: &str,
        detail: Option<String>,
    ) {
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
        if let Err(error) = self.store.audit(entry).await {
            tracing::error!(%error, tenant, action, "cannot write the audit entry");
        }
    }
}

/// Runs the statements in order; the first failure names its statement.
async fn execute(
    tx: &mut PgConnection,
    statements: &[Statement],
    offset: usize,
) -> Result<(), Failure> {
    for (at, statement) in statements.iter().enumerate() {
        let started = Instant::now();
        sqlx::query(&statement.execute)
            .execute(&mut *tx)
            .await
            .map_err(|e| statement_failure(offset + at, statement, e))?;
        metrics::histogram!("devops_api_statement_seconds").record(started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn statement_failure(index: usize, statement: &Statement, err: sqlx::Error) -> Failure {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("55P03") => Failure::Busy(
                "a lock was not granted within lock_timeout; nothing was changed".into(),
            ),
            _ => Failure::Statement {
                index,
                step: statement.step.clone(),
                error: format!(
                    "{} (SQLSTATE {})",
                    db.message(),
                    db.code().unwrap_or_default()
                ),
            },
        },
        other => Failure::database(other),
    }
}

fn plan_failure(err: plan::PlanError) -> Failure {
    match err {
        plan::PlanError::NoDatabase(_) => Failure::Invalid(vec![err.to_string()]),
        plan::PlanError::Random(_) => Failure::Internal(err.to_string()),
    }
}
