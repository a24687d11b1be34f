//! The binary, as a library function: parse the command line, resolve the domain's context
//! and contract (every problem to stderr, exit 1), `--print-config`, `--check`, or consume with the chosen
//! sink until SIGTERM/SIGINT, flush, commit, exit 0 — or exit 1 when the instance stops
//! on its own (a sink or dead-letter topic that refuses for good, a failed pipeline).

use std::{fmt::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use platform::ops::{OpsServer, Readiness};

use crate::{
    bigquery::{BigQuerySink, auth::Auth, layout::Layout},
    context::{Context, SinkKind},
    contract::Contract,
    kafka,
    run::Instance,
    sink::JsonlSink,
};

/// How long `--check` waits for the brokers' answer about the topics.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the process waits, at exit, for blocking work still under way (a write to a
/// sink that hangs): the exit code is not held hostage by it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Consumes one domain's Kafka topic into its table: the domain selects the
/// `<BASE>_<DOMAIN>` variables (BQ_TABLE_, IMPORT_PATH_, IMPORT_OBJECT_, IGNORE_EVENTS_,
/// CONSUME_ENV_, GROUP_ID_) read from the environment and the .env file; the environment
/// wins. See the service README for every variable.
#[derive(Debug, Parser)]
#[command(name = "generic-consumer", version)]
pub struct Cli {
    /// The domain, e.g. DELIVERY (case-insensitive).
    domain: String,
    /// The .env file to read (default: ./.env when it exists).
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Resolve and print the context (secrets redacted) and the contract, check that the
    /// topic and the dead-letter topic exist, then exit: 0 when all holds, 1 otherwise.
    #[arg(long)]
    check: bool,
    /// Resolve and print the context (secrets redacted) and the contract, then exit: 0
    /// when they resolve, 1 with every problem otherwise. Offline: no broker is asked and
    /// the credentials are not loaded (what a rendered chart is checked with).
    #[arg(long, conflicts_with = "check")]
    print_config: bool,
}

/// The whole program; `main.rs` calls it.
pub fn main() -> ExitCode {
    let cli: Cli = match platform::cli::parse() {
        Ok(cli) => cli,
        Err(stop) => return stop.report(),
    };
    let (context, contract) = match crate::resolve(&cli.domain, cli.env_file.as_deref()) {
        Ok(resolved) => resolved,
        Err(problems) => {
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            return ExitCode::from(1);
        }
    };
    if cli.print_config {
        let dlq = kafka::dlq_topic(&context, &contract.topic);
        return match check_text(&context, &contract, &dlq) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        };
    }
    if cli.check {
        return check(&context, &contract);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
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
    });
    runtime.shutdown_timeout(EXIT_WAIT);
    code
}

/// `--check`: prints what was resolved, then asks the brokers about the topics.
fn check(context: &Context, contract: &Contract) -> ExitCode {
    let dlq = kafka::dlq_topic(context, &contract.topic);
    match check_text(context, contract, &dlq) {
        Ok(text) => print!("{text}"),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    }
    if let Some(target) = context
        .bigquery
        .as_ref()
        .filter(|_| context.sink == SinkKind::Bigquery)
    {
        match Auth::load(&target.credentials) {
            Ok(auth) => println!(
                "credentials: {} ({})",
                target.credentials.display(),
                auth.describe()
            ),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(1);
            }
        }
    }
    match kafka::check_topics(context, &[&contract.topic, &dlq], CHECK_TIMEOUT) {
        Ok(()) => {
            println!("topics: {} and {dlq} exist", contract.topic);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

fn check_text(context: &Context, contract: &Contract, dlq: &str) -> anyhow::Result<String> {
    let mut text = String::from("# context\n");
    text.push_str(&platform::config::render(context)?);
    text.push_str("# contract\n");
    let _ = writeln!(
        text,
        "topic_message: {}",
        contract.topic_message.full_name()
    );
    let _ = writeln!(text, "topic: {}", contract.topic);
    let _ = writeln!(text, "dead_letter_topic: {dlq}");
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
    Ok(text)
}

/// Serves the ops endpoint and runs the instance with the context's sink. Ready from the
/// subscription until the instance stops, for whatever reason.
async fn consume(context: Context, contract: Contract) -> anyhow::Result<()> {
    crate::run::describe_metrics();
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
    let ran = match instance.context.sink {
        SinkKind::Jsonl => {
            let sink = JsonlSink::new(&instance.context.jsonl_dir);
            instance.run(sink, shutdown.clone(), ready).await
        }
        SinkKind::Bigquery => {
            let target = instance
                .context
                .bigquery
                .clone()
                .context("SINK=bigquery needs WRITE_ENV and its BQ_PROJECT_/BQ_DATASET_")?;
            let layout = Layout::of(&instance.contract, instance.context.row_mode);
            let sink = BigQuerySink::new(&target, layout)?;
            instance.run(sink, shutdown.clone(), ready).await
        }
    };
    readiness.set("kafka", false);
    let result = match ran {
        Ok(summary) => {
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
            Ok(())
        }
        Err(err) => Err(anyhow::Error::new(err).context("the instance stopped")),
    };
    ops_stop.cancel();
    let _ = ops_task.await;
    result
}
