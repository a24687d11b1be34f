//! The connections (the admin database's pool and one per tenant database, bounded), the
//! API's own schema `devops_api` (created by embedded migrations at start): the tenants
//! it manages and the append-only audit log.

use std::{collections::BTreeMap, str::FromStr, sync::Mutex, time::Duration};

use serde::Serialize;
use sqlx::{
    PgConnection, PgPool, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions, types::Oid},
};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::config::DatabaseConfig;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The API's own schema.
pub const SCHEMA: &str = "devops_api";

/// The `search_path` of every connection the API opens: nothing a tenant creates is on
/// it (`pg_temp` last, so no temporary object shadows a catalog one either).
pub const PINNED_SEARCH_PATH: &str = "pg_catalog,pg_temp";

/// What kind of object a tenant owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Role,
    Schema,
    Database,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Schema => "schema",
            Self::Database => "database",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "role" => Some(Self::Role),
            "schema" => Some(Self::Schema),
            "database" => Some(Self::Database),
            _ => None,
        }
    }
}

/// An object a tenant's PUT created, by identity: its OID (with, for a schema, the OID of
/// its database).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owned {
    pub kind: Kind,
    /// The database's OID for a schema; 0 for roles and databases.
    pub scope: u32,
    pub oid: u32,
    /// The name it was created with.
    pub name: String,
    /// For a role: `owner`, `writer`, `reader` or `login`.
    pub role_kind: Option<String>,
}

/// A tenant as the API recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub name: String,
    /// The spec of the last successful PUT, with any SCRAM verifier redacted.
    pub spec: serde_json::Value,
    pub database: String,
    pub verifiers: BTreeMap<String, String>,
    pub status: String,
    /// What its PUTs created.
    pub owned: Vec<Owned>,
}

impl TenantRecord {
    /// Whether the role with this OID is the tenant's.
    pub fn owns_role(&self, oid: u32) -> bool {
        self.owned
            .iter()
            .any(|o| o.kind == Kind::Role && o.oid == oid)
    }

    /// The OID of the database the tenant created, if it did.
    pub fn created_database(&self) -> Option<u32> {
        self.owned
            .iter()
            .find(|o| o.kind == Kind::Database)
            .map(|o| o.oid)
    }
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub actor: String,
    pub request_id: String,
    pub tenant: String,
    /// `put`, `rotate`, `revoke`, `drop`.
    pub action: String,
    pub dry_run: bool,
    #[schema(value_type = Vec<crate::plan::Step>)]
    pub plan: serde_json::Value,
    /// `applied`, `unchanged`, `planned`, `failed`.
    pub outcome: String,
    pub detail: Option<String>,
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub actor: &'a str,
    pub request_id: &'a str,
    pub tenant: &'a str,
    pub action: &'a str,
    pub dry_run: bool,
    pub plan: serde_json::Value,
    pub outcome: &'a str,
    pub detail: Option<String>,
}

