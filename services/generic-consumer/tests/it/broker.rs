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
