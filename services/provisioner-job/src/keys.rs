//! Delivery of new API keys: a Kubernetes Secret manifest, written with mode 0600, so
//! that mapping the keys into the aggregation controller's secrets is one `kubectl apply`.
//!
//! The file is opened (as a temporary file next to the target) before anything is
//! written to the database, so an unwritable path fails the run while nothing has
//! changed; it is renamed into place once the keys are known.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// The keys file could not be prepared or written.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("--api-keys-out {path}: {reason}")]
    Path { path: String, reason: String },
    #[error(
        "--api-keys-secret-name {0:?}: must be a DNS subdomain (a-z, 0-9, '-', '.'; at most 253)"
    )]
    SecretName(String),
    #[error("cannot write the API keys to {path}: {reason}")]
    Write { path: String, reason: String },
}

/// A prepared keys file.
pub struct KeysFile {
    target: PathBuf,
    temp: tempfile::NamedTempFile,
    secret_name: String,
    namespace: Option<String>,
}

impl KeysFile {
    /// Checks the names and opens the temporary file (mode 0600) in the target's directory.
    pub fn prepare(
        target: &Path,
        secret_name: &str,
        namespace: Option<&str>,
    ) -> Result<Self, KeysError> {
        if !is_dns_subdomain(secret_name) {
            return Err(KeysError::SecretName(secret_name.to_owned()));
        }
        let shown = target.display().to_string();
        if target.is_dir() {
            return Err(KeysError::Path {
                path: shown,
                reason: "is a directory".into(),
            });
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // NamedTempFile is created 0600 on Unix.
        let temp = tempfile::Builder::new()
            .prefix(".api-keys-")
            .tempfile_in(&dir)
            .map_err(|e| KeysError::Path {
                path: shown,
                reason: e.to_string(),
            })?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            secret_name: secret_name.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// Writes the manifest and moves it into place. Nothing is written when `keys` is
    /// empty (an empty Secret applied over a real one would do harm); returns whether
    /// the file was written.
    pub fn write(mut self, keys: &[(String, SecretString)]) -> Result<bool, KeysError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let write_error = |reason: String| KeysError::Write {
            path: self.target.display().to_string(),
            reason,
        };
        let manifest = Manifest {
            api_version: "v1",
            kind: "Secret",
            metadata: Metadata {
                name: &self.secret_name,
                namespace: self.namespace.as_deref(),
                labels: BTreeMap::from([("app.kubernetes.io/managed-by", "provisioner-job")]),
            },
            kind_of_secret: "Opaque",
            string_data: keys
                .iter()
                .map(|(name, key)| (name.as_str(), key.expose_secret()))
                .collect(),
        };
        let text = serde_yaml::to_string(&manifest).map_err(|e| write_error(e.to_string()))?;
        self.temp
            .write_all(text.as_bytes())
            .and_then(|()| self.temp.as_file().sync_all())
            .map_err(|e| write_error(e.to_string()))?;
        let target = self.target.clone();
        self.temp
            .persist(&target)
            .map_err(|e| write_error(e.error.to_string()))?;
        Ok(true)
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    #[serde(rename = "type")]
    kind_of_secret: &'static str,
    #[serde(rename = "stringData")]
    string_data: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    labels: BTreeMap<&'static str, &'static str>,
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn manifest_is_a_secret_with_string_data_and_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let file =
            KeysFile::prepare(&path, "client-api-keys", Some("aggregation")).expect("prepare");
        let keys = vec![("company-a".to_owned(), SecretString::from("k-1"))];
        assert!(file.write(&keys).expect("write"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
        assert_eq!(doc["kind"], "Secret");
        assert_eq!(doc["metadata"]["namespace"], "aggregation");
        assert_eq!(doc["stringData"]["company-a"], "k-1");
    }

    #[test]
    fn no_keys_means_no_file_and_bad_targets_fail_early() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let file = KeysFile::prepare(&path, "keys", None).expect("prepare");
        assert!(!file.write(&[]).expect("write"));
        assert!(!path.exists());

        let missing = dir.path().join("no/such/dir/keys.yaml");
        assert!(matches!(
            KeysFile::prepare(&missing, "keys", None),
            Err(KeysError::Path { .. })
        ));
        assert!(matches!(
            KeysFile::prepare(&path, "Bad_Name", None),
            Err(KeysError::SecretName(_))
        ));
    }
}
