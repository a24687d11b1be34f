//! generic-consumer's entry point: resolve the domain's context and contract (every
//! problem to stderr, exit 1), then consume until SIGTERM/SIGINT, flush, commit, exit 0.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use generic_consumer::{
    context::{Context, SinkKind},
    contract::Contract,
    kafka,
    run::{self, Instance},
    sink::JsonlSink,
};
use platform::ops::{OpsServer, Readiness};

/// Consumes one domain's Kafka topic into its table: the domain selects the
/// `<BASE>_<DOMAIN>` variables (BQ_TABLE_, IMPORT_PATH_, IMPORT_OBJECT_, IGNORE_EVENTS_,
/// CONSUME_ENV_, GROUP_ID_) read from the environment and the .env file; the environment
/// wins. See the service README for every variable.
#[derive(Debug, Parser)]
#[command(name = "generic-consumer", version)]
struct Cli {
    /// The domain, e.g. DELIVERY (case-insensitive).
    domain: String,
    /// The .env file to read (default: ./.env when it exists).
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Resolve and print the context (secrets redacted) and the contract, then exit:
    /// 0 when both are valid, 1 otherwise.
    #[arg(long)]
    check: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match platform::cli::parse() {
        Ok(cli) => cli,
        Err(stop) => return stop.report(),
    };
    let (context, contract) = match generic_consumer::resolve(&cli.domain, cli.env_file.as_deref())
    {
        Ok(resolved) => resolved,
        Err(problems) => {
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            return ExitCode::from(1);
        }
    };
    if cli.check {
        return match print_check(&context, &contract) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        };
    }
    let telemetry = match platform::telemetry::init(platform::service!()) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    let code = match consume(context, contract).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "generic-consumer failed");
            ExitCode::from(1)
        }
    };
    telemetry.shutdown().await;
    code
}

fn print_check(context: &Context, contract: &Contract) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut text = String::from("# context\n");
    text.push_str(&platform::config::render(context)?);
    text.push_str("# contract\n");
    let _ = writeln!(
        text,
        "topic_message: {}",
        contract.topic_message.full_name()
    );
    let _ = writeln!(text, "topic: {}", contract.topic);
    let _ = writeln!(
        text,
        "dead_letter_topic: {}",
        kafka::dlq_topic(context, &contract.topic)
    );
    let _ = writeln!(
        text,
        "format: {}",
        serde_json::to_value(contract.format)?
            .as_str()
            .unwrap_or("?")
    );
    text.push_str("events:\n");
    for event in contract.events.keys() {
        let kept = if context.ignore_events.contains(event) {
            "ignored"
        } else {
            "kept"
        };
        let _ = writeln!(text, "  {event}: {kept}");
    }
    print!("{text}");
    Ok(())
}

async fn consume(context: Context, contract: Contract) -> anyhow::Result<()> {
    use anyhow::Context as _;
    run::describe_metrics();
    let shutdown = platform::shutdown::on_signal();
    let readiness = Readiness::with_components(["kafka"]);
    let ops = OpsServer::bind(context.admin_listen, readiness.clone())
        .await
        .with_context(|| format!("cannot bind the admin endpoint {}", context.admin_listen))?;
    tracing::info!(admin = %ops.local_addr()?, "admin endpoint listening");
    let ops_stop = shutdown.child_token();
    let ops_task = tokio::spawn(ops.run(ops_stop.clone()));

    let instance = Instance::new(context, contract);
    let ready = || readiness.set("kafka", true);
    let summary = match instance.context.sink {
        SinkKind::Jsonl => {
            let sink = JsonlSink::new(&instance.context.jsonl_dir);
            instance.run(sink, shutdown.clone(), ready).await?
        }
        SinkKind::Bigquery => anyhow::bail!(
            "SINK=bigquery: this build writes with the jsonl sink only (set SINK=jsonl); \
             the BigQuery sink is not part of it yet"
        ),
    };
    readiness.set("kafka", false);
    tracing::info!(
        consumed = summary.consumed,
        written = summary.written,
        ignored = summary.ignored,
        dead_lettered = summary.dead_lettered,
        batches = summary.batches,
        retries = summary.retries,
        unfinished = summary.unfinished,
        "stopped"
    );
    ops_stop.cancel();
    let _ = ops_task.await;
    Ok(())
}
