//! Creating clients, idempotence, plan and the audit trail.

use crate::{
    helpers::{Backend, TestDb, run},
    on_both_backends,
};

const CLIENTS: &[(&str, &str, Option<&str>)] = &[
    ("company-inc-testing", "Company Inc AB", None),
    ("acme-bank", "Acme Bank", None),
    ("staging-client", "Staging Client", Some("oxford-staging")),
];

async fn first_apply_creates_aggregator_client_and_crypto_rows(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    db.add_cluster("oxford-staging").await;
    let config = db.config(CLIENTS);

    let out = run(&["apply", "--output", "json"], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["outcome"], "success");
    assert_eq!(
        summary["created"],
        serde_json::json!(["acme-bank", "company-inc-testing", "staging-client"])
    );

    let clients = db.clients().await;
    assert_eq!(clients.len(), 3);
    assert_eq!(
        clients["company-inc-testing"].aggregator_info,
        "Company Inc AB"
    );
    assert_eq!(clients["company-inc-testing"].cluster, "oxford-production");
    assert_eq!(clients["staging-client"].cluster, "oxford-staging");
    for (name, row) in &clients {
        assert_eq!(row.crypto_keys, 1, "{name} has its crypto row");
        assert!(
            uuid::Uuid::parse_str(&row.api_key).is_ok(),
            "{name} has a UUID key"
        );
    }
    assert_eq!(
        db.count("aggregator_configurations").await,
        3,
        "one aggregator per client, no leftovers"
    );
    out.assert_no_secret(clients.values().map(|c| &c.api_key));
}
on_both_backends!(first_apply_creates_aggregator_client_and_crypto_rows);

async fn second_apply_changes_nothing_and_says_so(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    db.add_cluster("oxford-staging").await;
    let config = db.config(CLIENTS);
    assert_eq!(run(&[], &config).await.code, 0);
    let before = db.clients().await;

    let out = run(&[], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("0 created, 3 unchanged"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    assert_eq!(db.clients().await, before, "rows and keys are untouched");
    assert_eq!(db.count("aggregator_configurations").await, 3);
    assert_eq!(db.count("crypto_configurations").await, 3);
}
on_both_backends!(second_apply_changes_nothing_and_says_so);

async fn plan_writes_nothing_and_exits_2_when_changes_are_pending(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(&CLIENTS[..2]);

    let out = run(
        &["plan", "--detailed-exitcode", "--output", "json"],
        &config,
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.json()["created"],
        serde_json::json!(["acme-bank", "company-inc-testing"])
    );
    assert_eq!(out.json()["dry_run"], true);
    assert_eq!(db.count("client_configurations").await, 0);
    assert_eq!(db.count("aggregator_configurations").await, 0);
    assert_eq!(
        db.count("provisioning_runs").await,
        0,
        "a dry run leaves no trace"
    );

    // Without --detailed-exitcode a plan is a success; `apply --dry-run` is the same as plan.
    assert_eq!(run(&["plan"], &config).await.code, 0);
    assert_eq!(
        run(&["apply", "--dry-run", "--detailed-exitcode"], &config)
            .await
            .code,
        2
    );

    assert_eq!(run(&[], &config).await.code, 0);
    let out = run(&["plan", "--detailed-exitcode"], &config).await;
    assert_eq!(
        out.code, 0,
        "nothing pending after the apply: {}",
        out.stdout
    );
}
on_both_backends!(plan_writes_nothing_and_exits_2_when_changes_are_pending);

async fn an_unwritable_keys_path_fails_before_any_write(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(&CLIENTS[..1]);
    let out = run(&["--api-keys-out", "/nonexistent-dir/keys.yaml"], &config).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("--api-keys-out /nonexistent-dir/keys.yaml"),
        "{}",
        out.stdout
    );
    assert_eq!(db.count("client_configurations").await, 0);
}
on_both_backends!(an_unwritable_keys_path_fails_before_any_write);

async fn every_apply_is_recorded_in_provisioning_runs(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(&CLIENTS[..2]);
    let first = run(&["--output", "json"], &config).await;
    assert_eq!(first.code, 0);
    assert_eq!(run(&[], &config).await.code, 0);

    let runs = db.runs().await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].0, "success");
    assert_eq!(
        runs[0].1["created"],
        serde_json::json!(["acme-bank", "company-inc-testing"])
    );
    assert_eq!(runs[0].1["run_id"], first.json()["run_id"]);
    assert_eq!(runs[1].1["unchanged"].as_array().map(Vec::len), Some(2));
    let stored = serde_json::to_string(&runs).expect("json");
    for row in db.clients().await.values() {
        assert!(!stored.contains(&row.api_key), "no key in the audit trail");
    }
}
on_both_backends!(every_apply_is_recorded_in_provisioning_runs);

#[tokio::test]
async fn a_disabled_cluster_exits_0_without_touching_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    // The database is unreachable: any attempt to use it would fail the run.
    std::fs::write(
        &config,
        "database:\n  url: postgres://nobody@127.0.0.1:1/none\n  connect_timeout_secs: 1\n\
         provisionClientsConfig:\n  enabled: false\n  clients:\n    a:\n      aggregatorIdentifier: A\n",
    )
    .expect("write");
    let out = run(&[], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("provisioning is disabled for this cluster"),
        "{}",
        out.stdout
    );

    // The per-cluster switch also works from the environment (Helm sets it per cluster).
    std::fs::write(
        &config,
        "database:\n  url: postgres://nobody@127.0.0.1:1/none\n  connect_timeout_secs: 1\n",
    )
    .expect("write");
    let out = crate::helpers::run_with(
        &["--output", "json"],
        &config,
        &[("PROVISIONER__PROVISIONCLIENTSCONFIG__ENABLED", "false")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["outcome"], "disabled");
}
