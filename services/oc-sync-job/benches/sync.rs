//! `make bench`: oc-sync-job over 1,000 instances with both fakes adding 50 ms to every
//! call: a first run (1,000 creates) and a second (nothing to do), each against
//!
//! - the ideal `calls x 50 ms / concurrency`, from the job's own call count (every call
//!   taking only the fakes' latency, the configured number always in flight);
//! - for the second run, also the floor of one unsharded Director listing: its pages come
//!   one after the other (each names the next, 10 applications a page), so it cannot take
//!   less than `(token + 100 pages) x 50 ms`; the job's 16 shards at once are measured
//!   against it.
//!
//! The release binary runs as a process, as in production.

use std::time::{Duration, Instant};

#[path = "../tests/it/fake_compass.rs"]
#[allow(dead_code)]
mod fake_compass;
#[path = "../tests/it/fake_oc.rs"]
#[allow(dead_code)]
mod fake_oc;

const INSTANCES: i64 = 1_000;
const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: u64 = 8;
const ROUNDS: usize = 3;

struct Measured {
    took: Duration,
    oc_calls: u64,
    compass_calls: u64,
}

#[tokio::main]
async fn main() {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for round in 0..ROUNDS {
        let instances = (1..=INSTANCES)
            .map(|id| fake_oc::FakeInstance::new(id, &format!("instance-{id}")))
            .collect();
        let oc = fake_oc::FakeOc::start(instances).await;
        let compass = fake_compass::FakeCompass::start().await;
        oc.with(|s| {
            s.delay = LATENCY;
            s.max_page = 200;
        });
        compass.with(|s| s.delay = LATENCY);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        let config = serde_json::json!({
            "logLevel": "Warn",
            "compass": {
                "directorURL": compass.director_url(), "tenantId": fake_compass::TENANT,
                "tokenUrl": compass.token_url(), "clientID": fake_compass::CLIENT_ID,
                "clientSecret": fake_compass::CLIENT_SECRET, "applicationPrefix": "oc",
                "timeoutMills": 10000
            },
            "openConnectors": {
                "hostname": oc.hostname(), "organizationSecret": fake_oc::ORG_SECRET,
                "userSecret": fake_oc::USER_SECRET, "timeoutMills": 10000
            },
            "concurrency": CONCURRENCY
        });
        std::fs::write(&path, serde_json::to_vec(&config).expect("json")).expect("write");
        let run = || async {
            let started = Instant::now();
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"))
                .arg("-config")
                .arg(&path)
                .args(["-o", "json"])
                .env_remove("RUST_LOG")
                .output()
                .await
                .expect("runs");
            let took = started.elapsed();
            assert_eq!(
                output.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let summary: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("one JSON line");
            Measured {
                took,
                oc_calls: summary["calls"]["open_connectors"].as_u64().expect("calls"),
                compass_calls: summary["calls"]["compass"].as_u64().expect("calls"),
            }
        };
        let one = run().await;
        assert_eq!(compass.with(|s| s.apps.len()), INSTANCES as usize);
        compass.with(|s| s.operations.clear());
        let two = run().await;
        assert!(
            compass.with(|s| s.mutations().is_empty()),
            "the second run changed something"
        );
        eprintln!(
            "round {}/{ROUNDS}: first {:.2} s, second {:.2} s",
            round + 1,
            one.took.as_secs_f64(),
            two.took.as_secs_f64()
        );
        first.push(one);
        second.push(two);
    }
    let best = |runs: &mut Vec<Measured>| {
        runs.sort_by_key(|m| m.took);
        runs.remove(0)
    };
    let (first, second) = (best(&mut first), best(&mut second));
    println!();
    println!(
        "oc-sync-job, {INSTANCES} instances, {} ms added to every call, concurrency {CONCURRENCY} (best of {ROUNDS})",
        LATENCY.as_millis()
    );
    println!(
        "  {:<30} {:>6} {:>9} {:>9} {:>7}",
        "run", "calls", "time", "ideal", "ratio"
    );
    for (name, m) in [
        ("first run (all creates)", &first),
        ("second run (nothing to do)", &second),
    ] {
        let calls = m.oc_calls + m.compass_calls;
        let ideal = LATENCY.mul_f64(calls as f64 / CONCURRENCY as f64);
        println!(
            "  {:<30} {:>6} {:>7.2} s {:>7.2} s {:>6.2}x",
            name,
            calls,
            m.took.as_secs_f64(),
            ideal.as_secs_f64(),
            m.took.as_secs_f64() / ideal.as_secs_f64()
        );
    }
    // What the shards buy: one Director listing is walked page after page.
    let pages = (INSTANCES as u32).div_ceil(10);
    let sequential = LATENCY * (pages + 1);
    println!(
        "  one unsharded Director listing cannot take less than (token + {pages} pages) x {} ms = {:.2} s; the second run took {:.2}x that",
        LATENCY.as_millis(),
        sequential.as_secs_f64(),
        second.took.as_secs_f64() / sequential.as_secs_f64()
    );
}
