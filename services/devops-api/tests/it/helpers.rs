//! Test harness: a fresh database per test on the throwaway PostgreSQL `make test`
//! starts, the real server on port 0, an HTTP client, and logins over the Unix socket
//! (where the server asks for passwords).

use std::{path::PathBuf, time::Duration};

use devops_api::{
    App,
    config::{AuthConfig, Config, DatabaseConfig},
};
use serde_json::Value;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "ops-token-5b0c2e7a91d34f68";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test` (it starts PostgreSQL)")
    })
}

/// The superuser URL `make test` exports.
pub fn admin_url() -> String {
    env("TEST_DATABASE_URL")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A running API on its own database.
pub struct Api {
    pub base: String,
    pub admin_http: String,
    pub database: String,
    /// Holds the tokens file.
    dir: TempDir,
    pub client: reqwest::Client,
    stop: CancellationToken,
}

/// What a request got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn sql(&self) -> Vec<String> {
        self.body["plan"]
            .as_array()
            .unwrap_or_else(|| panic!("no plan: {self:?}"))
            .iter()
            .map(|s| s["sql"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn password(&self, login: &str) -> String {
        self.body["credentials"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["login"] == login))
            .and_then(|c| c["password"].as_str())
            .unwrap_or_else(|| panic!("no password for {login}: {self:?}"))
            .to_owned()
    }
}

impl Api {
    /// A fresh database with `log_statement = all`, and the API on it.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let database = unique("devops");
        let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        sqlx::query(&format!(
            "ALTER DATABASE {database} SET log_statement = 'all'"
        ))
        .execute(&mut admin)
        .await
        .expect("log statements");
        let url = with_database(&admin_url(), &database);
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("ops:{TOKEN}\n")).expect("tokens");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            database: DatabaseConfig {
                url: url.parse().expect("url"),
                ..DatabaseConfig::default()
            },
            auth: AuthConfig {
                tokens_file: Some(tokens),
                ..AuthConfig::default()
            },
            ..Config::default()
        };
        adjust(&mut config);
        Self::serve(config, database, dir).await
    }

    pub async fn serve(config: Config, database: String, dir: TempDir) -> Self {
        let app = App::build(config).await.expect("builds");
        let base = format!("http://{}", app.local_addr().expect("addr"));
        let admin_http = format!("http://{}", app.admin_addr().expect("addr"));
        let stop = CancellationToken::new();
        tokio::spawn(app.run(stop.clone()));
        Self {
            base,
            admin_http,
            database,
            dir,
            client: reqwest::Client::new(),
            stop,
        }
    }

    /// Waits until `/readyz` says ready (the migrations ran).
    pub async fn ready(self) -> Self {
        for _ in 0..200 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.admin_http))
                .send()
                .await
                && r.status() == 200
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the API did not become ready");
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.expect("sent")).await
    }

    /// The tokens file the API reads.
    pub fn tokens_file(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    pub async fn put(&self, tenant: &str, body: Value) -> Answer {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{tenant}"),
            Some(body),
        )
        .await
    }

    pub async fn plan(&self, tenant: &str, body: Value) -> Answer {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{tenant}?dryRun=true"),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// A superuser connection to the API's database.
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect(&with_database(&admin_url(), &self.database))
            .await
            .expect("admin")
    }

    /// `login` with `password` over the Unix socket, to `database` (the API's when None).
    pub async fn login(
        &self,
        login: &str,
        password: &str,
        database: Option<&str>,
    ) -> Result<PgConnection, sqlx::Error> {
        let options = PgConnectOptions::new()
            .socket(PathBuf::from(env("TEST_DATABASE_SOCKET_DIR")))
            .port(env("TEST_DATABASE_PORT").parse().expect("port"))
            .username(login)
            .password(password)
            .database(database.unwrap_or(&self.database));
        PgConnection::connect_with(&options).await
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// `url` with another database.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database in the URL");
    format!("{base}/{database}")
}

/// The server log as it is now.
pub fn server_log() -> String {
    std::fs::read_to_string(env("TEST_DATABASE_LOG")).unwrap_or_default()
}

/// Whether `role` exists.
pub async fn role_exists(conn: &mut PgConnection, role: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(conn)
        .await
        .expect("query")
}

/// What the catalogs say about a tenant, for before/after comparisons.
pub async fn snapshot(conn: &mut PgConnection, tenant: &str, schema: &str) -> Vec<String> {
    let mut lines: Vec<String> = sqlx::query_scalar(
        "SELECT format('role %s login=%s limit=%s until=%s config=%s', rolname, rolcanlogin, rolconnlimit, rolvaliduntil, rolconfig)
         FROM pg_roles WHERE rolname LIKE $1 || '\\_%'
         UNION ALL
         SELECT format('member %s of %s', m.rolname, g.rolname) FROM pg_auth_members a
           JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid
           WHERE m.rolname LIKE $1 || '\\_%'
         UNION ALL
         SELECT format('schema %s owner=%s acl=%s', nspname, pg_get_userbyid(nspowner), nspacl) FROM pg_namespace WHERE nspname IN ($2, 'public')
         UNION ALL
         SELECT format('default %s %s', defaclobjtype, defaclacl) FROM pg_default_acl
         UNION ALL
         SELECT format('database %s acl=%s', datname, datacl) FROM pg_database WHERE datname = current_database()
         ORDER BY 1",
    )
    .bind(tenant)
    .bind(schema)
    .fetch_all(conn)
    .await
    .expect("snapshot");
    lines.sort();
    lines
}

impl Api {
    /// The API on an existing `database`, `adjust` applied to its config: a second
    /// instance beside a running one (fresh pools, so fresh sessions), or one on a
    /// database the test prepared.
    pub async fn start_on(database: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("ops:{TOKEN}\n")).expect("tokens");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            database: DatabaseConfig {
                url: with_database(&admin_url(), database).parse().expect("url"),
                ..DatabaseConfig::default()
            },
            auth: AuthConfig {
                tokens_file: Some(tokens),
                ..AuthConfig::default()
            },
            ..Config::default()
        };
        adjust(&mut config);
        Self::serve(config, database.to_owned(), dir).await
    }
}

/// A URL that logs `role` in with `password` to `database` over the Unix socket (where
/// the server asks for passwords).
pub fn socket_url(role: &str, password: &str, database: &str) -> String {
    format!(
        "postgres://{role}:{password}@localhost/{database}?host={}&port={}",
        env("TEST_DATABASE_SOCKET_DIR"),
        env("TEST_DATABASE_PORT")
    )
}
