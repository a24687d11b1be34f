//! Classification of every declared client against the database, and the apply loop.
//!
//! [`classify`] is pure: it compares the declaration with the [`DbState`] and says, per
//! client, create / up-to-date / drift, plus the orphans. [`apply`] carries out a plan
//! under the run lock, batch by batch, so that one bad client cannot fail the others.

use std::collections::BTreeMap;

use base64::Engine as _;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ProvisionConfig,
    store::{DbState, NewClient, Repair, RunSession, StoreError},
    summary::{ClientError, DriftEntry},
};

/// A client that does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCreate {
    pub name: String,
    pub cluster_id: String,
    pub aggregator_info: String,
}

/// A client whose rows differ from its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDrift {
    pub name: String,
    pub aggregator_id: String,
    /// Human-readable differences, e.g. `clusterId: "a" -> "b"`.
    pub differences: Vec<String>,
    pub set_aggregator_info: Option<String>,
    pub set_cluster_id: Option<String>,
    pub add_crypto_key: bool,
}

/// What the database needs, client by client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<PlannedCreate>,
    pub unchanged: Vec<String>,
    pub drift: Vec<PlannedDrift>,
    pub orphans: Vec<String>,
}

/// Clusters the declaration uses that `cluster_configurations` lacks, one problem each.
pub fn missing_clusters(config: &ProvisionConfig, state: &DbState) -> Vec<String> {
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, spec) in &config.clients {
        let cluster = config.cluster_of(spec);
        if !state.clusters.contains(cluster) {
            users.entry(cluster).or_default().push(name);
        }
    }
    users
        .into_iter()
        .map(|(cluster, clients)| {
            let shown: Vec<&str> = clients.iter().take(5).copied().collect();
            let more = clients.len().saturating_sub(shown.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "cluster {cluster:?} does not exist in cluster_configurations (used by {}{tail})",
                shown.join(", ")
            )
        })
        .collect()
}

/// Compares the declaration with the database.
pub fn classify(config: &ProvisionConfig, state: &DbState) -> Plan {
    let mut plan = Plan::default();
    for (name, spec) in &config.clients {
        let cluster = config.cluster_of(spec);
        let Some(existing) = state.clients.get(name) else {
            plan.create.push(PlannedCreate {
                name: name.clone(),
                cluster_id: cluster.to_owned(),
                aggregator_info: spec.aggregator_identifier.clone(),
            });
            continue;
        };
        let mut drift = PlannedDrift {
            name: name.clone(),
            aggregator_id: existing.aggregator_id.clone(),
            differences: Vec::new(),
            set_aggregator_info: None,
            set_cluster_id: None,
            add_crypto_key: false,
        };
        match &existing.aggregator_info {
            Some(info) if *info == spec.aggregator_identifier => {}
            Some(info) => {
                drift.differences.push(format!(
                    "aggregatorIdentifier: {info:?} -> {:?}",
                    spec.aggregator_identifier
                ));
                drift.set_aggregator_info = Some(spec.aggregator_identifier.clone());
            }
            None => {
                drift.differences.push("aggregator row missing".into());
                drift.set_aggregator_info = Some(spec.aggregator_identifier.clone());
            }
        }
        if existing.cluster_id != cluster {
            drift.differences.push(format!(
                "clusterId: {:?} -> {cluster:?}",
                existing.cluster_id
            ));
            drift.set_cluster_id = Some(cluster.to_owned());
        }
        if !existing.has_crypto {
            drift.differences.push("crypto key missing".into());
            drift.add_crypto_key = true;
        }
        if drift.differences.is_empty() {
            plan.unchanged.push(name.clone());
        } else {
            plan.drift.push(drift);
        }
    }
    plan.orphans = state
        .clients
        .keys()
        .filter(|name| !config.clients.contains_key(*name))
        .cloned()
        .collect();
    plan
}

/// A new random API key (UUID v4, as the aggregation service expects).
pub fn new_api_key() -> SecretString {
    SecretString::from(uuid::Uuid::new_v4().to_string())
}

