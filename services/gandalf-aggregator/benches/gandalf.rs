//! `make bench`: Gandalf event throughput and command round trip, next to a bare tonic
//! bidirectional relay measured in the same run (the ceiling).
//!
//! Same topology on both sides, all on 127.0.0.1, same `Envelope` type and tonic stack:
//! - gandalf: connectors (the client library) -> gandalf-aggregator -> connectors, with the
//!   aggregator also forwarding every event to a real gandalf-cluster; commands go
//!   connector -> aggregator -> cluster -> aggregator -> connector, and the ON_GOING back.
//! - bare: raw streams -> a relay that fans events out and forwards commands and their
//!   replies by name: no checks, dedup, timeouts or cluster hop.
//!
//! Events/s: senders publish as fast as they can; one receiver counts arrivals.
//! Round trip: each sender issues sequential commands to one acknowledging receiver.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gandalf::{
    connector::{Connector, ConnectorOptions},
    protocol::{self, ComponentType, Peer},
    wire::{Envelope, aggregator_client::AggregatorClient, aggregator_server, envelope::Body},
};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, transport::Channel};

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS_TOTAL: usize = 32_000;
const COMMANDS_PER_SENDER_1: usize = 2_000;
const COMMANDS_PER_SENDER_16: usize = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let gandalf = GandalfStack::start().await?;
    let bare = start_relay().await?;

    println!(
        "gandalf: connector -> aggregator (-> cluster) -> connector, 127.0.0.1, release build"
    );
    println!(
        "  {:<34} {:>12} {:>12} {:>7}",
        "measurement", "gandalf", "bare tonic", "ratio"
    );
    for senders in [1, 16] {
        let g = gandalf_events(&gandalf, senders).await?;
        let b = bare_events(&bare, senders).await?;
        println!(
            "  {:<34} {:>10.0}/s {:>10.0}/s {:>6.2}x",
            format!("events/s, {senders} sender(s)"),
            g,
            b,
            g / b
        );
    }
    for (senders, per) in [(1, COMMANDS_PER_SENDER_1), (16, COMMANDS_PER_SENDER_16)] {
        let g = gandalf_round_trips(&gandalf, senders, per).await?;
        let b = bare_round_trips(&bare, senders, per).await?;
        for (label, pick) in [("p50", 0.50), ("p99", 0.99)] {
            let (gv, bv) = (percentile(&g, pick), percentile(&b, pick));
            println!(
                "  {:<34} {:>9.3} ms {:>9.3} ms {:>6.2}x",
                format!("command round trip {label}, {senders} sender(s)"),
                ms(gv),
                ms(bv),
                ms(bv) / ms(gv)
            );
        }
    }
    println!(
        "  (ratio = gandalf/bare for events/s, bare/gandalf for round trips: 1.00x = the ceiling)"
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------- gandalf

struct GandalfStack {
    aggregator: String,
}

impl GandalfStack {
    async fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let mut tenants = std::collections::BTreeMap::new();
        tenants.insert(
            "acme".to_owned(),
            gandalf_cluster::config::TenantConfig {
                secrets: vec![SecretString::from("s")],
                aggregator_secrets: Vec::new(),
                database: None,
            },
        );
        let cluster = gandalf_cluster::App::build(gandalf_cluster::config::Config {
            listen: "127.0.0.1:0".parse()?,
            admin_listen: "127.0.0.1:0".parse()?,
            tenants,
            ..Default::default()
        })
        .await?;
        let members = vec![format!("http://{}", cluster.grpc_addr()?)];
        tokio::spawn(cluster.run(tokio_util::sync::CancellationToken::new()));
        let aggregator = gandalf_aggregator::App::build(gandalf_aggregator::config::Config {
            logical_name: "bench-agg".into(),
            tenant: "acme".into(),
            secret: SecretString::from("s"),
            listen: "127.0.0.1:0".parse()?,
            admin_listen: "127.0.0.1:0".parse()?,
            cluster: members,
            ..Default::default()
        })
        .await?;
        let url = format!("http://{}", aggregator.grpc_addr()?);
        let admin = format!("http://{}/readyz", aggregator.admin_addr()?);
        tokio::spawn(aggregator.run(tokio_util::sync::CancellationToken::new()));
        for _ in 0..200 {
            if reqwest::get(&admin)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
            {
                return Ok(Self { aggregator: url });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("aggregator not ready".into())
    }

    async fn connector(
        &self,
        name: &str,
        kind: &str,
    ) -> Result<Arc<Connector>, Box<dyn std::error::Error>> {
        Ok(Arc::new(
            Connector::connect(ConnectorOptions::new(
                &self.aggregator,
                name,
                kind,
                "acme",
                "s",
            ))
            .await?,
        ))
    }
}

async fn gandalf_events(
    stack: &GandalfStack,
    senders: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let receiver = stack.connector(&format!("rx-{run}"), "sink").await?;
    let mut rx = receiver.subscribe();
    let mut connectors = Vec::new();
    for i in 0..senders {
        connectors.push(stack.connector(&format!("tx-{run}-{i}"), "source").await?);
    }
    let per = EVENTS_TOTAL / senders;
    let started = Instant::now();
    for connector in &connectors {
        let connector = connector.clone();
        tokio::spawn(async move {
            for _ in 0..per {
                if connector.send_event("bench", "BENCH", "").await.is_err() {
                    break;
                }
            }
        });
    }
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < per * senders && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Ok(Envelope {
                body: Some(Body::Event(e)),
                ..
            })) if e.event == "BENCH" => received += 1,
            Ok(Ok(_)) => {}
            // Arrived at the connector, but this subscriber fell behind its buffer.
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => received += n as usize,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

async fn gandalf_round_trips(
    stack: &GandalfStack,
    senders: usize,
    per: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let kind = format!("echo-{run}");
    let echo = stack.connector(&format!("echo-{run}"), &kind).await?;
    tokio::spawn(async move {
        while let Some(incoming) = echo.next_command().await {
            let _ = echo.acknowledge(&incoming).await;
        }
    });
    let mut tasks = Vec::new();
    for i in 0..senders {
        let connector = stack.connector(&format!("cmd-{run}-{i}"), "client").await?;
        let kind = kind.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for _ in 0..per {
                let started = Instant::now();
                if connector
                    .send_command(&kind, "PING", "", 2000)
                    .await
                    .is_ok()
                {
                    samples.push(started.elapsed());
                }
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    if all.is_empty() {
        return Err("no command was acknowledged".into());
    }
    Ok(all)
}

// ------------------------------------------------------------------------------- bare

type Outgoing = mpsc::Sender<Result<Envelope, Status>>;

/// The ceiling: fan-out for events, lookup by name for commands and their replies.
#[derive(Default, Clone)]
struct Relay {
    streams: Arc<Mutex<HashMap<String, Outgoing>>>,
    /// command uuid -> who sent it.
    asked_by: Arc<Mutex<HashMap<String, String>>>,
}

#[tonic::async_trait]
impl aggregator_server::Aggregator for Relay {
    type ConnectStream = ReceiverStream<Result<Envelope, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let name = Peer::from_metadata(request.metadata())
            .map_err(Status::invalid_argument)?
            .logical_name;
        let (tx, rx) = mpsc::channel(1024);
        self.streams
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .insert(name.clone(), tx);
        let relay = self.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(envelope)) = inbound.message().await {
                let targets: Vec<Outgoing> = {
                    let streams = relay.streams.lock().expect("lock");
                    match &envelope.body {
                        Some(Body::Command(c)) => {
                            let uuid = envelope
                                .header
                                .as_ref()
                                .map(|h| h.uuid.clone())
                                .unwrap_or_default();
                            relay
                                .asked_by
                                .lock()
                                .expect("lock")
                                .insert(uuid, name.clone());
                            streams.get(&c.target).cloned().into_iter().collect()
                        }
                        Some(Body::Event(e)) if !e.reference_uuid.is_empty() => {
                            let asker = relay
                                .asked_by
                                .lock()
                                .expect("lock")
                                .remove(&e.reference_uuid);
                            asker
                                .and_then(|a| streams.get(&a).cloned())
                                .into_iter()
                                .collect()
                        }
                        _ => streams
                            .iter()
                            .filter(|(n, _)| **n != name)
                            .map(|(_, s)| s.clone())
                            .collect(),
                    }
                };
                for target in targets {
                    let _ = target.send(Ok(envelope.clone())).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn start_relay() -> Result<String, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(aggregator_server::AggregatorServer::new(Relay::default()))
            .serve_with_incoming(nodelay(listener)),
    );
    Ok(url)
}

/// A raw stream to the relay: (sender, inbound).
async fn raw(
    url: &str,
    name: &str,
) -> Result<(mpsc::Sender<Envelope>, Streaming<Envelope>), Box<dyn std::error::Error>> {
    let channel = Channel::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(1024);
    let mut request = Request::new(ReceiverStream::new(rx));
    Peer {
        logical_name: name.into(),
        component_type: ComponentType::Connector,
        connector_type: Some("raw".into()),
    }
    .write_metadata(request.metadata_mut())?;
    let inbound = AggregatorClient::new(channel)
        .connect(request)
        .await?
        .into_inner();
    Ok((tx, inbound))
}

async fn bare_events(url: &str, senders: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (_rx_tx, mut receiver) = raw(url, &format!("rx-{run}")).await?;
    let mut streams = Vec::new();
    for i in 0..senders {
        let (tx, mut inbound) = raw(url, &format!("tx-{run}-{i}")).await?;
        // Senders drain what the fan-out sends them, as the connector library does.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        streams.push(tx);
    }
    let per = EVENTS_TOTAL / senders;
    let started = Instant::now();
    for tx in streams {
        tokio::spawn(async move {
            for _ in 0..per {
                if tx
                    .send(protocol::event("acme", "bench", "BENCH", "", ""))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let mut received = 0;
    while received < per * senders {
        match tokio::time::timeout(Duration::from_secs(5), receiver.message()).await {
            Ok(Ok(Some(_))) => received += 1,
            _ => break,
        }
    }
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

async fn bare_round_trips(
    url: &str,
    senders: usize,
    per: usize,
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let echo_name = format!("echo-{run}");
    let (echo_tx, mut echo_rx) = raw(url, &echo_name).await?;
    tokio::spawn(async move {
        while let Ok(Some(envelope)) = echo_rx.message().await {
            if let (Some(h), Some(Body::Command(c))) = (&envelope.header, &envelope.body) {
                let _ = echo_tx.send(protocol::on_going("acme", c, &h.uuid)).await;
            }
        }
    });
    let mut tasks = Vec::new();
    for i in 0..senders {
        let (tx, mut inbound) = raw(url, &format!("cmd-{run}-{i}")).await?;
        let echo_name = echo_name.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for _ in 0..per {
                let mut command = protocol::command("acme", "raw", "PING", "", 2000);
                if let Some(Body::Command(c)) = command.body.as_mut() {
                    c.target.clone_from(&echo_name);
                }
                let started = Instant::now();
                if tx.send(command).await.is_err() {
                    break;
                }
                match inbound.message().await {
                    Ok(Some(_)) => samples.push(started.elapsed()),
                    _ => break,
                }
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    Ok(all)
}

/// Accepted connections with TCP_NODELAY: small envelopes must not wait for Nagle's
/// algorithm (with delayed ACKs that costs tens of milliseconds per exchange).
fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
