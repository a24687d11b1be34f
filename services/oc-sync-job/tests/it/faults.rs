//! Faults of either side: retried ones, a failing item, an expired token.

use std::time::{Duration, Instant};

use crate::{
    fake_compass,
    fake_oc::{self, Fault},
    helpers::{Setup, instances},
};

#[tokio::test]
async fn one_failing_create_does_not_stop_the_others_and_exits_3() {
    let setup = Setup::new(instances(5)).await;
    setup.compass.with(|s| {
        s.fail_register.insert("oc-3".into());
    });
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.names("created"), ["oc-1", "oc-2", "oc-4", "oc-5"]);
    let summary = run.summary();
    assert_eq!(summary["outcome"], "partial_failure");
    assert_eq!(summary["errors"][0]["application"], "oc-3");
    assert_eq!(summary["errors"][0]["action"], "create");
    let error = summary["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("internal error while registering oc-3"),
        "{error}"
    );
    // The next run makes it.
    setup.compass.with(|s| s.fail_register.clear());
    let next = setup.run(&["-o", "json"]).await;
    assert_eq!(next.code, 0);
    assert_eq!(next.names("created"), ["oc-3"]);
}

#[tokio::test]
async fn a_401_fetches_a_new_token_once_and_the_run_completes() {
    let setup = Setup::new(instances(6)).await;
    // Every token is revoked after the listing and two creates.
    setup.compass.with(|s| s.revoke_after = Some(3));
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.names("created").len(), 6);
    setup.compass.with(|s| {
        assert_eq!(
            s.token_calls, 2,
            "one token, then one renewal: {:?}",
            s.rejected
        );
        assert!(
            s.rejected.iter().all(|r| r.starts_with("401")),
            "{:?}",
            s.rejected
        );
        assert!(!s.rejected.is_empty());
    });
    // A token that keeps being refused is renewed once per call, not forever: the
    // listing fails.
    setup
        .oc
        .with(|s| s.instances.push(fake_oc::FakeInstance::new(7, "seven")));
    setup.compass.with(|s| {
        s.token_calls = 0;
        s.faults
            .extend(std::iter::repeat_n(Fault::Status(401), 200));
    });
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(
        run.code, 1,
        "every listing call got 401 twice: {}",
        run.stdout
    );
    let left = setup.compass.with(|s| s.faults.len());
    // At most 17 listing calls (a count and 16 shards; the first failure stops the
    // others), each sent, renewed once, sent again.
    let used = 200 - left;
    assert!((2..=34).contains(&used), "{used} faults used");
    assert!(setup.compass.with(|s| s.token_calls) <= 18);
    let error = run.summary()["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("HTTP 401"), "{error}");
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_before_it_is_used() {
    let setup = Setup::new(instances(3)).await;
    // Tokens that live 1 s are renewed ahead of expiry (a tenth of their life early).
    setup.compass.with(|s| {
        s.token_lifetime = Duration::from_secs(1);
        s.delay = Duration::from_millis(400);
    });
    let mut setup = setup;
    setup.overrides = serde_json::json!({"concurrency": 1});
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    setup.compass.with(|s| {
        assert!(s.token_calls >= 2, "{}", s.token_calls);
        assert!(
            s.rejected.is_empty(),
            "no call went out with an expired token: {:?}",
            s.rejected
        );
    });
}

#[tokio::test]
async fn five_hundreds_429s_and_slow_answers_are_retried_and_retry_after_is_honoured() {
    let setup = Setup::new(instances(2)).await;
    setup.oc.with(|s| {
        s.faults
            .extend([Fault::Status(500), Fault::Status(503), Fault::TooMany(1)]);
    });
    setup.compass.with(|s| {
        s.faults
            .extend([Fault::Slow(Duration::from_secs(3)), Fault::Status(502)]);
    });
    let started = Instant::now();
    let run = setup.run(&["-o", "json"]).await;
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.names("created"), ["oc-1", "oc-2"]);
    let summary = run.summary();
    assert_eq!(summary["calls"]["retries"], 5, "{summary}");
    // Retry-After: 1 waited for; the slow answer cut at the 2 s timeout.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
}

