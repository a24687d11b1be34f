//! What the tests share: a mock Kafka cluster, domains resolved the way the binary
//! resolves them, a producer of sample events, readers of topics and committed offsets,
//! a recording sink whose answers a test can change, and a running instance.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use generic_consumer::{
    context::{self, Context, Vars},
    contract::{self, Contract},
    pipeline::Counts,
    row::Row,
    run::{Instance, RunError, Summary},
    samples,
    sink::{Fatal, RowOutcome, Sink, Table},
};
use prost_reflect::DescriptorPool;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::OwnedMessage,
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DELIVERY: (&str, &str, &str) = (
    "DELIVERY",
    "contracts.delivery.delivery_events_v10",
    "DeliveryEventsV10Topic",
);
pub const PAYMENTS: (&str, &str, &str) = (
    "PAYMENTS",
    "contracts.payments.payment_events_v2",
    "PaymentEventsV2Topic",
);
pub const DELIVERY_TOPIC: &str = "delivery.events.v10";
pub const PAYMENTS_TOPIC: &str = "payments.events.v2";

/// librdkafka's mock cluster: real brokers on loopback ports, in this process.
pub struct Cluster {
    _mock: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl Cluster {
    /// A three-broker cluster with `topics` (name, partitions) created.
    pub fn new(topics: &[(&str, i32)]) -> Self {
        let mock = MockCluster::new(3).expect("mock cluster");
        for (topic, partitions) in topics {
            mock.create_topic(topic, *partitions, 1)
                .expect("create topic");
        }
        let bootstrap = mock.bootstrap_servers();
        Self {
            _mock: mock,
            bootstrap,
        }
    }
}

/// The variables a domain needs, pointing at `bootstrap`, plus `extra`.
pub fn domain_vars(
    (domain, path, object): (&str, &str, &str),
    bootstrap: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        (
            format!("BQ_TABLE_{domain}"),
            format!("{}_events", domain.to_lowercase()),
        ),
        (format!("IMPORT_PATH_{domain}"), path.to_owned()),
        (format!("IMPORT_OBJECT_{domain}"), object.to_owned()),
        (format!("CONSUME_ENV_{domain}"), "local".to_owned()),
        (
            format!("GROUP_ID_{domain}"),
            format!("{}-consumer", domain.to_lowercase()),
        ),
        ("WRITE_ENV".to_owned(), "local".to_owned()),
        ("KAFKA_BOOTSTRAP_LOCAL".to_owned(), bootstrap.to_owned()),
        ("SINK".to_owned(), "jsonl".to_owned()),
        // Short batches and a quick group: tests see progress within milliseconds.
        ("BATCH_LINGER_MS".to_owned(), "20".to_owned()),
        ("KAFKA_SESSION_TIMEOUT_MS".to_owned(), "6000".to_owned()),
    ]
    .into();
    for (name, value) in extra {
        vars.retain(|(n, _)| n != name);
        vars.push(((*name).to_owned(), (*value).to_owned()));
    }
    vars
}

