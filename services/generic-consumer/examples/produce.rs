//! Produces sample events of a domain to its topic, resolved exactly as the consumer
//! resolves it (same variables, same `.env`): for demos and trying a new contract out.
//!
//! ```text
//! cargo run -p generic-consumer --example produce -- DELIVERY --count 200 --partitions 3
//! ```
//!
//! `--partitions` creates the topic and its dead-letter topic first when they are missing.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use generic_consumer::{kafka, samples};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{BaseProducer, BaseRecord, Producer},
    types::RDKafkaErrorCode,
};

/// Produces sample events of DOMAIN (every event of its contract in turn) to its topic.
#[derive(Debug, Parser)]
#[command(name = "produce")]
struct Cli {
    /// The domain, e.g. DELIVERY.
    domain: String,
    /// The .env file to read (default: ./.env when it exists).
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// How many events.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Create the topic (with this many partitions) and its dead-letter topic if missing.
    #[arg(long)]
    partitions: Option<i32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match produce(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problems) => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
            ExitCode::from(1)
        }
    }
}

async fn produce(cli: &Cli) -> Result<(), Vec<String>> {
    let (context, contract) = generic_consumer::resolve(&cli.domain, cli.env_file.as_deref())?;
    let bootstrap = context.kafka_bootstrap.join(",");
    let fail = |what: &str, err: &dyn std::fmt::Display| vec![format!("{what}: {err}")];

    if let Some(partitions) = cli.partitions {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .map_err(|e| fail("admin client", &e))?;
        let dlq = kafka::dlq_topic(&context, &contract.topic);
        let topics = [
            NewTopic::new(&contract.topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        let results = admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .map_err(|e| fail("create topics", &e))?;
        for result in results {
            match result {
                Ok(topic) => println!("created topic {topic}"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, err)) => return Err(fail(&format!("create {topic}"), &err)),
            }
        }
    }

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| fail("producer", &e))?;
    let mut per_event: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0..cli.count {
        let (event, payload) = samples::encoded(&contract, n);
        let key = n.to_string();
        let record = BaseRecord::to(&contract.topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        samples::send(&producer, record).map_err(|e| fail("produce", &e))?;
        *per_event.entry(event).or_default() += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| fail("flush", &e))?;
    println!(
        "produced {} {} events to {} ({bootstrap}):",
        cli.count, context.domain, contract.topic
    );
    for (event, count) in per_event {
        let note = if context.ignore_events.contains(&event) {
            " (in IGNORE_EVENTS: the consumer skips it)"
        } else {
            ""
        };
        println!("  {count:>6}  {event}{note}");
    }
    Ok(())
}
