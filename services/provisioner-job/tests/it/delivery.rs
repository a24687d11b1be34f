//! API key delivery: pending until delivered, every run delivers every pending key, a
//! keys file is never clobbered, the Secret target is patched through the API server.

use std::{os::unix::fs::PermissionsExt, process::Stdio};

use axum::http::Method;

use crate::{
    helpers::{Backend, TestDb, binary, into_run, run, run_with},
    kube::FakeApiServer,
    on_both_backends,
};

const TWO: &[(&str, &str, Option<&str>)] = &[
    ("acme-bank", "Acme Bank", None),
    ("company-inc-testing", "Company Inc AB", None),
];

fn utf8(path: &std::path::Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// A run with `keys` as its target that creates nothing and delivers the keys of
/// acme-bank and company-inc-testing, pending from an earlier run; the file then holds
/// the database's keys and nothing is pending.
async fn a_run_with_the_keys_file_delivers_the_two_pending_keys(
    db: &TestDb,
    config: &std::path::Path,
    keys: &std::path::Path,
) {
    let out = run(&["--api-keys-out", utf8(keys), "--output", "json"], config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["created"], serde_json::json!([]));
    assert_eq!(
        out.json()["key_delivery"]["delivered"],
        serde_json::json!(["acme-bank", "company-inc-testing"])
    );
    assert!(db.pending_keys().await.is_empty());
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(keys).expect("keys")).expect("yaml");
    for (name, row) in db.clients().await {
        assert_eq!(manifest["stringData"][name.as_str()], row.api_key.as_str());
    }
}

async fn a_run_that_would_create_keys_without_a_target_refuses_before_any_write(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(TWO);
    let mut cmd = binary();
    cmd.args(["--output", "json", "--config"]).arg(&config);
    let out = into_run(cmd.output().expect("spawn"));
    assert_eq!(out.code, 1, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary["outcome"], "fatal");
    let error = summary["errors"][0]["error"].as_str().expect("error");
    assert!(
        error.contains("2 client(s) would get a new API key, but no delivery target is set"),
        "{error}"
    );
    assert!(error.contains("--no-key-delivery"), "{error}");
    assert_eq!(db.count("client_configurations").await, 0);
    assert_eq!(db.runs().await[0].0, "fatal", "the refusal is audited");

    // With --no-key-delivery the keys are created and stay pending ...
    let out = run(&["--no-key-delivery", "--output", "json"], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["key_delivery"]["pending"],
        serde_json::json!(["acme-bank", "company-inc-testing"])
    );
    assert_eq!(
        db.pending_keys().await,
        ["acme-bank", "company-inc-testing"]
    );

    // ... and the next run with a target delivers them, though it creates nothing.
    let keys = db.path("keys.yaml");
    a_run_with_the_keys_file_delivers_the_two_pending_keys(&db, &config, &keys).await;
}
on_both_backends!(a_run_that_would_create_keys_without_a_target_refuses_before_any_write);

async fn keys_file_is_0600_matches_the_database_and_is_not_rewritten_when_nothing_is_pending(
    backend: Backend,
) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(TWO);
    let keys = db.path("keys.yaml");

    let out = run(
        &[
            "--api-keys-out",
            utf8(&keys),
            "--api-keys-namespace",
            "aggregation",
            "--output",
            "json",
        ],
        &config,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["key_delivery"]["target"],
        format!("file {}", keys.display())
    );
    let mode = std::fs::metadata(&keys).expect("keys").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&keys).expect("read");
    let manifest: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    assert_eq!(manifest["kind"], "Secret");
    assert_eq!(manifest["metadata"]["name"], "provisioned-client-api-keys");
    assert_eq!(manifest["metadata"]["namespace"], "aggregation");
    let clients = db.clients().await;
    assert_eq!(manifest["stringData"].as_mapping().expect("map").len(), 2);
    for (name, row) in &clients {
        assert_eq!(manifest["stringData"][name.as_str()], row.api_key.as_str());
    }
    out.assert_no_secret(clients.values().map(|c| &c.api_key));
    assert!(db.pending_keys().await.is_empty());

    // Nothing pending: the file is left exactly as it is.
    let modified = std::fs::metadata(&keys)
        .expect("keys")
        .modified()
        .expect("mtime");
    let out = run(
        &["--api-keys-out", utf8(&keys), "--output", "json"],
        &config,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["key_delivery"]["delivered"],
        serde_json::json!([])
    );
    assert_eq!(std::fs::read_to_string(&keys).expect("read"), text);
    assert_eq!(
        std::fs::metadata(&keys)
            .expect("keys")
            .modified()
            .expect("mtime"),
        modified
    );
}
on_both_backends!(
    keys_file_is_0600_matches_the_database_and_is_not_rewritten_when_nothing_is_pending
);

async fn an_existing_keys_file_is_merged_never_clobbered(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let keys = db.path("keys.yaml");
    std::fs::write(
        &keys,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: provisioned-client-api-keys\n\
         stringData:\n  legacy-client: legacy-key\n",
    )
    .expect("write");

    let out = run(
        &["--api-keys-out", utf8(&keys), "--output", "json"],
        &db.config(TWO),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["key_delivery"]["kept"], 1);
    assert!(out.stdout.ends_with("}\n") && out.stdout.lines().count() == 1);
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&keys).expect("keys")).expect("yaml");
    let data = manifest["stringData"].as_mapping().expect("map");
    assert_eq!(data.len(), 3, "{manifest:?}");
    assert_eq!(manifest["stringData"]["legacy-client"], "legacy-key");

    // A file that is not a Secret manifest is refused before anything is written.
    let foreign = db.path("notes.yaml");
    std::fs::write(&foreign, "shopping: [milk]\n").expect("write");
    let out = run(
        &["--api-keys-out", utf8(&foreign)],
        &db.config(&[("third", "Third AB", None)]),
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("never overwritten"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(&foreign).expect("read"),
        "shopping: [milk]\n"
    );
    assert_eq!(db.count("client_configurations").await, 2);
}
on_both_backends!(an_existing_keys_file_is_merged_never_clobbered);

