//! gandalf-cluster's entry point: parse, load config (errors to stderr, exit 1), start
//! telemetry, serve until SIGTERM/SIGINT, flush.

use std::process::ExitCode;

use gandalf_cluster::{
    App,
    config::{Config, ENV_PREFIX},
};
use platform::cli::ConfigArgs;

/// The Gandalf cluster side: validates secrets, keeps logical configurations, answers
/// database configuration requests, routes commands and events between aggregators.
#[derive(Debug, clap::Parser)]
#[command(name = "gandalf-cluster", version)]
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
    let code = match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "gandalf-cluster failed");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown().await;
    code
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let (listen, admin) = (config.listen, config.admin_listen);
    let app = App::build(config)
        .await
        .with_context(|| format!("cannot bind {listen} (gRPC) or {admin} (admin)"))?;
    tracing::info!(grpc = %app.grpc_addr()?, admin = %app.admin_addr()?, "gandalf-cluster listening");
    app.run(platform::shutdown::on_signal())
        .await
        .context("serving")
}
