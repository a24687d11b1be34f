//! generic-consumer: one image, many instances; each consumes one domain's Kafka topic
//! into BigQuery.
//!
//! This crate holds, so far, what an instance resolves before it consumes anything:
//! - [`context`]: its `<BASE>_<DOMAIN>` variables from the environment and `.env`;
//! - [`contract`]: the domain's topic message, found by `IMPORT_PATH` / `IMPORT_OBJECT` in
//!   the embedded descriptor set, with its events, topic and payload format;
//! - [`decode`]: a message's payload to a row (or to "ignored", or to an error for the
//!   dead-letter topic);
//! - [`sink`]: the `Sink` interface (batch in, per-row outcome out) and the `jsonl` sink.

pub mod context;
pub mod contract;
pub mod decode;
pub mod sink;
