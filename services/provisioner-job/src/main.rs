//! provisioner-job's entry point: parse the command line, load the config (errors go to
//! stderr before telemetry exists), start telemetry, run, flush, exit with the job's code.
//! A run that cannot start still ends with its summary: with `--output json`, one JSON
//! line `{"outcome": "fatal", "errors": [...]}` on stdout.

use std::process::ExitCode;

use platform::{
    cli::{StartError, Stop},
    job::{JobExit, OutputFormat, requested_format, start_failed},
};
use provisioner_job::{
    Cli,
    config::{Config, ENV_PREFIX},
    summary::Summary,
};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let cli: Cli = match platform::cli::parse_from(&args) {
        Ok(cli) => cli,
        Err(Stop::Failed(err)) => return failed(&err, requested_format(&args), "apply"),
        Err(Stop::Printed) => return ExitCode::SUCCESS,
    };
    let (format, command) = (cli.job.output, cli.command_name());
    if let Some(problem) = cli.usage_problem() {
        return failed(&StartError::Usage(problem), format, command);
    }
    let (config, telemetry) = match cli.config.start::<Config>(ENV_PREFIX, platform::service!()) {
        Ok(started) => started,
        Err(Stop::Failed(err)) => return failed(&err, format, command),
        Err(Stop::Printed) => return ExitCode::SUCCESS,
    };

    let shutdown = platform::shutdown::on_signal();
    let exit = provisioner_job::run(&cli, &config, shutdown).await;
    telemetry.shutdown().await;
    exit.into()
}

fn failed(err: &StartError, format: OutputFormat, command: &'static str) -> ExitCode {
    let exit: JobExit = start_failed(err, format, |problems| Summary {
        command,
        ..Summary::fatal(problems, command == "plan", false)
    });
    exit.into()
}
