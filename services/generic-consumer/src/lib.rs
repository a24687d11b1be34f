//! generic-consumer: one image, many instances; each consumes one domain's Kafka topic
//! into BigQuery.
//!
//! What an instance resolves before it consumes anything:
//! - [`context`]: its `<BASE>_<DOMAIN>` variables from the environment and `.env`;
//! - [`contract`]: the domain's topic message, found by `IMPORT_PATH` / `IMPORT_OBJECT` in
//!   the embedded descriptor set, with its events, topic and payload format;
//! - [`decode`]: a message's payload to a [`row::Row`] (or to "ignored", or to an error for
//!   the dead-letter topic);
//! - [`transcode`]: protobuf wire format straight to JSON (the decoder's fast path);
//! - [`row`]: the typed row every sink takes as it is;
//! - [`sink`]: the `Sink` / `Table` interface (open a table; batches in, per-row outcomes
//!   out; fatal errors) and the `jsonl` sink.
//!
//! And how it consumes:
//! - [`consumer`]: the thread that owns the Kafka consumer, with backpressure, rebalance
//!   and shutdown handling;
//! - [`offsets`]: per-partition contiguous watermarks (commit only what is written);
//! - [`pipeline`]: batches, decoding, sink writes with retries, dead letters;
//! - [`kafka`]: client settings and the dead-letter producer;
//! - [`run`]: one instance wired end to end;
//! - [`app`]: the binary (command line, `--check`, the sink chosen, the ops endpoint);
//! - [`samples`]: sample events for any contract (demo, benchmark, tests).

pub mod app;
pub mod bigquery;
pub mod consumer;
pub mod context;
pub mod contract;
pub mod decode;
pub mod kafka;
pub mod offsets;
pub mod pipeline;
pub mod row;
pub mod run;
pub mod samples;
pub mod sink;
pub mod transcode;

use std::path::Path;

/// The context and contract of `domain` as the binary resolves them: variables from the
/// process environment and `env_file` (default `./.env` when it exists; the environment
/// wins), the contract from the embedded descriptor set. `Err` lists every problem found,
/// each naming its variable.
pub fn resolve(
    domain: &str,
    env_file: Option<&Path>,
) -> Result<(context::Context, contract::Contract), Vec<String>> {
    let vars = context::Vars::load(env_file, std::env::vars()).map_err(|p| p.0)?;
    let context = context::resolve(domain, &vars).map_err(|p| p.0)?;
    let pool = contracts::descriptor_pool()
        .map_err(|e| vec![format!("the embedded contracts cannot be read: {e}")])?;
    let contract = contract::resolve(&context, pool)?;
    Ok((context, contract))
}
