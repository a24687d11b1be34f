//! gandalf-aggregator's entry point: parse, load config (errors to stderr, exit 1), start
//! telemetry, initialise and serve until SIGTERM/SIGINT; a failed start exits 1.

use std::process::ExitCode;

use clap::Parser;
use gandalf_aggregator::{
    App,
    config::{Config, ENV_PREFIX},
};
use platform::cli::ConfigArgs;

/// Routes events, commands, configuration and secrets between the connectors of one
/// tenant and a Gandalf cluster.
#[derive(Debug, Parser)]
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
    let cli = Cli::parse();
    let (config, telemetry) = match cli.config.start::<Config>(ENV_PREFIX, "gandalf-aggregator") {
        Ok(started) => started,
        Err(code) => return code,
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