/// A new crypto key: 32 random bytes, base64.
pub fn new_crypto_key() -> Result<SecretString, getrandom::Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(SecretString::from(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Created clients, in declaration order (their keys are pending delivery).
    pub created: Vec<String>,
    /// Declared as missing, but created by someone else meanwhile: left as found.
    pub raced: Vec<String>,
    pub drift: Vec<DriftEntry>,
    pub errors: Vec<ClientError>,
    /// Work left undone because a shutdown signal came.
    pub interrupted: bool,
}

/// Carries out `plan` under the run lock: creations, then (with `repair`) drift repairs,
/// each in transactions of `batch_size` clients; a failed transaction is retried client
/// by client, so one bad client cannot fail the others. Checks `shutdown` between
/// transactions.
pub async fn apply(
    session: &mut RunSession,
    plan: &Plan,
    batch_size: usize,
    repair: bool,
    shutdown: &CancellationToken,
) -> Applied {
    let mut applied = Applied::default();
    let batch_size = batch_size.max(1);
    let total = plan.create.len();
    for (index, chunk) in plan.create.chunks(batch_size).enumerate() {
        if shutdown.is_cancelled() {
            applied.interrupted = true;
            applied
                .errors
                .extend(chunk.iter().map(|c| not_applied(&c.name)));
            continue;
        }
        let batch = match new_clients(chunk) {
            Ok(batch) => batch,
            Err(err) => {
                applied.errors.extend(chunk.iter().map(|c| ClientError {
                    client: Some(c.name.clone()),
                    error: format!("cannot generate keys: {err}"),
                }));
                continue;
            }
        };
        match session.create_clients(&batch).await {
            Ok(created) => record_created(&mut applied, batch, &created),
            Err(err) => {
                let error = scrub(&err, batch.iter().flat_map(NewClient::secrets));
                tracing::warn!(batch = index, clients = batch.len(), error = %error,
                    "batch failed; retrying its clients one by one");
                for client in batch {
                    let single = [client];
                    let result = session.create_clients(&single).await;
                    let [client] = single;
                    match result {
                        Ok(created) => record_created(&mut applied, vec![client], &created),
                        Err(err) => {
                            let error = scrub(&err, client.secrets());
                            tracing::warn!(client = %client.name, error = %error, "client not created");
                            applied.errors.push(ClientError {
                                client: Some(client.name),
                                error,
                            });
                        }
                    }
                }
            }
        }
        tracing::info!(
            done = ((index + 1) * batch_size).min(total),
            total,
            "creating clients"
        );
    }

    if !repair {
        applied.drift = plan.drift.iter().map(|d| drift_entry(d, false)).collect();
        return applied;
    }
    for chunk in plan.drift.chunks(batch_size) {
        if shutdown.is_cancelled() {
            applied.interrupted = true;
            applied
                .errors
                .extend(chunk.iter().map(|d| not_applied(&d.name)));
            applied
                .drift
                .extend(chunk.iter().map(|d| drift_entry(d, false)));
            continue;
        }
        let repairs = match chunk.iter().map(repair_of).collect::<Result<Vec<_>, _>>() {
            Ok(repairs) => repairs,
            Err(err) => {
                applied.errors.extend(chunk.iter().map(|d| ClientError {
                    client: Some(d.name.clone()),
                    error: format!("repair failed: cannot generate a crypto key: {err}"),
                }));
                applied
                    .drift
                    .extend(chunk.iter().map(|d| drift_entry(d, false)));
                continue;
            }
        };
        match session.repair_clients(&repairs).await {
            Ok(()) => {
                for drift in chunk {
                    tracing::info!(client = %drift.name, differences = ?drift.differences, "drift repaired");
                    applied.drift.push(drift_entry(drift, true));
                }
            }
            Err(err) => {
                let error = scrub(&err, repairs.iter().flat_map(Repair::secrets));
                tracing::warn!(clients = repairs.len(), error = %error,
                    "repair batch failed; retrying its clients one by one");
                for (drift, repair) in chunk.iter().zip(&repairs) {
                    match session.repair_clients(std::slice::from_ref(repair)).await {
                        Ok(()) => applied.drift.push(drift_entry(drift, true)),
                        Err(err) => {
                            let error = scrub(&err, repair.secrets());
                            tracing::warn!(client = %drift.name, error = %error, "drift not repaired");
                            applied.errors.push(ClientError {
                                client: Some(drift.name.clone()),
                                error: format!("repair failed: {error}"),
                            });
                            applied.drift.push(drift_entry(drift, false));
                        }
                    }
                }
            }
        }
    }
    applied
}

fn drift_entry(drift: &PlannedDrift, repaired: bool) -> DriftEntry {
    DriftEntry {
        client: drift.name.clone(),
        differences: drift.differences.clone(),
        repaired,
    }
}

fn repair_of(drift: &PlannedDrift) -> Result<Repair, getrandom::Error> {
    Ok(Repair {
        name: drift.name.clone(),
        aggregator_id: drift.aggregator_id.clone(),
        aggregator_info: drift.set_aggregator_info.clone(),
        cluster_id: drift.set_cluster_id.clone(),
        crypto_key: drift.add_crypto_key.then(new_crypto_key).transpose()?,
    })
}

fn new_clients(chunk: &[PlannedCreate]) -> Result<Vec<NewClient>, getrandom::Error> {
    chunk
        .iter()
        .map(|c| {
            Ok(NewClient {
                name: c.name.clone(),
                cluster_id: c.cluster_id.clone(),
                aggregator_id: uuid::Uuid::new_v4().to_string(),
                aggregator_info: c.aggregator_info.clone(),
                api_key: new_api_key(),
                crypto_key: new_crypto_key()?,
            })
        })
        .collect()
}

fn record_created(applied: &mut Applied, batch: Vec<NewClient>, created: &[String]) {
    for client in batch {
        if created.contains(&client.name) {
            tracing::debug!(client = %client.name, cluster = %client.cluster_id, "client created");
            applied.created.push(client.name);
        } else {
            tracing::info!(client = %client.name, "client appeared during the run; left as found");
            applied.raced.push(client.name);
        }
    }
}

fn not_applied(name: &str) -> ClientError {
    ClientError {
        client: Some(name.to_owned()),
        error: "not applied: the run was stopped by a shutdown signal".into(),
    }
}

/// A database error as shown to the operator and the logs, with the generated secrets
/// removed should the driver or a trigger ever quote them. Done before anything is
/// logged.
fn scrub<'a>(err: &StoreError, secrets: impl IntoIterator<Item = &'a SecretString>) -> String {
    use secrecy::ExposeSecret;
    let mut text = err.to_string();
    for secret in secrets {
        text = text.replace(secret.expose_secret(), "***");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ClientSpec, store::ExistingClient};

    fn declared(entries: &[(&str, &str, Option<&str>)]) -> ProvisionConfig {
        let mut config = ProvisionConfig::default();
        for (name, info, cluster) in entries {
            config.clients.insert(
                (*name).into(),
                ClientSpec {
                    aggregator_identifier: (*info).into(),
                    cluster_id: cluster.map(Into::into),
                },
            );
        }
        config
    }

    fn existing(cluster: &str, info: Option<&str>, has_crypto: bool) -> ExistingClient {
        ExistingClient {
            cluster_id: cluster.into(),
            aggregator_id: "agg".into(),
            aggregator_info: info.map(Into::into),
            has_crypto,
        }
    }

    #[test]
    fn each_client_is_classified_and_orphans_are_found() {
        let config = declared(&[
            ("new", "New AB", None),
            ("same", "Same AB", None),
            ("renamed", "New Name", None),
            ("moved", "Moved AB", Some("oxford-staging")),
            ("keyless", "Keyless AB", None),
        ]);
        let mut state = DbState::default();
        state.clients.insert(
            "same".into(),
            existing("oxford-production", Some("Same AB"), true),
        );
        state.clients.insert(
            "renamed".into(),
            existing("oxford-production", Some("Old Name"), true),
        );
        state.clients.insert(
            "moved".into(),
            existing("oxford-production", Some("Moved AB"), true),
        );
        state.clients.insert(
            "keyless".into(),
            existing("oxford-production", Some("Keyless AB"), false),
        );
        state.clients.insert(
            "gone".into(),
            existing("oxford-production", Some("Gone AB"), true),
        );

        let plan = classify(&config, &state);
        assert_eq!(
            plan.create,
            vec![PlannedCreate {
                name: "new".into(),
                cluster_id: "oxford-production".into(),
                aggregator_info: "New AB".into(),
            }]
        );
        assert_eq!(plan.unchanged, vec!["same".to_owned()]);
        assert_eq!(plan.orphans, vec!["gone".to_owned()]);
        let drift: BTreeMap<_, _> = plan.drift.iter().map(|d| (d.name.as_str(), d)).collect();
        assert_eq!(
            drift["renamed"].differences,
            vec![r#"aggregatorIdentifier: "Old Name" -> "New Name""#]
        );
        assert_eq!(
            drift["moved"].set_cluster_id.as_deref(),
            Some("oxford-staging")
        );
        assert!(drift["keyless"].add_crypto_key);
        assert_eq!(drift.len(), 3);
    }

    #[test]
    fn missing_clusters_are_named_once_with_their_clients() {
        let config = declared(&[
            ("a", "A", Some("nowhere")),
            ("b", "B", Some("nowhere")),
            ("c", "C", None),
        ]);
        let mut state = DbState::default();
        state.clusters.insert("oxford-production".into());
        assert_eq!(
            missing_clusters(&config, &state),
            vec![
                r#"cluster "nowhere" does not exist in cluster_configurations (used by a, b)"#
                    .to_owned()
            ]
        );
    }

    #[test]
    fn generated_keys_have_the_expected_shape() {
        use secrecy::ExposeSecret;
        let api = new_api_key();
        assert!(uuid::Uuid::parse_str(api.expose_secret()).is_ok());
        let crypto = new_crypto_key().expect("os randomness");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(crypto.expose_secret())
            .expect("base64");
        assert_eq!(bytes.len(), 32);
        assert_ne!(new_api_key().expose_secret(), api.expose_secret());
    }
}
