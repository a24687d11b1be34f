//! Test harness: a fresh database per test, a config file, the real binary.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    str::FromStr,
};

use provisioner_job::{
    config::DatabaseConfig,
    store::{Access, Store},
};
use sqlx::{AnyPool, Row, any::AnyPoolOptions};
use tempfile::TempDir;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Writes one `#[tokio::test]` per backend for an `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn postgres() {
                super::$case($crate::helpers::Backend::Postgres).await;
            }
            #[tokio::test]
            async fn sqlite() {
                super::$case($crate::helpers::Backend::Sqlite).await;
            }
        }
    };
}

/// An isolated database (a uuid-named PostgreSQL database, or a SQLite file) plus a
/// working directory for config and keys files.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: TempDir,
    pool: AnyPool,
}

/// The superuser URL `make test` exports.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set: run the tests with `make test` (it starts PostgreSQL)"
        )
    })
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("aggregation.db").display()),
            Backend::Postgres => {
                let admin = admin_url();
                let name = format!("prov_{}", uuid::Uuid::new_v4().simple());
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin)
                    .await
                    .expect("admin connect");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .expect("create database");
                pool.close().await;
                let (base, _) = admin.rsplit_once('/').expect("db in url");
                format!("{base}/{name}")
            }
        };
        // Schema first, through the job's own migrations, so tests can seed clusters.
        let store = Store::connect(&database_config(&url), Access::ReadWrite)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        drop(store);
        let any_url = url.replace("sqlite://", "sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&any_url)
            .await
            .expect("connect");
        Self {
            backend,
            url,
            dir,
            pool,
        }
    }

    /// A database with the default cluster seeded.
    pub async fn with_cluster(backend: Backend) -> Self {
        let db = Self::new(backend).await;
        db.add_cluster("oxford-production").await;
        db
    }

    pub async fn add_cluster(&self, cluster: &str) {
        sqlx::query(&format!(
            "INSERT INTO cluster_configurations (cluster_id, host) VALUES ('{cluster}', 'https://{cluster}.example')"
        ))
        .execute(&self.pool)
        .await
        .expect("insert cluster");
    }

    pub async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
            .get::<i64, _>("n")
    }

    /// Every client row: name -> (api key, cluster, aggregator info, crypto key count).
    pub async fn clients(&self) -> BTreeMap<String, ClientRow> {
        let rows = sqlx::query(
            "SELECT c.client_name, c.api_client_key, c.cluster_id, a.aggregator_info, \
                    (SELECT COUNT(*) FROM crypto_configurations k WHERE k.client_name = c.client_name) AS keys \
             FROM client_configurations c JOIN aggregator_configurations a ON a.aggregator_id = c.aggregator_id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("clients");
        rows.into_iter()
            .map(|r| {
                (
                    r.get::<String, _>("client_name"),
                    ClientRow {
                        api_key: r.get("api_client_key"),
                        cluster: r.get("cluster_id"),
                        aggregator_info: r.get("aggregator_info"),
                        crypto_keys: r.get("keys"),
                    },
                )
            })
            .collect()
    }

    /// Every secret the database holds: API keys and crypto keys.
    pub async fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> =
            sqlx::query("SELECT api_client_key AS s FROM client_configurations")
                .fetch_all(&self.pool)
                .await
                .expect("keys")
                .into_iter()
                .map(|r| r.get("s"))
                .collect();
        all.extend(
            sqlx::query("SELECT base64_encoded_key AS s FROM crypto_configurations")
                .fetch_all(&self.pool)
                .await
                .expect("crypto")
                .into_iter()
                .map(|r| r.get::<String, _>("s")),
        );
        all
    }

    /// A connection of the test's own (to hold locks, run raw SQL).
    pub async fn connection(&self) -> sqlx::pool::PoolConnection<sqlx::Any> {
        self.pool.acquire().await.expect("acquire")
    }

    /// The text column `s` of every row of `sql`.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|r| r.get::<String, _>("s"))
            .collect()
    }

    /// Clients whose API key is pending delivery.
    pub async fn pending_keys(&self) -> Vec<String> {
        sqlx::query(
            "SELECT client_name FROM api_key_deliveries WHERE delivered_at IS NULL ORDER BY client_name",
        )
        .fetch_all(&self.pool)
        .await
        .expect("pending")
        .into_iter()
        .map(|r| r.get::<String, _>("client_name"))
        .collect()
    }

    /// (started, finished) of every finished run, in seconds since the epoch, oldest first.
    pub async fn run_intervals(&self) -> Vec<(f64, f64)> {
        let epoch = |column: &str| match self.backend {
            Backend::Postgres => format!("CAST(EXTRACT(EPOCH FROM {column}) AS DOUBLE PRECISION)"),
            Backend::Sqlite => format!("(julianday({column}) - 2440587.5) * 86400.0"),
        };
        let sql = format!(
            "SELECT {} AS started, {} AS finished FROM provisioning_runs \
             WHERE finished_at IS NOT NULL ORDER BY started_at",
            epoch("started_at"),
            epoch("finished_at")
        );
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .expect("runs")
            .into_iter()
            .map(|r| (r.get::<f64, _>("started"), r.get::<f64, _>("finished")))
            .collect()
    }

    /// (outcome, summary JSON) of every recorded run, oldest first.
    pub async fn runs(&self) -> Vec<(String, serde_json::Value)> {
        let rows = sqlx::query(
            "SELECT outcome, CAST(summary_json AS TEXT) AS summary FROM provisioning_runs ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await
        .expect("runs");
        rows.into_iter()
            .map(|r| {
                let summary: Option<String> = r.get("summary");
                (
                    r.get("outcome"),
                    summary
                        .map(|s| serde_json::from_str(&s).expect("json"))
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Writes a config file declaring `clients` (name, aggregatorIdentifier, cluster).
    pub fn config(&self, clients: &[(&str, &str, Option<&str>)]) -> PathBuf {
        self.config_with(clients, "")
    }

    /// Like [`TestDb::config`], with extra YAML lines under `database:`.
    pub fn config_with(
        &self,
        clients: &[(&str, &str, Option<&str>)],
        database_extra: &str,
    ) -> PathBuf {
        let mut yaml = format!("database:\n  url: {}\n{database_extra}", self.url);
        // Unrelated keys of the aggregation service's config must be ignored.
        yaml.push_str("aggregationWorker:\n  threads: 8\n");
        yaml.push_str("provisionClientsConfig:\n  clusterId: oxford-production\n  clients:\n");
        if clients.is_empty() {
            yaml = yaml.replace("  clients:\n", "  clients: {}\n");
        }
        for (name, info, cluster) in clients {
            yaml.push_str(&format!(
                "    {name}:\n      aggregatorIdentifier: {info:?}\n"
            ));
            if let Some(cluster) = cluster {
                yaml.push_str(&format!("      clusterId: {cluster}\n"));
            }
        }
        let path = self
            .dir
            .path()
            .join(format!("config-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, yaml).expect("write config");
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub api_key: String,
    pub cluster: String,
    pub aggregator_info: String,
    pub crypto_keys: i64,
}

pub fn database_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: FromStr::from_str(url).expect("url"),
        ..DatabaseConfig::default()
    }
}

/// What a run of the binary printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Fails the test if any of `secrets` was printed.
    pub fn assert_no_secret(&self, secrets: impl IntoIterator<Item = impl AsRef<str>>) {
        for secret in secrets {
            let secret = secret.as_ref();
            assert!(
                !self.stdout.contains(secret),
                "a secret was printed on stdout"
            );
            assert!(
                !self.stderr.contains(secret),
                "a secret was printed on stderr"
            );
        }
    }
}

pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_provisioner-job"));
    cmd.env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("LOG_FORMAT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("PROVISIONER__") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs the binary to completion (off the async runtime).
pub async fn run(args: &[&str], config: &Path) -> Run {
    run_with(args, config, &[]).await
}

/// Flags that say where the keys go (or that they stay pending).
const DELIVERY_FLAGS: &[&str] = &["--api-keys-out", "--api-keys-secret", "--no-key-delivery"];

/// Runs the binary with `args` and `--config`. A run that names no delivery target gets
/// `--no-key-delivery`, so tests about other things can create clients; the delivery
/// tests always name their target.
pub async fn run_with(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = binary();
    cmd.args(args).arg("--config").arg(config);
    let names_delivery = args.iter().any(|a| DELIVERY_FLAGS.contains(a));
    if !names_delivery && !args.contains(&"migrate") {
        cmd.arg("--no-key-delivery");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("spawn");
    into_run(output)
}

pub fn into_run(output: Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `n` clients named `client-0000`...
pub fn many_clients(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("client-{i:04}"), format!("Client {i} AB")))
        .collect()
}

pub fn as_specs(clients: &[(String, String)]) -> Vec<(&str, &str, Option<&str>)> {
    clients
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_str(), None))
        .collect()
}