/// A domain's context and contract, resolved as the binary does (from variables and a
/// descriptor pool: the embedded one unless given).
pub fn resolve(
    domain: (&str, &str, &str),
    bootstrap: &str,
    extra: &[(&str, &str)],
    pool: Option<&DescriptorPool>,
) -> (Context, Contract) {
    let vars = domain_vars(domain, bootstrap, extra);
    let vars = Vars::from_pairs(vars.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let context = context::resolve(domain.0, &vars).expect("context resolves");
    let pool = match pool {
        Some(pool) => pool,
        None => contracts::descriptor_pool().expect("embedded contracts"),
    };
    let contract = contract::resolve(&context, pool).expect("contract resolves");
    (context, contract)
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Ordered and exactly once per partition: offsets follow the produce order.
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer")
}

/// Produces `messages` (partition, key, payload) to `topic` and waits until the broker
/// has all of them.
pub fn produce(bootstrap: &str, topic: &str, messages: Vec<(i32, Vec<u8>, Vec<u8>)>) {
    let producer = producer(bootstrap);
    for (partition, key, payload) in &messages {
        let record = BaseRecord::to(topic)
            .partition(*partition)
            .key(key.as_slice())
            .payload(payload.as_slice());
        samples::send(&producer, record)
            .unwrap_or_else(|err| panic!("cannot produce to {topic}: {err}"));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Produces samples `range` of `contract` to its topic, sample `n` on partition
/// `n % partitions`; so offset `o` of partition `p` carries sample `o * partitions + p`
/// (per partition, in order) when the topic was empty.
pub fn produce_samples(
    bootstrap: &str,
    contract: &Contract,
    range: std::ops::Range<u64>,
    partitions: i32,
) {
    let messages = range
        .map(|n| {
            let (_, payload) = samples::encoded(contract, n);
            let partition = (n % partitions as u64) as i32;
            (partition, n.to_string().into_bytes(), payload)
        })
        .collect();
    produce(bootstrap, &contract.topic, messages);
}

/// The sample number a row carries, from its event id (sample ids end with `n` in hex).
pub fn sample_number(row: &serde_json::Map<String, serde_json::Value>) -> u64 {
    let id = row["event_id"].as_str().expect("event_id");
    let last = id.rsplit('-').next().expect("uuid-shaped");
    u64::from_str_radix(last, 16).expect("hex")
}

/// A row's `(partition, offset)`.
pub fn position(row: &serde_json::Map<String, serde_json::Value>) -> (i32, i64) {
    (
        row["kafka_partition"].as_i64().expect("partition") as i32,
        row["kafka_offset"].as_i64().expect("offset"),
    )
}

/// The group's committed offsets on `topic`'s partitions; -1 where nothing is committed.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => offset,
                _ => -1,
            },
        )
        .collect()
}

/// The end (high watermark) of each partition of `topic`.
pub fn ends(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// Every message of `topic` (all partitions, from the beginning to the current end).
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Vec<OwnedMessage> {
    let ends = ends(bootstrap, topic, partitions);
    let total: i64 = ends.iter().sum();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (messages.len() as i64) < total {
        assert!(
            Instant::now() < deadline,
            "read {} of {total} messages of {topic}",
            messages.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.expect("message").detach());
        }
    }
    messages
}

/// A header of a message, as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

type Rule = dyn Fn(&Row) -> RowOutcome + Send + Sync;

/// How a [`RecordingSink`] answers a whole write.
#[derive(Clone)]
enum Answer {
    /// Row by row, by the rule.
    Rows(Arc<Rule>),
    /// Never: the write hangs (a sink that stopped answering).
    Hang,
    /// A fatal error (a table that was deleted, a permission taken away).
    Fatal(String),
    /// The write task panics.
    Panic,
}

/// A sink that records what it wrote and answers by a rule the test can change.
#[derive(Clone)]
pub struct RecordingSink {
    rows: Arc<Mutex<Vec<Row>>>,
    answer: Arc<Mutex<Answer>>,
    pub writes: Arc<AtomicU64>,
    /// Writes under way now, and the most ever under way at once.
    active: Arc<AtomicU64>,
    pub most_active: Arc<AtomicU64>,
    /// The most rows one write carried, and its rows' payload bytes.
    pub largest_write: Arc<AtomicU64>,
    pub largest_write_bytes: Arc<AtomicU64>,
    /// How long each write takes before it answers.
    delay: Arc<Mutex<Duration>>,
}

impl RecordingSink {
    /// Writes everything.
    pub fn new() -> Self {
        Self {
            rows: Arc::default(),
            answer: Arc::new(Mutex::new(Answer::Rows(Arc::new(|_: &Row| {
                RowOutcome::Written
            })))),
            writes: Arc::default(),
            active: Arc::default(),
            most_active: Arc::default(),
            largest_write: Arc::default(),
            largest_write_bytes: Arc::default(),
            delay: Arc::default(),
        }
    }

    /// From now on, answers each row with `rule`.
    pub fn answer(&self, rule: impl Fn(&Row) -> RowOutcome + Send + Sync + 'static) {
        *self.answer.lock().expect("answer") = Answer::Rows(Arc::new(rule));
    }

