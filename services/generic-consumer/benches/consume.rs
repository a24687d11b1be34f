//! `make bench`: generic-consumer end to end next to a bare rdkafka consume loop, same
//! broker, same messages, in the same run.
//!
//! - broker: a tansu process on loopback (`$TANSU`, in-memory storage), or librdkafka's
//!   mock cluster in this process when `BENCH_BROKER=mock`;
//! - messages: `BENCH_MESSAGES` (default 1,000,000) delivery samples, protobuf, over 6
//!   partitions;
//! - bare: a `BaseConsumer` with the service's own consumer settings, polling until it has
//!   seen every message and doing nothing with them (the ceiling);
//! - generic-consumer: an `Instance` (consumer thread, decode, rows, batches, watermarks,
//!   commits) into a sink that acknowledges every row at once.
//!
//! Time: from creating the consumer (group join included) to the last message seen
//! (bare) or the last row acknowledged (generic-consumer); closing is not included.
//! Memory: resident set size sampled every 50 ms while each side runs; "growth" is the
//! peak during the run minus the size before it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use generic_consumer::{
    context::{self, Context, Vars},
    contract::{self, Contract},
    decode::Row,
    kafka,
    run::Instance,
    samples,
    sink::{RowOutcome, Sink},
};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer},
};
use tokio_util::sync::CancellationToken;

#[path = "../tests/it/tansu.rs"]
mod tansu;
use tansu::Tansu;

/// The allocator the service binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 6;
const TOPIC: &str = "delivery.events.v10";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let messages: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let broker = Broker::start().await?;
    let bootstrap = broker.bootstrap.clone();
    let (context, contract) = delivery(&bootstrap, "bench-e2e")?;

    let started = Instant::now();
    let bytes = produce(&bootstrap, &contract, messages);
    println!(
        "generic-consumer: {messages} delivery events ({:.0} bytes each on average, {PARTITIONS} partitions) \
         produced to {} in {:.1} s",
        bytes as f64 / messages as f64,
        broker.name,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<44} {:>10} {:>12} {:>14} {:>7}",
        "side", "time", "messages/s", "RSS growth", "ratio"
    );

    let bare_context = context.clone();
    let bare = measure(move || bare_loop(&bare_context, messages, "bench-bare")).await;
    println!(
        "  {:<44} {:>8.2} s {:>12.0} {:>11.1} MiB {:>6.2}x",
        "bare rdkafka consume loop (ceiling)",
        bare.seconds,
        messages as f64 / bare.seconds,
        bare.rss_growth_mib,
        1.0
    );
    let e2e = measure_async(end_to_end(context.clone(), contract.clone(), messages)).await;
    println!(
        "  {:<44} {:>8.2} s {:>12.0} {:>11.1} MiB {:>6.2}x",
        "generic-consumer end to end, instant-ack sink",
        e2e.seconds,
        messages as f64 / e2e.seconds,
        e2e.rss_growth_mib,
        bare.seconds / e2e.seconds
    );
    println!(
        "  (ratio = throughput relative to the bare loop; goal >= 0.80x; RSS before: {:.0} MiB)",
        e2e.rss_before_mib
    );
    Ok(())
}

