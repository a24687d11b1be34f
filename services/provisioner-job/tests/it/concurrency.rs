//! One run at a time per database: concurrent applies, a held lock, a racing writer.

use std::process::Stdio;

use provisioner_job::store::{Access, NewClient, RUN_LOCK_KEY, Store};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{Backend, TestDb, as_specs, binary, database_config, into_run, many_clients, run},
    on_both_backends,
};

async fn four_concurrent_applies_are_serialised_and_leave_200_clients_with_distinct_keys(
    backend: Backend,
) {
    let db = TestDb::with_cluster(backend).await;
    let clients = many_clients(200);
    let config = db.config_with(&as_specs(&clients), "  batch_size: 50\n");

    let children: Vec<_> = (0..4)
        .map(|_| {
            binary()
                .args(["--output", "json", "--no-key-delivery", "--config"])
                .arg(&config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");

    let mut created: Vec<usize> = Vec::new();
    for out in outputs.into_iter().map(into_run) {
        assert_eq!(out.code, 0, "no run fails: {}", out.stderr);
        let summary = out.json();
        assert_eq!(summary["errors"], serde_json::json!([]));
        created.push(summary["created"].as_array().expect("created").len());
    }
    created.sort_unstable();
    // ON CONFLICT alone would let several runs share the 200; the lock makes the first
    // run create them all and the other three find them in place.
    assert_eq!(created, [0, 0, 0, 200], "exactly one run created clients");

    // Each run's audit row spans its time under the lock: the four never overlap.
    let intervals = db.run_intervals().await;
    assert_eq!(intervals.len(), 4);
    for pair in intervals.windows(2) {
        let ((_, first_finished), (second_started, _)) = (pair[0], pair[1]);
        assert!(
            first_finished <= second_started,
            "runs overlap: {intervals:?}"
        );
    }

    let rows = db.clients().await;
    assert_eq!(rows.len(), 200);
    let keys: std::collections::BTreeSet<&String> = rows.values().map(|r| &r.api_key).collect();
    assert_eq!(keys.len(), 200, "200 distinct keys");
    assert_eq!(
        db.count("aggregator_configurations").await,
        200,
        "no stray aggregator rows"
    );
    assert_eq!(db.count("crypto_configurations").await, 200);
}
on_both_backends!(four_concurrent_applies_are_serialised_and_leave_200_clients_with_distinct_keys);

/// Holds the run lock the way another run would, until the connection is closed.
async fn hold_run_lock(db: &TestDb) -> sqlx::pool::PoolConnection<sqlx::Any> {
    let mut holder = db.connection().await;
    if db.backend == Backend::Postgres {
        sqlx::query("SET application_name = 'test-holder'")
            .execute(&mut *holder)
            .await
            .expect("name the holder");
    }
    let hold = match db.backend {
        Backend::Postgres => format!("SELECT pg_advisory_lock({RUN_LOCK_KEY})"),
        Backend::Sqlite => "BEGIN IMMEDIATE".to_owned(),
    };
    sqlx::query(&hold)
        .execute(&mut *holder)
        .await
        .expect("hold the lock");
    holder
}

async fn a_run_that_cannot_get_the_lock_exits_0_and_writes_nothing(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config_with(&[("waiting", "Waiting AB", None)], "  lock_wait_secs: 1\n");

    // Another run holds the lock for longer than this one waits.
    let holder = hold_run_lock(&db).await;

    let out = run(&["--output", "json"], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["outcome"], "locked");
    let message = out.json()["message"].as_str().expect("message").to_owned();
    assert!(message.contains("another run holds the lock"), "{message}");
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("held the lock for the whole wait"),
        "a hung holder is visible in the logs: {}",
        out.stderr
    );
    if backend == Backend::Postgres {
        // Who holds it, so that an operator can find a hung run.
        assert!(
            message.contains("(test-holder), connected since 20"),
            "{message}"
        );
        assert!(message.contains("by pid "), "{message}");
        let runs = db.runs().await;
        assert_eq!(runs.len(), 1, "the locked-out run is audited");
        assert_eq!(runs[0].0, "locked");
    }
    holder.close().await.expect("release");

    assert_eq!(db.count("client_configurations").await, 0);
    // Once the lock is free the same run goes through.
    assert_eq!(run(&[], &config).await.code, 0);
    assert_eq!(db.count("client_configurations").await, 1);
}
on_both_backends!(a_run_that_cannot_get_the_lock_exits_0_and_writes_nothing);

async fn a_client_created_by_someone_else_keeps_its_key(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(&[("first", "First AB", None)]);
    assert_eq!(run(&[], &config).await.code, 0);
    let original = db.clients().await["first"].clone();

    // A writer that does not take the lock tries to create the same client again.
    let store = Store::connect(&database_config(&db.url), Access::ReadWrite)
        .await
        .expect("connect");
    let mut session = store
        .begin_run(std::time::Duration::from_secs(5), &CancellationToken::new())
        .await
        .expect("lock")
        .expect("free");
    let again = |name: &str| NewClient {
        name: name.into(),
        cluster_id: "oxford-production".into(),
        aggregator_id: uuid::Uuid::new_v4().to_string(),
        aggregator_info: "Overwritten AB".into(),
        api_key: SecretString::from(uuid::Uuid::new_v4().to_string()),
        crypto_key: SecretString::from("QUFBQQ=="),
    };
    let created = session
        .create_clients(&[again("first"), again("second")])
        .await
        .expect("batch");
    session.finish().await.expect("finish");

    assert_eq!(
        created,
        vec!["second".to_owned()],
        "only the new client counts as created"
    );
    let rows = db.clients().await;
    assert_eq!(
        rows["first"], original,
        "key, cluster and aggregator untouched"
    );
    assert_eq!(
        db.count("aggregator_configurations").await,
        2,
        "the loser's aggregator row was removed"
    );
}
on_both_backends!(a_client_created_by_someone_else_keeps_its_key);

async fn sigterm_while_waiting_for_the_lock_stops_the_run_at_once(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config_with(
        &[("patient", "Patient AB", None)],
        "  lock_wait_secs: 120\n",
    );
    let holder = hold_run_lock(&db).await;

    let mut child = binary()
        .args(["--output", "json", "--no-key-delivery", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id().to_string();
    let stderr = child.stderr.take().expect("stderr");
    let (output, after_signal) = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(stderr).lines();
        // PostgreSQL announces the wait; SQLite waits silently in its busy handler, so
        // it gets a moment to get there.
        if backend == Backend::Postgres {
            let announced = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|line| line.contains("another run holds the lock; waiting"));
            assert!(announced, "the run never said it was waiting");
        } else {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let signalled = std::time::Instant::now();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(kill.success());
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let output = child.wait_with_output().expect("wait");
        let mut run = into_run(output);
        run.stderr = rest.join("\n");
        (run, signalled.elapsed())
    })
    .await
    .expect("join");
    holder.close().await.expect("release");

    assert!(
        after_signal < std::time::Duration::from_secs(5),
        "took {after_signal:?} to stop"
    );
    assert_eq!(output.code, 1, "{}", output.stderr);
    assert_eq!(output.json()["outcome"], "interrupted");
    assert_eq!(db.count("client_configurations").await, 0);
}
on_both_backends!(sigterm_while_waiting_for_the_lock_stops_the_run_at_once);