#[tokio::test]
async fn a_call_that_keeps_failing_is_given_up_after_its_attempts() {
    let setup = Setup::new(instances(1)).await;
    setup.compass.with(|s| {
        s.faults
            .extend(std::iter::repeat_n(Fault::Status(500), 1000));
    });
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let error = run.summary()["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("Compass listing failed"), "{error}");
    assert!(error.contains("HTTP 500"), "{error}");
    assert_eq!(setup.compass.with(|s| s.apps.len()), 0);
}

#[tokio::test]
async fn wrong_client_credentials_are_named_and_change_nothing() {
    let mut setup = Setup::new(instances(1)).await;
    setup.overrides = serde_json::json!({"compass": {"clientSecret": "wrong"}});
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 1);
    let error = run.summary()["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("refused the client credentials"), "{error}");
    assert!(error.contains("compass.clientSecret"), "{error}");
    assert!(!run.stdout.contains("wrong") && !run.stderr.contains("wrong"));
    assert_eq!(
        setup.compass.with(|s| s.token_calls),
        1,
        "a refusal is not retried"
    );
    let _ = fake_compass::CLIENT_SECRET;
}

/// Runs the job and sends it SIGTERM after `after`; its exit code and JSON summary.
async fn signalled(setup: &Setup, after: Duration) -> (Option<i32>, serde_json::Value) {
    let path = setup.config_path();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"))
        .arg("-config")
        .arg(&path)
        .args(["-o", "json"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawns");
    tokio::time::sleep(after).await;
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("stops soon after the signal")
        .expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = serde_json::from_str(stdout.trim()).expect("one JSON line");
    (output.status.code(), summary)
}

#[tokio::test]
async fn sigterm_during_the_listings_changes_nothing_and_exits_1() {
    let mut setup = Setup::new(instances(5)).await;
    setup.overrides = serde_json::json!({"concurrency": 2});
    // 17 listing calls, 2 at a time, 300 ms each: about 2.7 s of listing.
    setup.compass.with(|s| s.delay = Duration::from_millis(300));
    let (code, summary) = signalled(&setup, Duration::from_millis(1000)).await;
    assert_eq!(code, Some(1), "{summary}");
    assert_eq!(summary["outcome"], "interrupted");
    assert!(setup.mutations().is_empty());
}

#[tokio::test]
async fn sigterm_lets_the_calls_under_way_finish_and_starts_no_new_ones() {
    let mut setup = Setup::new(instances(40)).await;
    setup.overrides = serde_json::json!({"concurrency": 4});
    // Listing: a token and 5 rounds of 4 calls (about 2.4 s); then 10 rounds of 4
    // creates (about 4 s). The signal comes in the middle of the creates.
    setup.compass.with(|s| s.delay = Duration::from_millis(400));
    let (code, summary) = signalled(&setup, Duration::from_millis(4400)).await;
    assert_eq!(code, Some(3), "{summary}");
    let created = summary["created"].as_array().expect("list").len();
    assert!((1..40).contains(&created), "{summary}");
    let stopped = summary["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        stopped.contains(&format!("{} changes not started", 40 - created)),
        "{summary}"
    );
    // Every application that exists is whole: the ones under way were finished.
    setup.compass.with(|s| {
        assert_eq!(s.apps.len(), created);
        assert!(
            s.apps
                .values()
                .all(|a| a.bundles.len() == 1 && a.bundles[0].apis.len() == 1)
        );
    });
    let rest = setup.run(&["-o", "json"]).await;
    assert_eq!(rest.names("created").len(), 40 - created);
}

#[tokio::test]
async fn a_429_waits_for_its_retry_after() {
    let setup = Setup::new(instances(1)).await;
    // Without Retry-After the first retry would come after at most 200 ms.
    setup.oc.with(|s| s.faults.push_back(Fault::TooMany(2)));
    let started = Instant::now();
    let run = setup.run(&["-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(run.summary()["calls"]["retries"], 1);
}
