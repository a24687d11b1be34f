//! Delivery of API keys to where the aggregation controller reads them.
//!
//! A created key is *pending delivery* in the database (`api_key_deliveries`) until a
//! delivery succeeded and was durable; every run delivers every pending key, this run's
//! and any an earlier run could not deliver, and only then marks them delivered. Two
//! targets:
//!
//! - a Kubernetes Secret (`--api-keys-secret NAMESPACE/NAME`), through the API server:
//!   one JSON merge patch of `data` that adds the keys and never removes another entry
//!   (server-side apply would drop the entries this field manager applied before and
//!   leaves out now). The Secret is read at start, so a missing Secret or missing RBAC
//!   fails the run before anything is written;
//! - a Secret manifest file (`--api-keys-out PATH`, mode 0600): an existing file is never
//!   clobbered, its keys are merged with the new ones (a new key for the same client
//!   wins) and the result replaces it atomically (temporary file, fsync, rename, fsync of
//!   the directory). An existing file that is not such a manifest fails the run at start.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The field manager the job's patches are recorded under.
pub const FIELD_MANAGER: &str = "provisioner-job";

/// How long one call to the Kubernetes API server may take, connection included.
const API_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the keys go, as the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A Secret manifest file, with the Secret's name and namespace.
    File {
        path: PathBuf,
        secret_name: String,
        namespace: Option<String>,
    },
    /// A Secret in the cluster.
    Secret { namespace: String, name: String },
}

/// Parses `NAMESPACE/NAME` for `--api-keys-secret`.
pub fn parse_secret_ref(value: &str) -> Result<(String, String), String> {
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(format!("{value:?} is not NAMESPACE/NAME"));
    };
    if !is_dns_label(namespace) {
        return Err(format!(
            "namespace {namespace:?} must be a DNS label (a-z, 0-9, '-'; at most 63)"
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(format!(
            "name {name:?} must be a DNS subdomain (a-z, 0-9, '-', '.'; at most 253)"
        ));
    }
    Ok((namespace.to_owned(), name.to_owned()))
}

/// The keys could not be delivered; they stay pending.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("--api-keys-out {path}: {reason}")]
    Path { path: String, reason: String },
    #[error(
        "--api-keys-secret-name {0:?}: must be a DNS subdomain (a-z, 0-9, '-', '.'; at most 253)"
    )]
    SecretName(String),
    #[error("cannot write the API keys to {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("cannot reach the Kubernetes API server: {0}")]
    Kubernetes(String),
    #[error("secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// What a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The target, as stored in `api_key_deliveries.delivered_to`.
    pub target: String,
    /// How many entries the target held before (merged with, never removed).
    pub kept: usize,
}

/// A target checked at start, before anything is written to the database.
pub enum Delivery {
    File(KeysFile),
    // Boxed: the kube client is large, and there is one Delivery per run.
    Secret(Box<SecretTarget>),
}

impl Delivery {
    /// Checks the target: the file's directory is writable and an existing file is a
    /// manifest that can be merged; the Secret exists and can be read.
    pub async fn prepare(spec: &TargetSpec) -> Result<Self, DeliveryError> {
        match spec {
            TargetSpec::File {
                path,
                secret_name,
                namespace,
            } => KeysFile::prepare(path, secret_name, namespace.as_deref()).map(Self::File),
            TargetSpec::Secret { namespace, name } => SecretTarget::prepare(namespace, name)
                .await
                .map(|target| Self::Secret(Box::new(target))),
        }
    }

    /// The target, as the summary and the audit trail name it.
    pub fn target(&self) -> String {
        match self {
            Self::File(file) => format!("file {}", file.target.display()),
            Self::Secret(secret) => format!("secret {}/{}", secret.namespace, secret.name),
        }
    }

    /// Delivers `keys` (never empty: nothing is written when there is nothing to
    /// deliver). An error's text never contains a key.
    pub async fn deliver(
        self,
        keys: &[(String, SecretString)],
    ) -> Result<Delivered, DeliveryError> {
        let target = self.target();
        let result = match self {
            Self::File(file) => file.write(keys),
            Self::Secret(secret) => secret.patch(keys).await,
        };
        result
            .map(|kept| Delivered { target, kept })
            .map_err(|err| scrub(err, keys))
    }
}

/// Removes every key, plain and base64, from an error's text.
fn scrub(err: DeliveryError, keys: &[(String, SecretString)]) -> DeliveryError {
    let clean = |mut text: String| {
        for (_, key) in keys {
            let key = key.expose_secret();
            text = text.replace(key, "***");
            text = text.replace(
                &base64::engine::general_purpose::STANDARD.encode(key),
                "***",
            );
        }
        text
    };
    match err {
        DeliveryError::Write { path, reason } => DeliveryError::Write {
            path,
            reason: clean(reason),
        },
        DeliveryError::Kubernetes(reason) => DeliveryError::Kubernetes(clean(reason)),
        DeliveryError::Secret {
            namespace,
            name,
            reason,
        } => DeliveryError::Secret {
            namespace,
            name,
            reason: clean(reason),
        },
        other => other,
    }
}

