//! `make bench`: devops-api against the throwaway PostgreSQL (`TEST_DATABASE_URL`):
//!
//! - 100 tenants created one after another (PUT, 201);
//! - 100 identical re-PUTs (empty plan);
//! - 16 clients re-PUTting 16 distinct tenants at once for 10 s;
//!
//! next to the floor: the catalog reads a PUT's plan is made from (`catalog::read_global`
//! and `catalog::read_local`), run bare, one after another, through one open connection.
//! Latency p50 / p99 and requests per second; the goal is an idempotent re-PUT at most 3x
//! the bare catalog read, and no error under the concurrent load.

use std::time::{Duration, Instant};

use devops_api::{
    App, catalog,
    config::{AuthConfig, Config, DatabaseConfig, TenantsConfig},
};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

const TENANTS: usize = 100;
const CLIENTS: usize = 16;
const LOAD: Duration = Duration::from_secs(10);
const TOKEN: &str = "bench-token-0123456789abcdef";

fn body(tenant: &str) -> serde_json::Value {
    serde_json::json!({"logins": [{"name": format!("{tenant}_app"), "memberOf": "writer"}]})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL: run with scripts/with-postgres.sh (make bench does)");
    let database = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut admin = PgConnection::connect(&admin_url).await.expect("admin");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("database");
    let url = format!("{}/{database}", admin_url.rsplit_once('/').expect("url").0);
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("bench:{TOKEN}\n")).expect("tokens");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        database: DatabaseConfig {
            url: url.parse().expect("url"),
            max_connections: 16,
            ..DatabaseConfig::default()
        },
        auth: AuthConfig {
            tokens_file: Some(tokens),
            ..AuthConfig::default()
        },
        // The 16 clients share one token: one caller with 16 changes under way.
        tenants: TenantsConfig {
            max_changes_per_caller: CLIENTS,
            ..TenantsConfig::default()
        },
        ..Config::default()
    };
    let app = App::build(config).await.expect("builds");
    let base = format!("http://{}", app.local_addr().expect("addr"));
    let ready = format!("http://{}/readyz", app.admin_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(app.run(stop.clone()));
    let client = reqwest::Client::new();
    while client
        .get(&ready)
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let put = {
        let (client, base) = (client.clone(), base.clone());
        move |tenant: String| {
            let client = client.clone();
            let url = format!("{base}/v1/tenants/{tenant}");
            async move {
                let started = Instant::now();
                let response = client
                    .put(url)
                    .bearer_auth(TOKEN)
                    .json(&body(&tenant))
                    .send()
                    .await
                    .expect("sent");
                let status = response.status().as_u16();
                let plan: serde_json::Value = response.json().await.expect("json");
                (
                    started.elapsed(),
                    status,
                    plan["plan"].as_array().map_or(0, Vec::len),
                )
            }
        }
    };
    let names: Vec<String> = (0..TENANTS).map(|i| format!("bench_t{i:03}")).collect();

    let mut create = Vec::new();
    for name in &names {
        let (took, status, _) = put(name.clone()).await;
        assert_eq!(status, 201, "{name}");
        create.push(took);
    }
    let mut reput = Vec::new();
    for name in &names {
        let (took, status, steps) = put(name.clone()).await;
        assert_eq!((status, steps), (200, 0), "{name}");
        reput.push(took);
    }

    // The floor: the same catalog reads, bare, through one connection.
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let mut bare = Vec::new();
    for name in &names {
        let roles = vec![
            format!("{name}_owner"),
            format!("{name}_writer"),
            format!("{name}_reader"),
            format!("{name}_app"),
        ];
        let started = Instant::now();
        let state = catalog::read_global(&mut conn, &roles, &database)
            .await
            .expect("global");
        let local = catalog::read_local(&mut conn, name).await.expect("local");
        bare.push(started.elapsed());
        assert_eq!(state.roles.len(), 4);
        assert!(local.schema_owner.is_some());
    }

    // 16 clients, each re-PUTting its own tenant, for 10 s.
    let deadline = Instant::now() + LOAD;
    let workers: Vec<_> = names
        .iter()
        .take(CLIENTS)
        .cloned()
        .map(|name| {
            let put = put.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    let (took, status, steps) = put(name.clone()).await;
                    if status != 200 || steps != 0 {
                        errors += 1;
                    }
                    times.push(took);
                }
                (times, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut load = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (times, failed) = worker.await.expect("worker");
        load.extend(times);
        errors += failed;
    }
    let elapsed = started.elapsed();
    stop.cancel();

    for list in [&mut create, &mut reput, &mut bare, &mut load] {
        list.sort();
    }
    let bare_p50 = percentile(&bare, 0.5);
    println!();
    println!("devops-api against PostgreSQL on loopback ({TENANTS} tenants, one login each)");
    println!(
        "  {:<46} {:>9} {:>9} {:>9} {:>8}",
        "measurement", "p50", "p99", "req/s", "p50 ratio"
    );
    let row = |name: &str, list: &[Duration], rate: Option<f64>| {
        println!(
            "  {:<46} {:>6.2} ms {:>6.2} ms {:>9} {:>7.2}x",
            name,
            ms(percentile(list, 0.5)),
            ms(percentile(list, 0.99)),
            rate.map_or("-".to_owned(), |r| format!("{r:.0}")),
            percentile(list, 0.5).as_secs_f64() / bare_p50.as_secs_f64()
        );
    };
    row(
        "floor: the catalog reads, bare, one connection",
        &bare,
        None,
    );
    row("create (PUT, 201), one after another", &create, None);
    row("idempotent re-PUT (200, empty plan)", &reput, None);
    row(
        &format!("{CLIENTS} clients re-PUTting at once, {} s", LOAD.as_secs()),
        &load,
        Some(load.len() as f64 / elapsed.as_secs_f64()),
    );
    println!(
        "  errors under the concurrent load: {errors} of {}",
        load.len()
    );
    assert_eq!(errors, 0, "no error under the concurrent load");
}
