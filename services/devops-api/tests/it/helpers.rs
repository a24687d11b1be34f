//! Test harness: a fresh database per test on the throwaway PostgreSQL `make test`
//! starts, the real server on port 0, an HTTP client, and logins over the Unix socket
//! (where the server asks for passwords).

use std::{path::PathBuf, time::Duration};

use devops_api::{
    App,
    config::{AuthConfig, Config, DatabaseConfig},
};
use reqwest::Method;
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

    /// `tenant` made with one owner login, `<tenant>_app`, and that login's session (over
    /// the Unix socket, with its generated password).
    pub async fn owner_session(&self, tenant: &str) -> (String, PgConnection) {
        let login = format!("{tenant}_app");
        let made = self
            .put(
                tenant,
                serde_json::json!({"logins": [{"name": login, "memberOf": "owner"}]}),
            )
            .await;
        assert_eq!(made.status, 201, "{made:?}");
        let session = self
            .login(&login, &made.password(&login), None)
            .await
            .expect("login");
        (login, session)
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

// What the attack suites (hostile.rs, attacks.rs) ask of answers and of the catalog.

pub async fn delete(api: &Api, tenant: &str, mode: &str) -> Answer {
    api.call(
        Method::DELETE,
        &format!("/v1/tenants/{tenant}?mode={mode}"),
        None,
    )
    .await
}

pub async fn rotate(api: &Api, tenant: &str, login: &str) -> Answer {
    api.call(
        Method::POST,
        &format!("/v1/tenants/{tenant}/logins/{login}/rotate"),
        None,
    )
    .await
}

pub fn detail(answer: &Answer) -> &str {
    answer.body["detail"].as_str().unwrap_or_default()
}

pub fn is_problem(answer: &Answer, status: u16) -> bool {
    answer.status == status
        && answer
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/problem+json")
}

/// A 422 problem listing what is wrong (a refusal before any SQL).
pub fn is_refusal(answer: &Answer) -> bool {
    is_problem(answer, 422)
        && answer.body["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
}

/// A non-2xx answer a client can act on: busy (409) or unavailable (503), and when to
/// try again.
pub fn is_retryable(answer: &Answer) -> bool {
    (answer.status == 409 || answer.status == 503) && answer.headers.contains_key("retry-after")
}

fn is_identifier_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `text` names `name` as a whole word (`x_1` is not named by `x_1_b`).
pub fn names(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(at, _)| {
        !is_identifier_char(text[..at].chars().next_back())
            && !is_identifier_char(text[at + name.len()..].chars().next())
    })
}

/// Whether `text` names the object `kind name` (`schema acme` or `schema "acme"`).
pub fn names_object(text: &str, kind: &str, name: &str) -> bool {
    names(text, &format!("{kind} {name}")) || text.contains(&format!("{kind} \"{name}\""))
}

/// A yes/no question to the catalogs, with text parameters.
pub async fn ask(conn: &mut PgConnection, sql: &str, binds: &[&str]) -> bool {
    let mut query = sqlx::query_scalar::<_, bool>(sql);
    for bind in binds {
        query = query.bind(*bind);
    }
    query
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub async fn database_exists(conn: &mut PgConnection, database: &str) -> bool {
    ask(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        &[database],
    )
    .await
}

/// A superuser connection to `database`.
pub async fn admin_of(database: &str) -> PgConnection {
    PgConnection::connect(&with_database(&admin_url(), database))
        .await
        .expect("admin")
}

pub async fn run(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn is_superuser(conn: &mut PgConnection, role: &str) -> bool {
    ask(
        conn,
        "SELECT COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = $1), false)",
        &[role],
    )
    .await
}

pub async fn can_login(conn: &mut PgConnection, role: &str) -> bool {
    ask(
        conn,
        "SELECT COALESCE((SELECT rolcanlogin FROM pg_roles WHERE rolname = $1), false)",
        &[role],
    )
    .await
}

pub async fn schema_owner(conn: &mut PgConnection, schema: &str) -> Option<String> {
    sqlx::query_scalar("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(conn)
        .await
        .expect("schema owner")
}

pub async fn relation_exists(conn: &mut PgConnection, relation: &str) -> bool {
    ask(conn, "SELECT to_regclass($1) IS NOT NULL", &[relation]).await
}

/// The groups `role` is a member of.
pub async fn groups_of(conn: &mut PgConnection, role: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT g.rolname::text FROM pg_auth_members m
         JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
         WHERE r.rolname = $1 ORDER BY 1",
    )
    .bind(role)
    .fetch_all(conn)
    .await
    .expect("groups")
}

/// `rolpassword` (the stored verifier), from `pg_authid` (superuser only).
pub async fn stored_password(conn: &mut PgConnection, role: &str) -> Option<String> {
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(role)
        .fetch_one(conn)
        .await
        .expect("rolpassword")
}
