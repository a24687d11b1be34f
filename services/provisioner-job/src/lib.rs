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
pub mod delivery;
pub mod reconcile;
pub mod store;
pub mod summary;

use platform::job::{JobExit, print_summary};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::cli::{Cli, Command};
use crate::{
    config::Config,
    delivery::{Delivery, TargetSpec},
    reconcile::{Applied, classify, missing_clusters},
    store::{Access, RunRecord, RunSession, Store},
    summary::{Outcome, Summary},
};

/// What to do in this run, from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// Also fix drift.
    pub repair: bool,
    /// Where the pending API keys are delivered.
    pub key_target: Option<TargetSpec>,
    /// Create clients with no target: their keys stay pending.
    pub no_key_delivery: bool,
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
    let fail = |err: String| Summary {
        command: "migrate",
        ..fatal(err, false, false)
    };
    let store = match Store::connect(&config.database, Access::ReadWrite).await {
        Ok(store) => store,
        Err(err) => return fail(err.to_string()),
    };
    let started_at = OffsetDateTime::now_utc();
    let mut summary = match store.migrate().await {
        Ok(()) => {
            let mut summary = Summary::new(Outcome::Success, false, false);
            summary.command = "migrate";
            summary.message = Some(format!("{} schema is up to date", store.backend()));
            summary
        }
        Err(err) => fail(err.to_string()),
    };
    if summary.outcome == Outcome::Success {
        let record = new_record(config, started_at);
        summary.run_id = Some(record.run_id.clone());
        record_outside_the_lock(&store, &record, &mut summary).await;
    }
    store.close().await;
    summary
}

fn fatal(problem: String, dry_run: bool, repair: bool) -> Summary {
    tracing::error!(error = %problem, "run failed; nothing was written");
    Summary::fatal(vec![problem], dry_run, repair)
}

