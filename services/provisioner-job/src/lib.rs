//! provisioner-job: reconciles the client configurations declared in the aggregation
//! service's YAML (`provisionClientsConfig.clients`) into the aggregation database.
//!
//! Run daily as a Kubernetes CronJob. It is a reconciler: it validates everything before
//! writing anything, creates the clients that are missing (aggregator, client and crypto
//! rows, committed together), reports drift (and repairs it with `--repair`, never
//! rotating an API key) and orphans (never deleted), runs one at a time per database,
//! and ends with a summary that is also stored in `provisioning_runs`.
//!
//! `main.rs` parses the command line and loads the config; [`run`] does the rest.

pub mod cli;
pub mod config;
pub mod keys;
pub mod reconcile;
pub mod store;
pub mod summary;

use platform::job::{JobExit, print_summary};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::cli::{Cli, Command};
use crate::{
    config::Config,
    keys::KeysFile,
    reconcile::{Applied, classify, missing_clusters},
    store::{RunRecord, RunSession, Store, StoreError},
    summary::{ClientError, Outcome, Summary},
};

/// What to do in this run, from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// Also fix drift.
    pub repair: bool,
    /// Where to write the new API keys, with the Secret's name and namespace.
    pub api_keys_out: Option<cli::KeysTarget>,
}

/// Runs the whole job: prints the summary on stdout and returns the exit code.
pub async fn run(cli: &Cli, config: &Config, shutdown: CancellationToken) -> JobExit {
    let options = cli.options();
    let span = tracing::info_span!(
        "provisioner_run",
        command = cli.command_name(),
        dry_run = options.dry_run,
        repair = options.repair,
    );
    async move {
        let summary = match cli.command {
            Some(Command::Migrate) => migrate(config).await,
            _ => provision(config, &options, &shutdown).await,
        };
        let exit = summary.exit(cli.job.detailed_exitcode);
        if let Err(err) = print_summary(&summary, cli.job.output) {
            tracing::error!(error = %err, "cannot print the summary");
        }
        tracing::info!(
            outcome = summary.outcome.as_str(),
            exit_code = exit.code(),
            "run finished"
        );
        exit
    }
    .instrument(span)
    .await
}

async fn migrate(config: &Config) -> Summary {
    let result = async {
        let store = Store::connect(&config.database).await?;
        let migrated = store.migrate().await;
        store.close().await;
        migrated.map(|()| store.backend())
    }
    .await;
    match result {
        Ok(backend) => {
            let mut summary = Summary::new(Outcome::Success, false, false);
            summary.command = "migrate";
            summary.message = Some(format!("{backend} schema is up to date"));
            summary
        }
        Err(err) => Summary {
            command: "migrate",
            ..fatal(err.to_string(), false, false)
        },
    }
}

fn fatal(problem: String, dry_run: bool, repair: bool) -> Summary {
    tracing::error!(error = %problem, "run failed; nothing was written");
    Summary::fatal(vec![problem], dry_run, repair)
}

