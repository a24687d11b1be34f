//! What a run does to Compass: creates, updates, repairs, deletes, and nothing twice.

use serde_json::{Value, json};

use crate::{
    fake_compass::FINGERPRINT,
    fake_oc::FakeInstance,
    helpers::{Setup, instances},
};

#[tokio::test]
async fn the_first_run_creates_each_application_with_its_spec_and_labels_and_a_second_changes_nothing()
 {
    let setup = Setup::new(instances(3)).await;
    let first = setup.run(&["-o", "json"]).await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.names("created"), ["oc-1", "oc-2", "oc-3"]);
    let context = setup.oc.context();
    setup.compass.with(|s| {
        assert_eq!(s.apps.len(), 3);
        for id in 1..=3 {
            let app = s.by_name(&Setup::app_name(id)).expect("created");
            assert_eq!(
                app.labels["open_connectors"],
                json!({"connectorInstanceContext": context, "connectorInstanceID": id.to_string()})
            );
            assert!(app.labels[FINGERPRINT].is_string(), "{:?}", app.labels);
            assert_eq!(
                app.labels["open_connectors_shard"],
                json!((id % 16).to_string())
            );
            assert_eq!(
                app.description.as_deref(),
                Some(
                    format!("SAP Cloud Platform Open Connectors Salesforce: instance-{id}")
                        .as_str()
                )
            );
            assert_eq!(
                app.integration_system_id.as_deref(),
                Some("b2c4e6f8-1111-4222-8333-944455556666")
            );
            let [bundle] = app.bundles.as_slice() else {
                panic!("one bundle: {app:?}")
            };
            let [api] = bundle.apis.as_slice() else {
                panic!("one API: {bundle:?}")
            };
            assert_eq!(api.name, "sfdc");
            assert_eq!(api.target_url, format!("http://{context}/elements/api-v2"));
            let spec: Value =
                serde_json::from_str(api.spec.as_deref().expect("spec")).expect("JSON spec");
            assert_eq!(
                spec,
                FakeInstance::new(id, &format!("instance-{id}")).docs()
            );
            let auth: Value =
                serde_json::from_str(bundle.auth_headers.as_deref().expect("auth")).expect("JSON");
            assert_eq!(
                auth,
                json!({"Authorization": [format!(
                    "User {}, Organization {}, Element instance-token-{id}-c0ffee",
                    crate::fake_oc::USER_SECRET, crate::fake_oc::ORG_SECRET
                )]})
            );
        }
        assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    });

    setup.reset_counts();
    let second = setup.run(&["-o", "json"]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.names("unchanged"), ["oc-1", "oc-2", "oc-3"]);
    assert!(setup.mutations().is_empty(), "{:?}", setup.mutations());
    // Only the listings (a count and the 16 shards): no per-application read.
    assert_eq!(
        setup.compass.with(|s| s.operations.clone()),
        vec!["Applications"; 17]
    );
    let oc_calls = setup.oc.calls();
    assert!(
        oc_calls.iter().all(|c| c.starts_with("GET /instances?")),
        "{oc_calls:?}"
    );
}

#[tokio::test]
async fn a_renamed_instance_is_updated_a_vanished_one_deleted_and_a_broken_application_repaired() {
    let setup = Setup::new(instances(4)).await;
    assert_eq!(setup.run(&[]).await.code, 0);
    setup.oc.with(|s| {
        s.instances[0].name = "renamed".into();
        s.instances.retain(|i| i.id != 4);
    });
    // Instance 2's application lost its API definition; instance 3's its bundle.
    setup.compass.with(|s| {
        let app2 = s.by_name("oc-2").expect("app").id.clone();
        s.apps.get_mut(&app2).expect("app").bundles[0].apis.clear();
        let app3 = s.by_name("oc-3").expect("app").id.clone();
        s.apps.get_mut(&app3).expect("app").bundles.clear();
    });
    setup.reset_counts();
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.names("updated"), ["oc-1"]);
    assert_eq!(run.names("repaired"), ["oc-2", "oc-3"]);
    assert_eq!(run.names("deleted"), ["oc-4"]);
    setup.compass.with(|s| {
        assert!(s.by_name("oc-4").is_none());
        let app1 = s.by_name("oc-1").expect("kept");
        assert_eq!(
            app1.description.as_deref(),
            Some("SAP Cloud Platform Open Connectors Salesforce: renamed")
        );
        let spec = app1.bundles[0].apis[0].spec.as_deref().expect("spec");
        assert!(spec.contains("Salesforce renamed"), "{spec}");
        for name in ["oc-2", "oc-3"] {
            let app = s.by_name(name).expect("kept");
            assert_eq!(app.bundles.len(), 1, "{app:?}");
            assert_eq!(app.bundles[0].apis.len(), 1, "{app:?}");
            assert!(app.bundles[0].apis[0].spec.is_some());
        }
    });
    // Everything is in step now.
    setup.reset_counts();
    let again = setup.run(&["-o", "json"]).await;
    assert_eq!(again.names("unchanged"), ["oc-1", "oc-2", "oc-3"]);
    assert!(setup.mutations().is_empty(), "{:?}", setup.mutations());
}