/// The connections.
pub struct Store {
    admin: PgPool,
    /// One connection of its own for the readiness probe: a flood of requests holding the
    /// admin pool does not make the API look down.
    probe: PgPool,
    admin_database: String,
    options: PgConnectOptions,
    config: DatabaseConfig,
    /// Tenant database -> its pool, with the last use (least recently used closed first).
    pools: Mutex<BTreeMap<String, (PgPool, u64)>>,
    uses: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("admin_database", &self.admin_database)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The pools, not yet connected (the API starts, and says it is not ready, while the
    /// database is down).
    pub fn new(config: &DatabaseConfig) -> Result<Self, String> {
        let options = PgConnectOptions::from_str(config.url.expose())
            .map_err(|e| format!("database.url: {e}"))?
            .application_name("devops-api")
            // No name a tenant picks can put code on the API's path: functions and
            // operators resolve in pg_catalog only (pg_temp last: never a function).
            .options([("search_path", PINNED_SEARCH_PATH)]);
        let admin_database = options
            .get_database()
            .map(str::to_owned)
            .or_else(|| options.get_username().to_owned().into())
            .unwrap_or_else(|| "postgres".into());
        let admin = Self::pool_options(config).connect_lazy_with(options.clone());
        let probe = Self::pool_options(config)
            .max_connections(1)
            .connect_lazy_with(options.clone());
        Ok(Self {
            admin,
            probe,
            admin_database,
            options,
            config: config.clone(),
            pools: Mutex::new(BTreeMap::new()),
            uses: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn pool_options(config: &DatabaseConfig) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
            .idle_timeout(Some(Duration::from_secs(300)))
    }

    /// The database the admin connection is to (the default tenant database).
    pub fn admin_database(&self) -> &str {
        &self.admin_database
    }

    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// The readiness probe's own connection.
    pub fn probe(&self) -> &PgPool {
        &self.probe
    }

    pub fn config(&self) -> &DatabaseConfig {
        &self.config
    }

    /// A pool to `database` (the admin pool for the admin database).
    pub fn pool(&self, database: &str) -> PgPool {
        if database == self.admin_database {
            return self.admin.clone();
        }
        let use_number = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pool, last)) = pools.get_mut(database) {
            *last = use_number;
            return pool.clone();
        }
        while pools.len() >= self.config.max_databases {
            let oldest = pools
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest
                && let Some((pool, _)) = pools.remove(&name)
            {
                tokio::spawn(async move { pool.close().await });
            }
        }
        let pool = Self::pool_options(&self.config)
            .connect_lazy_with(self.options.clone().database(database));
        pools.insert(database.to_owned(), (pool.clone(), use_number));
        pool
    }

    /// Closes the pool to `database` (before it is dropped).
    pub async fn forget(&self, database: &str) {
        let removed = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(database);
        if let Some((pool, _)) = removed {
            pool.close().await;
        }
    }

    /// Creates the schema `devops_api` and runs the migrations in it (on a connection
    /// of its own whose search_path is that schema).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE SCHEMA IF NOT EXISTS devops_api")
            .execute(&self.admin)
            .await?;
        // A schema of that name someone else owns is not the API's: whoever owns it could
        // rewrite the audit log or the record of what tenants own.
        let owned_by_us: bool = sqlx::query_scalar(
            "SELECT n.nspowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER)
             FROM pg_catalog.pg_namespace n WHERE n.nspname = 'devops_api'",
        )
        .fetch_one(&self.admin)
        .await?;
        if !owned_by_us {
            return Err(sqlx::Error::Configuration(
                "the schema devops_api exists and is not owned by the admin role: it is not used"
                    .into(),
            ));
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(self.config.acquire_timeout_secs))
            .connect_with(
                self.options
                    .clone()
                    .options([("search_path", format!("{SCHEMA},pg_catalog,pg_temp"))]),
            )
            .await?;
        let migrated = MIGRATIONS.run(&pool).await;
        pool.close().await;
        migrated.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
    }

    /// The tenant's record and what it owns, read on `conn` (inside the caller's
    /// transaction, under the tenant's lock, so it cannot change meanwhile).
    pub async fn tenant(
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<TenantRecord>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT name, spec, database, verifiers, status
             FROM devops_api.tenants WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut record = record(&row)?;
        record.owned = Self::owned(conn, name).await?;
        Ok(Some(record))
    }

