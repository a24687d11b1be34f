//! Bad input: rejected with exit 1, one clear message per problem, nothing written.

use crate::{
    helpers::{Backend, TestDb, run},
    on_both_backends,
};

async fn unknown_cluster_is_rejected_with_exit_1_and_nothing_written(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(&[
        ("good-client", "Good AB", None),
        ("lost-client", "Lost AB", Some("oxford-nowhere")),
    ]);
    for args in [&[][..], &["plan"][..]] {
        let out = run(args, &config).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(
            out.stdout.contains(r#"cluster "oxford-nowhere" does not exist in cluster_configurations (used by lost-client)"#),
            "{}",
            out.stdout
        );
    }
    assert_eq!(
        db.count("client_configurations").await,
        0,
        "not even the valid client"
    );
    assert_eq!(db.count("aggregator_configurations").await, 0);
    let runs = db.runs().await;
    assert_eq!(runs.len(), 1, "the apply is audited, the plan is read-only");
    assert_eq!(runs[0].0, "fatal");
    assert_eq!(runs[0].1["errors"][0]["client"], serde_json::Value::Null);
}
on_both_backends!(unknown_cluster_is_rejected_with_exit_1_and_nothing_written);

async fn bad_client_names_are_rejected_with_exit_1_and_nothing_written(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let config = db.config(&[
        ("good-client", "Good AB", None),
        ("bad_Upper", "Bad AB", None),
        ("-leading-dash", "Dash AB", None),
        ("empty-identifier", "", None),
    ]);
    let out = run(&[], &config).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let problems: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .collect();
    assert_eq!(problems.len(), 3, "one line per problem:\n{}", out.stderr);
    assert!(
        out.stderr
            .contains(r#"client name "bad_Upper" contains 'U'"#),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(r#"client name "-leading-dash" must start with"#),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("clients.empty-identifier.aggregatorIdentifier: must not be empty"),
        "{}",
        out.stderr
    );
    assert_eq!(db.count("client_configurations").await, 0);
}
on_both_backends!(bad_client_names_are_rejected_with_exit_1_and_nothing_written);

#[tokio::test]
async fn malformed_yaml_and_wrong_types_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "provisionClientsConfig:\n  clients: [unclosed\n").expect("write");
    let out = run(&[], &broken).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("error: invalid config"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("broken.yaml"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let typed = dir.path().join("typed.yaml");
    std::fs::write(&typed, "database:\n  batch_size: lots\n").expect("write");
    let out = run(&[], &typed).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("key `database.batch_size`"),
        "{}",
        out.stderr
    );

    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "provisionClientsConfig:\n  clients:\n    a:\n      aggregatorIdentifer: A\n",
    )
    .expect("write");
    let out = run(&[], &typo).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("aggregatorIdentifer"),
        "a misspelt key is named: {}",
        out.stderr
    );

    let out = run(&[], &dir.path().join("missing.yaml")).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("missing.yaml: no such file"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_unreachable_database_is_fatal_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "database:\n  url: postgres://agg:hunter2@127.0.0.1:1/aggregation\n  connect_timeout_secs: 2\n\
         provisionClientsConfig:\n  clients:\n    a:\n      aggregatorIdentifier: A\n",
    )
    .expect("write");
    let out = run(&[], &config).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("cannot connect to the database postgres://agg:***@127.0.0.1:1/aggregation"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"));
}

#[tokio::test]
async fn a_misspelt_key_in_provision_clients_config_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unreachable =
        "database:\n  url: postgres://agg@127.0.0.1:1/agg\n  connect_timeout_secs: 1\n";
    for (typo, key) in [
        ("  enable: false\n", "enable"),
        ("  clusterID: oxford-staging\n", "clusterID"),
    ] {
        let config = dir.path().join("typo.yaml");
        std::fs::write(
            &config,
            format!("{unreachable}provisionClientsConfig:\n{typo}  clients: {{}}\n"),
        )
        .expect("write");
        let out = run(&[], &config).await;
        assert_eq!(out.code, 1, "{typo}: {}", out.stdout);
        assert!(
            out.stderr
                .contains(&format!("unknown field: found `{key}`")),
            "{}",
            out.stderr
        );
        assert!(
            !out.stdout.contains("cannot connect"),
            "rejected before any connection: {}",
            out.stdout
        );
    }
    // A typo inside a client entry is named too.
    let config = dir.path().join("client.yaml");
    std::fs::write(
        &config,
        format!(
            "{unreachable}provisionClientsConfig:\n  clients:\n    a:\n      aggregatorIdentifier: A\n      clusterID: x\n"
        ),
    )
    .expect("write");
    let out = run(&[], &config).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("`clusterID`"), "{}", out.stderr);
}

#[tokio::test]
async fn should_provision_clients_is_read_as_the_legacy_name_of_enabled_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("legacy.yaml");
    // The database is unreachable: a disabled cluster never touches it.
    std::fs::write(
        &config,
        "database:\n  url: postgres://agg@127.0.0.1:1/agg\n  connect_timeout_secs: 1\n\
         provisionClientsConfig:\n  shouldProvisionClients: false\n  clients: {}\n",
    )
    .expect("write");
    let out = run(&["--output", "json"], &config).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["outcome"], "disabled");
    assert!(
        out.stderr.contains(
            "warning: provisionClientsConfig.shouldProvisionClients is the legacy name of provisionClientsConfig.enabled"
        ),
        "{}",
        out.stderr
    );

    std::fs::write(
        &config,
        "provisionClientsConfig:\n  enabled: false\n  shouldProvisionClients: true\n",
    )
    .expect("write");
    let out = run(&[], &config).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("disagree"), "{}", out.stderr);
}
