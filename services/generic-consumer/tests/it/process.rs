//! The binary as Kubernetes runs it: configuration errors, `--check`, `kill -9` then a
//! restart, and SIGTERM, against the mock cluster (which listens on loopback).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_generic-consumer");

/// The binary with exactly `vars` as its environment, in `dir` (so no stray `.env`).
fn command(dir: &Path, vars: &[(String, String)]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir)
        .env_clear()
        .envs(vars.iter().map(|(n, v)| (n, v)))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

fn run(dir: &Path, vars: &[(String, String)], args: &[&str]) -> Output {
    command(dir, vars)
        .args(args)
        .output()
        .expect("run the binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_missing_or_malformed_variable_exits_1_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vars: Vec<(String, String)> = domain_vars(DELIVERY, "127.0.0.1:9092", &[])
        .into_iter()
        .filter(|(name, _)| name != "GROUP_ID_DELIVERY")
        .chain([(
            "IGNORE_EVENTS_DELIVERY".to_owned(),
            "[ShippingPricesEstimatedEvent".to_owned(),
        )])
        .collect();
    let output = run(dir.path(), &vars, &["DELIVERY"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("GROUP_ID_DELIVERY is not set"), "{stderr}");
    assert!(stderr.contains("IGNORE_EVENTS_DELIVERY"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // From a .env file too: the message says where it looked.
    let env_file = dir.path().join("consumers.env");
    std::fs::write(&env_file, "BQ_TABLE_DELIVERY=delivery_events\n").expect("write");
    let output = run(
        dir.path(),
        &[],
        &["delivery", "--env-file", env_file.to_str().expect("utf-8")],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("IMPORT_PATH_DELIVERY is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("consumers.env"), "{stderr}");
    assert!(!stderr.contains("BQ_TABLE_DELIVERY"), "{stderr}");

    // An unknown event in the ignore list is a contract problem, named too.
    let vars = domain_vars(
        DELIVERY,
        "127.0.0.1:9092",
        &[("IGNORE_EVENTS_DELIVERY", r#"["NoSuchEvent"]"#)],
    );
    let output = run(dir.path(), &vars, &["DELIVERY", "--check"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NoSuchEvent"), "{stderr}");
}

#[test]
fn check_prints_the_context_with_secrets_redacted_and_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = domain_vars(
        DELIVERY,
        "prod1:9092,prod2:9092",
        &[
            (
                "IGNORE_EVENTS_DELIVERY",
                r#""[\"ShippingPricesEstimatedEvent\"]""#,
            ),
            ("KAFKA_SECURITY_PROTOCOL_LOCAL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM_LOCAL", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME_LOCAL", "consumer"),
            ("KAFKA_SASL_PASSWORD_LOCAL", "hunter2-not-for-logs"),
        ],
    );
    let output = run(dir.path(), &vars, &["DELIVERY", "--check"]);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    // The brokers named here do not exist: what was resolved is printed, then the topic
    // check fails.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read the metadata of delivery.events.v10"),
        "{stderr}"
    );
    for expected in [
        "topic_message: contracts.delivery.DeliveryEventsV10Topic",
        "topic: delivery.events.v10",
        "dead_letter_topic: delivery.events.v10.dlq",
        "format: protobuf",
        "ShippingPricesEstimatedEvent: ignored",
        "DeliveryScheduledEvent: kept",
        "prod1:9092",
        "SCRAM-SHA-512",
        "KAFKA_SASL_PASSWORD_LOCAL",
        "linger_ms: 20",
        "session_timeout_ms: 6000",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[test]
fn print_config_resolves_offline_and_reports_every_problem() {
    // What a chart renders is checked with this before it ships: no broker asked, the
    // credentials not loaded (a file that is not a key), yet the context and the contract
    // resolved as in a real start.
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("not-a-key.json");
    std::fs::write(&credentials, "{}").expect("write");
    let vars = domain_vars(
        DELIVERY,
        "prod1:9092",
        &[
            ("KAFKA_SASL_PASSWORD_LOCAL", "hunter2-not-for-logs"),
            ("SINK", "bigquery"),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                credentials.to_str().expect("utf-8"),
            ),
            ("BQ_PROJECT_LOCAL", "analytics"),
            ("BQ_DATASET_LOCAL", "events"),
        ],
    );
    let output = run(dir.path(), &vars, &["DELIVERY", "--print-config"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for expected in [
        "topic: delivery.events.v10",
        "prod1:9092",
        "format: protobuf",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert!(!stdout.contains("hunter2"), "{stdout}");

    let vars = domain_vars(
        DELIVERY,
        "prod1:9092",
        &[("IGNORE_EVENTS_DELIVERY", r#"["NoSuchEvent"]"#)],
    );
    let output = run(dir.path(), &vars, &["DELIVERY", "--print-config"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NoSuchEvent"), "{stderr}");

    let output = run(
        dir.path(),
        &vars,
        &["DELIVERY", "--print-config", "--check"],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn check_asks_the_brokers_for_the_topic_and_the_dead_letter_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1)]);
    let vars = domain_vars(DELIVERY, &cluster.bootstrap, &[]);
    let output = run(dir.path(), &vars, &["DELIVERY", "--check"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no such topic") && stderr.contains("delivery.events.v10.dlq"),
        "{stderr}"
    );

    let cluster = Cluster::new(&[(DELIVERY_TOPIC, 1), ("delivery.events.v10.dlq", 1)]);
    let vars = domain_vars(DELIVERY, &cluster.bootstrap, &[]);
    let output = run(dir.path(), &vars, &["DELIVERY", "--check"]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        stdout.contains("topics: delivery.events.v10 and delivery.events.v10.dlq exist"),
        "{stdout}"
    );
}

/// One row of a jsonl file, as the checks need it.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    position: (i32, i64),
    insert_id: String,
    payload: serde_json::Value,
}

fn lines(path: &Path) -> Vec<Line> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Map<_, _>>(line).ok())
        .map(|row| Line {
            position: position(&row),
            insert_id: row["insert_id"].as_str().expect("insert_id").to_owned(),
            payload: row["payload"].clone(),
        })
        .collect()
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

struct Instance {
    child: Child,
    log: PathBuf,
}

impl Instance {
    fn start(dir: &Path, vars: &[(String, String)], name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command(dir, vars)
            .arg("DELIVERY")
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("start the binary");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the consumer did not exit in {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, limit: Duration, instance: &Instance, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            instance.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the group has committed anything on the delivery topic.
fn any_committed(bootstrap: &str, group: &str, partitions: i32) -> bool {
    committed(bootstrap, group, DELIVERY_TOPIC, partitions)
        .iter()
        .any(|c| *c > 0)
}

/// Waits until `written` holds, then freezes the process (SIGSTOP) and asks `committed`;
/// when that does not hold yet, lets it go on (SIGCONT) and tries again. It returns with
/// the process stopped: however slowly `committed` answers (it asks the brokers), the
/// process cannot finish the stream meanwhile, so a kill that follows comes mid-stream.
fn freeze_when(
    what: &str,
    limit: Duration,
    instance: &Instance,
    mut written: impl FnMut() -> bool,
    mut committed: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        wait_for(
            what,
            deadline.saturating_duration_since(Instant::now()),
            instance,
            &mut written,
        );
        instance.signal("-STOP");
        if committed() {
            return;
        }
        instance.signal("-CONT");
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            instance.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn kill_9_mid_stream_then_a_restart_loses_nothing() {
    // The mock cluster keeps 5 MB per partition: 3,000 samples of about a KiB each fit.
    const PARTITIONS: i32 = 6;
    const COUNT: u64 = 18_000;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, PARTITIONS)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let out_dir = out.to_str().expect("utf-8").to_owned();
    let vars = |batch: &str| {
        domain_vars(
            DELIVERY,
            &cluster.bootstrap,
            &[
                ("JSONL_DIR", out_dir.as_str()),
                ("ADMIN_LISTEN", "127.0.0.1:0"),
                ("BATCH_ROWS", batch),
                ("BATCHES_IN_FLIGHT", "1"),
            ],
        )
    };
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, PARTITIONS);
    let file = out.join("delivery_events.jsonl");

    // Small batches, each synced to disk: the first run is far from done when it dies.
    let mut first = Instance::start(dir.path(), &vars("10"), "first");
    freeze_when(
        "rows written and committed",
        Duration::from_secs(60),
        &first,
        || line_count(&file) >= 1000,
        || any_committed(&cluster.bootstrap, &context.group_id, PARTITIONS),
    );
    first.signal("-KILL");
    let status = first.wait(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by the signal");
    let at_kill = committed(
        &cluster.bootstrap,
        &context.group_id,
        DELIVERY_TOPIC,
        PARTITIONS,
    );
    let written_at_kill = lines(&file).len();
    assert!(
        (written_at_kill as u64) < COUNT,
        "the kill came mid-stream ({written_at_kill} of {COUNT} written)"
    );

    let mut second = Instance::start(dir.path(), &vars("1000"), "second");
    // Every message in the file is not enough: the first instance wrote some past the
    // offsets it committed, which the second writes again; the end is its commits.
    let ends = vec![COUNT as i64 / PARTITIONS as i64; PARTITIONS as usize];
    wait_for(
        "every message written and committed",
        Duration::from_secs(120),
        &second,
        || {
            let seen: BTreeSet<(i32, i64)> = lines(&file).iter().map(|l| l.position).collect();
            seen.len() as u64 == COUNT
                && committed(
                    &cluster.bootstrap,
                    &context.group_id,
                    DELIVERY_TOPIC,
                    PARTITIONS,
                ) == ends
        },
    );
    second.signal("-TERM");
    let status = second.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{}", second.log());

    let mut copies: BTreeMap<(i32, i64), Vec<Line>> = BTreeMap::new();
    for line in lines(&file) {
        copies.entry(line.position).or_default().push(line);
    }
    assert_eq!(copies.len() as u64, COUNT, "every message is in the sink");
    let mut duplicates = 0;
    for ((partition, offset), lines) in &copies {
        let id = format!("{DELIVERY_TOPIC}:{partition}:{offset}");
        assert!(lines.iter().all(|l| l.insert_id == id), "{lines:?}");
        if lines.len() > 1 {
            duplicates += lines.len() - 1;
            assert!(
                *offset >= at_kill[*partition as usize],
                "{partition}:{offset} written twice, below the offset committed at the kill ({at_kill:?})"
            );
            assert!(
                lines.iter().all(|l| l.payload == lines[0].payload),
                "the same message gives the same row: {lines:?}"
            );
        }
    }
    assert_eq!(
        committed(
            &cluster.bootstrap,
            &context.group_id,
            DELIVERY_TOPIC,
            PARTITIONS
        ),
        vec![COUNT as i64 / PARTITIONS as i64; PARTITIONS as usize]
    );
    eprintln!(
        "kill -9 after {written_at_kill} rows (committed {at_kill:?}): {duplicates} duplicates"
    );
}

#[test]
fn sigterm_flushes_commits_everything_written_and_exits_0() {
    // The mock cluster keeps 5 MB per partition: 3,000 samples of about a KiB each fit.
    const PARTITIONS: i32 = 6;
    const COUNT: u64 = 18_000;
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, PARTITIONS)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let admin = format!("127.0.0.1:{}", free_port());
    let vars = domain_vars(
        DELIVERY,
        &cluster.bootstrap,
        &[
            ("JSONL_DIR", out.to_str().expect("utf-8")),
            ("ADMIN_LISTEN", &admin),
            ("BATCH_ROWS", "10"),
            ("BATCHES_IN_FLIGHT", "1"),
            // Fewer in flight than the topic holds: SIGTERM comes mid-stream.
            ("MAX_IN_FLIGHT", "2000"),
        ],
    );
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, PARTITIONS);
    let file = out.join("delivery_events.jsonl");

    let mut instance = Instance::start(dir.path(), &vars, "consumer");
    wait_for("rows written", Duration::from_secs(60), &instance, || {
        line_count(&file) >= 1000
    });
    let metrics = http_get(&format!("http://{admin}/metrics"));
    assert!(metrics.contains("consumer_rows_written_total"), "{metrics}");
    assert!(metrics.contains("consumer_in_flight_rows"), "{metrics}");
    assert!(
        metrics.contains("# HELP consumer_in_flight_rows Messages consumed and not yet written"),
        "the descriptions given at start-up are rendered: {metrics}"
    );
    let ready = http_get(&format!("http://{admin}/readyz"));
    assert!(ready.contains(r#"{"ready":true}"#), "{ready}");

    instance.signal("-TERM");
    let status = instance.wait(Duration::from_secs(40));
    let log = instance.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");

    let written = lines(&file);
    assert!(
        (written.len() as u64) < COUNT,
        "stopped mid-stream ({} of {COUNT})",
        written.len()
    );
    let committed = committed(
        &cluster.bootstrap,
        &context.group_id,
        DELIVERY_TOPIC,
        PARTITIONS,
    );
    for partition in 0..PARTITIONS {
        let mut offsets: Vec<i64> = written
            .iter()
            .filter(|l| l.position.0 == partition)
            .map(|l| l.position.1)
            .collect();
        offsets.sort_unstable();
        let end = committed[partition as usize].max(0);
        assert_eq!(
            offsets,
            (0..end).collect::<Vec<_>>(),
            "partition {partition}: exactly the rows below the commit ({end}), once"
        );
    }
}

/// A GET with a plain TCP request (the ops endpoint speaks HTTP/1.1).
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn kill_9_mid_stream_into_bigquery_then_a_restart_loses_nothing() {
    kill_9_mid_stream_into_bigquery_then_a_restart_loses_nothing_over("insert_all");
}

#[test]
fn storage_write_kill_9_mid_stream_into_bigquery_then_a_restart_loses_nothing() {
    kill_9_mid_stream_into_bigquery_then_a_restart_loses_nothing_over("storage_write");
}

fn kill_9_mid_stream_into_bigquery_then_a_restart_loses_nothing_over(api: &str) {
    use crate::fake_bigquery::FakeBigQuery;

    const PARTITIONS: i32 = 6;
    const COUNT: u64 = 6_000;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fake = runtime.block_on(FakeBigQuery::start());
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, PARTITIONS)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = fake.key_file(dir.path()).display().to_string();
    let vars = |batch: &str| {
        domain_vars(
            DELIVERY,
            &cluster.bootstrap,
            &[
                ("SINK", "bigquery"),
                ("BIGQUERY_API", api),
                ("BIGQUERY_ENDPOINT", fake.url.as_str()),
                ("BIGQUERY_STORAGE_ENDPOINT", fake.storage_url.as_str()),
                ("BQ_PROJECT_LOCAL", "acme-data"),
                ("BQ_DATASET_LOCAL", "events"),
                ("BQ_CREATE_TABLE_DELIVERY", "true"),
                ("GOOGLE_APPLICATION_CREDENTIALS", key.as_str()),
                ("ADMIN_LISTEN", "127.0.0.1:0"),
                ("BATCH_ROWS", batch),
                ("BATCHES_IN_FLIGHT", "1"),
            ],
        )
    };
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &[], None);
    produce_samples(&cluster.bootstrap, &contract, 0..COUNT, PARTITIONS);
    let rows = || fake.rows("acme-data", "events", "delivery_events");

    // 10 rows a write, one write at a time, 5 ms each: the 6,000 rows take at least 3 s,
    // so the kill comes mid-stream however slowly the wait below polls.
    fake.slow_writes(Duration::from_millis(5));
    let mut first = Instance::start(dir.path(), &vars("10"), "first");
    freeze_when(
        "rows written and committed",
        Duration::from_secs(60),
        &first,
        || rows().len() >= 500,
        || any_committed(&cluster.bootstrap, &context.group_id, PARTITIONS),
    );
    first.signal("-KILL");
    assert_eq!(first.wait(Duration::from_secs(10)).code(), None, "killed");
    let at_kill = committed(
        &cluster.bootstrap,
        &context.group_id,
        DELIVERY_TOPIC,
        PARTITIONS,
    );
    let written_at_kill = rows().len();
    assert!((written_at_kill as u64) < COUNT, "the kill came mid-stream");

    // The restart finds the table it created and goes on from the committed offsets.
    fake.slow_writes(Duration::ZERO);
    let mut second = Instance::start(dir.path(), &vars("1000"), "second");
    let position = |r: &crate::fake_bigquery::StoredRow| {
        (
            r.json["kafka_partition"].as_i64().expect("partition") as i32,
            r.json["kafka_offset"].as_i64().expect("offset"),
        )
    };
    // Every message in the table is not enough: the first instance wrote some past the
    // offsets it committed, which the second writes again; the end is its commits.
    let ends = vec![COUNT as i64 / PARTITIONS as i64; PARTITIONS as usize];
    wait_for(
        "every message written and committed",
        Duration::from_secs(120),
        &second,
        || {
            rows().iter().map(position).collect::<BTreeSet<_>>().len() as u64 == COUNT
                && committed(
                    &cluster.bootstrap,
                    &context.group_id,
                    DELIVERY_TOPIC,
                    PARTITIONS,
                ) == ends
        },
    );
    second.signal("-TERM");
    let status = second.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{}", second.log());

    let mut copies: BTreeMap<(i32, i64), Vec<String>> = BTreeMap::new();
    for row in rows() {
        copies
            .entry(position(&row))
            .or_default()
            .push(row.insert_id);
    }
    assert_eq!(copies.len() as u64, COUNT, "every message is in the table");
    for ((partition, offset), ids) in &copies {
        let id = format!("{DELIVERY_TOPIC}:{partition}:{offset}");
        assert!(ids.iter().all(|i| *i == id), "{ids:?}");
        if ids.len() > 1 {
            assert!(
                *offset >= at_kill[*partition as usize],
                "{partition}:{offset} written twice, below the offset committed at the kill ({at_kill:?})"
            );
        }
    }
    assert_eq!(fake.problems(), Vec::<String>::new());
    assert_eq!(
        committed(
            &cluster.bootstrap,
            &context.group_id,
            DELIVERY_TOPIC,
            PARTITIONS
        ),
        vec![COUNT as i64 / PARTITIONS as i64; PARTITIONS as usize]
    );
}
