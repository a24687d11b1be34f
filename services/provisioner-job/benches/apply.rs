//! `make bench`: the 10,000-client apply against PostgreSQL, first run and idempotent
//! rerun, next to baselines measured in the same run on the same server:
//!
//! - a plain multi-row INSERT of the same rows (one statement per table, no checks,
//!   no transaction boundaries, no conflict handling): the floor for writing them;
//! - the job's own state query, run bare on an open connection: the floor for reading
//!   the state (a rerun with nothing to do adds connecting, the lock, classification and
//!   the audit row to it).
//!
//! Needs `TEST_DATABASE_URL` (a superuser URL); `make bench` starts a throwaway server.

use std::{
    str::FromStr,
    time::{Duration, Instant},
};

use provisioner_job::{
    RunOptions,
    config::{ClientSpec, Config, DatabaseConfig},
    provision,
    reconcile::{new_api_key, new_crypto_key},
    store::{Access, STATE_QUERY, Store},
};
use secrecy::ExposeSecret;
use sqlx::{Connection, PgConnection, QueryBuilder};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 10_000;
const ROUNDS: usize = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes --bench; test runners that list or run every target
    // (`cargo test --all-targets`, nextest --list) must not start a five-round benchmark.
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    let admin = std::env::var("TEST_DATABASE_URL")
        .map_err(|_| "TEST_DATABASE_URL is not set: run `make bench`")?;
    let mut first = Vec::new();
    let mut rerun = Vec::new();
    let mut insert = Vec::new();
    let mut select = Vec::new();

    for round in 0..ROUNDS {
        let config = config(&fresh_database(&admin, "apply").await?);
        let token = CancellationToken::new();
        // Keys stay pending: the benchmark measures the reconciliation, not a target.
        let options = RunOptions {
            no_key_delivery: true,
            ..RunOptions::default()
        };

        let started = Instant::now();
        let summary = provision(&config, &options, &token).await;
        first.push(started.elapsed());
        assert_eq!(
            summary.created.len(),
            CLIENTS,
            "first apply: {:?}",
            summary.errors
        );

        let started = Instant::now();
        let summary = provision(&config, &options, &token).await;
        rerun.push(started.elapsed());
        assert_eq!(
            summary.unchanged.len(),
            CLIENTS,
            "rerun: {:?}",
            summary.errors
        );

        let baseline_url = fresh_database(&admin, "baseline").await?;
        let (write, read) = plain_insert_and_select(&baseline_url).await?;
        insert.push(write);
        select.push(read);
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }

    let (first, rerun, insert, select) =
        (median(first), median(rerun), median(insert), median(select));
    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();
    println!(
        "provisioner-job: {CLIENTS} clients, PostgreSQL on loopback, median of {ROUNDS} rounds"
    );
    println!("  {:<52} {:>9} {:>8}", "measurement", "time", "ratio");
    println!(
        "  {:<52} {:>7.1}ms {:>7.2}x",
        "baseline: plain multi-row INSERT of the same rows",
        ms(insert),
        1.0
    );
    println!(
        "  {:<52} {:>7.1}ms {:>7.2}x",
        "first apply (validate, lock, 10000 creates, audit)",
        ms(first),
        ratio(first, insert)
    );
    println!(
        "  {:<52} {:>7.1}ms {:>7.2}x",
        "baseline: the state query alone, bare",
        ms(select),
        1.0
    );
    println!(
        "  {:<52} {:>7.1}ms {:>7.2}x",
        "idempotent rerun (nothing to do)",
        ms(rerun),
        ratio(rerun, select)
    );
    println!(
        "  first apply / plain INSERT = {:.2}x; rerun / bare state query = {:.2}x",
        ratio(first, insert),
        ratio(rerun, select)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn config(url: &str) -> Config {
    let mut config = Config {
        database: DatabaseConfig {
            url: FromStr::from_str(url).expect("url"),
            ..DatabaseConfig::default()
        },
        ..Config::default()
    };
    for i in 0..CLIENTS {
        config.provision.clients.insert(
            format!("client-{i:05}"),
            ClientSpec {
                aggregator_identifier: format!("Client {i} AB"),
                cluster_id: None,
            },
        );
    }
    config
}

/// A new database with the schema and the default cluster.
async fn fresh_database(admin: &str, purpose: &str) -> Result<String, Box<dyn std::error::Error>> {
    let name = format!("bench_{purpose}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or("no database in TEST_DATABASE_URL")?;
    let url = format!("{base}/{name}");
    let store = Store::connect(
        &DatabaseConfig {
            url: FromStr::from_str(&url)?,
            ..DatabaseConfig::default()
        },
        Access::ReadWrite,
    )
    .await?;
    store.migrate().await?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query("INSERT INTO cluster_configurations (cluster_id) VALUES ('oxford-production')")
        .execute(&mut conn)
        .await?;
    Ok(url)
}

/// The same rows the apply writes, as three plain INSERT statements; then the state read.
async fn plain_insert_and_select(
    url: &str,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let rows: Vec<(String, String, String, String, String)> = (0..CLIENTS)
        .map(|i| {
            Ok((
                format!("client-{i:05}"),
                format!("Client {i} AB"),
                uuid::Uuid::new_v4().to_string(),
                new_api_key().expose_secret().to_owned(),
                new_crypto_key()?.expose_secret().to_owned(),
            ))
        })
        .collect::<Result<_, getrandom::Error>>()?;
    let mut conn = PgConnection::connect(url).await?;

    let started = Instant::now();
    let mut q = QueryBuilder::new(
        "INSERT INTO aggregator_configurations (aggregator_id, aggregator_info) ",
    );
    q.push_values(&rows, |mut b, r| {
        b.push_bind(&r.2).push_bind(&r.1);
    });
    q.build().execute(&mut conn).await?;
    let mut q = QueryBuilder::new(
        "INSERT INTO client_configurations (client_name, api_client_key, cluster_id, aggregator_id) ",
    );
    q.push_values(&rows, |mut b, r| {
        b.push_bind(&r.0)
            .push_bind(&r.3)
            .push_bind("oxford-production")
            .push_bind(&r.2);
    });
    q.build().execute(&mut conn).await?;
    let mut q = QueryBuilder::new(
        "INSERT INTO crypto_configurations (client_name, key_id, base64_encoded_key) ",
    );
    q.push_values(&rows, |mut b, r| {
        b.push_bind(&r.0).push_bind(1_i32).push_bind(&r.4);
    });
    q.build().execute(&mut conn).await?;
    let write = started.elapsed();

    let started = Instant::now();
    let read = sqlx::query(STATE_QUERY).fetch_all(&mut conn).await?;
    let read_time = started.elapsed();
    assert_eq!(read.len(), CLIENTS);
    Ok((write, read_time))
}
