//! `make bench`: generic-consumer end to end next to a bare rdkafka consume loop, same
//! broker, same messages, in the same run, each side with a fresh consumer group.
//!
//! - broker: a tansu process on loopback (`$TANSU`, in-memory storage), or librdkafka's
//!   mock cluster in this process when `BENCH_BROKER=mock` (it keeps only 5 MB per
//!   partition: use it with a few thousand messages);
//! - messages: `BENCH_MESSAGES` (default 1,000,000) delivery samples, protobuf, about a
//!   KiB each, over 6 partitions; a second topic holds a quarter as many (the backlog
//!   comparison);
//! - bare: a `BaseConsumer` with the service's own consumer settings, polling until it has
//!   seen every message and doing nothing with them (the floor);
//! - bare + decode: the same loop decoding each payload into the contract's generated Rust
//!   type (prost), the least a consumer that reads its events does;
//! - generic-consumer: an `Instance` as the binary runs it (consumer thread, decode, typed
//!   rows, batches, watermarks, commits) into the `jsonl` sink (files in a temporary
//!   directory, each batch synced), and once more into a sink that acknowledges at once
//!   (what the sink's own work costs);
//! - BigQuery (`bigquery_sides`): the fake Google endpoints in a process of their own,
//!   counting rows; over each API a bare client sending the rows pre-encoded as fast as
//!   the fake takes them (the ceiling), the sink alone (`Table::write`, batches in flight
//!   as the pipeline drives it) and the instance end to end; Storage Write once more with
//!   a quarter of the backlog. `BENCH_ONLY=bigquery` runs the floors and these only.
//!
//! Time: from creating the consumer (group join included) to the last message seen
//! (bare) or the last row acknowledged (generic-consumer). CPU: this process's user +
//! system time over the same span (`/proc/self/stat`; the broker is another process), per
//! 1,000 messages. Memory: resident set size sampled every 50 ms while each side runs;
//! "growth" is the peak during the run minus the size before it.

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
    kafka,
    row::Row,
    run::Instance,
    samples,
    sink::{Fatal, JsonlSink, RowOutcome, Sink, Table},
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

mod bigquery_sides;
use bigquery_sides::FakeProcess;

/// The allocator the service binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 6;
const TOPIC: &str = "delivery.events.v10";
/// The same events, a quarter as many: memory must not grow with the backlog.
const SMALL_TOPIC: &str = "delivery.events.v10.quarter";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--fake-bigquery") {
        let dir = args.get(at + 1).ok_or("--fake-bigquery DIR")?;
        return bigquery_sides::serve_fake(std::path::Path::new(dir)).await;
    }
    if !args.iter().any(|a| a == "--bench") {
        return Ok(());
    }
    // BENCH_ONLY=bigquery runs the floor and the BigQuery sides only.
    let only_bigquery = std::env::var("BENCH_ONLY").as_deref() == Ok("bigquery");
    let messages: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let broker = Broker::start().await?;
    let bootstrap = broker.bootstrap.clone();
    let (context, contract) = delivery(&bootstrap, "bench-e2e", None)?;

    let started = Instant::now();
    let bytes = produce(&bootstrap, &contract, TOPIC, messages);
    let small = messages / 4;
    produce(&bootstrap, &contract, SMALL_TOPIC, small);
    println!(
        "generic-consumer: {messages} delivery events ({:.0} bytes each on average, {PARTITIONS} partitions) \
         and {small} more on a second topic, produced to {} in {:.1} s",
        bytes as f64 / messages as f64,
        broker.name,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<46} {:>9} {:>11} {:>14} {:>9} {:>11} {:>7}",
        "side", "time", "messages/s", "CPU / 1k msg", "of it sys", "RSS growth", "CPU x"
    );
    let row = |name: &str, m: &Measured, count: u64, floor: Option<f64>| {
        let per_k = m.cpu_seconds * 1000.0 / count as f64;
        println!(
            "  {:<46} {:>7.2} s {:>11.0} {:>11.3} ms {:>6.3} ms {:>7.1} MiB {:>6.2}x",
            name,
            m.seconds,
            count as f64 / m.seconds,
            per_k * 1000.0,
            m.system_seconds * 1_000_000.0 / count as f64,
            m.rss_growth_mib,
            floor.map_or(1.0, |f| per_k / f)
        );
        per_k
    };

    let bare_context = context.clone();
    let bare = measure(move || bare_loop(&bare_context, messages, "bench-bare")).await;
    let floor = row(
        "bare rdkafka consume loop (the floor)",
        &bare,
        messages,
        None,
    );

    let decode_context = context.clone();
    let decoded =
        measure(move || decode_loop(&decode_context, messages, "bench-bare-decode")).await;
    let decode_floor = row(
        "bare loop + prost decode of each event",
        &decoded,
        messages,
        Some(floor),
    );

    if !only_bigquery {
        consume_sides(
            &bootstrap,
            &contract,
            messages,
            small,
            floor,
            decode_floor,
            &row,
        )
        .await?;
    }
    bigquery(
        &bootstrap,
        &contract,
        (messages, small),
        (floor, bare.seconds),
        &row,
    )
    .await
}