/// The job dies after its clients are committed, while writing the keys file (a file
/// size limit of 0 kills it with SIGXFSZ on the first byte): the next run delivers the
/// keys. PostgreSQL only: under the limit SQLite could not write its own database.
#[tokio::test]
async fn keys_lost_to_a_crash_after_the_commit_are_delivered_by_the_next_run() {
    let db = TestDb::with_cluster(Backend::Postgres).await;
    let config = db.config(TWO);
    let keys = db.path("keys.yaml");

    let job = binary();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--fsize=0")
        .arg("--")
        .arg(job.get_program())
        .args(["--api-keys-out", utf8(&keys), "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let crashed = into_run(
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("spawn"),
    );
    assert_ne!(crashed.code, 0, "the run must die: {}", crashed.stderr);
    assert_eq!(
        db.count("client_configurations").await,
        2,
        "committed before the crash"
    );
    assert!(!keys.exists() || std::fs::read_to_string(&keys).expect("read").is_empty());
    assert_eq!(
        db.pending_keys().await,
        ["acme-bank", "company-inc-testing"]
    );

    a_run_with_the_keys_file_delivers_the_two_pending_keys(&db, &config, &keys).await;
}

async fn the_secret_target_adds_keys_through_the_api_server_and_keeps_other_entries(
    backend: Backend,
) {
    let db = TestDb::with_cluster(backend).await;
    let api = FakeApiServer::start().await;
    api.add_secret("aggregation", "client-api-keys", &[("unrelated", "kept")]);
    let kubeconfig = api.kubeconfig(db.dir.path());
    let env = [("KUBECONFIG", utf8(&kubeconfig))];
    let args = [
        "--api-keys-secret",
        "aggregation/client-api-keys",
        "--output",
        "json",
    ];

    let out = run_with(&args, &db.config(TWO), &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(
        summary["key_delivery"]["target"],
        "secret aggregation/client-api-keys"
    );
    assert_eq!(summary["key_delivery"]["kept"], 1);
    let entries = api.entries("aggregation", "client-api-keys");
    assert_eq!(entries["unrelated"], "kept");
    let clients = db.clients().await;
    for (name, row) in &clients {
        assert_eq!(entries[name], row.api_key, "{name}");
    }
    assert_eq!(entries.len(), 3);
    assert!(api.violations().is_empty(), "{:?}", api.violations());
    let seen = api.seen();
    assert_eq!(
        seen[0].method,
        Method::GET,
        "the Secret is read before any write"
    );
    let patch = seen
        .iter()
        .find(|s| s.method == Method::PATCH)
        .expect("a patch");
    assert_eq!(
        patch.path,
        "/api/v1/namespaces/aggregation/secrets/client-api-keys"
    );
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let body = patch.body.as_ref().expect("json body");
    assert_eq!(
        body["data"].as_object().map(|d| d.len()),
        Some(2),
        "only this run's keys are sent: {body}"
    );
    out.assert_no_secret(clients.values().map(|c| &c.api_key));

    // A failed patch (409, then 500) leaves the keys pending and exits 3; the audit row
    // says the same; the next good run delivers them.
    for code in [409, 500] {
        api.fail_patches(&[code]);
        let name = format!("client-{code}");
        let out = run_with(&args, &db.config(&[(name.as_str(), "New AB", None)]), &env).await;
        assert_eq!(out.code, 3, "{code}: {}", out.stderr);
        let summary = out.json();
        assert_eq!(summary["outcome"], "partial_failure");
        assert_eq!(summary["created"], serde_json::json!([name]));
        assert_eq!(
            summary["key_delivery"]["pending"],
            serde_json::json!([name])
        );
        let error = summary["errors"][0]["error"].as_str().expect("error");
        assert!(
            error.contains(&code.to_string()) && error.contains("stay pending"),
            "{error}"
        );
        assert_eq!(db.pending_keys().await, vec![name.clone()]);
        assert_eq!(db.runs().await.last().expect("row").0, "partial_failure");

        let out = run_with(&args, &db.config(&[(name.as_str(), "New AB", None)]), &env).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            out.json()["key_delivery"]["delivered"],
            serde_json::json!([name])
        );
        assert!(db.pending_keys().await.is_empty());
        assert_eq!(
            api.entries("aggregation", "client-api-keys")[&name],
            db.clients().await[&name].api_key
        );
    }
    assert_eq!(api.entries("aggregation", "client-api-keys").len(), 5);
}
on_both_backends!(the_secret_target_adds_keys_through_the_api_server_and_keeps_other_entries);

#[tokio::test]
async fn a_missing_secret_fails_the_run_before_any_write() {
    let db = TestDb::with_cluster(Backend::Sqlite).await;
    let api = FakeApiServer::start().await;
    let kubeconfig = api.kubeconfig(db.dir.path());
    let out = run_with(
        &[
            "--api-keys-secret",
            "aggregation/nowhere",
            "--output",
            "json",
        ],
        &db.config(TWO),
        &[("KUBECONFIG", utf8(&kubeconfig))],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let error = out.json()["errors"][0]["error"]
        .as_str()
        .expect("error")
        .to_owned();
    assert!(
        error.contains("secret aggregation/nowhere: does not exist"),
        "{error}"
    );
    assert_eq!(db.count("client_configurations").await, 0);
    assert!(api.seen().iter().all(|s| s.method == Method::GET));
}
