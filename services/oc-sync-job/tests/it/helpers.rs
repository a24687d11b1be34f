//! Test harness: both fakes, a config file pointing at them, the real binary.

use std::{path::PathBuf, process::Output, time::Duration};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    fake_compass::{self, FakeCompass},
    fake_oc::{self, FakeInstance, FakeOc},
};

pub const PREFIX: &str = "oc";

/// Both fakes and a working directory.
pub struct Setup {
    pub oc: FakeOc,
    pub compass: FakeCompass,
    pub dir: TempDir,
    /// Merged over the generated config before it is written.
    pub overrides: Value,
}

/// A finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--output json` summary.
    pub fn summary(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON line ({e}): {}\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The names in one of the summary's lists.
    pub fn names(&self, list: &str) -> Vec<String> {
        let mut names: Vec<String> = self.summary()[list]
            .as_array()
            .unwrap_or_else(|| panic!("no {list} in {}", self.stdout))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    }
}

impl Setup {
    pub async fn new(instances: Vec<FakeInstance>) -> Self {
        Self {
            oc: FakeOc::start(instances).await,
            compass: FakeCompass::start().await,
            dir: tempfile::tempdir().expect("tempdir"),
            overrides: json!({}),
        }
    }

    pub fn config(&self) -> Value {
        let mut config = json!({
            "logLevel": "Info",
            "compass": {
                "directorURL": self.compass.director_url(),
                "tenantId": fake_compass::TENANT,
                "tokenUrl": self.compass.token_url(),
                "clientID": fake_compass::CLIENT_ID,
                "clientSecret": fake_compass::CLIENT_SECRET,
                "applicationPrefix": PREFIX,
                "timeoutMills": 2000,
                "integrationSystemID": "b2c4e6f8-1111-4222-8333-944455556666"
            },
            "openConnectors": {
                "hostname": self.oc.hostname(),
                "organizationSecret": fake_oc::ORG_SECRET,
                "userSecret": fake_oc::USER_SECRET,
                "timeoutMills": 2000
            }
        });
        merge(&mut config, &self.overrides);
        config
    }

    pub fn config_path(&self) -> PathBuf {
        let path = self.dir.path().join("config.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&self.config()).expect("json"),
        )
        .expect("write");
        path
    }

    /// Runs the binary with the Go job's `-config PATH` and the given flags.
    pub async fn run(&self, flags: &[&str]) -> Run {
        self.run_with_env(flags, &[]).await
    }

    pub async fn run_with_env(&self, flags: &[&str], env: &[(&str, &str)]) -> Run {
        let path = self.config_path();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_oc-sync-job"));
        command
            .arg("-config")
            .arg(&path)
            .args(flags)
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let output: Output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .expect("the run ends within 120 s")
            .expect("the binary runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The application the job writes for instance `id`.
    pub fn app_name(id: i64) -> String {
        format!("{PREFIX}-{id}")
    }

    pub fn mutations(&self) -> Vec<String> {
        self.compass.with(|s| s.mutations())
    }

    /// Forgets the operations seen so far.
    pub fn reset_counts(&self) {
        self.compass.with(|s| s.operations.clear());
        self.oc.with(|s| s.calls.clear());
    }
}

/// `instances(n)`: instances 1..=n named `instance-<id>`.
pub fn instances(n: i64) -> Vec<FakeInstance> {
    (1..=n)
        .map(|id| FakeInstance::new(id, &format!("instance-{id}")))
        .collect()
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, over) => *base = over.clone(),
    }
}