/// The broker both sides read from.
struct Broker {
    name: &'static str,
    bootstrap: String,
    _tansu: Option<Tansu>,
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl Broker {
    async fn start() -> Result<Self, Box<dyn std::error::Error>> {
        if std::env::var("BENCH_BROKER").as_deref() == Ok("mock") {
            let mock = MockCluster::new(1)?;
            mock.create_topic(TOPIC, PARTITIONS, 1)?;
            return Ok(Self {
                name: "librdkafka's mock cluster (in-process)",
                bootstrap: mock.bootstrap_servers(),
                _tansu: None,
                _mock: Some(mock),
            });
        }
        let tansu = Tansu::start(None)?;
        tansu.create_topics(&[(TOPIC, PARTITIONS)]).await?;
        Ok(Self {
            name: "a tansu broker process (loopback, in-memory storage)",
            bootstrap: tansu.bootstrap.clone(),
            _tansu: Some(tansu),
            _mock: None,
        })
    }
}

fn delivery(bootstrap: &str, group: &str) -> Result<(Context, Contract), String> {
    // The tuning knobs pass through from the environment, to compare settings.
    let tuning: Vec<(&str, String)> = ["BATCH_ROWS", "BATCH_LINGER_MS", "MAX_IN_FLIGHT"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name, v)))
        .collect();
    let vars = Vars::from_pairs(tuning.iter().map(|(n, v)| (*n, v.as_str())).chain([
        ("BQ_TABLE_DELIVERY", "delivery_events"),
        (
            "IMPORT_PATH_DELIVERY",
            "contracts.delivery.delivery_events_v10",
        ),
        ("IMPORT_OBJECT_DELIVERY", "DeliveryEventsV10Topic"),
        ("CONSUME_ENV_DELIVERY", "local"),
        ("GROUP_ID_DELIVERY", group),
        ("WRITE_ENV", "local"),
        ("KAFKA_BOOTSTRAP_LOCAL", bootstrap),
        ("SINK", "jsonl"),
    ]));
    let context = context::resolve("DELIVERY", &vars).map_err(|p| p.0.join("; "))?;
    let pool = contracts::descriptor_pool()?;
    let contract = contract::resolve(&context, pool).map_err(|p| p.join("; "))?;
    Ok((context, contract))
}

/// Produces `count` samples round-robin over the partitions; returns the payload bytes.
fn produce(bootstrap: &str, contract: &Contract, count: u64) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let mut bytes = 0u64;
    for n in 0..count {
        let (_, payload) = samples::encoded(contract, n);
        bytes += payload.len() as u64;
        let key = n.to_string();
        let record = BaseRecord::to(TOPIC)
            .partition((n % PARTITIONS as u64) as i32)
            .key(key.as_str())
            .payload(payload.as_slice());
        samples::send(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    bytes
}

/// The ceiling: the service's consumer settings, every message polled and dropped.
fn bare_loop(context: &Context, count: u64, group: &str) -> Duration {
    let started = Instant::now();
    let mut config = kafka::consumer_config(context);
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = 0u64;
    let mut checksum = 0u64;
    while seen < count {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("message");
            checksum = checksum.wrapping_add(message.payload().map_or(0, <[u8]>::len) as u64);
            seen += 1;
        }
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

/// A sink that takes every row at once.
#[derive(Clone, Default)]
struct InstantSink {
    rows: Arc<AtomicU64>,
}

impl Sink for InstantSink {
    async fn write(&self, _table: &str, rows: &[Row]) -> Vec<RowOutcome> {
        self.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        vec![RowOutcome::Written; rows.len()]
    }
}

/// Runs an instance until every row is written; returns the time to the last row (the
/// shutdown that follows is not part of the throughput).
async fn end_to_end(context: Context, contract: Contract, count: u64) -> Duration {
    let started = Instant::now();
    let instance = Instance::new(context, contract);
    let counts = Arc::clone(&instance.counts);
    let stop = CancellationToken::new();
    let sink = InstantSink::default();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while counts.written.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let elapsed = started.elapsed();
            stop.cancel();
            elapsed
        })
    };
    instance
        .run(sink, stop, || {})
        .await
        .expect("the instance runs");
    watcher.await.expect("watcher")
}

struct Measured {
    seconds: f64,
    rss_before_mib: f64,
    rss_growth_mib: f64,
}

/// Resident set size of this process, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn sampler() -> (Arc<AtomicBool>, std::thread::JoinHandle<f64>) {
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let handle = std::thread::spawn(move || {
        let mut peak = rss_mib();
        while !flag.load(Ordering::Relaxed) {
            peak = peak.max(rss_mib());
            std::thread::sleep(Duration::from_millis(50));
        }
        peak.max(rss_mib())
    });
    (done, handle)
}

async fn measure(work: impl FnOnce() -> Duration + Send + 'static) -> Measured {
    measure_async(async move { tokio::task::spawn_blocking(work).await.expect("work") }).await
}

/// Runs `work` (which returns the time its measured part took) while sampling memory.
async fn measure_async(work: impl std::future::Future<Output = Duration>) -> Measured {
    let before = rss_mib();
    let (done, sampler) = sampler();
    let seconds = work.await.as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    Measured {
        seconds,
        rss_before_mib: before,
        rss_growth_mib: (peak - before).max(0.0),
    }
}
