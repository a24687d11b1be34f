//! The command line and the config checks, seen from outside.

use crate::{
    fake_compass, fake_oc,
    helpers::{Setup, instances},
};

#[tokio::test]
async fn the_config_file_is_checked_before_any_call_one_line_per_problem() {
    let mut setup = Setup::new(instances(1)).await;
    setup.overrides = serde_json::json!({
        "compass": {"tenantId": "not-a-uuid", "applicationPrefix": "Bad_Prefix", "clientSecret": ""},
        "openConnectors": {"userSecret": ""}
    });
    let run = setup.run(&[]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for field in [
        "compass.tenantId",
        "compass.applicationPrefix",
        "compass.clientSecret",
        "openConnectors.userSecret",
    ] {
        assert!(run.stderr.contains(field), "{field}: {}", run.stderr);
    }
    assert!(setup.oc.calls().is_empty());
    assert_eq!(setup.compass.with(|s| s.token_calls), 0);
}

#[tokio::test]
async fn the_long_flag_the_env_overrides_and_the_json_summary_of_a_bad_start() {
    let setup = Setup::new(instances(1)).await;
    let path = setup.config_path();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"))
        .arg("--config")
        .arg(&path)
        .args(["--dry-run", "-o", "json"])
        .env("OC_SYNC__COMPASS__APPLICATIONPREFIX", "env-prefix")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("\"created\":[\"env-prefix-1\"]"),
        "{stdout}"
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"))
        .args(["-config", "/nonexistent/config.json", "-o", "json"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(summary["outcome"], "fatal");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"))
        .arg("--detailed-exitcode")
        .output()
        .await
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(1),
        "--detailed-exitcode needs --dry-run"
    );
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"))
        .arg("--help")
        .output()
        .await
        .expect("runs");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--max-deletes"));
}

#[tokio::test]
async fn secrets_never_appear_in_the_output_at_any_log_level() {
    let mut all = instances(2);
    all.push(fake_oc::FakeInstance::new(3, "third"));
    let mut setup = Setup::new(all).await;
    // Every path: creates, an update, a delete, a retry, a 401 renewal, a failure.
    assert_eq!(setup.run(&[]).await.code, 0);
    setup.oc.with(|s| {
        s.instances[0].name = "renamed".into();
        s.instances.remove(2);
        s.instances.push(fake_oc::FakeInstance::new(4, "fourth"));
        s.faults.push_back(fake_oc::Fault::Status(500));
    });
    setup.compass.with(|s| {
        s.revoke_after = Some(1);
        s.fail_register.insert("oc-4".into());
    });
    setup.overrides = serde_json::json!({"logLevel": "Trace"});
    let secrets = [
        fake_compass::CLIENT_SECRET.to_owned(),
        fake_oc::USER_SECRET.to_owned(),
        fake_oc::ORG_SECRET.to_owned(),
        "instance-token-".to_owned(),
        fake_compass::TOKEN_PREFIX.to_owned(),
    ];
    for env in [vec![], vec![("RUST_LOG", "trace")]] {
        for output in [
            vec![],
            vec!["-o", "json"],
            vec!["--dry-run"],
            vec!["--print-config"],
        ] {
            let run = setup.run_with_env(&output, &env).await;
            for secret in &secrets {
                assert!(
                    !run.stdout.contains(secret.as_str()),
                    "{secret} in stdout: {}",
                    run.stdout
                );
                assert!(
                    !run.stderr.contains(secret.as_str()),
                    "{secret} in stderr ({env:?} {output:?})"
                );
            }
            assert!(
                run.stderr.len() > 1000 || output.contains(&"--print-config"),
                "trace logs were written: {}",
                run.stderr.len()
            );
        }
    }
}

#[tokio::test]
async fn the_fake_director_refuses_what_the_real_one_would() {
    let compass = fake_compass::FakeCompass::start().await;
    let client = reqwest::Client::new();
    let token: serde_json::Value = client
        .post(compass.token_url())
        .basic_auth(fake_compass::CLIENT_ID, Some(fake_compass::CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "application:read application:write"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let bearer = token["access_token"].as_str().expect("token").to_owned();
    let send = |body: serde_json::Value, tenant: &'static str| {
        let request = client
            .post(compass.director_url())
            .bearer_auth(&bearer)
            .header("tenant", tenant)
            .json(&body);
        async move {
            request
                .send()
                .await
                .expect("sent")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    };
    let cases = [
        // A field the schema does not have.
        (
            "colour",
            serde_json::json!({"query": "query A { applications { data { id colour } } }", "operationName": "A"}),
        ),
        // An input field the schema does not have.
        (
            "displayName",
            serde_json::json!({
                "query": "mutation R($in: ApplicationRegisterInput!) { registerApplication(in: $in) { id } }",
                "operationName": "R",
                "variables": {"in": {"name": "x", "displayName": "y"}}
            }),
        ),
        // More than 10 a page.
        (
            "between 1 and 10",
            serde_json::json!({"query": "query A { applications(first: 50) { data { id } } }", "operationName": "A"}),
        ),
        // A JSON path where the Director matches JSON values.
        (
            "not a JSON value",
            serde_json::json!({
                "query": "query A { applications(filter: [{key: \"open_connectors\", query: \"$.x\"}], first: 5) { data { id } } }",
                "operationName": "A"
            }),
        ),
    ];
    for (why, case) in cases {
        let answer = send(case.clone(), fake_compass::TENANT).await;
        let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{case} -> {answer}");
    }
    let answer = send(
        serde_json::json!({"query": "query A { applications(first: 5) { totalCount } }", "operationName": "A"}),
        "00000000-0000-4000-8000-000000000000",
    )
    .await;
    assert_eq!(answer["errors"][0]["message"], "tenant not found");
    let answer = send(
        serde_json::json!({"query": "query A { applications(first: 5) { totalCount } }", "operationName": "A"}),
        fake_compass::TENANT,
    )
    .await;
    assert_eq!(answer["data"]["applications"]["totalCount"], 0, "{answer}");
}

#[tokio::test]
async fn log_level_sets_the_filter_and_rust_log_wins() {
    let mut setup = Setup::new(instances(1)).await;
    setup.overrides = serde_json::json!({"logLevel": "Error"});
    let quiet = setup.run(&[]).await;
    assert_eq!(quiet.code, 0);
    assert!(!quiet.stderr.contains("run finished"), "{}", quiet.stderr);
    let loud = setup.run_with_env(&[], &[("RUST_LOG", "info")]).await;
    assert!(loud.stderr.contains("run finished"), "{}", loud.stderr);
    setup.overrides = serde_json::json!({"logLevel": "Info"});
    let info = setup.run(&[]).await;
    assert!(info.stderr.contains("run finished"), "{}", info.stderr);
}
