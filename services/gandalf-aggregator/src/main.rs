//! gandalf-aggregator's entry point: parse, load config (errors to stderr, exit 1), start
//! telemetry, initialise and serve until SIGTERM/SIGINT; a failed start exits 1.

use std::process::ExitCode;

use gandalf_aggregator::{
    App,
    config::{Config, ENV_PREFIX},
};
use platform::cli::ConfigArgs;

/// Routes events, commands, configuration and secrets between the connectors of one
/// tenant and a Gandalf cluster.
#[derive(Debug, clap::Parser)]
#[command(name = "gandalf-aggregator", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

/// mimalloc: these services allocate per routed message, and glibc malloc showed as about
/// a fifth of their CPU in the benchmark (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let started = platform::cli::parse::<Cli>()
        .and_then(|cli| cli.config.start::<Config>(ENV_PREFIX, platform::service!()));
    let (config, telemetry) = match started {
        Ok(started) => started,
        Err(stop) => return stop.report(),
    };
    let result = match App::build(config).await {
        Ok(app) => {
            if let (Ok(grpc), Ok(admin)) = (app.grpc_addr(), app.admin_addr()) {
                tracing::info!(%grpc, %admin, "gandalf-aggregator listening");
            }
            app.run(platform::shutdown::on_signal()).await
        }
        Err(err) => Err(err),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "gandalf-aggregator stopped");
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown().await;
    code
}
