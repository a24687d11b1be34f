//! Drift (reported; repaired only with --repair, API key kept) and orphans (never deleted).

use crate::{
    helpers::{Backend, TestDb, run},
    on_both_backends,
};

async fn drift_is_reported_and_fixed_only_with_repair_keeping_the_key(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    db.add_cluster("oxford-staging").await;
    let original = db.config(&[
        ("renamed", "Old Name AB", None),
        ("moved", "Moved AB", None),
        ("keyless", "Keyless AB", None),
        ("steady", "Steady AB", None),
    ]);
    assert_eq!(run(&[], &original).await.code, 0);
    db.execute("DELETE FROM crypto_configurations WHERE client_name = 'keyless'")
        .await;
    let before = db.clients().await;

    let changed = db.config(&[
        ("renamed", "New Name AB", None),
        ("moved", "Moved AB", Some("oxford-staging")),
        ("keyless", "Keyless AB", None),
        ("steady", "Steady AB", None),
    ]);

    // Reported, not fixed.
    let out = run(&["--output", "json"], &changed).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    let drift = summary["drift"].as_array().expect("drift list");
    assert_eq!(drift.len(), 3, "{summary:#}");
    assert!(drift.iter().all(|d| d["repaired"] == false));
    let renamed = drift
        .iter()
        .find(|d| d["client"] == "renamed")
        .expect("renamed");
    assert_eq!(
        renamed["differences"][0],
        r#"aggregatorIdentifier: "Old Name AB" -> "New Name AB""#
    );
    assert_eq!(summary["unchanged"], serde_json::json!(["steady"]));
    assert_eq!(
        db.clients().await,
        before,
        "nothing changed without --repair"
    );

    // A plan with --repair counts the drift as pending.
    assert_eq!(
        run(&["plan", "--repair", "--detailed-exitcode"], &changed)
            .await
            .code,
        2
    );
    assert_eq!(
        run(&["plan", "--detailed-exitcode"], &changed).await.code,
        0
    );

    // Fixed with --repair; every API key stays what it was.
    let out = run(&["--repair", "--output", "json"], &changed).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.json()["drift"]
            .as_array()
            .expect("drift")
            .iter()
            .all(|d| d["repaired"] == true)
    );
    let after = db.clients().await;
    assert_eq!(after["renamed"].aggregator_info, "New Name AB");
    assert_eq!(after["moved"].cluster, "oxford-staging");
    assert_eq!(after["keyless"].crypto_keys, 1);
    for (name, row) in &after {
        assert_eq!(
            row.api_key, before[name].api_key,
            "{name}'s API key was not rotated"
        );
    }
    assert_eq!(db.count("aggregator_configurations").await, 4);

    let out = run(&["plan", "--repair", "--detailed-exitcode"], &changed).await;
    assert_eq!(out.code, 0, "no drift left: {}", out.stdout);
}
on_both_backends!(drift_is_reported_and_fixed_only_with_repair_keeping_the_key);

async fn orphans_are_reported_never_deleted(backend: Backend) {
    let db = TestDb::with_cluster(backend).await;
    let both = db.config(&[("kept", "Kept AB", None), ("dropped", "Dropped AB", None)]);
    assert_eq!(run(&[], &both).await.code, 0);
    let before = db.clients().await;

    let only_kept = db.config(&[("kept", "Kept AB", None)]);
    for args in [
        &["--output", "json"][..],
        &["--repair", "--output", "json"][..],
    ] {
        let out = run(args, &only_kept).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.json()["orphans"], serde_json::json!(["dropped"]));
    }
    let text = run(&[], &only_kept).await;
    assert!(
        text.stdout.contains("dropped") && text.stdout.contains("orphan"),
        "{}",
        text.stdout
    );
    assert!(
        text.stderr.contains("orphan"),
        "orphans are logged too: {}",
        text.stderr
    );
    assert_eq!(
        db.clients().await,
        before,
        "the orphan and its key are still there"
    );
}
on_both_backends!(orphans_are_reported_never_deleted);
