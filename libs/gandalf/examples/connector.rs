//! An example connector: connects to an aggregator, acknowledges every command it
//! receives, prints every event, and optionally sends commands and events of its own.
//!
//! ```text
//! cargo run -p gandalf --example connector -- \
//!     --endpoint http://127.0.0.1:9200 --name crm-1 --type crm --tenant acme --secret ... --serve
//! cargo run -p gandalf --example connector -- \
//!     --endpoint http://127.0.0.1:9200 --name billing-1 --type erp --tenant acme --secret ... \
//!     --command crm:SYNC_CUSTOMERS --event orders:ORDER_CREATED
//! ```

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use gandalf::{
    connector::{Connector, ConnectorOptions},
    protocol,
    wire::envelope::Body,
};

/// An example Gandalf connector.
#[derive(Debug, Parser)]
struct Args {
    /// The aggregator's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:9200")]
    endpoint: String,
    /// This connector's logical name.
    #[arg(long)]
    name: String,
    /// This connector's type (commands are routed by type).
    #[arg(long = "type")]
    connector_type: String,
    #[arg(long)]
    tenant: String,
    /// The tenant's connector secret (or GANDALF_CONNECTOR_SECRET).
    #[arg(long, env = "GANDALF_CONNECTOR_SECRET", hide_env_values = true)]
    secret: String,
    /// Send a command: CONNECTOR_TYPE:COMMAND (repeatable); waits for its acknowledgement.
    #[arg(long = "command", value_name = "TYPE:COMMAND")]
    commands: Vec<String>,
    /// Publish an event: TOPIC:EVENT (repeatable).
    #[arg(long = "event", value_name = "TOPIC:EVENT")]
    events: Vec<String>,
    /// Send one event with another tenant in its header (to see WRONG_TENANT).
    #[arg(long, value_name = "TENANT")]
    wrong_tenant: Option<String>,
    /// Command timeout in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u32,
    /// Keep serving (acknowledging commands, printing events) until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Without --serve: how long to keep listening after the sends, in milliseconds.
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let name = args.name.clone();
    let options = ConnectorOptions::new(
        &args.endpoint,
        &args.name,
        &args.connector_type,
        &args.tenant,
        &args.secret,
    );
    let connector = match Connector::connect(options).await {
        Ok(connector) => Arc::new(connector),
        Err(err) => {
            eprintln!("[{name}] {err}");
            return ExitCode::from(1);
        }
    };
    println!(
        "[{name}] connected to {} (connector type {})",
        args.endpoint, args.connector_type
    );

    // Acknowledge every command; print everything else.
    let serving = {
        let connector = connector.clone();
        let name = name.clone();
        tokio::spawn(async move {
            while let Some(incoming) = connector.next_command().await {
                println!(
                    "[{name}] received command {} ({})",
                    incoming.command.command, incoming.header.uuid
                );
                match connector.acknowledge(&incoming).await {
                    Ok(()) => println!(
                        "[{name}] acknowledged {} with ON_GOING",
                        incoming.command.command
                    ),
                    Err(err) => eprintln!("[{name}] cannot acknowledge: {err}"),
                }
            }
        })
    };
    let printing = {
        let mut events = connector.subscribe();
        let name = name.clone();
        tokio::spawn(async move {
            while let Ok(envelope) = events.recv().await {
                if let Some(Body::Event(event)) = &envelope.body {
                    if event.topic == protocol::ERROR_TOPIC {
                        println!(
                            "[{name}] error event {} about {}: {}",
                            event.event, event.reference_uuid, event.payload
                        );
                    } else if event.event != protocol::ON_GOING {
                        println!(
                            "[{name}] event {}:{} {}",
                            event.topic, event.event, event.payload
                        );
                    }
                }
            }
        })
    };

    let mut failed = false;
    for spec in &args.commands {
        let Some((kind, command)) = spec.split_once(':') else {
            eprintln!("[{name}] --command {spec:?}: use TYPE:COMMAND");
            return ExitCode::from(2);
        };
        let started = std::time::Instant::now();
        match connector
            .send_command(kind, command, "{}", args.timeout_ms)
            .await
        {
            Ok(ack) => println!(
                "[{name}] command {command} for connector type {kind}: acknowledged ({}) in {:.1} ms",
                ack.event,
                started.elapsed().as_secs_f64() * 1000.0
            ),
            Err(err) => {
                println!("[{name}] command {command} for connector type {kind}: {err}");
                failed = true;
            }
        }
    }
    for spec in &args.events {
        let Some((topic, event)) = spec.split_once(':') else {
            eprintln!("[{name}] --event {spec:?}: use TOPIC:EVENT");
            return ExitCode::from(2);
        };
        match connector.send_event(topic, event, "{}").await {
            Ok(uuid) => println!("[{name}] published event {topic}:{event} ({uuid})"),
            Err(err) => {
                println!("[{name}] event {topic}:{event}: {err}");
                failed = true;
            }
        }
    }
    if let Some(tenant) = &args.wrong_tenant {
        let foreign = protocol::event(tenant, "demo", "FOREIGN", "", "{}");
        println!("[{name}] sending an event with tenant {tenant:?} in its header");
        if let Err(err) = connector.send(foreign).await {
            println!("[{name}] {err}");
        }
    }

    if args.serve {
        let _ = tokio::signal::ctrl_c().await;
    } else {
        tokio::time::sleep(Duration::from_millis(args.linger_ms)).await;
    }
    serving.abort();
    printing.abort();
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
