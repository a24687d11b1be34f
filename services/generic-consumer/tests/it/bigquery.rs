//! The `bigquery` sink against the fake Google endpoints (`fake_bigquery.rs`): auth with
//! a key file, the table checked or created at start, rows complete with their insert
//! ids, and every failure BigQuery produces handled as the README says.

use std::time::Duration;

use generic_consumer::{
    bigquery::{BigQuerySink, layout::Layout},
    context::Context,
    contract::Contract,
    pipeline::Counts,
    run::RunError,
    sink::Sink as _,
};
use serde_json::Value;

use crate::{fake_bigquery::FakeBigQuery, helpers::*};

const PROJECT: &str = "acme-data";
const DATASET: &str = "events";
const TABLE: &str = "delivery_events";

struct Setup {
    fake: FakeBigQuery,
    cluster: Cluster,
    context: Context,
    contract: Contract,
    _dir: tempfile::TempDir,
}

/// A cluster with the delivery topic (and its dead-letter topic), the fake, and a
/// context writing to it with `extra` variables.
async fn setup(partitions: i32, extra: &[(&str, &str)]) -> Setup {
    setup_api("insert_all", partitions, extra).await
}

async fn setup_api(api: &str, partitions: i32, extra: &[(&str, &str)]) -> Setup {
    let fake = FakeBigQuery::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = fake.key_file(dir.path());
    let dlq = format!("{DELIVERY_TOPIC}.dlq");
    let cluster = Cluster::new(&[(DELIVERY_TOPIC, partitions), (&dlq, 1)]);
    let key = key.display().to_string();
    let mut vars: Vec<(&str, &str)> = vec![
        ("SINK", "bigquery"),
        ("BIGQUERY_API", api),
        ("BIGQUERY_ENDPOINT", fake.url.as_str()),
        ("BIGQUERY_STORAGE_ENDPOINT", fake.storage_url.as_str()),
        ("BQ_PROJECT_LOCAL", PROJECT),
        ("BQ_DATASET_LOCAL", DATASET),
        ("GOOGLE_APPLICATION_CREDENTIALS", key.as_str()),
    ];
    vars.extend_from_slice(extra);
    let (context, contract) = resolve(DELIVERY, &cluster.bootstrap, &vars, None);
    Setup {
        fake,
        cluster,
        context,
        contract,
        _dir: dir,
    }
}

fn sink(setup: &Setup) -> BigQuerySink {
    let target = setup.context.bigquery.clone().expect("bigquery target");
    BigQuerySink::new(&target, Layout::of(&setup.contract, setup.context.row_mode))
        .expect("the sink")
}

fn add_table(setup: &Setup) {
    let layout = Layout::of(&setup.contract, setup.context.row_mode);
    setup
        .fake
        .add_table(PROJECT, DATASET, TABLE, layout.table_schema());
}