type Printer<'a> = dyn Fn(&str, &Measured, u64, Option<f64>) -> f64 + 'a;

/// The jsonl and instant-ack sides, and the quarter backlog.
async fn consume_sides(
    bootstrap: &str,
    contract: &Contract,
    messages: u64,
    small: u64,
    floor: f64,
    decode_floor: f64,
    row: &Printer<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    let out = tempfile::tempdir()?;
    let (jsonl_context, _) = delivery(bootstrap, "bench-e2e-jsonl", None)?;
    let jsonl = JsonlSink::new(out.path());
    let e2e = measure_async(end_to_end(jsonl_context, contract.clone(), messages, jsonl)).await;
    row(
        "generic-consumer end to end, jsonl sink",
        &e2e,
        messages,
        Some(floor),
    );
    let jsonl_bytes = std::fs::metadata(out.path().join("delivery_events.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    drop(out);

    let (instant_context, _) = delivery(bootstrap, "bench-e2e-instant", None)?;
    let instant = measure_async(end_to_end(
        instant_context,
        contract.clone(),
        messages,
        InstantSink::default(),
    ))
    .await;
    row(
        "generic-consumer end to end, instant-ack sink",
        &instant,
        messages,
        Some(floor),
    );

    let (small_context, small_contract) =
        delivery(bootstrap, "bench-e2e-quarter", Some(SMALL_TOPIC))?;
    let quarter = measure_async(end_to_end(
        small_context,
        small_contract,
        small,
        InstantSink::default(),
    ))
    .await;
    row(
        "  the same, a quarter of the backlog",
        &quarter,
        small,
        Some(floor),
    );
    let per_k = |m: &Measured, count: u64| m.cpu_seconds * 1000.0 / count as f64;
    println!(
        "  (CPU x = CPU per message relative to the bare loop; goal <= 2.00x for the jsonl side; \
         relative to the bare loop + prost decode: jsonl {:.2}x, instant-ack {:.2}x; \
         jsonl wrote {:.0} MiB; RSS before: {:.0} MiB)",
        per_k(&e2e, messages) / decode_floor,
        per_k(&instant, messages) / decode_floor,
        jsonl_bytes as f64 / 1024.0 / 1024.0,
        e2e.rss_before_mib
    );
    Ok(())
}

/// Into BigQuery (the fake, in its own process): over each API, a bare client sending
/// the rows pre-encoded (the ceiling), the sink alone driven as the pipeline drives it,
/// and the instance end to end; last, Storage Write with a quarter of the backlog.
async fn bigquery(
    bootstrap: &str,
    contract: &Contract,
    (messages, small): (u64, u64),
    (floor, floor_seconds): (f64, f64),
    row: &Printer<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    use generic_consumer::bigquery::{BigQuerySink, layout::Layout};

    let fake = FakeProcess::start()?;
    let (probe, _) = delivery_with(bootstrap, "bench-bq", None, &fake.vars("storage_write"))?;
    let layout = Layout::of(contract, probe.row_mode);
    let batches = bigquery_sides::rows(contract, probe.row_mode);
    let in_flight = probe.tuning.batches_in_flight;
    let sink_of = |context: &Context| {
        let target = context.bigquery.as_ref().expect("a bigquery target");
        BigQuerySink::new(target, layout.clone()).map_err(|e| e.0)
    };
    println!(
        "  into BigQuery (fake Google endpoints in another process, counting rows; \
         rows/s x = against the bare client of the same API):"
    );
    let throughput = |name: &str, m: &Measured, count: u64, ceiling: Option<f64>| {
        let rate = count as f64 / m.seconds;
        println!(
            "  {:<46} {:>7.2} s {:>11.0} {:>11.3} ms {:>6.3} ms {:>7.1} MiB {:>6.2}x rows/s",
            name,
            m.seconds,
            rate,
            m.cpu_seconds * 1_000_000.0 / count as f64,
            m.system_seconds * 1_000_000.0 / count as f64,
            m.rss_growth_mib,
            ceiling.map_or(1.0, |c| rate / c)
        );
        rate
    };
    // The fake's process warmed up (first stream, flow-control windows grown, pages
    // touched) before anything is timed: the ceiling must not pay for a cold start.
    let warm = 20_000.min(messages);
    bigquery_sides::bare_append_rows(&fake, &layout, &batches, warm, 16).await;
    bigquery_sides::bare_insert_all(&fake, &batches, 500, warm, 16).await;
    let floor_rate = messages as f64 / floor_seconds;
    let mut summary = Vec::new();
    for (api, group) in [
        ("storage_write", "bench-bq-storage-write"),
        ("insert_all", "bench-bq-insert-all"),
    ] {
        let before = fake.counted().await;
        // The best of three runs each: a short side on two shared cores is noisy, and
        // the ceiling must be the fastest the bare client managed.
        let mut bare: Option<Measured> = None;
        let mut alone: Option<Measured> = None;
        let (context, _) = delivery_with(bootstrap, group, None, &fake.vars(api))?;
        for _ in 0..3 {
            let run = match api {
                "storage_write" => {
                    measure_async(bigquery_sides::bare_append_rows(
                        &fake, &layout, &batches, messages, 16,
                    ))
                    .await
                }
                _ => {
                    measure_async(bigquery_sides::bare_insert_all(
                        &fake,
                        &batches,
                        probe.bigquery.as_ref().map_or(500, |t| t.insert_all_rows),
                        messages,
                        16,
                    ))
                    .await
                }
            };
            bare = Some(fastest(bare, run));
            let run = measure_async(bigquery_sides::sink_alone(
                sink_of(&context)?,
                &batches,
                messages,
                in_flight,
            ))
            .await;
            alone = Some(fastest(alone, run));
        }
        let (bare, alone) = (bare.ok_or("no run")?, alone.ok_or("no run")?);
        let ceiling = throughput(
            &format!("{api}: bare client (ceiling)"),
            &bare,
            messages,
            None,
        );
        let alone_rate = throughput(
            &format!("{api}: the sink alone"),
            &alone,
            messages,
            Some(ceiling),
        );
        let e2e = measure_async(end_to_end(
            context.clone(),
            contract.clone(),
            messages,
            sink_of(&context)?,
        ))
        .await;
        let per_k = row(&format!("{api}: end to end"), &e2e, messages, Some(floor));
        let counted = fake.counted().await - before;
        let e2e_rate = messages as f64 / e2e.seconds;
        assert!(
            counted >= 7 * messages,
            "the fake counted {counted} rows of {} sent",
            7 * messages
        );
        summary.push(format!(
            "{api}: the sink alone at {:.2}x the bare client's rows/s; end to end \
             {e2e_rate:.0} rows/s, {:.2}x the bare client's and {:.2}x the bare consume loop's \
             (the broker's rate), at {:.2}x the floor's CPU per message",
            alone_rate / ceiling,
            e2e_rate / ceiling,
            e2e_rate / floor_rate,
            per_k / floor
        ));
    }
    let (quarter_context, quarter_contract) = delivery_with(
        bootstrap,
        "bench-bq-quarter",
        Some(SMALL_TOPIC),
        &fake.vars("storage_write"),
    )?;
    let quarter = measure_async(end_to_end(
        quarter_context.clone(),
        quarter_contract,
        small,
        sink_of(&quarter_context)?,
    ))
    .await;
    row(
        "storage_write: a quarter of the backlog",
        &quarter,
        small,
        Some(floor),
    );
    for line in summary {
        println!("  ({line}; goals: >= 0.80x the bare client, <= 2.50x the floor's CPU)");
    }
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
            mock.create_topic(SMALL_TOPIC, PARTITIONS, 1)?;
            return Ok(Self {
                name: "librdkafka's mock cluster (in-process)",
                bootstrap: mock.bootstrap_servers(),
                _tansu: None,
                _mock: Some(mock),
            });
        }
        let tansu = Tansu::start(None)?;
        tansu
            .create_topics(&[(TOPIC, PARTITIONS), (SMALL_TOPIC, PARTITIONS)])
            .await?;
        Ok(Self {
            name: "a tansu broker process (loopback, in-memory storage)",
            bootstrap: tansu.bootstrap.clone(),
            _tansu: Some(tansu),
            _mock: None,
        })
    }
}

