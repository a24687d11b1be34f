//! provisioner-job's entry point: parse the command line, load the config (errors go to
//! stderr before telemetry exists), start telemetry, run, flush, exit with the job's code.

use std::process::ExitCode;

use platform::job::JobExit;
use provisioner_job::{
    Cli,
    config::{Config, ENV_PREFIX},
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match platform::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(problem) = cli.usage_problem() {
        eprintln!("error: {problem}");
        return JobExit::Fatal.into();
    }
    let (config, telemetry) = match cli.config.start::<Config>(ENV_PREFIX, "provisioner-job") {
        Ok(started) => started,
        Err(code) => return code,
    };

    let shutdown = platform::shutdown::on_signal();
    let exit = provisioner_job::run(&cli, &config, shutdown).await;
    telemetry.shutdown().await;
    exit.into()
}
