//! End to end against a broker process: a tansu broker (Kafka protocol, in-memory storage)
//! on a free loopback port, topics created through the admin API, both domains produced,
//! the binary consuming each into jsonl until SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{helpers::*, tansu::Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_domains_end_to_end_against_a_broker_process() {
    const COUNT: u64 = 2000;
    const PARTITIONS: i32 = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(Some(&dir.path().join("tansu.log"))).expect("tansu");
    broker
        .create_topics(&[
            (DELIVERY_TOPIC, PARTITIONS),
            (PAYMENTS_TOPIC, PARTITIONS),
            ("delivery.events.v10.dlq", 1),
            ("payments.events.v2.dlq", 1),
        ])
        .await
        .expect("topics created");

    let out = dir.path().join("out");
    let out_dir = out.to_str().expect("utf-8").to_owned();
    let mut consumers = Vec::new();
    for (domain, ignore) in [
        (DELIVERY, "ShippingPricesEstimatedEvent"),
        (PAYMENTS, "PaymentRefundedEvent"),
    ] {
        let ignore_var = format!("IGNORE_EVENTS_{}", domain.0);
        let ignore_list = format!("[\"{ignore}\"]");
        let extra = [
            (ignore_var.as_str(), ignore_list.as_str()),
            ("JSONL_DIR", out_dir.as_str()),
            ("ADMIN_LISTEN", "127.0.0.1:0"),
        ];
        let (context, contract) = resolve(domain, &broker.bootstrap, &extra, None);
        produce_samples(&broker.bootstrap, &contract, 0..COUNT, PARTITIONS);
        let kept = (0..COUNT)
            .filter(|n| generic_consumer::samples::sample(&contract, *n).0 != ignore)
            .count();
        let log = std::fs::File::create(dir.path().join(format!("{}.log", domain.0))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_generic-consumer"))
            .arg(domain.0)
            .current_dir(dir.path())
            .env_clear()
            .envs(domain_vars(domain, &broker.bootstrap, &extra))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the consumer");
        consumers.push((domain, context, child, kept, ignore));
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    for (domain, context, child, kept, ignore) in &mut consumers {
        let file = out.join(format!("{}.jsonl", context.bq_table));
        loop {
            let rows = std::fs::read_to_string(&file)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if rows >= *kept {
                break;
            }
            let log = std::fs::read_to_string(dir.path().join(format!("{}.log", domain.0)));
            assert!(
                Instant::now() < deadline,
                "{}: {rows} of {kept} rows\n{}",
                domain.0,
                log.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = child.wait().expect("wait");
        assert_eq!(exit.code(), Some(0), "{} exits 0 on SIGTERM", domain.0);

        let text = std::fs::read_to_string(&file).expect("rows");
        let mut positions = std::collections::BTreeSet::new();
        for line in text.lines() {
            let row: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).expect("a JSON row");
            assert_ne!(row["event_name"], *ignore);
            assert!(positions.insert(position(&row)), "written once: {line}");
        }
        assert_eq!(positions.len(), *kept, "{}", domain.0);
    }
}

/// The pre-revoke commit, against a broker that accepts commits from the current
/// generation while the group rebalances (the mock cluster refuses them): when a member
/// joins and when one leaves, the partitions move with their rows finished and committed,
/// so the new owner starts exactly where the old one stopped and nothing is written twice.
/// Each message is produced as its own record batch (tansu 0.6 serves fetches from batch
/// boundaries only, and a committed offset may be anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_commits_before_revoking_so_nothing_is_written_twice() {
    const PARTITIONS: i32 = 4;
    const COUNT: u64 = 800;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Tansu::start(Some(&dir.path().join("tansu.log"))).expect("tansu");
    broker
        .create_topics(&[(DELIVERY_TOPIC, PARTITIONS)])
        .await
        .expect("topics created");
    let (context, contract) = resolve(DELIVERY, &broker.bootstrap, &[], None);
    let group = context.group_id.clone();
    let one_per_batch = |range: std::ops::Range<u64>| {
        let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .expect("producer");
        for n in range {
            let (_, payload) = generic_consumer::samples::encoded(&contract, n);
            let key = n.to_string();
            let record = rdkafka::producer::BaseRecord::to(DELIVERY_TOPIC)
                .partition((n % PARTITIONS as u64) as i32)
                .key(key.as_str())
                .payload(payload.as_slice());
            generic_consumer::samples::send(&producer, record).expect("produce");
        }
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).expect("flush");
    };
    one_per_batch(0..COUNT / 2);

    let first_sink = RecordingSink::new();
    let first = start(context.clone(), contract.clone(), first_sink.clone());
    eventually(
        "the first instance writing",
        Duration::from_secs(60),
        || first_sink.len() >= 200,
    )
    .await;
    let second_sink = RecordingSink::new();
    let second = start(context, contract.clone(), second_sink.clone());
    // Keep producing until the second member has partitions and writes from them.
    let mut produced = COUNT / 2;
    let deadline = Instant::now() + Duration::from_secs(90);
    while second_sink.len() == 0 {
        assert!(Instant::now() < deadline, "the second member never wrote");
        one_per_batch(produced..produced + 20);
        produced += 20;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    one_per_batch(produced..produced + 200);
    produced += 200;
    let all = || {
        let mut positions = first_sink.positions();
        for (position, n) in second_sink.positions() {
            *positions.entry(position).or_default() += n;
        }
        positions
    };
    eventually("every message written", Duration::from_secs(90), || {
        all().len() as u64 == produced
    })
    .await;
    // The first leaves: the second takes everything over from the first's last commit.
    first.stop().await;
    one_per_batch(produced..produced + 40);
    produced += 40;
    eventually("the last messages", Duration::from_secs(60), || {
        all().len() as u64 == produced
    })
    .await;
    second.stop().await;

    let twice: Vec<_> = all().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(
        committed(&broker.bootstrap, &group, DELIVERY_TOPIC, PARTITIONS),
        ends(&broker.bootstrap, DELIVERY_TOPIC, PARTITIONS)
    );
}
