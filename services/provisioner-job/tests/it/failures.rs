//! Partial failure: one bad client does not stop the others; a stop signal leaves a
//! consistent database; no secret ever reaches the output.

use std::time::Duration;

use provisioner_job::{
    RunOptions,
    config::{ClientSpec, Config, ProvisionConfig},
    provision,
    reconcile::{self, classify},
    store::{Access, Store},
    summary::Outcome,
};
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{Backend, TestDb, as_specs, database_config, many_clients, run, run_with},
    on_both_backends,
};

async fn reject_client_on_insert(db: &TestDb, name: &str) {
    match db.backend {
        Backend::Postgres => {
            db.execute(&format!(
                "CREATE FUNCTION reject_client() RETURNS trigger AS $$ BEGIN \
                   IF NEW.client_name = '{name}' THEN RAISE EXCEPTION 'client rejected by the test trigger'; END IF; \
                   RETURN NEW; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER reject_client BEFORE INSERT ON client_configurations \
                   FOR EACH ROW EXECUTE FUNCTION reject_client();"
            ))
            .await
        }
        Backend::Sqlite => {
            db.execute(&format!(
                "CREATE TRIGGER reject_client BEFORE INSERT ON client_configurations \
                 WHEN NEW.client_name = '{name}' \
                 BEGIN SELECT RAISE(ABORT, 'client rejected by the test trigger'); END;"
            ))
            .await
        }
    }
}

async fn a_failure_on_one_client_leaves_the_others_applied_and_exits_3(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    reject_client_on_insert(&db, "client-0007").await;
    let clients = many_clients(20);
    // Batches of 5: the poisoned client's batch fails and is retried one by one.
    let config = db.config_with(&as_specs(&clients), "  batch_size: 5\n");

    let out = run(&["--output", "json"], &config).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["outcome"], "partial_failure");
    let errors = summary["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{summary:#}");
    assert_eq!(errors[0]["client"], "client-0007");
    assert!(
        errors[0]["error"]
            .as_str()
            .expect("text")
            .contains("client rejected by the test trigger")
    );
    assert_eq!(summary["created"].as_array().expect("created").len(), 19);

    let rows = db.clients().await;
    assert_eq!(rows.len(), 19);
    assert!(!rows.contains_key("client-0007"));
    assert_eq!(
        db.count("aggregator_configurations").await,
        19,
        "the failed client left no row behind"
    );
    assert_eq!(db.count("crypto_configurations").await, 19);
    assert_eq!(db.runs().await[0].0, "partial_failure");

    // Once the cause is gone, the next run creates just the missing client.
    db.execute(match db.backend {
        Backend::Postgres => "DROP TRIGGER reject_client ON client_configurations",
        Backend::Sqlite => "DROP TRIGGER reject_client",
    })
    .await;
    let out = run(&["--output", "json"], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["created"], serde_json::json!(["client-0007"]));
}
on_both_backends!(a_failure_on_one_client_leaves_the_others_applied_and_exits_3);

async fn no_secret_reaches_stdout_or_stderr_even_at_trace_level(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let clients = many_clients(30);
    let config = db.config_with(&as_specs(&clients), "  batch_size: 7\n");
    for format in ["json", "text"] {
        let out = run_with(
            &["--output", "json", "--repair"],
            &config,
            &[("RUST_LOG", "trace"), ("LOG_FORMAT", format)],
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let secrets = db.secrets().await;
        assert_eq!(secrets.len(), 60);
        out.assert_no_secret(&secrets);
    }
}
on_both_backends!(no_secret_reaches_stdout_or_stderr_even_at_trace_level);

/// Options of a run that leaves the keys pending (no delivery target).
fn unattended() -> RunOptions {
    RunOptions {
        no_key_delivery: true,
        ..RunOptions::default()
    }
}

fn declared(n: usize) -> ProvisionConfig {
    let mut declared = ProvisionConfig::default();
    for (name, info) in many_clients(n) {
        declared.clients.insert(
            name,
            ClientSpec {
                aggregator_identifier: info,
                cluster_id: None,
            },
        );
    }
    declared
}

async fn a_stop_signal_before_the_run_writes_nothing_and_exits_1(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = Config {
        database: database_config(&db.url),
        provision: declared(3),
    };
    let stopped = CancellationToken::new();
    stopped.cancel();

    let summary = provision(&config, &unattended(), &stopped).await;
    assert_eq!(summary.outcome, Outcome::Interrupted);
    assert_eq!(summary.exit(false).code(), 1);
    assert_eq!(db.count("client_configurations").await, 0);
    assert_eq!(db.count("provisioning_runs").await, 0);

    let summary = provision(&config, &unattended(), &CancellationToken::new()).await;
    assert_eq!(summary.exit(false).code(), 0);
    assert_eq!(summary.created.len(), 3);
}
on_both_backends!(a_stop_signal_before_the_run_writes_nothing_and_exits_1);

async fn batches_after_a_stop_signal_are_reported_as_not_applied(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let store = Store::connect(&database_config(&db.url), Access::ReadWrite)
        .await
        .expect("connect");
    let mut session = store
        .begin_run(Duration::from_secs(5), &CancellationToken::new())
        .await
        .expect("lock")
        .expect("free");
    let plan = classify(&declared(5), &session.read_state().await.expect("state"));
    assert_eq!(plan.create.len(), 5);

    // The signal came after the lock was taken: no further batch starts.
    let stopped = CancellationToken::new();
    stopped.cancel();
    let applied = reconcile::apply(&mut session, &plan, 2, false, &stopped).await;
    session.finish().await.expect("finish");

    assert!(applied.interrupted);
    assert!(applied.created.is_empty());
    assert_eq!(applied.errors.len(), 5);
    assert!(
        applied
            .errors
            .iter()
            .all(|e| e.error.contains("stopped by a shutdown signal"))
    );
    assert_eq!(db.count("client_configurations").await, 0);
}
on_both_backends!(batches_after_a_stop_signal_are_reported_as_not_applied);