fn stored(setup: &Setup) -> usize {
    setup.fake.rows(PROJECT, DATASET, TABLE).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arrive_complete_with_the_table_path_auth_and_insert_ids() {
    rows_arrive_complete_with_the_table_path_auth_and_insert_ids_over("insert_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_write_rows_arrive_complete_with_the_table_path_auth_and_insert_ids() {
    rows_arrive_complete_with_the_table_path_auth_and_insert_ids_over("storage_write").await;
}

async fn rows_arrive_complete_with_the_table_path_auth_and_insert_ids_over(api: &str) {
    let setup = setup_api(api, 3, &[("BQ_CREATE_TABLE_DELIVERY", "true")]).await;
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..600, 3);
    let running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    eventually("600 rows in the table", Duration::from_secs(30), || {
        stored(&setup) >= 600
    })
    .await;
    let summary = running.stop().await;
    assert_eq!(summary.written, 600);

    // The table was created from the row layout: partitioned and clustered.
    let schema = setup
        .fake
        .table_schema(PROJECT, DATASET, TABLE)
        .expect("created");
    assert_eq!(schema["fields"][8]["name"], "payload");
    assert_eq!(schema["fields"][8]["type"], "JSON");

    let tables = setup.fake.all_rows();
    assert_eq!(
        tables.len(),
        1,
        "one table, at the path of the write environment"
    );
    assert_eq!(tables[0].0, format!("{PROJECT}.{DATASET}.{TABLE}"));
    let rows = setup.fake.rows(PROJECT, DATASET, TABLE);
    let mut positions: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| {
            let (p, o) = (
                r.json["kafka_partition"].as_i64().expect("partition"),
                r.json["kafka_offset"].as_i64().expect("offset"),
            );
            assert_eq!(r.insert_id, format!("{DELIVERY_TOPIC}:{p}:{o}"));
            (p, o)
        })
        .collect();
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 600, "every message once");
    // The payload is the event's JSON, complete.
    let first = &rows[0].json;
    let payload: Value =
        serde_json::from_str(first["payload"].as_str().expect("JSON text")).expect("JSON");
    assert!(
        payload.as_object().is_some_and(|o| o.len() >= 3),
        "{payload}"
    );
    // RFC 3339 text through insertAll, int64 microseconds through Storage Write.
    let timestamp = &first["event_timestamp"];
    assert!(
        timestamp.as_str().is_some_and(|t| t.ends_with('Z'))
            || timestamp
                .as_i64()
                .is_some_and(|us| us > 1_700_000_000_000_000),
        "{timestamp}"
    );
    assert_eq!(setup.fake.problems(), Vec::<String>::new());
    assert_eq!(setup.fake.tokens_issued(), 1, "one token, cached");
    assert_eq!(
        committed(
            &setup.cluster.bootstrap,
            "delivery-consumer",
            DELIVERY_TOPIC,
            3
        ),
        ends(&setup.cluster.bootstrap, DELIVERY_TOPIC, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_too_large_is_halved_until_everything_lands() {
    a_request_too_large_is_halved_until_everything_lands_over("insert_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_write_a_request_too_large_is_halved_until_everything_lands() {
    a_request_too_large_is_halved_until_everything_lands_over("storage_write").await;
}

async fn a_request_too_large_is_halved_until_everything_lands_over(api: &str) {
    let setup = setup_api(api, 1, &[("BATCH_ROWS", "400"), ("BATCH_LINGER_MS", "300")]).await;
    add_table(&setup);
    // More than 60 rows are too large: a front end's 413 page (insertAll), the
    // "AppendRows request too large" status (Storage Write).
    setup.fake.front_end_limit(60);
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..400, 1);
    let running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    eventually("400 rows in the table", Duration::from_secs(30), || {
        stored(&setup) >= 400
    })
    .await;
    let summary = running.stop().await;
    assert_eq!((summary.written, summary.dead_lettered), (400, 0));
    assert_eq!(stored(&setup), 400);
    let requests = setup.fake.insert_requests();
    assert!(requests.iter().any(|r| r.2 == 413), "{requests:?}");
    assert!(
        requests.iter().filter(|r| r.2 == 200).all(|r| r.0 <= 60),
        "{requests:?}"
    );
    assert_eq!(setup.fake.problems(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_all_requests_are_cut_at_the_row_and_byte_limits() {
    // (BIGQUERY_INSERT_ALL_ROWS, BIGQUERY_REQUEST_BYTES): the rows bound holds first
    // (30 rows of ~2.4 KB are ~72 KB), then the bytes bound (~41 rows fill 100 KB).
    for (rows, bytes) in [(30usize, 100_000usize), (500, 100_000)] {
        let (rows_text, bytes_text) = (rows.to_string(), bytes.to_string());
        let setup = setup(
            1,
            &[
                ("BATCH_ROWS", "300"),
                ("BATCH_LINGER_MS", "300"),
                ("BIGQUERY_INSERT_ALL_ROWS", rows_text.as_str()),
                ("BIGQUERY_REQUEST_BYTES", bytes_text.as_str()),
            ],
        )
        .await;
        add_table(&setup);
        produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..300, 1);
        let running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
        eventually("300 rows in the table", Duration::from_secs(30), || {
            stored(&setup) >= 300
        })
        .await;
        let summary = running.stop().await;
        assert_eq!((summary.written, summary.dead_lettered), (300, 0));
        let requests = setup.fake.insert_requests();
        assert!(
            requests
                .iter()
                .all(|r| r.0 <= rows && r.1 <= bytes && r.2 == 200),
            "{requests:?}"
        );
        let full = requests.iter().map(|r| r.0).max().unwrap_or(0);
        if rows == 30 {
            assert_eq!(full, 30, "{requests:?}");
        } else {
            // Cut by bytes: each request holds about as many rows as 100 KB takes.
            assert!((30..=45).contains(&full), "{requests:?}");
        }
        let rows_seen = setup.fake.rows(PROJECT, DATASET, TABLE);
        let offsets: std::collections::BTreeSet<i64> = rows_seen
            .iter()
            .map(|r| r.json["kafka_offset"].as_i64().unwrap_or(-1))
            .collect();
        assert_eq!(offsets.len(), 300);
        assert_eq!(setup.fake.problems(), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_row_is_dead_lettered_and_every_other_row_lands() {
    one_invalid_row_is_dead_lettered_and_every_other_row_lands_over("insert_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_write_one_invalid_row_is_dead_lettered_and_every_other_row_lands() {
    one_invalid_row_is_dead_lettered_and_every_other_row_lands_over("storage_write").await;
}

async fn one_invalid_row_is_dead_lettered_and_every_other_row_lands_over(api: &str) {
    let setup = setup_api(api, 1, &[]).await;
    add_table(&setup);
    setup.fake.refuse_offsets([17]);
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..100, 1);
    let running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    eventually("99 rows in the table", Duration::from_secs(30), || {
        stored(&setup) >= 99
    })
    .await;
    eventually("the dead letter", Duration::from_secs(10), || {
        Counts::get(&running.counts.dead_lettered) == 1
    })
    .await;
    let summary = running.stop().await;
    assert_eq!((summary.written, summary.dead_lettered), (99, 1));
    let rows = setup.fake.rows(PROJECT, DATASET, TABLE);
    assert!(rows.iter().all(|r| r.json["kafka_offset"] != 17));
    let letters = read_topic(
        &setup.cluster.bootstrap,
        &format!("{DELIVERY_TOPIC}.dlq"),
        1,
    );
    assert_eq!(letters.len(), 1);
    assert_eq!(
        header(&letters[0], "dlq.original.offset").as_deref(),
        Some("17")
    );
    let error = header(&letters[0], "dlq.error").unwrap_or_default();
    assert!(error.contains("invalid"), "{error}");
    // The stopped rows of that request were sent again (and only once each landed).
    assert_eq!(rows.len(), 99);
    assert_eq!(
        committed(
            &setup.cluster.bootstrap,
            "delivery-consumer",
            DELIVERY_TOPIC,
            1
        ),
        vec![100]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_retried_with_nothing_committed_past_unwritten_rows() {
    an_outage_is_retried_with_nothing_committed_past_unwritten_rows_over("insert_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_write_an_outage_is_retried_with_nothing_committed_past_unwritten_rows() {
    an_outage_is_retried_with_nothing_committed_past_unwritten_rows_over("storage_write").await;
}

async fn an_outage_is_retried_with_nothing_committed_past_unwritten_rows_over(api: &str) {
    // Waits between tries capped at a second: the service back, rows flow within seconds
    // however long the outage made the backoff.
    let setup = setup_api(api, 2, &[("RETRY_MAX_MS", "1000")]).await;
    add_table(&setup);
    setup.fake.outage(503, "backendError");
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..200, 2);
    let running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    eventually("requests refused", Duration::from_secs(20), || {
        setup.fake.insert_requests().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stored(&setup), 0);
    // Nothing committed past offset 0 (-1: nothing at all) while nothing is written.
    let during = committed(
        &setup.cluster.bootstrap,
        "delivery-consumer",
        DELIVERY_TOPIC,
        2,
    );
    assert!(during.iter().all(|&o| o <= 0), "{during:?}");
    // Then throttling with a hint, an expired token, and the service back.
    setup.fake.end_outage();
    setup.fake.fail_next(2, 429, "rateLimitExceeded", Some(1));
    setup.fake.revoke_tokens();
    eventually("200 rows in the table", Duration::from_secs(30), || {
        stored(&setup) >= 200
    })
    .await;
    let summary = running.stop().await;
    assert_eq!((summary.written, summary.dead_lettered), (200, 0));
    assert!(summary.retries > 0);
    assert_eq!(setup.fake.tokens_issued(), 2, "one refresh after the 401");
    let requests = setup.fake.insert_requests();
    assert!(requests.iter().any(|r| r.2 == 429), "{requests:?}");
    assert_eq!(setup.fake.problems(), Vec::<String>::new());
    assert_eq!(
        committed(
            &setup.cluster.bootstrap,
            "delivery-consumer",
            DELIVERY_TOPIC,
            2
        ),
        ends(&setup.cluster.bootstrap, DELIVERY_TOPIC, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_with_a_new_token_stops_the_instance() {
    a_key_refused_with_a_new_token_stops_the_instance_over("insert_all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_write_a_key_refused_with_a_new_token_stops_the_instance() {
    a_key_refused_with_a_new_token_stops_the_instance_over("storage_write").await;
}

/// A 401 / UNAUTHENTICATED is answered with one new token; when that one is refused too,
/// the key is refused for good and the instance stops (exit 1) instead of retrying.
async fn a_key_refused_with_a_new_token_stops_the_instance_over(api: &str) {
    let setup = setup_api(api, 1, &[]).await;
    add_table(&setup);
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..50, 1);
    let mut running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    eventually("50 rows in the table", Duration::from_secs(30), || {
        stored(&setup) >= 50
    })
    .await;
    setup.fake.refuse_all_tokens();
    // An open AppendRows stream was authorized when it opened; one refused request ends
    // it (as the server ends streams after a while), the next opens with a refused token.
    setup.fake.fail_next(1, 503, "backendError", None);
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 50..100, 1);
    let error = running.ended().await.expect_err("the key is refused");
    let text = error.to_string();
    assert!(text.contains("the key is refused"), "{text}");
    assert!(text.contains(crate::fake_bigquery::CLIENT_EMAIL), "{text}");
    assert_eq!(stored(&setup), 50);
    assert_eq!(
        setup.fake.tokens_issued(),
        2,
        "one new token, then the stop"
    );
    assert!(
        committed(
            &setup.cluster.bootstrap,
            "delivery-consumer",
            DELIVERY_TOPIC,
            1
        )[0] <= 50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_fit_stops_the_start_naming_the_column() {
    let setup = setup(1, &[]).await;
    let layout = Layout::of(&setup.contract, setup.context.row_mode);
    let mut schema = layout.table_schema();
    for field in schema["fields"].as_array_mut().expect("fields") {
        if field["name"] == "kafka_offset" {
            field["type"] = "STRING".into();
        }
    }
    setup.fake.add_table(PROJECT, DATASET, TABLE, schema);
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..10, 1);
    let mut running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    let error = running.ended().await.expect_err("refused");
    assert_eq!(setup.fake.problems(), Vec::<String>::new());
    assert!(matches!(error, RunError::Open { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("column kafka_offset: the table has STRING, the rows need INTEGER"),
        "{text}"
    );
    assert_eq!(running.consumed(), 0, "nothing consumed");

    // A missing table without BQ_CREATE_TABLE is refused the same way.
    let missing = crate::bigquery::setup(1, &[]).await;
    let mut running = start(
        missing.context.clone(),
        missing.contract.clone(),
        sink(&missing),
    );
    let text = running.ended().await.expect_err("refused").to_string();
    assert!(text.contains("does not exist"), "{text}");
    assert!(text.contains("BQ_CREATE_TABLE_"), "{text}");
}

/// The binary with exactly `vars` (plus the domain's) as its environment.
async fn binary(setup: &Setup, vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut all = domain_vars(DELIVERY, &setup.cluster.bootstrap, &[]);
    for (name, value) in vars {
        all.retain(|(n, _)| n != name);
        all.push(((*name).to_owned(), (*value).to_owned()));
    }
    tokio::process::Command::new(env!("CARGO_BIN_EXE_generic-consumer"))
        .current_dir(setup._dir.path())
        .env_clear()
        .envs(all)
        .env("RUST_LOG", "info")
        .env("ADMIN_LISTEN", "127.0.0.1:0")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the binary")
}

/// Google's endpoints are https: the REST client must open TLS to them (a client built
/// without a TLS backend refuses https URLs outright).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_client_opens_tls_to_an_https_endpoint() {
    use tokio::io::AsyncReadExt as _;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("https://{}", listener.local_addr().expect("addr"));
    let first_byte = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("a first byte");
        byte[0]
    });
    let setup = setup(1, &[("BIGQUERY_ENDPOINT", endpoint.as_str())]).await;
    let opened = tokio::time::timeout(Duration::from_secs(30), sink(&setup).open(TABLE)).await;
    let error = opened.expect("open ends").expect_err("no BigQuery there");
    let byte = tokio::time::timeout(Duration::from_secs(5), first_byte)
        .await
        .unwrap_or_else(|_| panic!("no connection came: {error}"))
        .expect("listener");
    // 0x16: a TLS handshake record (the ClientHello).
    assert_eq!(byte, 0x16, "{error}");
}

/// The same for the Storage Write API's gRPC channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_write_channel_opens_tls_to_an_https_endpoint() {
    use tokio::io::AsyncReadExt as _;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("https://{}", listener.local_addr().expect("addr"));
    let first_byte = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("a first byte");
        byte[0]
    });
    let setup = setup_api(
        "storage_write",
        1,
        &[("BIGQUERY_STORAGE_ENDPOINT", endpoint.as_str())],
    )
    .await;
    add_table(&setup);
    produce_samples(&setup.cluster.bootstrap, &setup.contract, 0..10, 1);
    let running = start(setup.context.clone(), setup.contract.clone(), sink(&setup));
    let byte = tokio::time::timeout(Duration::from_secs(30), first_byte)
        .await
        .expect("the channel connects")
        .expect("listener");
    assert_eq!(byte, 0x16, "a TLS ClientHello");
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_1_naming_the_column_or_the_key_file_that_is_wrong() {
    let setup = setup(1, &[]).await;
    let key = setup.fake.key_file(setup._dir.path()).display().to_string();
    let sink_vars = [
        ("SINK", "bigquery"),
        ("BIGQUERY_API", "insert_all"),
        ("BIGQUERY_ENDPOINT", setup.fake.url.as_str()),
        ("BQ_PROJECT_LOCAL", PROJECT),
        ("BQ_DATASET_LOCAL", DATASET),
        ("GOOGLE_APPLICATION_CREDENTIALS", key.as_str()),
    ];
    let layout = Layout::of(&setup.contract, setup.context.row_mode);
    let mut schema = layout.table_schema();
    schema["fields"]
        .as_array_mut()
        .expect("fields")
        .retain(|f| f["name"] != "payload");
    setup.fake.add_table(PROJECT, DATASET, TABLE, schema);

    let output = binary(&setup, &sink_vars, &["DELIVERY"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains("column payload (JSON) is missing from the table"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");

    // A key file that is not one: --check says which file and exits 1.
    let bad = setup._dir.path().join("not-a-key.json");
    std::fs::write(&bad, "{\"type\": \"service_account\"}").expect("write");
    let bad = bad.display().to_string();
    let mut vars = sink_vars.to_vec();
    vars.retain(|(n, _)| *n != "GOOGLE_APPLICATION_CREDENTIALS");
    vars.push(("GOOGLE_APPLICATION_CREDENTIALS", bad.as_str()));
    let output = binary(&setup, &vars, &["DELIVERY", "--check"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not-a-key.json is not a service-account key file"),
        "{stderr}"
    );
    // And the good one passes that step.
    let output = binary(&setup, &sink_vars, &["DELIVERY", "--check"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("({})", crate::fake_bigquery::CLIENT_EMAIL)),
        "{stdout}"
    );
}
