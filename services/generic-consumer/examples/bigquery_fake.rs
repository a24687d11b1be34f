//! The tests' fake of Google's token endpoint and BigQuery REST API as a process, for
//! `make demo`: `bigquery_fake --dir DIR` writes `DIR/service-account.json` (a key file
//! whose `token_uri` is this fake), `DIR/endpoint` (the `BIGQUERY_ENDPOINT` to use) and
//! `DIR/storage-endpoint` (the `BIGQUERY_STORAGE_ENDPOINT`),
//! serves until SIGTERM or SIGINT, then prints what each table received.

use std::{collections::BTreeMap, path::PathBuf};

#[path = "../tests/it/fake_bigquery.rs"]
#[allow(dead_code)]
mod fake_bigquery;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = match (args.next().as_deref(), args.next()) {
        (Some("--dir"), Some(dir)) => PathBuf::from(dir),
        _ => {
            eprintln!("usage: bigquery_fake --dir DIR");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&dir)?;
    let fake = fake_bigquery::FakeBigQuery::start().await;
    let key = fake.key_file(&dir);
    std::fs::write(dir.join("endpoint"), &fake.url)?;
    std::fs::write(dir.join("storage-endpoint"), &fake.storage_url)?;
    println!(
        "fake BigQuery: REST and token endpoint on {}, Storage Write on {} (key file {})",
        fake.url,
        fake.storage_url,
        key.display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }

    for (table, rows) in fake.all_rows() {
        let ids: std::collections::BTreeSet<&str> =
            rows.iter().map(|r| r.insert_id.as_str()).collect();
        println!(
            "table {table}: {} rows, {} distinct insert ids",
            rows.len(),
            ids.len()
        );
        let mut events: BTreeMap<&str, usize> = BTreeMap::new();
        for row in &rows {
            *events
                .entry(row.json["event_name"].as_str().unwrap_or("?"))
                .or_default() += 1;
        }
        for (event, n) in events {
            println!("  {n:>5}  {event}");
        }
        if let Some(row) = rows.first() {
            println!("one row as the table received it ({}):", row.insert_id);
            let text = serde_json::to_string_pretty(&row.json)?;
            println!("  {}", text.replace('\n', "\n  "));
        }
    }
    println!(
        "access tokens issued: {}; requests: {}; problems found in requests: {}",
        fake.tokens_issued(),
        fake.insert_requests().len(),
        fake.problems().len()
    );
    for problem in fake.problems() {
        println!("  problem: {problem}");
    }
    Ok(())
}