/// Reconciles the declared clients into the database (or, in a dry run, says what that
/// would do). Never panics on bad input: every failure ends up in the summary.
pub async fn provision(
    config: &Config,
    options: &RunOptions,
    shutdown: &CancellationToken,
) -> Summary {
    let (dry_run, repair) = (options.dry_run, options.repair);
    if !config.provision.enabled {
        tracing::info!("provisionClientsConfig.enabled is false: this cluster opted out");
        let mut summary = Summary::new(Outcome::Disabled, dry_run, repair);
        summary.message = Some(
            "provisioning is disabled for this cluster (provisionClientsConfig.enabled: false); nothing done"
                .into(),
        );
        return summary;
    }

    // Opened before any database write, so an unwritable path changes nothing.
    let keys_file = match (&options.api_keys_out, dry_run) {
        (Some(target), false) => {
            match KeysFile::prepare(
                &target.path,
                &target.secret_name,
                target.namespace.as_deref(),
            ) {
                Ok(file) => Some(file),
                Err(err) => return fatal(err.to_string(), dry_run, repair),
            }
        }
        _ => None,
    };

    let store = match Store::connect(&config.database).await {
        Ok(store) => store,
        Err(err) => return fatal(err.to_string(), dry_run, repair),
    };
    tracing::info!(
        backend = store.backend(),
        database = %config.database.url,
        clients = config.provision.clients.len(),
        "connected"
    );

    let result = if dry_run {
        Err(plan_only(&store, config, repair).await)
    } else {
        apply_locked(&store, config, options, shutdown).await
    };
    // Connections end with a clean goodbye instead of being cut at exit.
    store.close().await;

    let (mut summary, created) = match result {
        Ok(done) => done,
        Err(summary) => return summary,
    };
    if let Some(file) = keys_file {
        let path = file.target().display().to_string();
        match file.write(&created) {
            Ok(true) => {
                tracing::info!(path = %path, keys = created.len(), "new API keys written");
                summary.api_keys_file = Some(path);
            }
            Ok(false) => tracing::info!("no new API keys; keys file not written"),
            Err(err) => {
                tracing::error!(error = %err, "new API keys are in the database but not in the keys file");
                summary.outcome = Outcome::PartialFailure;
                summary.errors.push(ClientError {
                    client: None,
                    error: format!("{err}; the keys are in client_configurations.api_client_key"),
                });
            }
        }
    }
    summary
}

async fn plan_only(store: &Store, config: &Config, repair: bool) -> Summary {
    let state = match store.check_migrated().await {
        Ok(()) => store.read_state().await,
        Err(err) => Err(err),
    };
    let state = match state {
        Ok(state) => state,
        Err(err) => return fatal(err.to_string(), true, repair),
    };
    let problems = missing_clusters(&config.provision, &state);
    if !problems.is_empty() {
        return Summary::fatal(problems, true, repair);
    }
    let plan = classify(&config.provision, &state);
    let mut summary = Summary::new(Outcome::Planned, true, repair);
    summary.created = plan.create.into_iter().map(|c| c.name).collect();
    summary.unchanged = plan.unchanged;
    summary.drift = plan
        .drift
        .into_iter()
        .map(|d| summary::DriftEntry {
            client: d.name,
            differences: d.differences,
            repaired: false,
        })
        .collect();
    summary.orphans = plan.orphans;
    summary
}

type Created = Vec<(String, SecretString)>;

/// Migrates, takes the run lock, validates the clusters, applies and records the run.
/// `Err` carries a summary of a run that wrote no client.
async fn apply_locked(
    store: &Store,
    config: &Config,
    options: &RunOptions,
    shutdown: &CancellationToken,
) -> Result<(Summary, Created), Summary> {
    let (dry_run, repair) = (false, options.repair);
    let fail = |err: StoreError| fatal(err.to_string(), dry_run, repair);

    if shutdown.is_cancelled() {
        return Err(interrupted(dry_run, repair));
    }
    store.migrate().await.map_err(fail)?;
    let session = store
        .begin_run(config.database.lock_wait(), shutdown)
        .await
        .map_err(fail)?;
    let Some(mut session) = session else {
        if shutdown.is_cancelled() {
            return Err(interrupted(dry_run, repair));
        }
        tracing::info!("another run held the lock for the whole wait; nothing done");
        let mut summary = Summary::new(Outcome::Locked, dry_run, repair);
        summary.message = Some(format!(
            "another run holds the lock ({}); waited {}s, nothing done",
            store.lock_kind(),
            config.database.lock_wait_secs
        ));
        return Err(summary);
    };

    let (mut summary, created) =
        match reconcile_locked(&mut session, config, options, shutdown).await {
            Ok(done) => done,
            Err(summary) => {
                // Nothing was written under the lock: release it (SQLite rolls back).
                session.abort().await;
                return Err(summary);
            }
        };
    let run_id = summary.run_id.clone().unwrap_or_default();

    let summary_json = serde_json::to_value(&summary).unwrap_or_default();
    let finished = async {
        session
            .finish_record(&run_id, summary.outcome.as_str(), &summary_json)
            .await?;
        session.finish().await
    }
    .await;
    if let Err(err) = finished {
        match store {
            // The run's transaction did not commit: nothing was written, no key exists.
            Store::Sqlite(_) => {
                return Err(fatal(
                    format!("cannot commit the run: {err}"),
                    dry_run,
                    repair,
                ));
            }
            // The clients are committed and their keys must still reach the keys file;
            // only the audit row is incomplete.
            Store::Postgres(_) => {
                summary.outcome = Outcome::PartialFailure;
                summary.errors.push(ClientError {
                    client: None,
                    error: format!("cannot record the run in provisioning_runs: {err}"),
                });
            }
        }
    }
    Ok((summary, created))
}