fn delivery(
    bootstrap: &str,
    group: &str,
    topic: Option<&str>,
) -> Result<(Context, Contract), String> {
    delivery_with(bootstrap, group, topic, &[("SINK", "jsonl".into())])
}

/// The delivery domain's context with `extra` variables (the sink's).
fn delivery_with(
    bootstrap: &str,
    group: &str,
    topic: Option<&str>,
    extra: &[(&str, String)],
) -> Result<(Context, Contract), String> {
    // The tuning knobs pass through from the environment, to compare settings.
    let mut tuning: Vec<(&str, String)> = [
        "BATCH_ROWS",
        "BATCH_BYTES",
        "BATCH_LINGER_MS",
        "BATCHES_IN_FLIGHT",
        "MAX_IN_FLIGHT",
        "MAX_IN_FLIGHT_BYTES",
    ]
    .into_iter()
    .filter_map(|name| std::env::var(name).ok().map(|v| (name, v)))
    .collect();
    if let Some(topic) = topic {
        tuning.push(("TOPIC_DELIVERY", topic.to_owned()));
    }
    tuning.extend(extra.iter().cloned());
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
    ]));
    let context = context::resolve("DELIVERY", &vars).map_err(|p| p.0.join("; "))?;
    let pool = contracts::descriptor_pool()?;
    let contract = contract::resolve(&context, pool).map_err(|p| p.join("; "))?;
    Ok((context, contract))
}

