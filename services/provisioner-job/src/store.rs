//! The aggregation database, PostgreSQL or SQLite.
//!
//! The SQL is the same for both backends; [`platform::each_backend!`] writes a block once and
//! compiles it once per backend. What differs is how one run at a time is enforced:
//!
//! - PostgreSQL: a session advisory lock held on the run's own connection; each batch is
//!   a transaction on that connection.
//! - SQLite: the run is one `BEGIN IMMEDIATE` transaction (SQLite's writer lock, waited
//!   for up to the busy timeout); each batch is a savepoint inside it, so a failed batch
//!   still rolls back alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    Acquire, Connection, Executor, QueryBuilder, Row, Sqlite, Transaction,
    migrate::Migrator,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions},
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::DatabaseConfig;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long closing the connections may take at the end of a run.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Key of the PostgreSQL advisory lock that serialises runs ("provisio" in ASCII).
pub const RUN_LOCK_KEY: i64 = 0x7072_6f76_6973_696f;

/// Database failures, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is not initialised ({0}); run `provisioner-job migrate` or an apply first"
    )]
    NotMigrated(String),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// A client row as it is in the database (never its API key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingClient {
    pub cluster_id: String,
    pub aggregator_id: String,
    /// `None` when the aggregator row is missing.
    pub aggregator_info: Option<String>,
    pub has_crypto: bool,
}

/// Everything the job needs to know about the database, read in one go.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    pub clusters: BTreeSet<String>,
    pub clients: BTreeMap<String, ExistingClient>,
}

/// A client to create: its three rows commit together.
#[derive(Debug)]
pub struct NewClient {
    pub name: String,
    pub cluster_id: String,
    pub aggregator_id: String,
    pub aggregator_info: String,
    pub api_key: SecretString,
    pub crypto_key: SecretString,
}

impl NewClient {
    /// The secrets generated for this client.
    pub fn secrets(&self) -> [&SecretString; 2] {
        [&self.api_key, &self.crypto_key]
    }
}

/// The changes that bring a drifted client back to its declaration. The API key is never
/// part of it.
#[derive(Debug)]
pub struct Repair {
    pub name: String,
    pub aggregator_id: String,
    pub aggregator_info: Option<String>,
    pub cluster_id: Option<String>,
    pub crypto_key: Option<SecretString>,
}

impl Repair {
    /// The secrets generated for this repair.
    pub fn secrets(&self) -> Option<&SecretString> {
        self.crypto_key.as_ref()
    }
}

/// One row of `provisioning_runs`.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub started_at: OffsetDateTime,
    pub config_sha256: String,
}

/// A connection pool to the aggregation database.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A run holding the database's run lock. Call [`RunSession::finish`] to release it;
/// dropping it (on an error) releases it too, by closing the connection or rolling back.
pub enum RunSession {
    Postgres(PoolConnection<Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// The span of one database operation: see [`platform::telemetry::linked`] for why it
/// is linked to the caller's span rather than nested in it.
fn db_span(operation: &'static str) -> tracing::Span {
    platform::telemetry::linked(tracing::info_span!(parent: None, "db", operation))
}

/// Runs one database operation in its [`db_span`].
async fn traced<T>(
    operation: &'static str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    work.instrument(db_span(operation)).await
}

/// Every client with what classification needs (never the API key), in one read.
pub const STATE_QUERY: &str = "SELECT c.client_name, c.cluster_id, c.aggregator_id, a.aggregator_info, \
        CASE WHEN EXISTS (SELECT 1 FROM crypto_configurations k WHERE k.client_name = c.client_name) \
             THEN 1 ELSE 0 END AS has_crypto \
    FROM client_configurations c \
    LEFT JOIN aggregator_configurations a ON a.aggregator_id = c.aggregator_id";

/// A finished run in one statement.
const INSERT_FINISHED_RUN: &str = "INSERT INTO provisioning_runs \
     (run_id, started_at, finished_at, config_sha256, outcome, summary_json) \
     VALUES ($1, $2, $3, $4, $5, $6)";

/// The session holding the run lock, as PostgreSQL shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: i32,
    pub application_name: String,
    /// When its connection was opened (UTC, RFC 3339).
    pub since: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.application_name.is_empty() {
            "no application_name"
        } else {
            &self.application_name
        };
        write!(
            f,
            "pid {} ({name}), connected since {}",
            self.pid, self.since
        )
    }
}

