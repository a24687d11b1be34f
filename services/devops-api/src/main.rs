//! devops-api's entry point: parse, load config (errors to stderr, exit 1), start
//! telemetry, serve until SIGTERM/SIGINT, flush.

use std::process::ExitCode;

use devops_api::{
    App,
    config::{Config, ENV_PREFIX},
};
use platform::cli::ConfigArgs;

/// REST API that declares tenant databases on PostgreSQL: roles, schema, grants, default
/// privileges and logins, idempotent and audited. `GET /openapi.json` describes it.
#[derive(Debug, clap::Parser)]
#[command(name = "devops-api", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

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
            tracing::error!(error = %format!("{err:#}"), "devops-api failed");
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown().await;
    code
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    tracing::info!(api = %app.local_addr()?, admin = %app.admin_addr()?, "devops-api listening");
    app.run(platform::shutdown::on_signal()).await?;
    Ok(())
}