    /// From now on, writes never answer.
    pub fn hang(&self) {
        *self.answer.lock().expect("answer") = Answer::Hang;
    }

    /// From now on, writes fail for good.
    pub fn fail(&self, reason: &str) {
        *self.answer.lock().expect("answer") = Answer::Fatal(reason.to_owned());
    }

    /// From now on, writes panic.
    pub fn panic(&self) {
        *self.answer.lock().expect("answer") = Answer::Panic;
    }

    /// From now on, each write takes `delay`.
    pub fn slow(&self, delay: Duration) {
        *self.delay.lock().expect("delay") = delay;
    }

    /// The rows written so far, in order.
    pub fn rows(&self) -> Vec<Row> {
        self.rows.lock().expect("rows").clone()
    }

    pub fn len(&self) -> usize {
        self.rows.lock().expect("rows").len()
    }

    /// How many times each position was written.
    pub fn positions(&self) -> BTreeMap<(i32, i64), usize> {
        let mut seen = BTreeMap::new();
        for row in self.rows.lock().expect("rows").iter() {
            *seen
                .entry((row.kafka_partition, row.kafka_offset))
                .or_default() += 1;
        }
        seen
    }
}

impl Sink for RecordingSink {
    type Table = RecordingSink;

    async fn open(&self, _table: &str) -> Result<Self::Table, Fatal> {
        Ok(self.clone())
    }
}

impl Table for RecordingSink {
    async fn write(&self, rows: &[Row]) -> Result<Vec<RowOutcome>, Fatal> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.largest_write
            .fetch_max(rows.len() as u64, Ordering::SeqCst);
        let bytes: usize = rows
            .iter()
            .map(|row| match &row.body {
                generic_consumer::row::Body::Payload(json) => json.as_bytes().len(),
                generic_consumer::row::Body::Columns(_) => 0,
            })
            .sum();
        self.largest_write_bytes
            .fetch_max(bytes as u64, Ordering::SeqCst);
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(active, Ordering::SeqCst);
        let delay = *self.delay.lock().expect("delay");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        let answer = self.answer.lock().expect("answer").clone();
        let rule = match answer {
            Answer::Rows(rule) => rule,
            Answer::Hang => std::future::pending().await,
            Answer::Fatal(reason) => return Err(Fatal(reason)),
            Answer::Panic => panic!("the sink broke"),
        };
        let outcomes: Vec<RowOutcome> = rows.iter().map(|row| rule(row)).collect();
        let mut written = self.rows.lock().expect("rows");
        for (row, outcome) in rows.iter().zip(&outcomes) {
            if *outcome == RowOutcome::Written {
                written.push(row.clone());
            }
        }
        Ok(outcomes)
    }
}

/// An instance running on the test's runtime; stopped when dropped (a failing test must
/// not leave its consumer thread holding the runtime).
pub struct Running {
    pub counts: Arc<Counts>,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<Summary, RunError>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts an instance of `context`/`contract` writing to `sink`.
pub fn start<S: Sink + 'static>(context: Context, contract: Contract, sink: S) -> Running {
    let instance = Instance::new(context, contract);
    let counts = Arc::clone(&instance.counts);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move { instance.run(sink, token, || {}).await });
    Running {
        counts,
        stop,
        handle: Some(handle),
    }
}

impl Running {
    pub fn consumed(&self) -> u64 {
        Counts::get(&self.counts.consumed)
    }

    /// Stops it as SIGTERM does; returns its summary.
    pub async fn stop(self) -> Summary {
        self.stop_result().await.expect("the instance ran")
    }

    /// Stops it as SIGTERM does; returns how it ended.
    pub async fn stop_result(mut self) -> Result<Summary, RunError> {
        self.stop.cancel();
        self.ended().await
    }

    /// Waits until it ends by itself (at most a minute).
    pub async fn ended(&mut self) -> Result<Summary, RunError> {
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("the instance stops within a minute")
            .expect("the instance task")
    }
}

/// Waits until `done` holds, checking every 50 ms; fails the test after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
