//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use platform::{cli::ConfigArgs, job::OutputFormat};

use crate::RunOptions;

/// Reconciles the client configurations declared in YAML into the aggregation database.
///
/// Every declared client (`provisionClientsConfig.clients`) gets an aggregator row, a
/// client row with a new API key and a crypto key, committed together. Clients whose
/// rows differ from the declaration are reported as drift (fixed with --repair; an API
/// key is never rotated); clients in the database but no longer declared are reported as
/// orphans and never deleted.
///
/// Exit codes: 0 success or nothing to do; 1 fatal (bad config, database unreachable:
/// nothing written); 2 changes pending (only with --dry-run --detailed-exitcode);
/// 3 some clients failed, the others were applied.
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

    /// Write the new API keys to PATH as a Kubernetes Secret manifest (mode 0600).
    /// Not written when no key was created.
    #[arg(long, value_name = "PATH", global = true)]
    pub api_keys_out: Option<PathBuf>,

    /// metadata.name of the Secret in --api-keys-out.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "provisioned-client-api-keys",
        global = true
    )]
    pub api_keys_secret_name: String,

    /// metadata.namespace of the Secret in --api-keys-out (omitted when not given).
    #[arg(long, value_name = "NAMESPACE", global = true)]
    pub api_keys_namespace: Option<String>,
}

/// Where the new API keys go.
#[derive(Debug, Clone)]
pub struct KeysTarget {
    pub path: PathBuf,
    pub secret_name: String,
    pub namespace: Option<String>,
}

impl Cli {
    /// The run options the flags and the subcommand add up to.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            dry_run: self.job.dry_run || self.command == Some(Command::Plan),
            repair: self.job.repair,
            api_keys_out: self.job.api_keys_out.clone().map(|path| KeysTarget {
                path,
                secret_name: self.job.api_keys_secret_name.clone(),
                namespace: self.job.api_keys_namespace.clone(),
            }),
        }
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
        if self.job.detailed_exitcode && !self.options().dry_run {
            return Some("--detailed-exitcode needs --dry-run (or the plan command)".into());
        }
        None
    }
}