/// A Secret in the cluster, read once at start.
pub struct SecretTarget {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl SecretTarget {
    /// Connects (KUBECONFIG or `~/.kube/config` when present, else the in-cluster
    /// ServiceAccount) and reads the Secret.
    async fn prepare(namespace: &str, name: &str) -> Result<Self, DeliveryError> {
        let mut config = tokio::time::timeout(API_TIMEOUT, kube::Config::infer())
            .await
            .map_err(|_| DeliveryError::Kubernetes("reading the client config timed out".into()))?
            .map_err(|e| DeliveryError::Kubernetes(e.to_string()))?;
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(API_TIMEOUT);
        config.write_timeout = Some(API_TIMEOUT);
        let client =
            kube::Client::try_from(config).map_err(|e| DeliveryError::Kubernetes(e.to_string()))?;
        let target = Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        target.call("read", target.api.get(name)).await?;
        Ok(target)
    }

    /// Adds the keys to the Secret's `data`; returns how many other entries it holds.
    async fn patch(&self, keys: &[(String, SecretString)]) -> Result<usize, DeliveryError> {
        let data: BTreeMap<&str, String> = keys
            .iter()
            .map(|(client, key)| {
                (
                    client.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(key.expose_secret()),
                )
            })
            .collect();
        let patch = serde_json::json!({ "data": data });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let secret = self
            .call(
                "patch",
                self.api.patch(&self.name, &params, &Patch::Merge(&patch)),
            )
            .await?;
        // The API server answers with the Secret as stored: every key must be in it.
        let stored = secret.data.unwrap_or_default();
        let missing = keys
            .iter()
            .filter(|(client, key)| {
                stored.get(client).map(|v| v.0.as_slice()) != Some(key.expose_secret().as_bytes())
            })
            .count();
        if missing > 0 {
            return Err(self.error(format!(
                "the patched Secret lacks {missing} of the {} keys sent",
                keys.len()
            )));
        }
        Ok(stored.len().saturating_sub(keys.len()))
    }

    /// One bounded call to the API server, its failure worded for the operator.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, DeliveryError> {
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) => Err(self.error(match status.code {
                404 => format!(
                    "does not exist (create it, e.g. `kubectl -n {} create secret generic {}`; the chart does)",
                    self.namespace, self.name
                ),
                401 | 403 => format!(
                    "{what} refused ({} {}): the job's ServiceAccount needs get and patch on this Secret: {}",
                    status.code, status.reason, status.message
                ),
                code => format!("{what} failed ({code} {}): {}", status.reason, status.message),
            })),
            Ok(Err(err)) => Err(self.error(format!("{what} failed: {err}"))),
            Err(_) => Err(self.error(format!(
                "{what}: no answer from the API server within {}s",
                API_TIMEOUT.as_secs()
            ))),
        }
    }

    fn error(&self, reason: String) -> DeliveryError {
        DeliveryError::Secret {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        }
    }
}

/// A keys file, its directory checked and its temporary file opened at start.
pub struct KeysFile {
    target: PathBuf,
    temp: tempfile::NamedTempFile,
    secret_name: String,
    namespace: Option<String>,
}

