//! The delivery guarantees, in-process against the mock cluster: exactly once in a clean
//! run, ignored events never written, poison and invalid messages dead-lettered without
//! stopping the partition, a failing sink never committed past, bounded fetching while the
//! sink is down, and a rebalance between two instances.

use std::{collections::BTreeSet, time::Duration};

use generic_consumer::{samples, sink::RowOutcome};

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Produces `count` samples over `partitions`, runs one instance until every message is
/// finished, and checks that each kept message landed exactly once with the row of its
/// sample, ignored events never, and that the group committed the end of every partition.
async fn clean_run(domain: (&str, &str, &str), topic: &str, ignore: &str) {
    const PARTITIONS: i32 = 3;
    const COUNT: u64 = 900;
    let cluster = Cluster::new(&[(topic, PARTITIONS)]);
    let ignore_var = format!("IGNORE_EVENTS_{}", domain.0);
    let (context, contract) = resolve(
        domain,
        &cluster.bootstrap,
        &[(&ignore_var, &format!("[\"{ignore}\"]"))],
        None,
    );
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, PARTITIONS);

    let sink = RecordingSink::new();
    let running = start(context, contract.clone(), sink.clone());
    let counts = running.counts.clone();
    eventually("every message finished", LIMIT, || {
        let c = &counts;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        get(&c.written) + get(&c.ignored) == COUNT
    })
    .await;
    let summary = running.stop().await;

    let expected: BTreeSet<(i32, i64)> = (0..COUNT)
        .filter(|n| samples::sample(&contract, *n).0 != ignore)
        .map(|n| {
            (
                (n % PARTITIONS as u64) as i32,
                (n / PARTITIONS as u64) as i64,
            )
        })
        .collect();
    let ignored = COUNT - expected.len() as u64;
    assert!(ignored > 0, "the samples include the ignored event");
    assert_eq!(summary.consumed, COUNT);
    assert_eq!(summary.ignored, ignored);
    assert_eq!(summary.written, expected.len() as u64);
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(summary.unfinished, 0);

    let positions = sink.positions();
    assert_eq!(
        positions.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "every kept message is written"
    );
    assert!(
        positions.values().all(|n| *n == 1),
        "each exactly once: {:?}",
        positions
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    for row in sink.rows() {
        let columns = row.to_json();
        let (partition, offset) = position(&columns);
        let n = sample_number(&columns);
        assert_eq!(
            n,
            offset as u64 * PARTITIONS as u64 + partition as u64,
            "the row at {partition}:{offset} carries its own message"
        );
        assert_eq!(
            row.insert_id().to_string(),
            format!("{topic}:{partition}:{offset}")
        );
        assert_eq!(columns["event_name"], samples::sample(&contract, n).0);
        assert_eq!(columns["kafka_topic"], topic);
        assert!(columns["payload"].is_object(), "{row:?}");
    }
    assert_eq!(
        committed(&cluster.bootstrap, &group, topic, PARTITIONS),
        ends(&cluster.bootstrap, topic, PARTITIONS),
        "the end of every partition is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_writes_every_kept_protobuf_message_exactly_once() {
    clean_run(DELIVERY, DELIVERY_TOPIC, "ShippingPricesEstimatedEvent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_writes_every_kept_json_message_exactly_once() {
    clean_run(PAYMENTS, PAYMENTS_TOPIC, "PaymentRefundedEvent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let dlq = format!("{DELIVERY_TOPIC}.dlq");
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1), (&dlq, 1)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..10, 1);
    // A length-delimited field whose length runs past the end: not protobuf.
    let poison = vec![0x0a, 0xff, 0xff, 0x01];
    produce(
        &cluster.bootstrap,
        DELIVERY_TOPIC,
        vec![(0, b"poison".to_vec(), poison.clone())],
    );
    produce_samples(&cluster.bootstrap, &contract, 10..20, 1);

    let sink = RecordingSink::new();
    let running = start(context, contract, sink.clone());
    eventually("the rows after the poison message", LIMIT, || {
        sink.len() == 20
    })
    .await;
    let summary = running.stop().await;
    assert_eq!((summary.written, summary.dead_lettered), (20, 1));

    let offsets: Vec<i64> = sink.positions().keys().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (0..10).chain(11..21).collect::<Vec<_>>());
    let letters = read_topic(&cluster.bootstrap, &dlq, 1);
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    use rdkafka::Message;
    assert_eq!(letter.payload(), Some(poison.as_slice()));
    assert_eq!(letter.key(), Some(b"poison".as_slice()));
    assert_eq!(header(letter, "dlq.stage").as_deref(), Some("decode"));
    assert_eq!(
        header(letter, "dlq.original.topic").as_deref(),
        Some(DELIVERY_TOPIC)
    );
    assert_eq!(
        header(letter, "dlq.original.partition").as_deref(),
        Some("0")
    );
    assert_eq!(header(letter, "dlq.original.offset").as_deref(), Some("10"));
    assert_eq!(
        header(letter, "dlq.consumer.group").as_deref(),
        Some(group.as_str())
    );
    let error = header(letter, "dlq.error").expect("error header");
    assert!(
        error.contains("not a valid DeliveryEventsV10Topic (protobuf)"),
        "{error}"
    );
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 1),
        vec![21]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_sink_rejects_as_invalid_are_dead_lettered_and_committed() {
    let dlq = "delivery.rejected";
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1), (dlq, 1)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[("DLQ_TOPIC_DELIVERY", dlq)],
        None,
    );
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..40, 1);

    let sink = RecordingSink::new();
    sink.answer(|row| {
        if &*row.event_name == "DeliveryDispatchedEvent" {
            RowOutcome::Invalid("no such field: tracking_number".into())
        } else {
            RowOutcome::Written
        }
    });
    let running = start(context, contract.clone(), sink.clone());
    let counts = running.counts.clone();
    eventually("every message finished", LIMIT, || {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        get(&counts.written) + get(&counts.dead_lettered) == 40
    })
    .await;
    let summary = running.stop().await;
    assert_eq!((summary.written, summary.dead_lettered), (30, 10));

    let letters = read_topic(&cluster.bootstrap, dlq, 1);
    let mut offsets = Vec::new();
    for letter in &letters {
        assert_eq!(header(letter, "dlq.stage").as_deref(), Some("sink"));
        assert_eq!(
            header(letter, "dlq.error").as_deref(),
            Some("no such field: tracking_number")
        );
        let offset: u64 = header(letter, "dlq.original.offset")
            .expect("offset")
            .parse()
            .expect("number");
        assert_eq!(
            samples::sample(&contract, offset).0,
            "DeliveryDispatchedEvent"
        );
        offsets.push(offset);
    }
    assert_eq!(offsets.len(), 10);
    assert!(
        sink.rows()
            .iter()
            .all(|r| &*r.event_name != "DeliveryDispatchedEvent")
    );
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 1),
        vec![40]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_never_committed_past_and_loses_nothing_when_it_recovers() {
    const PARTITIONS: i32 = 2;
    const COUNT: u64 = 400;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, PARTITIONS)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[("BATCH_ROWS", "50")], None);
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, PARTITIONS);

    // The table refuses partition 1's rows from offset 50 on: an outage that began there.
    let sink = RecordingSink::new();
    sink.answer(|row| match (row.kafka_partition, row.kafka_offset) {
        (1, offset) if offset >= 50 => RowOutcome::Retry("backendError: try again".into()),
        _ => RowOutcome::Written,
    });
    let running = start(context, contract, sink.clone());
    let counts = running.counts.clone();
    eventually("retries", LIMIT, || {
        counts.retries.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    // While it fails: every commit stays at or below the first unwritten row.
    let mut reached = false;
    for _ in 0..20 {
        let written = sink.positions();
        let committed = committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, PARTITIONS);
        for (partition, position) in committed.iter().enumerate() {
            let first_unwritten = (0..)
                .find(|o| !written.contains_key(&(partition as i32, *o)))
                .expect("some offset is unwritten");
            assert!(
                *position <= first_unwritten,
                "partition {partition} committed at {position}, past unwritten offset {first_unwritten}"
            );
        }
        reached |= committed[1] == 50;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(reached, "partition 1 is committed up to the outage");
    assert!(!sink.positions().contains_key(&(1, 50)));

    sink.answer(|_| RowOutcome::Written);
    eventually("every row after the recovery", LIMIT, || {
        sink.len() as u64 == COUNT
    })
    .await;
    let summary = running.stop().await;
    assert!(summary.retries > 0);
    assert_eq!(summary.written, COUNT);
    let positions = sink.positions();
    assert_eq!(positions.len() as u64, COUNT);
    assert!(positions.values().all(|n| *n == 1));
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, PARTITIONS),
        vec![200, 200]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_stops_at_the_in_flight_bound_while_the_sink_is_down() {
    const COUNT: u64 = 5000;
    const MAX_IN_FLIGHT: u64 = 300;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 2)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[("MAX_IN_FLIGHT", "300"), ("BATCH_ROWS", "100")],
        None,
    );
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, 2);

    let sink = RecordingSink::new();
    sink.answer(|_| RowOutcome::Retry("503 Service Unavailable".into()));
    let running = start(context, contract, sink.clone());
    eventually("the buffer to fill", LIMIT, || {
        running.consumed() >= MAX_IN_FLIGHT
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed = running.consumed();
    assert!(
        consumed <= MAX_IN_FLIGHT + 256,
        "consumed {consumed} with nothing written: the bound is {MAX_IN_FLIGHT}"
    );
    assert_eq!(sink.len(), 0);
    // Nothing finished, so nothing committed beyond where it started.
    let at_outage = committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 2);
    assert!(at_outage.iter().all(|c| *c <= 0), "{at_outage:?}");

    sink.answer(|_| RowOutcome::Written);
    eventually("every row after the recovery", LIMIT, || {
        sink.len() as u64 == COUNT
    })
    .await;
    let summary = running.stop().await;
    assert_eq!(summary.consumed, COUNT, "nothing fetched twice");
    assert!(sink.positions().values().all(|n| *n == 1));
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 2),
        vec![2500, 2500]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_between_two_instances_lose_nothing() {
    const PARTITIONS: i32 = 4;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, PARTITIONS)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..2000, PARTITIONS);

    let first_sink = RecordingSink::new();
    let first = start(context.clone(), contract.clone(), first_sink.clone());
    eventually("the first instance writing", LIMIT, || {
        first_sink.len() >= 200
    })
    .await;

    // A second member joins: the partitions are split between the two.
    let second_sink = RecordingSink::new();
    let second = start(context, contract.clone(), second_sink.clone());
    produce_samples(&cluster.bootstrap, &contract, 2000..4000, PARTITIONS);
    eventually("the second instance writing", LIMIT, || {
        second_sink.len() > 0
    })
    .await;
    let all = || {
        let mut positions = first_sink.positions();
        for (position, n) in second_sink.positions() {
            *positions.entry(position).or_default() += n;
        }
        positions
    };
    eventually("every message written by one of them", LIMIT, || {
        all().len() == 4000
    })
    .await;

    // The first leaves: the second takes every partition over and commits their ends.
    let first = first.stop().await;
    let ends = ends(&cluster.bootstrap, DELIVERY_TOPIC, PARTITIONS);
    eventually("the ends committed by the remaining member", LIMIT, || {
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, PARTITIONS) == ends
    })
    .await;
    let second = second.stop().await;

    let positions = all();
    let expected: BTreeSet<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (0..1000).map(move |o| (p, o)))
        .collect();
    assert_eq!(positions.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(first.written > 0 && second.written > 0);
    // Duplicates are allowed here (at least once): the mock cluster refuses every offset
    // commit while a rebalance is in progress (REBALANCE_IN_PROGRESS), including the one
    // made before revoking, which a real broker accepts from the current generation; so the
    // new owner starts from the last commit made before the member joined.
    let duplicates: usize = positions.values().map(|n| n - 1).sum();
    assert_eq!(first.written + second.written, 4000 + duplicates as u64);
    eprintln!("two rebalances: {duplicates} rows written again");
}

