//! The binary's command line: the same exit codes as every service of the product.

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gandalf-cluster"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn a_usage_error_exits_1_and_names_the_flag() {
    let out = run(&["--listen-everywhere"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("--listen-everywhere"), "{stderr}");
}

#[test]
fn version_is_the_service_s_own() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gandalf-cluster {}", env!("CARGO_PKG_VERSION"))
    );
}