/// A run stopped by a signal before it took the lock: nothing written.
fn interrupted(dry_run: bool, repair: bool) -> Summary {
    tracing::warn!("stopped by a shutdown signal before any write; nothing done");
    let mut summary = Summary::new(Outcome::Interrupted, dry_run, repair);
    summary.message = Some("stopped by a shutdown signal before any write; nothing done".into());
    summary
}

/// The part of a run that holds the lock: validate the clusters, classify, record the
/// start, apply. `Err` carries the summary of a run that wrote nothing.
async fn reconcile_locked(
    session: &mut RunSession,
    config: &Config,
    options: &RunOptions,
    shutdown: &CancellationToken,
) -> Result<(Summary, Created), Summary> {
    let (dry_run, repair) = (false, options.repair);
    let fail = |err: StoreError| fatal(err.to_string(), dry_run, repair);

    let state = session.read_state().await.map_err(fail)?;
    let problems = missing_clusters(&config.provision, &state);
    if !problems.is_empty() {
        for problem in &problems {
            tracing::error!(problem = %problem, "invalid configuration; nothing was written");
        }
        return Err(Summary::fatal(problems, dry_run, repair));
    }
    let plan = classify(&config.provision, &state);
    tracing::info!(
        create = plan.create.len(),
        unchanged = plan.unchanged.len(),
        drift = plan.drift.len(),
        orphans = plan.orphans.len(),
        "plan"
    );
    for orphan in &plan.orphans {
        tracing::warn!(client = %orphan, "orphan: in the database but declared nowhere; left in place");
    }

    let record = RunRecord {
        run_id: uuid::Uuid::new_v4().to_string(),
        started_at: OffsetDateTime::now_utc(),
        config_sha256: config_digest(config),
    };
    session.start_record(&record).await.map_err(fail)?;

    let applied =
        reconcile::apply(session, &plan, config.database.batch_size, repair, shutdown).await;
    let Applied {
        created,
        raced,
        drift,
        errors,
        interrupted,
    } = applied;

    let mut summary = Summary::new(
        if errors.is_empty() {
            Outcome::Success
        } else {
            Outcome::PartialFailure
        },
        dry_run,
        repair,
    );
    summary.run_id = Some(record.run_id.clone());
    summary.created = created.iter().map(|(name, _)| name.clone()).collect();
    summary.unchanged = plan.unchanged;
    summary.unchanged.extend(raced);
    summary.unchanged.sort();
    summary.drift = drift;
    summary.orphans = plan.orphans;
    summary.errors = errors;
    if interrupted {
        tracing::warn!("stopped early by a shutdown signal; the rest is left for the next run");
    }
    Ok((summary, created))
}

/// SHA-256 of the effective `provisionClientsConfig`, stored with each run.
pub fn config_digest(config: &Config) -> String {
    let canonical = serde_json::to_vec(&config.provision).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