/// Every position both sinks wrote, with how many times.
fn written_by(sinks: &[&RecordingSink]) -> std::collections::BTreeMap<(i32, i64), usize> {
    let mut positions = std::collections::BTreeMap::new();
    for sink in sinks {
        for (position, n) in sink.positions() {
            *positions.entry(position).or_default() += n;
        }
    }
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_rebalance_and_a_reassigned_partition_is_resumed() {
    const PARTITIONS: i32 = 2;
    const COUNT: u64 = 3000;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, PARTITIONS)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[
            ("MAX_IN_FLIGHT", "200"),
            ("BATCH_ROWS", "50"),
            ("SHUTDOWN_GRACE_SECS", "2"),
        ],
        None,
    );
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, PARTITIONS);

    // The first instance's sink is down: its buffer fills and fetching pauses.
    let first_sink = RecordingSink::new();
    first_sink.answer(|_| RowOutcome::Retry("503 Service Unavailable".into()));
    let first = start(context.clone(), contract.clone(), first_sink.clone());
    eventually("the first buffer full", LIMIT, || first.consumed() >= 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = first.consumed();

    // A second member joins while the first is paused: the partitions are split, the
    // first gets one of its partitions back (librdkafka keeps that partition paused).
    let second_sink = RecordingSink::new();
    let second = start(context, contract, second_sink.clone());
    eventually("the second instance writing", LIMIT, || {
        second_sink.len() > 0
    })
    .await;
    let while_down = first.consumed() - before;
    assert!(
        while_down <= 200 + 256,
        "the first instance fetched {while_down} more while its sink was down"
    );

    // The first sink recovers: its partition must be fetching again, to the end.
    first_sink.answer(|_| RowOutcome::Written);
    eventually("every message written by one of them", LIMIT, || {
        written_by(&[&first_sink, &second_sink]).len() as u64 == COUNT
    })
    .await;
    assert!(
        first_sink.len() > 0,
        "the first instance wrote its partition"
    );
    first.stop().await;
    second.stop().await;
    // The rows the first instance held for its revoked partitions were dropped, not
    // retried into the table once it recovered: their new owners wrote them, once.
    let twice: Vec<_> = written_by(&[&first_sink, &second_sink])
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "written more than once: {} rows",
        twice.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_sink_stops_within_the_grace_period_and_commits_what_was_written() {
    const COUNT: u64 = 2000;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[
            ("BATCH_ROWS", "100"),
            ("BATCHES_IN_FLIGHT", "1"),
            ("SHUTDOWN_GRACE_SECS", "2"),
        ],
        None,
    );
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, 1);

    let sink = RecordingSink::new();
    // 20 ms a write: the 2,000 rows take 400 ms, so the hang comes mid-stream even when
    // the machine is slow to look (the check runs every 50 ms).
    sink.slow(Duration::from_millis(20));
    let running = start(context, contract, sink.clone());
    eventually("rows written", LIMIT, || sink.len() >= 500).await;
    sink.hang();
    let written = sink.len();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = std::time::Instant::now();
    let summary = running.stop().await;
    let took = asked.elapsed();
    // The grace period is 2 s; closing, the group's last revocation and the commit add
    // well under a second here. The revocation must not wait on its own clock.
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM with a 2 s grace period"
    );
    assert!(summary.unfinished > 0, "{summary:?}");
    assert_eq!(sink.len(), written, "nothing was written after the hang");
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 1),
        vec![written as i64],
        "exactly what was written is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_sink_error_stops_the_instance_with_what_was_written_committed() {
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[("BATCH_ROWS", "100"), ("BATCHES_IN_FLIGHT", "1")],
        None,
    );
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..1000, 1);
    let sink = RecordingSink::new();
    let mut running = start(context, contract.clone(), sink.clone());
    eventually("rows written", LIMIT, || sink.len() >= 300).await;
    sink.fail("403 Forbidden: Access Denied: Table acme:events.delivery_events");
    // Rows after the failure began: a write fails however far the first ones got.
    produce_samples(&cluster.bootstrap, &contract, 1000..2000, 1);
    let ended = running.ended().await;
    let err = ended.expect_err("the instance stops by itself");
    let text = err.to_string();
    assert!(
        text.contains("cannot write to delivery_events") && text.contains("403 Forbidden"),
        "{text}"
    );
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 1),
        vec![sink.len() as i64]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_panics_stops_the_instance_instead_of_stalling_it() {
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    produce_samples(&cluster.bootstrap, &contract, 0..500, 1);
    let sink = RecordingSink::new();
    sink.panic();
    let mut running = start(context, contract, sink);
    let err = running
        .ended()
        .await
        .expect_err("the instance stops by itself");
    assert!(err.to_string().contains("the sink broke"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_stops_the_instance_without_skipping_the_message() {
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..10, 1);
    produce(
        &cluster.bootstrap,
        DELIVERY_TOPIC,
        vec![(0, b"poison".to_vec(), vec![0x0a, 0xff, 0xff, 0x01])],
    );
    produce_samples(&cluster.bootstrap, &contract, 10..20, 1);
    let sink = RecordingSink::new();
    let mut running = start(context, contract, sink.clone());
    let err = running
        .ended()
        .await
        .expect_err("the instance stops by itself");
    let text = err.to_string();
    assert!(text.contains("delivery.events.v10.dlq"), "{text}");
    let committed = committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 1);
    assert!(
        committed[0] <= 10,
        "committed {committed:?}: never past the message that could not be dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_messages_is_dead_lettered_all_at_once() {
    const BAD: usize = 2000;
    let dlq = format!("{DELIVERY_TOPIC}.dlq");
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1), (&dlq, 1)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    let group = context.group_id.clone();
    let poison = (0..BAD)
        .map(|i| (0, i.to_string().into_bytes(), vec![0x0a, 0xff, 0xff, 0x01]))
        .collect();
    produce(&cluster.bootstrap, DELIVERY_TOPIC, poison);
    let sink = RecordingSink::new();
    let started = std::time::Instant::now();
    let running = start(context, contract, sink);
    let counts = running.counts.clone();
    eventually("every bad message dead-lettered", LIMIT, || {
        counts
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed)
            == BAD as u64
    })
    .await;
    let took = started.elapsed();
    running.stop().await;
    // Sent one after another, each letter waits at least the producer's linger (5 ms):
    // 2,000 take 10 s or more. Sent together they share batches.
    assert!(
        took < Duration::from_secs(8),
        "{BAD} dead letters took {took:?}"
    );
    assert_eq!(read_topic(&cluster.bootstrap, &dlq, 1).len(), BAD);
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 1),
        vec![BAD as i64]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_bound_counts_bytes_too() {
    const COUNT: u64 = 4000;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 2)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[
            ("MAX_IN_FLIGHT", "100000"),
            ("MAX_IN_FLIGHT_BYTES", "1048576"),
            ("BATCH_ROWS", "100"),
        ],
        None,
    );
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, 2);
    let smallest = (0..COUNT)
        .map(|n| samples::encoded(&contract, n).1.len())
        .min()
        .expect("samples");
    let sink = RecordingSink::new();
    sink.answer(|_| RowOutcome::Retry("503 Service Unavailable".into()));
    let running = start(context, contract, sink.clone());
    eventually("the buffer to fill", LIMIT, || running.consumed() >= 500).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let consumed = running.consumed() as usize;
    // At most 1 MiB of messages in flight, plus the chunk that crossed the bound.
    let bound = 1_048_576 / smallest + 256;
    assert!(
        consumed <= bound,
        "consumed {consumed} messages of at least {smallest} bytes with 1 MiB in flight"
    );
    sink.answer(|_| RowOutcome::Written);
    eventually("every row after the recovery", LIMIT, || {
        sink.len() as u64 == COUNT
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_batches_are_written_at_once() {
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 2)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[("BATCH_ROWS", "50"), ("BATCHES_IN_FLIGHT", "4")],
        None,
    );
    let group = context.group_id.clone();
    produce_samples(&cluster.bootstrap, &contract, 0..1000, 2);
    let sink = RecordingSink::new();
    sink.slow(Duration::from_millis(300));
    let running = start(context, contract, sink.clone());
    eventually("every row", LIMIT, || sink.len() == 1000).await;
    running.stop().await;
    let most = sink.most_active.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most > 1, "at most {most} write at a time");
    assert!(most <= 4, "{most} writes at once with BATCHES_IN_FLIGHT=4");
    assert!(sink.positions().values().all(|n| *n == 1));
    assert_eq!(
        committed(&cluster.bootstrap, &group, DELIVERY_TOPIC, 2),
        vec![500, 500]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_bounded_by_bytes_as_well_as_rows() {
    const COUNT: u64 = 2000;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 2)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[("BATCH_ROWS", "1000"), ("BATCH_BYTES", "65536")],
        None,
    );
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, 2);
    let largest = (0..COUNT)
        .map(|n| samples::encoded(&contract, n).1.len())
        .max()
        .expect("samples");
    let smallest = (0..COUNT)
        .map(|n| samples::encoded(&contract, n).1.len())
        .min()
        .expect("samples");
    let sink = RecordingSink::new();
    let running = start(context, contract, sink.clone());
    eventually("every row", LIMIT, || sink.len() as u64 == COUNT).await;
    running.stop().await;
    let rows = sink.largest_write.load(std::sync::atomic::Ordering::SeqCst);
    // 64 KiB of messages of at least ~600 bytes: far fewer than BATCH_ROWS, and never
    // more than the bound plus one message (counted as consumed: key, payload, 64).
    let per_row_floor = 64 + 2;
    let most_rows = 65_536 / per_row_floor as u64;
    assert!(rows < most_rows && rows < 1000, "a write of {rows} rows");
    let consumed_bound = 65_536 + largest + 64 + 8;
    assert!(
        rows as usize * (smallest + 64) <= consumed_bound,
        "a write of {rows} rows of at least {smallest} bytes with BATCH_BYTES=65536"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_retry_after_hint_is_waited_for() {
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    produce_samples(&cluster.bootstrap, &contract, 0..50, 1);
    let sink = RecordingSink::new();
    let throttled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let once = std::sync::Arc::clone(&throttled);
    sink.answer(move |_| {
        if once.load(std::sync::atomic::Ordering::SeqCst) {
            RowOutcome::Retry(
                generic_consumer::sink::Retry::from("rateLimitExceeded")
                    .after(Duration::from_millis(1500)),
            )
        } else {
            RowOutcome::Written
        }
    });
    let running = start(context, contract, sink.clone());
    eventually("the throttled write", LIMIT, || {
        sink.writes.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    let throttled_at = std::time::Instant::now();
    throttled.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the retry", LIMIT, || {
        sink.writes.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    let waited = throttled_at.elapsed();
    // The backoff alone would have retried within 200 ms.
    assert!(
        waited >= Duration::from_millis(1300),
        "retried {waited:?} after a 1.5 s retry-after"
    );
    eventually("every row", LIMIT, || sink.len() == 50).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_with_offset_reset_latest_starts_at_the_end() {
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let (context, contract) = resolve(
        DELIVERY,
        &cluster.bootstrap,
        &[("KAFKA_OFFSET_RESET_DELIVERY", "latest")],
        None,
    );
    produce_samples(&cluster.bootstrap, &contract, 0..30, 1);
    let sink = RecordingSink::new();
    let running = start(context, contract.clone(), sink.clone());
    // Until the group has its partition, what is produced may land before its start.
    let deadline = std::time::Instant::now() + LIMIT;
    let mut next = 30;
    while sink.len() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing consumed");
        produce_samples(&cluster.bootstrap, &contract, next..next + 1, 1);
        next += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
    let offsets: Vec<i64> = sink.positions().keys().map(|(_, o)| *o).collect();
    assert!(
        offsets.iter().all(|o| *o >= 30),
        "started at the end, not at the 30 messages before it: {offsets:?}"
    );
}
