//! A domain the crate has never seen: a new .proto (compiled here, at run time, against
//! the shared contract options) and its variables are all it takes; no Rust changes.

use std::time::Duration;

use crate::helpers::*;

const INVENTORY_PROTO: &str = r#"
syntax = "proto3";

package contracts.inventory;

import "contracts/options.proto";
import "google/protobuf/timestamp.proto";

message InventoryEventsV1Topic {
  option (contracts.topic) = "inventory.events.v1";
  oneof event {
    StockAdjustedEvent stock_adjusted = 1;
    StockCountedEvent stock_counted = 2;
  }
}

message StockAdjustedEvent {
  string event_id = 1;
  google.protobuf.Timestamp occurred_at = 2;
  string sku = 3;
  int32 delta = 4;
  string warehouse = 5;
}

message StockCountedEvent {
  string event_id = 1;
  google.protobuf.Timestamp occurred_at = 2;
  string sku = 3;
  uint32 counted = 4;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_domain_is_a_proto_file_and_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir
        .path()
        .join("contracts/inventory/inventory_events_v1.proto");
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, INVENTORY_PROTO).expect("write proto");
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let mut compiler =
        protox::Compiler::new([dir.path(), std::path::Path::new(shared)]).expect("compiler");
    compiler
        .open_files(["contracts/inventory/inventory_events_v1.proto"])
        .expect("the new contract compiles");
    let pool = compiler.descriptor_pool();

    let topic = "inventory.events.v1";
    let cluster = Cluster::new(&[(topic, 2)]);
    // The seed's double-encoded ignore list, as a ConfigMap carries it.
    let domain = (
        "INVENTORY",
        "contracts.inventory.inventory_events_v1",
        "InventoryEventsV1Topic",
    );
    let (context, contract) = resolve(
        domain,
        &cluster.bootstrap,
        &[("IGNORE_EVENTS_INVENTORY", r#""[\"StockCountedEvent\"]""#)],
        Some(&pool),
    );
    assert_eq!(contract.topic, topic);
    assert_eq!(
        contract
            .events
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["StockAdjustedEvent", "StockCountedEvent"]
    );
    produce_samples(&cluster.bootstrap, &contract, 0..100, 2);

    let sink = RecordingSink::new();
    let running = start(context, contract, sink.clone());
    let counts = running.counts.clone();
    eventually("every message finished", Duration::from_secs(60), || {
        counts.written.load(std::sync::atomic::Ordering::Relaxed)
            + counts.ignored.load(std::sync::atomic::Ordering::Relaxed)
            == 100
    })
    .await;
    let summary = running.stop().await;
    assert_eq!((summary.written, summary.ignored), (50, 50));
    let rows = sink.rows();
    assert_eq!(rows.len(), 50);
    for row in &rows {
        let columns = row.to_json();
        assert_eq!(columns["event_name"], "StockAdjustedEvent");
        let payload = &columns["payload"];
        let n = sample_number(&columns);
        assert_eq!(
            payload["sku"],
            generic_consumer::samples::text("sku", n),
            "{payload}"
        );
        assert!(payload["warehouse"].is_string(), "{payload}");
        assert!(
            row.insert_id()
                .to_string()
                .starts_with("inventory.events.v1:")
        );
    }
}
