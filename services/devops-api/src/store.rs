//! The connections (the admin database's pool and one per tenant database, bounded), the
//! API's own schema `devops_api` (created by embedded migrations at start): the tenants
//! it manages and the append-only audit log.

use std::{collections::BTreeMap, str::FromStr, sync::Mutex, time::Duration};

use serde::Serialize;
use sqlx::{
    PgPool, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::config::DatabaseConfig;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The API's own schema.
pub const SCHEMA: &str = "devops_api";

/// A tenant as the API recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub name: String,
    pub spec: serde_json::Value,
    pub database: String,
    pub created_database: bool,
    pub verifiers: BTreeMap<String, String>,
    pub status: String,
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
            .application_name("devops-api");
        let admin_database = options
            .get_database()
            .map(str::to_owned)
            .or_else(|| options.get_username().to_owned().into())
            .unwrap_or_else(|| "postgres".into());
        let admin = Self::pool_options(config).connect_lazy_with(options.clone());
        Ok(Self {
            admin,
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
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(self.config.acquire_timeout_secs))
            .connect_with(self.options.clone().options([("search_path", SCHEMA)]))
            .await?;
        let migrated = MIGRATIONS.run(&pool).await;
        pool.close().await;
        migrated.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT name, spec, database, created_database, verifiers, status
             FROM devops_api.tenants WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.admin)
        .await?;
        row.map(|row| record(&row)).transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT name, spec, database, created_database, verifiers, status
             FROM devops_api.tenants ORDER BY name",
        )
        .fetch_all(&self.admin)
        .await?;
        rows.iter().map(record).collect()
    }

    /// Records the tenant (before its statements run, so that roles a failed run left
    /// are known to be this tenant's).
    pub async fn save_tenant(&self, record: &TenantRecord) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO devops_api.tenants (name, spec, database, created_database, verifiers, status)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, database = EXCLUDED.database,
                 created_database = devops_api.tenants.created_database OR EXCLUDED.created_database,
                 verifiers = EXCLUDED.verifiers, status = EXCLUDED.status, updated_at = now()",
        )
        .bind(&record.name)
        .bind(&record.spec)
        .bind(&record.database)
        .bind(record.created_database)
        .bind(serde_json::to_value(&record.verifiers).unwrap_or_default())
        .bind(&record.status)
        .execute(&self.admin)
        .await
        .map(drop)
    }

    pub async fn audit(&self, entry: NewAudit<'_>) -> Result<i64, sqlx::Error> {
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
        .fetch_one(&self.admin)
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
        created_database: row.try_get("created_database")?,
        verifiers: serde_json::from_value(verifiers).unwrap_or_default(),
        status: row.try_get("status")?,
    })
}
