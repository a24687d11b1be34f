//! oc-sync-job's entry point: parse the command line (the Go job's `-config PATH` too),
//! load and check the config before any call (errors go to stderr before telemetry
//! exists), start telemetry at the file's `logLevel` unless `RUST_LOG` says otherwise,
//! run, flush, exit with the job's code. A run that cannot start still ends with its
//! summary: with `--output json`, one JSON line `{"outcome": "fatal", "errors": [...]}`.

use std::process::ExitCode;

use oc_sync_job::{
    Cli,
    cli::legacy_args,
    config::{Config, ENV_PREFIX},
    summary::Summary,
};
use platform::{
    cli::{StartError, Stop},
    job::{JobExit, OutputFormat, requested_format, start_failed},
};

#[tokio::main]
async fn main() -> ExitCode {
    let args = legacy_args(std::env::args_os());
    let cli: Cli = match platform::cli::parse_from(&args) {
        Ok(cli) => cli,
        Err(Stop::Failed(err)) => {
            let dry_run = args.iter().any(|a| a == "--dry-run");
            return failed(&err, requested_format(&args), dry_run);
        }
        Err(Stop::Printed) => return ExitCode::SUCCESS,
    };
    let mut config_args = cli.config.clone();
    config_args.config = Some(cli.config_path());
    let started =
        config_args.start_with_filter(ENV_PREFIX, platform::service!(), Config::log_filter);
    let (config, telemetry) = match started {
        Ok(started) => started,
        Err(Stop::Failed(err)) => return failed(&err, cli.output, cli.dry_run),
        Err(Stop::Printed) => return ExitCode::SUCCESS,
    };

    let shutdown = platform::shutdown::on_signal();
    let exit = oc_sync_job::run(&cli, &config, shutdown).await;
    telemetry.shutdown().await;
    exit.into()
}

fn failed(err: &StartError, format: OutputFormat, dry_run: bool) -> ExitCode {
    let exit: JobExit = start_failed(err, format, |problems| Summary::fatal(problems, dry_run));
    exit.into()
}
