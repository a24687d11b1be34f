//! Where the cluster keeps logical configurations: in memory (the default), or in SQL
//! (`storage.url`: PostgreSQL or SQLite), where they survive a restart and members
//! sharing one database see each other's.

use std::{collections::HashMap, str::FromStr, sync::RwLock, time::Duration};

use platform::secret::SecretUrl;
use sqlx::{
    PgPool, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

/// How long one storage operation (a pool acquire included) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

const CREATE: &str = "CREATE TABLE IF NOT EXISTS gandalf_configurations (\
     tenant TEXT NOT NULL, \
     logical_name TEXT NOT NULL, \
     payload TEXT NOT NULL, \
     updated_at_ms BIGINT NOT NULL, \
     PRIMARY KEY (tenant, logical_name))";
const UPSERT: &str = "INSERT INTO gandalf_configurations (tenant, logical_name, payload, updated_at_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, logical_name) \
     DO UPDATE SET payload = excluded.payload, updated_at_ms = excluded.updated_at_ms";
const SELECT: &str =
    "SELECT payload FROM gandalf_configurations WHERE tenant = $1 AND logical_name = $2";

/// The logical configurations, by (tenant, logical name).
pub enum Storage {
    Memory(RwLock<HashMap<(String, String), String>>),
    Sql(SqlPool),
}

/// The SQL backends; [`platform::each_backend!`] writes each query once for both.
pub enum SqlPool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Storage {
    /// In memory when `url` is none; else connects (creating a SQLite file when missing)
    /// and creates the table.
    pub async fn open(url: Option<&SecretUrl>) -> Result<Self, String> {
        let Some(url) = url else {
            return Ok(Self::Memory(RwLock::default()));
        };
        let fail = |e: sqlx::Error| format!("storage.url {}: {e}", url.redacted());
        let pool = match url.scheme().as_str() {
            "postgres" | "postgresql" => SqlPool::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(OPERATION_TIMEOUT)
                    .connect(url.expose())
                    .await
                    .map_err(fail)?,
            ),
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url.expose())
                    .map_err(fail)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal);
                SqlPool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(OPERATION_TIMEOUT)
                        .connect_with(options)
                        .await
                        .map_err(fail)?,
                )
            }
            other => {
                return Err(format!(
                    "storage.url: unsupported scheme {other:?}: use postgres:// or sqlite://"
                ));
            }
        };
        platform::each_backend!(&pool, SqlPool, |pool| {
            sqlx::query(CREATE).execute(pool).await.map_err(fail)?;
        });
        Ok(Self::Sql(pool))
    }

    /// `memory`, `postgres` or `sqlite`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Sql(SqlPool::Postgres(_)) => "postgres",
            Self::Sql(SqlPool::Sqlite(_)) => "sqlite",
        }
    }

    /// Saves (or replaces) one configuration.
    pub async fn save(&self, tenant: &str, name: &str, payload: &str) -> Result<(), String> {
        let pool = match self {
            Self::Memory(map) => {
                map.write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((tenant.to_owned(), name.to_owned()), payload.to_owned());
                return Ok(());
            }
            Self::Sql(pool) => pool,
        };
        let now = gandalf::protocol::now_ms();
        platform::each_backend!(pool, SqlPool, |pool| {
            bounded(
                sqlx::query(UPSERT)
                    .bind(tenant)
                    .bind(name)
                    .bind(payload)
                    .bind(now)
                    .execute(pool),
            )
            .await
            .map(drop)
        })
        .map_err(|e| format!("saving the configuration of {name:?} failed: {e}"))
    }

    /// The stored configuration of `name`, if any.
    pub async fn load(&self, tenant: &str, name: &str) -> Result<Option<String>, String> {
        let pool = match self {
            Self::Memory(map) => {
                return Ok(map
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(tenant.to_owned(), name.to_owned()))
                    .cloned());
            }
            Self::Sql(pool) => pool,
        };
        platform::each_backend!(pool, SqlPool, |pool| {
            bounded(
                sqlx::query_scalar::<_, String>(SELECT)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(pool),
            )
            .await
        })
        .map_err(|e| format!("reading the configuration of {name:?} failed: {e}"))
    }
}

/// A storage operation within [`OPERATION_TIMEOUT`].
async fn bounded<T>(operation: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer from the storage within {} s",
            OPERATION_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_storage_keeps_configurations_across_a_reopen() {
        let dir = std::env::temp_dir().join(format!("gandalf-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let url = SecretUrl::from_str(&format!("sqlite://{}/c.db", dir.display())).expect("url");
        {
            let storage = Storage::open(Some(&url)).await.expect("opens");
            storage
                .save("acme", "agg-1", "{\"v\":1}")
                .await
                .expect("saved");
            storage
                .save("acme", "agg-1", "{\"v\":2}")
                .await
                .expect("replaced");
            assert_eq!(storage.load("acme", "nobody").await, Ok(None));
        }
        let reopened = Storage::open(Some(&url)).await.expect("reopens");
        assert_eq!(
            reopened.load("acme", "agg-1").await,
            Ok(Some("{\"v\":2}".to_owned()))
        );
        assert_eq!(reopened.load("globex", "agg-1").await, Ok(None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_by_name() {
        let url = SecretUrl::from_str("mysql://h/db").expect("url");
        let error = Storage::open(Some(&url)).await.err().expect("refused");
        assert!(error.contains("unsupported scheme"), "{error}");
    }
}
