//! The command line, with the Go job's single-dash `-config PATH` still understood.

use std::{ffi::OsString, path::PathBuf};

use clap::Parser;
use platform::{cli::ConfigArgs, job::OutputFormat};

use crate::config::DEFAULT_CONFIG_PATH;

/// Keeps the Compass applications of one runtime in step with the connector instances of
/// one SAP Open Connectors tenant.
///
/// Every instance (optionally only those with the configured tags) becomes an application
/// `<applicationPrefix>-<instanceID>` carrying the instance's OpenAPI document; an
/// application whose instance is gone is deleted. Only applications labelled
/// `open_connectors` with this tenant's host are ever touched.
///
/// Exit codes: 0 success or nothing to do; 1 fatal (bad flags or config, a listing failed,
/// more deletions than --max-deletes: nothing deleted); 2 changes pending (only with
/// --dry-run --detailed-exitcode); 3 some applications failed, the rest was applied.
#[derive(Debug, Parser)]
#[command(name = "oc-sync-job", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Compute and print the plan (create / update / repair / delete per application);
    /// make no mutating call.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: exit 2 when changes are pending, 0 when there are none.
    #[arg(long, requires = "dry_run")]
    pub detailed_exitcode: bool,

    /// Summary format on stdout (logs go to stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Refuse (exit 1, nothing deleted) a run that would delete more applications than
    /// this; overrides the file's maxDeletes.
    #[arg(long, value_name = "N")]
    pub max_deletes: Option<usize>,
}

impl Cli {
    /// The config file: `--config`, else the Go job's default path.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }
}

/// The arguments with the Go job's `-config PATH` / `-config=PATH` spelled `--config`
/// (clap would read `-config` as `-c onfig`).
pub fn legacy_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    args.into_iter()
        .map(Into::into)
        .map(|arg| match arg.to_str() {
            Some("-config") => OsString::from("--config"),
            Some(text) if text.starts_with("-config=") => OsString::from(format!("-{text}")),
            _ => arg,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(legacy_args(args.iter().copied()))
    }

    #[test]
    fn the_legacy_single_dash_config_is_understood() {
        for args in [
            &["oc-sync-job", "-config", "/etc/oc.json"][..],
            &["oc-sync-job", "-config=/etc/oc.json"],
            &["oc-sync-job", "--config", "/etc/oc.json"],
            &["oc-sync-job", "-c", "/etc/oc.json"],
        ] {
            let cli = parse(args).expect("parses");
            assert_eq!(cli.config_path(), PathBuf::from("/etc/oc.json"), "{args:?}");
        }
    }

    #[test]
    fn the_config_defaults_to_the_go_jobs_path() {
        let cli = parse(&["oc-sync-job"]).expect("parses");
        assert_eq!(cli.config_path(), PathBuf::from(DEFAULT_CONFIG_PATH));
        assert!(!cli.dry_run);
        assert_eq!(cli.max_deletes, None);
    }

    #[test]
    fn detailed_exitcode_needs_dry_run() {
        assert!(parse(&["oc-sync-job", "--detailed-exitcode"]).is_err());
        let cli = parse(&[
            "oc-sync-job",
            "--dry-run",
            "--detailed-exitcode",
            "--output",
            "json",
            "--max-deletes",
            "3",
        ])
        .expect("parses");
        assert!(cli.detailed_exitcode);
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.max_deletes, Some(3));
    }

    #[test]
    fn a_value_that_only_looks_like_the_legacy_flag_is_left_alone() {
        let args = legacy_args(["oc-sync-job", "--config", "-config.json"]);
        assert_eq!(args[2], OsString::from("-config.json"));
    }
}