/// "No such table": PostgreSQL's `undefined_table`, SQLite's message.
fn is_missing_table(err: &dyn sqlx::error::DatabaseError) -> bool {
    err.code().is_some_and(|code| code == "42P01") || err.message().starts_with("no such table")
}

fn sqlite_file_exists(options: &SqliteConnectOptions) -> bool {
    let file = options.get_filename();
    // `:memory:` and friends are not files.
    file.as_os_str() == ":memory:" || file.exists()
}

/// The state query, for any executor.
macro_rules! read_state {
    ($conn:expr) => {{
        let conn = $conn;
        let clusters: Vec<String> =
            sqlx::query_scalar("SELECT cluster_id FROM cluster_configurations")
                .fetch_all(&mut *conn)
                .await?;
        let rows = sqlx::query(STATE_QUERY).fetch_all(&mut *conn).await?;
        let mut clients = BTreeMap::new();
        for row in rows {
            let has_crypto: i32 = row.try_get("has_crypto")?;
            clients.insert(
                row.try_get::<String, _>("client_name")?,
                ExistingClient {
                    cluster_id: row.try_get("cluster_id")?,
                    aggregator_id: row.try_get("aggregator_id")?,
                    aggregator_info: row.try_get("aggregator_info")?,
                    has_crypto: has_crypto != 0,
                },
            );
        }
        Ok(DbState {
            clusters: clusters.into_iter().collect(),
            clients,
        })
    }};
}

/// What a run may do to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only: a SQLite file that does not exist is an error, never created.
    ReadOnly,
    /// Read and write: a SQLite file is created when missing.
    ReadWrite,
}

/// How the job's connections name themselves in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "provisioner-job";