#[tokio::test]
async fn applications_of_another_context_or_without_the_label_are_never_touched() {
    let setup = Setup::new(instances(1)).await;
    let (foreign, unlabelled, same_id) = setup.compass.with(|s| {
        let foreign = s.insert(
            "foreign-7",
            json!({"open_connectors": {"connectorInstanceContext": "other.example.com", "connectorInstanceID": "7"}}),
            false,
        );
        let unlabelled = s.insert("hand-made", json!({"team": "crm"}), false);
        // Another tenant's application for an instance with the same id as ours.
        let same_id = s.insert(
            "elsewhere-1",
            json!({"open_connectors": {"connectorInstanceContext": "other.example.com", "connectorInstanceID": "1"}}),
            true,
        );
        (foreign, unlabelled, same_id)
    });
    let before = setup.compass.with(|s| s.apps.clone());
    setup.oc.with(|s| s.instances.clear());
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.names("deleted").is_empty());
    setup.oc.with(|s| s.instances = instances(1));
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.names("created"), ["oc-1"]);
    setup.compass.with(|s| {
        for id in [&foreign, &unlabelled, &same_id] {
            assert_eq!(s.apps.get(id), before.get(id), "{id} was touched");
        }
    });
}

#[tokio::test]
async fn one_hundred_fifty_on_both_sides_page_through_every_instance_and_application() {
    let setup = Setup::new(instances(150)).await;
    let first = setup.run(&["-o", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.names("created").len(), 150);
    // 150 instances at the fake's 50 a page.
    let listings: Vec<String> = setup
        .oc
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("GET /instances?"))
        .collect();
    assert_eq!(listings.len(), 3, "{listings:?}");
    assert!(listings[1].contains("nextPage=page-50"), "{listings:?}");
    assert!(listings[2].contains("nextPage=page-100"), "{listings:?}");
    // Applications without the shard label (as the Go job wrote them): the shards do
    // not add up, so all 150 are listed at the Director's 10 a page, and labelled.
    setup.compass.with(|s| {
        for app in s.apps.values_mut() {
            app.labels.remove("open_connectors_shard");
        }
    });
    setup.reset_counts();
    let second = setup.run(&["-o", "json"]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.names("updated").len(), 150);
    assert!(second.names("deleted").is_empty() && second.names("created").is_empty());
    let listing_calls = setup
        .compass
        .with(|s| s.operations.iter().filter(|o| *o == "Applications").count());
    assert_eq!(listing_calls, 1 + 16 + 15);
    setup.reset_counts();
    let third = setup.run(&["-o", "json"]).await;
    assert_eq!(third.names("unchanged").len(), 150);
    assert!(setup.mutations().is_empty());
    assert_eq!(setup.compass.with(|s| s.operations.len()), 17);
    // One instance gone at the end of the last page, one at the start of the first.
    setup
        .oc
        .with(|s| s.instances.retain(|i| i.id != 150 && i.id != 1));
    let fourth = setup.run(&["-o", "json"]).await;
    assert_eq!(fourth.names("deleted"), ["oc-1", "oc-150"]);
    assert_eq!(fourth.names("unchanged").len(), 148);
}

#[tokio::test]
async fn every_shard_pages_through_its_applications() {
    // 400 applications: 25 in each of the 16 shards, three Director pages each.
    let setup = Setup::new(instances(400)).await;
    assert_eq!(setup.run(&[]).await.code, 0);
    setup.reset_counts();
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.names("unchanged").len(), 400, "{}", run.stderr);
    assert!(setup.mutations().is_empty());
    assert_eq!(setup.compass.with(|s| s.operations.len()), 1 + 16 * 3);
    // Shard 5 loses its first 19 instances (ids 5, 21, ..., 293).
    setup
        .oc
        .with(|s| s.instances.retain(|i| i.id % 16 != 5 || i.id > 300));
    let run = setup.run(&["-o", "json", "--max-deletes", "50"]).await;
    assert_eq!(run.names("deleted").len(), 19, "{}", run.stdout);
}

#[tokio::test]
async fn tags_select_instances_and_disabled_ones_are_not_created() {
    let mut all = instances(3);
    all[0].tags = vec!["crm".into(), "prod".into()];
    all[1].tags = vec!["crm".into()];
    all[2].tags = vec!["crm".into(), "prod".into()];
    all[2].disabled = true;
    let mut setup = Setup::new(all).await;
    setup.overrides = json!({"openConnectors": {"tags": ["crm", "prod"]}});
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.names("created"), ["oc-1"]);
    assert_eq!(
        run.summary()["skipped"][0]["why"],
        "the instance is disabled"
    );
    let listing = &setup.oc.calls()[0];
    assert!(
        listing.contains("tags%5B%5D=crm&tags%5B%5D=prod"),
        "{listing}"
    );
}
