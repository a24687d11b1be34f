//! The deletion rules and the dry run.

use crate::{
    fake_oc::Fault,
    helpers::{Setup, instances},
};

#[tokio::test]
async fn an_open_connectors_listing_failure_deletes_nothing_and_exits_1() {
    let setup = Setup::new(instances(3)).await;
    assert_eq!(setup.run(&[]).await.code, 0);
    setup.oc.with(|s| s.listing_down = true);
    setup.reset_counts();
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let summary = run.summary();
    assert_eq!(summary["outcome"], "fatal");
    let error = summary["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("Open Connectors listing failed"), "{error}");
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(setup.mutations().is_empty(), "{:?}", setup.mutations());
    assert_eq!(setup.compass.with(|s| s.apps.len()), 3);
    // A page that is not a list of instances (a 200 with an error body) is a failure too.
    setup.oc.with(|s| {
        s.listing_down = false;
        s.faults.push_back(Fault::Status(200));
    });
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let error = run.summary()["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("not a JSON array of instances"), "{error}");
    assert!(setup.mutations().is_empty(), "{:?}", setup.mutations());
}

#[tokio::test]
async fn more_deletions_than_max_deletes_delete_nothing_and_exit_1() {
    let mut setup = Setup::new(instances(5)).await;
    setup.overrides = serde_json::json!({"maxDeletes": 3});
    assert_eq!(setup.run(&[]).await.code, 0);
    // The tenant answers with an empty list (an outage that looks like success).
    setup.oc.with(|s| s.instances.clear());
    setup.reset_counts();
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let error = run.summary()["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("5 applications would be deleted, more than maxDeletes (3)"),
        "{error}"
    );
    assert!(setup.mutations().is_empty());
    assert_eq!(setup.compass.with(|s| s.apps.len()), 5);
    // The operator looked, and allows it for this run.
    let run = setup.run(&["-o", "json", "--max-deletes", "5"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.names("deleted").len(), 5);
    assert_eq!(setup.compass.with(|s| s.apps.len()), 0);
}

#[tokio::test]
async fn a_dry_run_makes_no_mutating_call_and_detailed_exitcode_says_whether_changes_are_pending() {
    let setup = Setup::new(instances(2)).await;
    let plan = setup.run(&["--dry-run", "--detailed-exitcode"]).await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("would create  oc-1"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("would create  oc-2"),
        "{}",
        plan.stdout
    );
    assert!(setup.mutations().is_empty(), "{:?}", setup.mutations());
    // No OpenAPI document is fetched for a plan either.
    assert!(setup.oc.calls().iter().all(|c| !c.contains("/docs")));
    let plain = setup.run(&["--dry-run", "-o", "json"]).await;
    assert_eq!(plain.code, 0);
    assert_eq!(plain.summary()["outcome"], "planned");
    assert_eq!(plain.names("created"), ["oc-1", "oc-2"]);

    assert_eq!(setup.run(&[]).await.code, 0);
    setup.oc.with(|s| s.instances.remove(0));
    let plan = setup
        .run(&["--dry-run", "--detailed-exitcode", "-o", "json"])
        .await;
    assert_eq!(plan.code, 2);
    assert_eq!(plan.names("deleted"), ["oc-1"]);
    assert_eq!(setup.compass.with(|s| s.apps.len()), 2);
    assert_eq!(setup.run(&[]).await.code, 0);
    let settled = setup.run(&["--dry-run", "--detailed-exitcode"]).await;
    assert_eq!(settled.code, 0, "{}", settled.stdout);
}
