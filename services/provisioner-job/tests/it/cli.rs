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