impl KeysFile {
    /// Checks the names and the existing file, and opens the temporary file (mode 0600)
    /// in the target's directory.
    pub fn prepare(
        target: &Path,
        secret_name: &str,
        namespace: Option<&str>,
    ) -> Result<Self, DeliveryError> {
        if !is_dns_subdomain(secret_name) {
            return Err(DeliveryError::SecretName(secret_name.to_owned()));
        }
        let path_error = |reason: String| DeliveryError::Path {
            path: target.display().to_string(),
            reason,
        };
        if target.is_dir() {
            return Err(path_error("is a directory".into()));
        }
        if target.exists() {
            read_manifest(target).map_err(path_error)?;
        }
        let dir = directory_of(target);
        // NamedTempFile is created 0600 on Unix.
        let temp = tempfile::Builder::new()
            .prefix(".api-keys-")
            .tempfile_in(&dir)
            .map_err(|e| path_error(e.to_string()))?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            secret_name: secret_name.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// Merges the keys into the existing file (if any) and moves the result into place,
    /// durably. Returns how many entries of the existing file were kept beside them.
    fn write(mut self, keys: &[(String, SecretString)]) -> Result<usize, DeliveryError> {
        let shown = self.target.display().to_string();
        let write_error = |reason: String| DeliveryError::Write {
            path: shown.clone(),
            reason,
        };
        let existing = if self.target.exists() {
            read_manifest(&self.target).map_err(write_error)?
        } else {
            BTreeMap::new()
        };
        let mut entries: BTreeMap<&str, &str> = existing
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let kept = entries
            .keys()
            .filter(|k| !keys.iter().any(|(client, _)| client == *k))
            .count();
        for (client, key) in keys {
            entries.insert(client, key.expose_secret());
        }
        let manifest = Manifest {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: Metadata {
                name: self.secret_name.clone(),
                namespace: self.namespace.clone(),
                labels: BTreeMap::from([(
                    "app.kubernetes.io/managed-by".into(),
                    "provisioner-job".into(),
                )]),
            },
            kind_of_secret: Some("Opaque".into()),
            string_data: entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            data: BTreeMap::new(),
        };
        let text = serde_yaml::to_string(&manifest).map_err(|e| write_error(e.to_string()))?;
        self.temp
            .write_all(text.as_bytes())
            .and_then(|()| self.temp.as_file().sync_all())
            .map_err(|e| write_error(e.to_string()))?;
        self.temp
            .persist(&self.target)
            .map_err(|e| write_error(e.error.to_string()))?;
        // The rename is durable only once the directory is.
        std::fs::File::open(directory_of(&self.target))
            .and_then(|dir| dir.sync_all())
            .map_err(|e| write_error(format!("cannot sync the directory: {e}")))?;
        Ok(kept)
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The entries of an existing keys file: a Secret manifest with `stringData` and/or
/// (base64) `data`.
fn read_manifest(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let refuse = |why: String| {
        format!("exists and {why}; it is never overwritten: move it away or choose another path")
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| refuse(format!("cannot be read ({e})")))?;
    let manifest: Manifest = serde_yaml::from_str(&text)
        .map_err(|e| refuse(format!("is not a Secret manifest ({e})")))?;
    if manifest.kind != "Secret" {
        return Err(refuse(format!("is a {}, not a Secret", manifest.kind)));
    }
    let mut entries = manifest.string_data;
    for (key, value) in manifest.data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| refuse(format!("has data.{key} that is not base64")))?;
        let value = String::from_utf8(bytes)
            .map_err(|_| refuse(format!("has data.{key} that is not text")))?;
        entries.entry(key).or_insert(value);
    }
    Ok(entries)
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind_of_secret: Option<String>,
    #[serde(rename = "stringData", default)]
    string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn keys(entries: &[(&str, &str)]) -> Vec<(String, SecretString)> {
        entries
            .iter()
            .map(|(c, k)| ((*c).to_owned(), SecretString::from(*k)))
            .collect()
    }

    #[test]
    fn manifest_is_a_secret_with_string_data_and_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let file =
            KeysFile::prepare(&path, "client-api-keys", Some("aggregation")).expect("prepare");
        assert_eq!(
            file.write(&keys(&[("company-a", "k-1")])).expect("write"),
            0
        );
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("yaml");
        assert_eq!(doc["kind"], "Secret");
        assert_eq!(doc["metadata"]["namespace"], "aggregation");
        assert_eq!(doc["stringData"]["company-a"], "k-1");
    }

    #[test]
    fn an_existing_file_is_merged_never_clobbered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        let first = KeysFile::prepare(&path, "keys", None).expect("prepare");
        first
            .write(&keys(&[("a", "key-a"), ("b", "old-b")]))
            .expect("write");
        let second = KeysFile::prepare(&path, "keys", None).expect("prepare");
        assert_eq!(
            second
                .write(&keys(&[("b", "new-b"), ("c", "key-c")]))
                .expect("write"),
            1,
            "a was kept"
        );
        let entries = read_manifest(&path).expect("manifest");
        assert_eq!(
            entries,
            BTreeMap::from([
                ("a".to_owned(), "key-a".to_owned()),
                ("b".to_owned(), "new-b".to_owned()),
                ("c".to_owned(), "key-c".to_owned()),
            ])
        );
    }

    #[test]
    fn an_existing_file_that_is_not_a_secret_manifest_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.yaml");
        std::fs::write(&path, "shopping: [milk]\n").expect("write");
        let Err(err) = KeysFile::prepare(&path, "keys", None) else {
            panic!("prepared over a foreign file");
        };
        assert!(err.to_string().contains("never overwritten"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "shopping: [milk]\n"
        );
    }

    #[test]
    fn bad_targets_fail_early() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no/such/dir/keys.yaml");
        assert!(matches!(
            KeysFile::prepare(&missing, "keys", None),
            Err(DeliveryError::Path { .. })
        ));
        assert!(matches!(
            KeysFile::prepare(&dir.path().join("k.yaml"), "Bad_Name", None),
            Err(DeliveryError::SecretName(_))
        ));
    }

    #[test]
    fn secret_references_are_namespace_slash_name() {
        assert_eq!(
            parse_secret_ref("aggregation/client-keys"),
            Ok(("aggregation".into(), "client-keys".into()))
        );
        for bad in [
            "no-slash", "/name", "ns/", "Ns/name", "ns/Na_me", "a.b/name",
        ] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delivery_errors_never_carry_a_key() {
        let sent = keys(&[("a", "super-secret-key")]);
        let encoded = base64::engine::general_purpose::STANDARD.encode("super-secret-key");
        let err = scrub(
            DeliveryError::Kubernetes(format!("bad value super-secret-key / {encoded}")),
            &sent,
        );
        let text = err.to_string();
        assert!(
            !text.contains("super-secret-key") && !text.contains(&encoded),
            "{text}"
        );
    }
}