/// Reconciles the declared clients into the database (or, in a dry run, says what that
/// would do) and delivers the pending API keys. Never panics on bad input: every failure
/// ends up in the summary.
pub async fn provision(
    config: &Config,
    options: &RunOptions,
    shutdown: &CancellationToken,
) -> Summary {
    let (dry_run, repair) = (options.dry_run, options.repair);
    if !config.provision.is_enabled() {
        tracing::info!("provisionClientsConfig.enabled is false: this cluster opted out");
        let mut summary = Summary::new(Outcome::Disabled, dry_run, repair);
        summary.message = Some(
            "provisioning is disabled for this cluster (provisionClientsConfig.enabled: false); nothing done"
                .into(),
        );
        return summary;
    }

    // Checked before any database write, so a target that cannot work changes nothing.
    let delivery = match (&options.key_target, dry_run) {
        (Some(target), false) => match Delivery::prepare(target).await {
            Ok(delivery) => Some(delivery),
            Err(err) => return fatal(err.to_string(), dry_run, repair),
        },
        _ => None,
    };

    let access = if dry_run {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let store = match Store::connect(&config.database, access).await {
        Ok(store) => store,
        Err(err) => return fatal(err.to_string(), dry_run, repair),
    };
    tracing::info!(
        backend = store.backend(),
        database = %config.database.url,
        clients = config.provision.clients.len(),
        "connected"
    );

    let summary = if dry_run {
        plan_only(&store, config, repair).await
    } else {
        apply_locked(&store, config, options, delivery, shutdown).await
    };
    // Connections end with a clean goodbye instead of being cut at exit.
    store.close().await;
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

fn new_record(config: &Config, started_at: OffsetDateTime) -> RunRecord {
    RunRecord {
        run_id: uuid::Uuid::new_v4().to_string(),
        started_at,
        config_sha256: config_digest(config),
    }
}

/// Stores the row of a run that did not hold the run lock (locked out, interrupted while
/// waiting, a migration); a failure to store it is a failure of the run.
async fn record_outside_the_lock(store: &Store, record: &RunRecord, summary: &mut Summary) {
    summary.run_id = Some(record.run_id.clone());
    let json = serde_json::to_value(&*summary).unwrap_or_default();
    if let Err(err) = store
        .record_run(record, summary.outcome.as_str(), &json)
        .await
    {
        tracing::warn!(error = %err, "cannot record the run in provisioning_runs");
        summary.message = summary
            .message
            .take()
            .map(|m| format!("{m} (not recorded in provisioning_runs: {err})"));
    }
}

/// Migrates, takes the run lock, then everything under it: the run's audit row, the
/// reconciliation, the delivery of the pending keys and the finished audit row, which
/// thus agrees with the exit code.
async fn apply_locked(
    store: &Store,
    config: &Config,
    options: &RunOptions,
    delivery: Option<Delivery>,
    shutdown: &CancellationToken,
) -> Summary {
    let (dry_run, repair) = (false, options.repair);
    let waiting_since = OffsetDateTime::now_utc();
    if shutdown.is_cancelled() {
        return interrupted(dry_run, repair);
    }
    if let Err(err) = store.migrate().await {
        return fatal(err.to_string(), dry_run, repair);
    }
    let session = match store.begin_run(config.database.lock_wait(), shutdown).await {
        Ok(session) => session,
        Err(err) => return fatal(err.to_string(), dry_run, repair),
    };
    let Some(mut session) = session else {
        let mut summary = if shutdown.is_cancelled() {
            interrupted(dry_run, repair)
        } else {
            locked_out(store, config, dry_run, repair).await
        };
        record_outside_the_lock(store, &new_record(config, waiting_since), &mut summary).await;
        return summary;
    };

    let record = new_record(config, OffsetDateTime::now_utc());
    if let Err(err) = session.start_record(&record).await {
        session.abort().await;
        return fatal(err.to_string(), dry_run, repair);
    }
    let mut summary =
        reconcile_locked(&mut session, config, options, delivery.is_some(), shutdown).await;
    summary.run_id = Some(record.run_id.clone());
    if summary.outcome != Outcome::Fatal {
        deliver_pending(&mut session, delivery, &mut summary).await;
    }

    let summary_json = serde_json::to_value(&summary).unwrap_or_default();
    let finished = async {
        session
            .finish_record(&record.run_id, summary.outcome.as_str(), &summary_json)
            .await?;
        session.finish().await
    }
    .await;
    if let Err(err) = finished {
        match store {
            // SQLite's run is one transaction: it rolled back, so no client of this run
            // exists (keys it delivered are replaced when the next run creates them).
            Store::Sqlite(_) => {
                return fatal(format!("cannot commit the run: {err}"), dry_run, repair);
            }
            // The clients and the delivery marks are committed; only the audit row is
            // not finished.
            Store::Postgres(_) => {
                summary.fail(format!("cannot record the run in provisioning_runs: {err}"))
            }
        }
    }
    summary
}

/// Another run held the lock for the whole wait: nothing done, and who holds it.
async fn locked_out(store: &Store, config: &Config, dry_run: bool, repair: bool) -> Summary {
    let holder = store.lock_holder().await;
    let held_by = holder
        .as_ref()
        .map(|h| format!(" by {h}"))
        .unwrap_or_default();
    tracing::warn!(
        holder = holder.as_ref().map(ToString::to_string),
        waited_secs = config.database.lock_wait().as_secs(),
        "another run held the lock for the whole wait; nothing done"
    );
    let mut summary = Summary::new(Outcome::Locked, dry_run, repair);
    summary.message = Some(format!(
        "another run holds the lock ({}{held_by}); waited {}, nothing done",
        store.lock_kind(),
        humantime::format_duration(config.database.lock_wait())
    ));
    summary
}

/// A run stopped by a signal before it wrote anything.
fn interrupted(dry_run: bool, repair: bool) -> Summary {
    tracing::warn!("stopped by a shutdown signal before any write; nothing done");
    let mut summary = Summary::new(Outcome::Interrupted, dry_run, repair);
    summary.message = Some("stopped by a shutdown signal before any write; nothing done".into());
    summary
}

/// Delivers every pending key (this run's and earlier ones) and marks them delivered
/// once the delivery is durable.
///
/// On PostgreSQL every batch has committed by now. On SQLite the whole run is one
/// transaction, the writer lock that keeps runs apart, so the keys are delivered before it
/// commits: committing first would free the lock mid-run and let another run in. Should
/// that commit then fail, the target holds keys of clients that do not exist; the next run
/// creates them with new keys and delivers those over the same entries.
async fn deliver_pending(
    session: &mut RunSession,
    delivery: Option<Delivery>,
    summary: &mut Summary,
) {
    let Some(delivery) = delivery else {
        // No target: only the names are reported; the keys stay in the database.
        match session.pending_clients().await {
            Ok(names) => {
                if !names.is_empty() {
                    tracing::warn!(
                        pending = names.len(),
                        "API keys pending delivery and no target"
                    );
                }
                summary.key_delivery.pending = names;
            }
            Err(err) => summary.fail(format!("cannot read the API keys pending delivery: {err}")),
        }
        return;
    };
    let pending = match session.pending_keys().await {
        Ok(pending) => pending,
        Err(err) => {
            summary.fail(format!("cannot read the API keys pending delivery: {err}"));
            return;
        }
    };
    let names: Vec<String> = pending.iter().map(|(name, _)| name.clone()).collect();
    summary.key_delivery.target = Some(delivery.target());
    if pending.is_empty() {
        return;
    }
    match delivery.deliver(&pending).await {
        Ok(delivered) => {
            tracing::info!(target = %delivered.target, keys = names.len(), kept = delivered.kept, "API keys delivered");
            summary.key_delivery.kept = delivered.kept;
            if let Err(err) = session.mark_delivered(&names, &delivered.target).await {
                summary.fail(format!(
                    "the keys were delivered but cannot be marked so ({err}); the next run delivers them again"
                ));
            }
            summary.key_delivery.delivered = names;
        }
        Err(err) => {
            summary.fail(format!("{err}; {} API key(s) stay pending", names.len()));
            summary.key_delivery.pending = names;
        }
    }
}

/// The part of a run that holds the lock: validate the clusters, classify, apply. A
/// fatal summary means nothing was written but the audit row.
async fn reconcile_locked(
    session: &mut RunSession,
    config: &Config,
    options: &RunOptions,
    has_target: bool,
    shutdown: &CancellationToken,
) -> Summary {
    let (dry_run, repair) = (false, options.repair);
    let state = match session.read_state().await {
        Ok(state) => state,
        Err(err) => return fatal(err.to_string(), dry_run, repair),
    };
    let problems = missing_clusters(&config.provision, &state);
    if !problems.is_empty() {
        for problem in &problems {
            tracing::error!(problem = %problem, "invalid configuration; nothing was written");
        }
        return Summary::fatal(problems, dry_run, repair);
    }
    let plan = classify(&config.provision, &state);
    tracing::info!(
        create = plan.create.len(),
        unchanged = plan.unchanged.len(),
        drift = plan.drift.len(),
        orphans = plan.orphans.len(),
        "plan"
    );
    if !plan.create.is_empty() && !has_target && !options.no_key_delivery {
        return fatal(
            format!(
                "{} client(s) would get a new API key, but no delivery target is set: pass \
                 --api-keys-secret NAMESPACE/NAME or --api-keys-out PATH, or --no-key-delivery \
                 to leave the keys pending in the database",
                plan.create.len()
            ),
            dry_run,
            repair,
        );
    }
    for orphan in &plan.orphans {
        tracing::warn!(client = %orphan, "orphan: in the database but declared nowhere; left in place");
    }

    let Applied {
        created,
        raced,
        drift,
        errors,
        interrupted: stopped,
    } = reconcile::apply(session, &plan, config.database.batch_size, repair, shutdown).await;

    let applied_any = !created.is_empty() || drift.iter().any(|d| d.repaired);
    let outcome = Outcome::after_apply(stopped, applied_any, !errors.is_empty());
    let mut summary = Summary::new(outcome, dry_run, repair);
    if outcome == Outcome::Interrupted {
        summary.message =
            Some("stopped by a shutdown signal before the first write; nothing applied".into());
    }
    summary.created = created;
    summary.unchanged = plan.unchanged;
    summary.unchanged.extend(raced);
    summary.unchanged.sort();
    summary.drift = drift;
    summary.orphans = plan.orphans;
    summary.errors = errors;
    if stopped {
        tracing::warn!("stopped early by a shutdown signal; the rest is left for the next run");
    }
    summary
}

/// SHA-256 of the effective `provisionClientsConfig`, stored with each run.
pub fn config_digest(config: &Config) -> String {
    let canonical = serde_json::to_vec(&config.provision).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
