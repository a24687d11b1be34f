//! The command line itself: help, version, print-config, usage errors.

use crate::helpers::{binary, into_run, run_with};

fn run_args(args: &[&str]) -> crate::helpers::Run {
    into_run(binary().args(args).output().expect("spawn"))
}

#[test]
fn help_documents_every_flag_and_the_exit_codes() {
    let out = run_args(&["--help"]);
    assert_eq!(out.code, 0);
    for flag in [
        "--config",
        "--print-config",
        "--dry-run",
        "--detailed-exitcode",
        "--repair",
        "--output",
        "--api-keys-out",
        "--api-keys-secret-name",
        "--api-keys-namespace",
        "--help",
        "--version",
        "apply",
        "plan",
        "migrate",
        "Exit codes",
    ] {
        assert!(
            out.stdout.contains(flag),
            "--help lacks {flag}:\n{}",
            out.stdout
        );
    }
    let plan = run_args(&["plan", "--help"]);
    assert_eq!(plan.code, 0);
    assert!(
        plan.stdout.contains("--detailed-exitcode"),
        "{}",
        plan.stdout
    );
}

#[test]
fn version_is_printed() {
    let out = run_args(&["--version"]);
    assert_eq!(out.code, 0);
    assert_eq!(
        out.stdout.trim(),
        format!("provisioner-job {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn print_config_redacts_the_database_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "database:\n  url: postgres://agg:from-file-secret@db:5432/aggregation\n\
         provisionClientsConfig:\n  clients:\n    a:\n      aggregatorIdentifier: A AB\n",
    )
    .expect("write");
    let out = run_with(&["--print-config"], &config, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("url: postgres://agg:***@db:5432/aggregation"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("from-file-secret"));
    assert!(
        out.stdout.contains("aggregatorIdentifier: A AB"),
        "{}",
        out.stdout
    );

    // The environment wins over the file, and is redacted the same way.
    let out = run_with(
        &["--print-config"],
        &config,
        &[(
            "PROVISIONER__DATABASE__URL",
            "postgres://agg:from-env-secret@other/agg?sslmode=require",
        )],
    )
    .await;
    assert!(
        out.stdout
            .contains("url: postgres://agg:***@other/agg?sslmode=require"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("from-env-secret"));
}

#[test]
fn usage_errors_exit_1_and_say_what_is_wrong() {
    let out = run_args(&["--no-such-flag"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);

    let out = run_args(&["apply", "--detailed-exitcode"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("--detailed-exitcode needs --dry-run"),
        "{}",
        out.stderr
    );

    let out = run_args(&["--output", "yaml"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("yaml"), "{}", out.stderr);
}

/// The one JSON line a run prints with `--output json`.
fn json_line(out: &crate::helpers::Run) -> serde_json::Value {
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one compact JSON line: {:?}",
        out.stdout
    );
    out.json()
}

#[tokio::test]
async fn every_failed_start_prints_one_json_line_with_output_json() {
    // Bad flags: the command line does not parse, yet --output json is honoured.
    let out = run_args(&["--output", "json", "--no-such-flag"]);
    assert_eq!(out.code, 1);
    let summary = json_line(&out);
    assert_eq!(summary["outcome"], "fatal");
    assert!(
        summary["errors"][0]["error"]
            .as_str()
            .expect("error")
            .contains("--no-such-flag"),
        "{summary}"
    );
    for key in ["created", "unchanged", "drift", "orphans"] {
        assert_eq!(summary[key], serde_json::json!([]), "{key}");
    }

    // A flag combination that makes no sense.
    let out = run_args(&["-o", "json", "apply", "--detailed-exitcode"]);
    assert_eq!(out.code, 1);
    assert!(
        json_line(&out)["errors"][0]["error"]
            .as_str()
            .expect("error")
            .contains("--detailed-exitcode needs --dry-run")
    );

    // Bad config: one error per problem.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "database:\n  batch_size: 0\nprovisionClientsConfig:\n  clients:\n    Bad:\n      aggregatorIdentifier: B\n",
    )
    .expect("write");
    let out = run_with(&["--output", "json"], &config, &[]).await;
    assert_eq!(out.code, 1);
    let summary = json_line(&out);
    assert_eq!(summary["outcome"], "fatal");
    assert_eq!(
        summary["errors"].as_array().map(Vec::len),
        Some(2),
        "{summary}"
    );
    assert!(out.stderr.contains("database.batch_size"), "{}", out.stderr);

    // Unreachable database.
    std::fs::write(
        &config,
        "database:\n  url: postgres://agg@127.0.0.1:1/agg\n  connect_timeout_secs: 1\n",
    )
    .expect("write");
    let out = run_with(&["--output", "json"], &config, &[]).await;
    assert_eq!(out.code, 1);
    assert!(
        json_line(&out)["errors"][0]["error"]
            .as_str()
            .expect("error")
            .contains("cannot connect to the database"),
        "{}",
        out.stdout
    );
}

#[test]
fn migrate_refuses_the_flags_of_apply_and_migrates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fresh.db");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("database:\n  url: sqlite://{}\n", db.display()),
    )
    .expect("write");
    for flag in [
        &["--dry-run"][..],
        &["--repair"][..],
        &["--api-keys-out", "keys.yaml"][..],
        &["--no-key-delivery"][..],
    ] {
        let mut args = vec!["migrate", "--config", config.to_str().expect("utf8")];
        args.extend_from_slice(flag);
        let out = run_args(&args);
        assert_eq!(out.code, 1, "migrate {flag:?}: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!(
                "migrate only migrates the schema; it takes no {}",
                flag[0]
            )),
            "{}",
            out.stderr
        );
        assert!(!db.exists(), "migrate {flag:?} migrated");
    }
    let out = run_args(&["migrate", "--config", config.to_str().expect("utf8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(db.exists());
}

#[test]
fn plan_on_sqlite_never_creates_the_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("never.db");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "database:\n  url: sqlite://{}\nprovisionClientsConfig:\n  clients:\n    a:\n      aggregatorIdentifier: A\n",
            db.display()
        ),
    )
    .expect("write");
    for args in [&["plan"][..], &["apply", "--dry-run"][..]] {
        let mut args = args.to_vec();
        args.extend(["--config", config.to_str().expect("utf8")]);
        let out = run_args(&args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(out.stdout.contains("does not exist"), "{}", out.stdout);
        assert!(!db.exists(), "{args:?} created the database file");
    }
}
