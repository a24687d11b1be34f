//! gandalf-cluster's entry point: parse, load config (errors to stderr, exit 1), start
//! telemetry, serve until SIGTERM/SIGINT, flush.

use std::process::ExitCode;

use clap::Parser;
use gandalf_cluster::{
    App,
    config::{Config, ENV_PREFIX},
};
use platform::cli::ConfigArgs;

/// The Gandalf cluster side: validates secrets, keeps logical configurations, answers
/// database configuration requests, routes commands and events between aggregators.
#[derive(Debug, Parser)]
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
    let cli = Cli::parse();
    let (config, telemetry) = match cli.config.start::<Config>(ENV_PREFIX, "gandalf-cluster") {
        Ok(started) => started,
        Err(code) => return code,
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
