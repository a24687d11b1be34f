//! How the job uses PostgreSQL: named connections, timeouts, errors reported as they
//! are, secrets scrubbed before they are logged, repairs batched.

use std::time::Duration;

use crate::helpers::{Backend, TestDb, as_specs, binary, many_clients, run, run_with};

#[tokio::test]
async fn every_connection_is_named_provisioner_job() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    let config = db.config_with(&[("named", "Named AB", None)], "  lock_wait_secs: 3\n");
    // The run waits for a held lock, so its connections can be looked at meanwhile.
    let mut holder = db.connection().await;
    sqlx::query(&format!(
        "SELECT pg_advisory_lock({})",
        provisioner_job::store::RUN_LOCK_KEY
    ))
    .execute(&mut *holder)
    .await
    .expect("lock");
    let mut child = binary()
        .args(["--no-key-delivery", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut names = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        names = db
            .strings(
                "SELECT application_name AS s FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND application_name = 'provisioner-job'",
            )
            .await;
        if !names.is_empty() {
            break;
        }
    }
    holder.close().await.expect("release");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success());
    assert!(!names.is_empty(), "no connection named provisioner-job");
}

#[tokio::test]
async fn a_database_error_is_reported_not_read_as_a_fresh_database() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    let role = format!("nobody_{}", uuid::Uuid::new_v4().simple());
    db.execute(&format!("CREATE ROLE {role} LOGIN")).await;
    let url = db
        .url
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    let config = db.path("config.yaml");
    std::fs::write(
        &config,
        format!(
            "database:\n  url: {url}\nprovisionClientsConfig:\n  clients:\n    a:\n      aggregatorIdentifier: A\n"
        ),
    )
    .expect("write");
    for args in [&["plan"][..], &[][..]] {
        let out = run(args, &config).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(
            out.stdout
                .contains("permission denied for table _sqlx_migrations"),
            "{args:?}: {}",
            out.stdout
        );
        assert!(!out.stdout.contains("not initialised"), "{}", out.stdout);
    }
}

#[tokio::test]
async fn a_statement_that_waits_on_a_lock_is_stopped_by_lock_timeout() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    let config = db.config_with(&[("waits", "Waits AB", None)], "  lock_timeout_secs: 1\n");
    let mut blocker = db.connection().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE client_configurations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock the table");
    let out = tokio::time::timeout(Duration::from_secs(30), run(&["--output", "json"], &config))
        .await
        .expect("lock_timeout ends the wait");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .expect("unlock");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("lock timeout"), "{}", out.stdout);
    assert_eq!(db.runs().await[0].0, "fatal");
}

#[tokio::test]
async fn a_statement_that_runs_too_long_is_stopped_by_statement_timeout() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    db.execute(
        "CREATE FUNCTION slow_insert() RETURNS trigger AS $$ BEGIN \
           PERFORM pg_sleep(30); RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER slow_insert BEFORE INSERT ON client_configurations \
           FOR EACH ROW EXECUTE FUNCTION slow_insert();",
    )
    .await;
    let config = db.config_with(
        &[("slow", "Slow AB", None)],
        "  statement_timeout_secs: 1\n",
    );
    let out = tokio::time::timeout(Duration::from_secs(30), run(&["--output", "json"], &config))
        .await
        .expect("statement_timeout ends the statement");
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["errors"][0]["client"], "slow");
    assert!(
        summary["errors"][0]["error"]
            .as_str()
            .expect("error")
            .contains("statement timeout"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_database_error_quoting_a_key_is_scrubbed_before_it_is_logged() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    // A trigger that quotes the new API key in its error, as a careless one could.
    db.execute(
        "CREATE FUNCTION quote_key() RETURNS trigger AS $$ BEGIN \
           IF NEW.client_name = 'client-0003' THEN \
             RAISE EXCEPTION 'rejected key %', NEW.api_client_key; END IF; \
           RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER quote_key BEFORE INSERT ON client_configurations \
           FOR EACH ROW EXECUTE FUNCTION quote_key();",
    )
    .await;
    let clients = many_clients(6);
    let config = db.config_with(&as_specs(&clients), "  batch_size: 3\n");
    let out = run_with(
        &["--output", "json"],
        &config,
        &[("RUST_LOG", "debug"), ("LOG_FORMAT", "text")],
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let logged = out.stderr.matches("rejected key ").count();
    assert!(
        logged >= 2,
        "the batch and the client failure are logged: {}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("rejected key ***").count(),
        logged,
        "a key reached the logs: {}",
        out.stderr
    );
    assert!(out.stdout.contains("rejected key ***"), "{}", out.stdout);
}

#[tokio::test]
async fn drift_repairs_are_batched_like_creates() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    db.add_cluster("oxford-staging").await;
    let clients = many_clients(10);
    let config = db.config_with(&as_specs(&clients), "  batch_size: 4\n");
    assert_eq!(run(&[], &config).await.code, 0);

    // Every client moved to another cluster; a trigger notes the transaction of each fix.
    db.execute(
        "UPDATE client_configurations SET cluster_id = 'oxford-staging'; \
         CREATE TABLE repair_txids (txid BIGINT NOT NULL); \
         CREATE FUNCTION note_txid() RETURNS trigger AS $$ BEGIN \
           INSERT INTO repair_txids VALUES (txid_current()); RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER note_txid AFTER UPDATE ON client_configurations \
           FOR EACH ROW EXECUTE FUNCTION note_txid();",
    )
    .await;
    let out = run(&["--repair", "--output", "json"], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let repaired = out.json()["drift"]
        .as_array()
        .expect("drift")
        .iter()
        .filter(|d| d["repaired"] == true)
        .count();
    assert_eq!(repaired, 10);
    assert_eq!(db.count("repair_txids").await, 10);
    let transactions = db
        .strings("SELECT DISTINCT CAST(txid AS TEXT) AS s FROM repair_txids")
        .await;
    assert_eq!(transactions.len(), 3, "10 repairs in batches of 4");
}