/// Produces `count` samples round-robin over the partitions; returns the payload bytes.
fn produce(bootstrap: &str, contract: &Contract, topic: &str, count: u64) -> u64 {
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
        let record = BaseRecord::to(topic)
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

/// The floor of reading the events: the bare loop, each payload decoded into the
/// contract's generated type.
fn decode_loop(context: &Context, count: u64, group: &str) -> Duration {
    use contracts::contracts::delivery::DeliveryEventsV10Topic;
    use prost::Message as _;

    let started = Instant::now();
    let mut config = kafka::consumer_config(context);
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut seen = 0u64;
    let mut events = 0u64;
    while seen < count {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("message");
            let event = DeliveryEventsV10Topic::decode(message.payload().unwrap_or_default())
                .expect("a sample decodes");
            events += u64::from(event.event.is_some());
            seen += 1;
        }
    }
    assert_eq!(events, count, "every sample carries an event");
    started.elapsed()
}

/// A sink that takes every row at once.
#[derive(Clone, Default)]
struct InstantSink {
    rows: Arc<AtomicU64>,
}

impl Sink for InstantSink {
    type Table = InstantSink;

    async fn open(&self, _table: &str) -> Result<Self::Table, Fatal> {
        Ok(self.clone())
    }
}

impl Table for InstantSink {
    async fn write(&self, rows: &[Row]) -> Result<Vec<RowOutcome>, Fatal> {
        self.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(vec![RowOutcome::Written; rows.len()])
    }
}

/// Runs an instance until every row is written; returns the time to the last row (the
/// shutdown that follows is not part of the throughput).
async fn end_to_end<S: Sink>(
    context: Context,
    contract: Contract,
    count: u64,
    sink: S,
) -> Duration {
    let started = Instant::now();
    let instance = Instance::new(context, contract);
    let counts = Arc::clone(&instance.counts);
    let stop = CancellationToken::new();
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

/// The faster of two measurements of the same side.
fn fastest(best: Option<Measured>, run: Measured) -> Measured {
    match best {
        Some(best) if best.seconds <= run.seconds => best,
        _ => run,
    }
}

struct Measured {
    seconds: f64,
    cpu_seconds: f64,
    system_seconds: f64,
    rss_before_mib: f64,
    rss_growth_mib: f64,
}

/// User + system CPU time of this process so far, seconds (`/proc/self/stat` counts in
/// clock ticks, 100 per second on Linux).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces):
    // utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
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
    let cpu_before = cpu_seconds();
    let (done, sampler) = sampler();
    let seconds = work.await.as_secs_f64();
    let cpu_after = cpu_seconds();
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    Measured {
        seconds,
        cpu_seconds: user + system,
        system_seconds: system,
        rss_before_mib: before,
        rss_growth_mib: (peak - before).max(0.0),
    }
}