    async fn owned(conn: &mut PgConnection, tenant: &str) -> Result<Vec<Owned>, sqlx::Error> {
        let rows: Vec<(String, Oid, Oid, String, Option<String>)> = sqlx::query_as(
            "SELECT kind, scope, oid, name, role_kind FROM devops_api.owned
             WHERE tenant = $1 ORDER BY kind, scope, oid",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(kind, scope, oid, name, role_kind)| {
                Some(Owned {
                    kind: Kind::parse(&kind)?,
                    scope: scope.0,
                    oid: oid.0,
                    name,
                    role_kind,
                })
            })
            .collect())
    }

    /// Every tenant, by name.
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT name, spec, database, verifiers, status
             FROM devops_api.tenants ORDER BY name",
        )
        .fetch_all(&self.admin)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Writes the tenant's record and what it owns (replacing what was recorded), inside
    /// the caller's transaction: the record changes with the catalog or not at all.
    pub async fn save_tenant(
        conn: &mut PgConnection,
        record: &TenantRecord,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO devops_api.tenants (name, spec, database, verifiers, status)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, database = EXCLUDED.database,
                 verifiers = EXCLUDED.verifiers, status = EXCLUDED.status, updated_at = pg_catalog.now()",
        )
        .bind(&record.name)
        .bind(&record.spec)
        .bind(&record.database)
        .bind(serde_json::to_value(&record.verifiers).unwrap_or_default())
        .bind(&record.status)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM devops_api.owned WHERE tenant = $1")
            .bind(&record.name)
            .execute(&mut *conn)
            .await?;
        for owned in &record.owned {
            sqlx::query(
                "INSERT INTO devops_api.owned (tenant, kind, scope, oid, name, role_kind)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&record.name)
            .bind(owned.kind.as_str())
            .bind(Oid(owned.scope))
            .bind(Oid(owned.oid))
            .bind(&owned.name)
            .bind(&owned.role_kind)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Records that `tenant` created the database `oid`, committed at once: `CREATE
    /// DATABASE` runs outside any transaction, so what it made is known to be the
    /// tenant's even if the rest of the PUT fails. A tenant with no record yet gets a
    /// record marked `pending` (which nothing can drop through, and the next PUT adopts).
    pub async fn record_created_database(
        &self,
        tenant: &str,
        database: &str,
        oid: u32,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.admin.begin().await?;
        sqlx::query(
            "INSERT INTO devops_api.tenants (name, spec, database, status)
             VALUES ($1, '{}', $2, 'pending') ON CONFLICT (name) DO NOTHING",
        )
        .bind(tenant)
        .bind(database)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO devops_api.owned (tenant, kind, scope, oid, name)
             VALUES ($1, 'database', 0, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(Oid(oid))
        .bind(database)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The tenant (other than `except`) that recorded the object, if one did.
    pub async fn owner_of(
        conn: &mut PgConnection,
        kind: Kind,
        scope: u32,
        oid: u32,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT tenant FROM devops_api.owned WHERE kind = $1 AND scope = $2 AND oid = $3",
        )
        .bind(kind.as_str())
        .bind(Oid(scope))
        .bind(Oid(oid))
        .fetch_optional(&mut *conn)
        .await
    }

    /// Live tenants whose roles could share names with `tenant`'s: one name is the
    /// other's followed by `_` (tenant `a`'s logins are `a_*`, which holds `a_b_owner`).
    pub async fn overlapping(
        conn: &mut PgConnection,
        tenant: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT name FROM devops_api.tenants
             WHERE status IN ('active', 'revoked') AND name <> $1
               AND (pg_catalog.starts_with(name, $1 || '_') OR pg_catalog.starts_with($1, name || '_'))
             ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await
    }

    /// Live tenants other than `except` whose schema is in `database`.
    pub async fn tenants_in(
        conn: &mut PgConnection,
        database: &str,
        except: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT name FROM devops_api.tenants
             WHERE database = $1 AND name <> $2 AND status IN ('active', 'revoked')
             ORDER BY name",
        )
        .bind(database)
        .bind(except)
        .fetch_all(&mut *conn)
        .await
    }

    /// Every role any tenant recorded (their OIDs): a database a tenant created may carry
    /// grants to other tenants' roles, which are not strangers there.
    pub async fn tenant_role_oids(conn: &mut PgConnection) -> Result<Vec<u32>, sqlx::Error> {
        let oids: Vec<Oid> =
            sqlx::query_scalar("SELECT oid FROM devops_api.owned WHERE kind = 'role'")
                .fetch_all(&mut *conn)
                .await?;
        Ok(oids.into_iter().map(|o| o.0).collect())
    }

    /// Appends an audit entry on `conn` (inside the change's transaction: a change that
    /// cannot be audited does not happen).
    pub async fn audit(conn: &mut PgConnection, entry: NewAudit<'_>) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO devops_api.audit_log (actor, request_id, tenant, action, dry_run, plan, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(entry.actor)
        .bind(entry.request_id)
        .bind(entry.tenant)
        .bind(entry.action)
        .bind(entry.dry_run)
        .bind(&entry.plan)
        .bind(entry.outcome)
        .bind(&entry.detail)
        .fetch_one(&mut *conn)
        .await
    }

    /// Entries oldest first, of one tenant or all, of the tenants matching one of
    /// `within` (SQL `LIKE` patterns, [`crate::auth::Scope::like_patterns`]; `None`: every
    /// tenant, an empty list: none), from `since`, at most `limit`.
    pub async fn audit_entries(
        &self,
        tenant: Option<&str>,
        within: Option<&[String]>,
        since: Option<OffsetDateTime>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, at, actor, request_id, tenant, action, dry_run, plan, outcome, detail
             FROM devops_api.audit_log
             WHERE ($1::text IS NULL OR tenant = $1)
               AND ($2::text[] IS NULL OR tenant LIKE ANY ($2::text[]))
               AND ($3::timestamptz IS NULL OR at >= $3)
             ORDER BY id LIMIT $4",
        )
        .bind(tenant)
        .bind(within)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.admin)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    request_id: row.try_get("request_id")?,
                    tenant: row.try_get("tenant")?,
                    action: row.try_get("action")?,
                    dry_run: row.try_get("dry_run")?,
                    plan: row.try_get("plan")?,
                    outcome: row.try_get("outcome")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

fn record(row: &sqlx::postgres::PgRow) -> Result<TenantRecord, sqlx::Error> {
    let verifiers: serde_json::Value = row.try_get("verifiers")?;
    Ok(TenantRecord {
        name: row.try_get("name")?,
        spec: row.try_get("spec")?,
        database: row.try_get("database")?,
        verifiers: serde_json::from_value(verifiers).unwrap_or_default(),
        status: row.try_get("status")?,
        owned: Vec::new(),
    })
}