impl Store {
    /// Connects, waiting at most `database.connect_timeout_secs`.
    pub async fn connect(config: &DatabaseConfig, access: Access) -> Result<Self, StoreError> {
        traced("connect", async move {
            let url = config.url.expose();
            let connect_error = |reason: String| StoreError::Connect {
                url: config.url.redacted(),
                reason,
            };
            if config.url.scheme() == "sqlite" {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| connect_error(e.to_string()))?;
                if access == Access::ReadOnly && !sqlite_file_exists(&options) {
                    return Err(StoreError::NotMigrated(format!(
                        "the SQLite file {} does not exist",
                        options.get_filename().display()
                    )));
                }
                let options = options
                    .create_if_missing(access == Access::ReadWrite)
                    .read_only(access == Access::ReadOnly)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(config.lock_wait());
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(config.connect_timeout())
                    .connect_with(options)
                    .await
                    .map_err(|e| connect_error(e.to_string()))?;
                return Ok(Self::Sqlite(pool));
            }
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| connect_error(e.to_string()))?
                .application_name(APPLICATION_NAME)
                .options([
                    (
                        "statement_timeout",
                        format!("{}ms", config.statement_timeout_secs.as_millis()),
                    ),
                    (
                        "lock_timeout",
                        format!("{}ms", config.lock_timeout_secs.as_millis()),
                    ),
                ]);
            // One direct attempt first: a pool only says "timed out", this says why.
            match tokio::time::timeout(
                config.connect_timeout(),
                PgConnection::connect_with(&options),
            )
            .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                }
                Ok(Err(err)) => return Err(connect_error(err.to_string())),
                Err(_) => {
                    return Err(connect_error(format!(
                        "no answer within {}",
                        humantime::format_duration(config.connect_timeout_secs)
                    )));
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(config.connect_timeout())
                .connect_with(options)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            Ok(Self::Postgres(pool))
        })
        .await
    }

    /// Closes every connection and waits until they are closed.
    ///
    /// Bounded: a connection still inside SQLite's busy wait (a lock wait given up on
    /// SIGTERM) would otherwise hold the exit for the whole `lock_wait_secs`.
    pub async fn close(&self) {
        let closing = async { platform::each_backend!(self, Self, |pool| { pool.close().await }) };
        if tokio::time::timeout(CLOSE_WAIT, closing.instrument(db_span("close")))
            .await
            .is_err()
        {
            tracing::debug!("connections still busy at exit; leaving them to the process exit");
        }
    }

    /// How this backend keeps runs apart, for the logs.
    pub fn lock_kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "advisory lock",
            Self::Sqlite(_) => "BEGIN IMMEDIATE",
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Applies pending migrations. A schema that is already current is only read, so a
    /// run never queues behind another run's lock just to find nothing to migrate.
    /// PostgreSQL's migrator serialises concurrent runs with its own advisory lock;
    /// SQLite migrates inside its writer lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        traced("migrate", async move {
            if self.pending_migrations().await? == 0 {
                return Ok(());
            }
            match self {
                Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
                Self::Sqlite(pool) => {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    SQLITE_MIGRATIONS.run(&mut *tx).await?;
                    tx.commit().await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Fails with [`StoreError::NotMigrated`] unless every migration has been applied
    /// (read-only: a dry run never changes the schema).
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        traced("check_migrated", async move {
            match self.pending_migrations().await? {
                0 => Ok(()),
                pending => Err(StoreError::NotMigrated(format!(
                    "{pending} migration(s) pending"
                ))),
            }
        })
        .await
    }

    /// How many of the job's migrations the database lacks.
    async fn pending_migrations(&self) -> Result<usize, StoreError> {
        let migrator = match self {
            Self::Postgres(_) => &POSTGRES_MIGRATIONS,
            Self::Sqlite(_) => &SQLITE_MIGRATIONS,
        };
        let applied: Result<Vec<i64>, sqlx::Error> = platform::each_backend!(self, Self, |pool| {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(pool)
                .await
        });
        let applied: BTreeSet<i64> = match applied {
            Ok(versions) => versions.into_iter().collect(),
            // No bookkeeping table yet: a fresh database. Any other error (no permission,
            // a broken connection) is reported as it is.
            Err(sqlx::Error::Database(err)) if is_missing_table(err.as_ref()) => BTreeSet::new(),
            Err(err) => return Err(err.into()),
        };
        Ok(migrator
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count())
    }

    /// Records a run that never held the run lock (another run held it throughout). Best
    /// effort and short: on SQLite the other run holds the writer lock, so this waits at
    /// most a second for it.
    pub async fn record_run(
        &self,
        run: &RunRecord,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), StoreError> {
        traced("record_run", async move {
            platform::each_backend!(self, Self, |pool| {
                let mut conn = pool.acquire().await?;
                if matches!(self, Self::Sqlite(_)) {
                    conn.execute("PRAGMA busy_timeout = 1000").await?;
                }
                sqlx::query(INSERT_FINISHED_RUN)
                    .bind(&run.run_id)
                    .bind(run.started_at)
                    .bind(OffsetDateTime::now_utc())
                    .bind(&run.config_sha256)
                    .bind(outcome)
                    .bind(sqlx::types::Json(summary))
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Who holds the run lock, for the operator: pid, application name and since when
    /// its connection exists (PostgreSQL; `None` on SQLite or when it is gone).
    pub async fn lock_holder(&self) -> Option<LockHolder> {
        let Self::Postgres(pool) = self else {
            return None;
        };
        // An advisory lock on a bigint key shows as classid = high half, objid = low half.
        let row = sqlx::query(
            "SELECT a.pid, a.application_name, \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.classid = $1 AND l.objid = $2 AND l.database = \
                   (SELECT oid FROM pg_database WHERE datname = current_database()) \
             LIMIT 1",
        )
        .bind(i64::from((RUN_LOCK_KEY >> 32) as u32))
        .bind(i64::from(RUN_LOCK_KEY as u32))
        .fetch_optional(pool)
        .instrument(db_span("lock_holder"))
        .await;
        match row {
            Ok(Some(row)) => Some(LockHolder {
                pid: row.try_get("pid").ok()?,
                application_name: row.try_get("application_name").ok()?,
                since: row.try_get("since").ok()?,
            }),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read who holds the run lock");
                None
            }
        }
    }

    /// Reads the current state without any lock (dry runs).
    pub async fn read_state(&self) -> Result<DbState, StoreError> {
        traced("read_state", async move {
            platform::each_backend!(self, Self, |pool| {
                let mut conn = pool.acquire().await?;
                read_state!(&mut *conn)
            })
        })
        .await
    }

    /// Takes the run lock, waiting up to `wait`. `None`: another run held it for the
    /// whole wait, or `shutdown` was cancelled while waiting.
    pub async fn begin_run(
        &self,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<RunSession>, StoreError> {
        traced("lock", async move {
            match self {
                Self::Postgres(pool) => {
                    let mut conn = pool.acquire().await?;
                    // Closing instead of pooling this connection on drop releases the lock
                    // however the run ends.
                    conn.close_on_drop();
                    let deadline = Instant::now() + wait;
                    let mut announced = false;
                    loop {
                        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                            .bind(RUN_LOCK_KEY)
                            .fetch_one(&mut *conn)
                            .await?;
                        if locked {
                            return Ok(Some(RunSession::Postgres(conn)));
                        }
                        if Instant::now() >= deadline {
                            return Ok(None);
                        }
                        if !announced {
                            tracing::info!(
                                wait_secs = wait.as_secs(),
                                "another run holds the lock; waiting"
                            );
                            announced = true;
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(None),
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
                Self::Sqlite(pool) => {
                    // SQLite waits in its busy handler (busy_timeout = the lock wait).
                    let begun = tokio::select! {
                        begun = pool.begin_with("BEGIN IMMEDIATE") => begun,
                        _ = shutdown.cancelled() => return Ok(None),
                    };
                    match begun {
                        Ok(tx) => Ok(Some(RunSession::Sqlite(tx))),
                        Err(sqlx::Error::Database(err))
                            if err.code().is_some_and(|c| c == "5" || c == "6")
                                || err.message().contains("locked") =>
                        {
                            Ok(None)
                        }
                        Err(err) => Err(err.into()),
                    }
                }
            }
        })
        .await
    }
}

impl RunSession {
    /// Reads the current state under the lock.
    pub async fn read_state(&mut self) -> Result<DbState, StoreError> {
        traced("read_state", async move {
            platform::each_backend!(self, Self, |conn| { read_state!(&mut **conn) })
        })
        .await
    }

    /// Creates clients in one transaction: all of them, or none (error). Returns the
    /// names actually created: a client whose row appeared meanwhile (a concurrent writer
    /// outside the lock) is left as it is, its key untouched, and is not returned.
    pub async fn create_clients(&mut self, batch: &[NewClient]) -> Result<Vec<String>, StoreError> {
        traced("create_clients", async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            platform::each_backend!(self, Self, |conn| {
                let mut tx = conn.begin().await?;

                let mut insert = QueryBuilder::new(
                    "INSERT INTO aggregator_configurations (aggregator_id, aggregator_info) ",
                );
                insert.push_values(batch, |mut row, c| {
                    row.push_bind(c.aggregator_id.clone())
                        .push_bind(c.aggregator_info.clone());
                });
                insert.build().execute(&mut *tx).await?;

                let mut insert = QueryBuilder::new(
                    "INSERT INTO client_configurations \
                     (client_name, api_client_key, cluster_id, aggregator_id) ",
                );
                insert.push_values(batch, |mut row, c| {
                    row.push_bind(c.name.clone())
                        .push_bind(c.api_key.expose_secret().to_owned())
                        .push_bind(c.cluster_id.clone())
                        .push_bind(c.aggregator_id.clone());
                });
                insert.push(" ON CONFLICT DO NOTHING RETURNING client_name");
                let created: BTreeSet<String> = insert
                    .build_query_scalar::<String>()
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();

                let skipped: Vec<&NewClient> = batch
                    .iter()
                    .filter(|c| !created.contains(&c.name))
                    .collect();
                if !skipped.is_empty() {
                    let mut delete = QueryBuilder::new(
                        "DELETE FROM aggregator_configurations WHERE aggregator_id IN (",
                    );
                    let mut ids = delete.separated(", ");
                    for c in &skipped {
                        ids.push_bind(c.aggregator_id.clone());
                    }
                    ids.push_unseparated(")");
                    delete.build().execute(&mut *tx).await?;
                }

                let fresh: Vec<&NewClient> =
                    batch.iter().filter(|c| created.contains(&c.name)).collect();
                if !fresh.is_empty() {
                    let mut insert = QueryBuilder::new(
                        "INSERT INTO crypto_configurations \
                         (client_name, key_id, base64_encoded_key) ",
                    );
                    insert.push_values(&fresh, |mut row, c| {
                        row.push_bind(c.name.clone())
                            .push_bind(1_i32)
                            .push_bind(c.crypto_key.expose_secret().to_owned());
                    });
                    insert.push(" ON CONFLICT DO NOTHING");
                    insert.build().execute(&mut *tx).await?;

                    // The key is pending delivery from the moment it exists.
                    let now = OffsetDateTime::now_utc();
                    let mut insert = QueryBuilder::new(
                        "INSERT INTO api_key_deliveries (client_name, created_at) ",
                    );
                    insert.push_values(&fresh, |mut row, c| {
                        row.push_bind(c.name.clone()).push_bind(now);
                    });
                    insert.build().execute(&mut *tx).await?;
                }

                tx.commit().await?;
                Ok(fresh.into_iter().map(|c| c.name.clone()).collect())
            })
        })
        .await
    }

    /// Repairs drifted clients in one transaction: all of them, or none (error). Never
    /// touches an API key.
    pub async fn repair_clients(&mut self, batch: &[Repair]) -> Result<(), StoreError> {
        traced("repair_clients", async move {
            platform::each_backend!(self, Self, |conn| {
                let mut tx = conn.begin().await?;
                for repair in batch {
                    if let Some(info) = &repair.aggregator_info {
                        // Upsert: the aggregator row may be the thing that is missing.
                        sqlx::query(
                            "INSERT INTO aggregator_configurations (aggregator_id, aggregator_info) \
                             VALUES ($1, $2) \
                             ON CONFLICT (aggregator_id) DO UPDATE SET aggregator_info = excluded.aggregator_info",
                        )
                        .bind(&repair.aggregator_id)
                        .bind(info)
                        .execute(&mut *tx)
                        .await?;
                    }
                    if let Some(cluster) = &repair.cluster_id {
                        sqlx::query(
                            "UPDATE client_configurations SET cluster_id = $1 WHERE client_name = $2",
                        )
                        .bind(cluster)
                        .bind(&repair.name)
                        .execute(&mut *tx)
                        .await?;
                    }
                    if let Some(key) = &repair.crypto_key {
                        sqlx::query(
                            "INSERT INTO crypto_configurations (client_name, key_id, base64_encoded_key) \
                             VALUES ($1, 1, $2) ON CONFLICT DO NOTHING",
                        )
                        .bind(&repair.name)
                        .bind(key.expose_secret())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// The clients whose API key is still pending delivery (the keys are not read).
    pub async fn pending_clients(&mut self) -> Result<Vec<String>, StoreError> {
        traced("pending_clients", async move {
            platform::each_backend!(self, Self, |conn| {
                Ok(sqlx::query_scalar(
                    "SELECT client_name FROM api_key_deliveries \
                     WHERE delivered_at IS NULL ORDER BY client_name",
                )
                .fetch_all(&mut **conn)
                .await?)
            })
        })
        .await
    }

    /// Every API key still pending delivery (this run's and any earlier run's), by client.
    pub async fn pending_keys(&mut self) -> Result<Vec<(String, SecretString)>, StoreError> {
        traced("pending_keys", async move {
            platform::each_backend!(self, Self, |conn| {
                let rows = sqlx::query(
                    "SELECT d.client_name, c.api_client_key FROM api_key_deliveries d \
                     JOIN client_configurations c ON c.client_name = d.client_name \
                     WHERE d.delivered_at IS NULL ORDER BY d.client_name",
                )
                .fetch_all(&mut **conn)
                .await?;
                rows.into_iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<String, _>("client_name")?,
                            SecretString::from(row.try_get::<String, _>("api_client_key")?),
                        ))
                    })
                    .collect()
            })
        })
        .await
    }

    /// Marks keys delivered to `target`, once that delivery is durable.
    pub async fn mark_delivered(
        &mut self,
        clients: &[String],
        target: &str,
    ) -> Result<(), StoreError> {
        traced("mark_delivered", async move {
            if clients.is_empty() {
                return Ok(());
            }
            platform::each_backend!(self, Self, |conn| {
                let now = OffsetDateTime::now_utc();
                for chunk in clients.chunks(1000) {
                    let mut update =
                        QueryBuilder::new("UPDATE api_key_deliveries SET delivered_at = ");
                    update
                        .push_bind(now)
                        .push(", delivered_to = ")
                        .push_bind(target);
                    update.push(" WHERE delivered_at IS NULL AND client_name IN (");
                    let mut names = update.separated(", ");
                    for name in chunk {
                        names.push_bind(name.clone());
                    }
                    names.push_unseparated(")");
                    update.build().execute(&mut **conn).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Records the start of a run (`outcome = running`), so a run that dies is visible.
    pub async fn start_record(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        traced("start_record", async move {
            platform::each_backend!(self, Self, |conn| {
                sqlx::query(
                    "INSERT INTO provisioning_runs (run_id, started_at, config_sha256, outcome) \
                     VALUES ($1, $2, $3, 'running')",
                )
                .bind(&run.run_id)
                .bind(run.started_at)
                .bind(&run.config_sha256)
                .execute(&mut **conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Records how the run ended, with its summary.
    pub async fn finish_record(
        &mut self,
        run_id: &str,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), StoreError> {
        traced("finish_record", async move {
            platform::each_backend!(self, Self, |conn| {
                sqlx::query(
                    "UPDATE provisioning_runs SET finished_at = $1, outcome = $2, summary_json = $3 \
                     WHERE run_id = $4",
                )
                .bind(OffsetDateTime::now_utc())
                .bind(outcome)
                .bind(sqlx::types::Json(summary))
                .bind(run_id)
                .execute(&mut **conn)
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Gives up a run that wrote nothing: PostgreSQL unlocks, SQLite rolls back.
    pub async fn abort(self) {
        if let Err(err) = self.release(false).await {
            // The lock goes with the connection anyway.
            tracing::warn!(error = %err, "cannot release the run lock cleanly");
        }
    }

    /// Releases the run lock: PostgreSQL unlocks, SQLite commits the run's transaction.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.release(true).await
    }

    /// Ends the run: unlocks (PostgreSQL) or ends the run's transaction (SQLite), keeping
    /// its writes when `commit`.
    async fn release(self, commit: bool) -> Result<(), StoreError> {
        traced(if commit { "finish" } else { "abort" }, async move {
            match self {
                Self::Postgres(mut conn) => {
                    conn.execute(sqlx::query("SELECT pg_advisory_unlock($1)").bind(RUN_LOCK_KEY))
                        .await?;
                }
                Self::Sqlite(tx) if commit => tx.commit().await?,
                Self::Sqlite(tx) => tx.rollback().await?,
            }
            Ok(())
        })
        .await
    }
}
