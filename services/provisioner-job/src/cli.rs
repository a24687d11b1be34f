//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use platform::{cli::ConfigArgs, job::OutputFormat};

use crate::{RunOptions, delivery::TargetSpec};

/// Reconciles the client configurations declared in YAML into the aggregation database.
///
/// Every declared client (`provisionClientsConfig.clients`) gets an aggregator row, a
/// client row with a new API key and a crypto key, committed together. Clients whose
/// rows differ from the declaration are reported as drift (fixed with --repair; an API
/// key is never rotated); clients in the database but no longer declared are reported as
/// orphans and never deleted.
///
/// Every new API key is pending delivery until it reached --api-keys-secret or
/// --api-keys-out; each run delivers all pending keys. A run that would create keys with
/// neither refuses, unless --no-key-delivery is given.
///
/// Exit codes: 0 success or nothing to do; 1 fatal (bad flags or config, database
/// unreachable: nothing written); 2 changes pending (only with --dry-run
/// --detailed-exitcode); 3 some clients failed or keys could not be delivered, the rest
/// was applied.
#[derive(Debug, Parser)]
#[command(name = "provisioner-job", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: ConfigArgs,

    #[command(flatten)]
    pub job: JobArgs,
}

/// What to run; `apply` when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create missing clients (and, with --repair, fix drift). The default.
    Apply,
    /// Show what apply would do and write nothing (= apply --dry-run).
    Plan,
    /// Create or update the database schema only, e.g. before adding cluster rows.
    Migrate,
}

/// The flags of apply and plan.
#[derive(Debug, Clone, Default, Args)]
pub struct JobArgs {
    /// Compute and print what would change; write nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// With --dry-run or plan: exit 2 when changes are pending, 0 when there are none.
    #[arg(long, global = true)]
    pub detailed_exitcode: bool,

    /// Also fix drift (aggregatorIdentifier, cluster, missing crypto key). API keys are
    /// never changed.
    #[arg(long, global = true)]
    pub repair: bool,

    /// Summary format on stdout (logs go to stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,

    /// Deliver the pending API keys into this Kubernetes Secret, through the API server
    /// (KUBECONFIG, or the pod's ServiceAccount): a merge patch that adds keys and never
    /// removes other entries. The Secret must exist.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        value_parser = secret_ref,
        global = true,
        conflicts_with_all = ["api_keys_out", "no_key_delivery"]
    )]
    pub api_keys_secret: Option<(String, String)>,

    /// Deliver the pending API keys into PATH, a Kubernetes Secret manifest (mode 0600).
    /// An existing file is merged with, never clobbered.
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        conflicts_with = "no_key_delivery"
    )]
    pub api_keys_out: Option<PathBuf>,

    /// metadata.name of the Secret in the --api-keys-out manifest.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "provisioned-client-api-keys",
        global = true
    )]
    pub api_keys_secret_name: String,

    /// metadata.namespace of the Secret in the --api-keys-out manifest (omitted when not
    /// given).
    #[arg(long, value_name = "NAMESPACE", global = true)]
    pub api_keys_namespace: Option<String>,

    /// Create clients without delivering their keys: they stay pending in the database
    /// and the next run with a target delivers them.
    #[arg(long, global = true)]
    pub no_key_delivery: bool,
}

fn secret_ref(value: &str) -> Result<(String, String), String> {
    crate::delivery::parse_secret_ref(value)
}

impl Cli {
    /// The run options the flags and the subcommand add up to.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            dry_run: self.job.dry_run || self.command == Some(Command::Plan),
            repair: self.job.repair,
            key_target: self.key_target(),
            no_key_delivery: self.job.no_key_delivery,
        }
    }

    /// Where the keys go, from --api-keys-secret or --api-keys-out.
    pub fn key_target(&self) -> Option<TargetSpec> {
        if let Some((namespace, name)) = &self.job.api_keys_secret {
            return Some(TargetSpec::Secret {
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
        self.job.api_keys_out.clone().map(|path| TargetSpec::File {
            path,
            secret_name: self.job.api_keys_secret_name.clone(),
            namespace: self.job.api_keys_namespace.clone(),
        })
    }

    /// `apply`, `plan` or `migrate`.
    pub fn command_name(&self) -> &'static str {
        match self.command {
            None | Some(Command::Apply) => "apply",
            Some(Command::Plan) => "plan",
            Some(Command::Migrate) => "migrate",
        }
    }

    /// Flag combinations that make no sense, as one message.
    pub fn usage_problem(&self) -> Option<String> {
        if self.command == Some(Command::Migrate) {
            let job = &self.job;
            let given: Vec<&str> = [
                (job.dry_run, "--dry-run"),
                (job.detailed_exitcode, "--detailed-exitcode"),
                (job.repair, "--repair"),
                (job.api_keys_secret.is_some(), "--api-keys-secret"),
                (job.api_keys_out.is_some(), "--api-keys-out"),
                (job.api_keys_namespace.is_some(), "--api-keys-namespace"),
                (job.no_key_delivery, "--no-key-delivery"),
            ]
            .into_iter()
            .filter_map(|(set, flag)| set.then_some(flag))
            .collect();
            if !given.is_empty() {
                return Some(format!(
                    "migrate only migrates the schema; it takes no {}",
                    given.join(", ")
                ));
            }
        }
        if self.job.detailed_exitcode && !self.options().dry_run {
            return Some("--detailed-exitcode needs --dry-run (or the plan command)".into());
        }
        None
    }
}
