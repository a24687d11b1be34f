//! generic-consumer: one image, many instances; each consumes one domain's Kafka topic
//! into BigQuery.
//!
//! This crate holds, so far, what an instance resolves before it consumes anything:
//! - [`context`]: its `<BASE>_<DOMAIN>` variables from the environment and `.env`;
//! - [`contract`]: the domain's topic message, found by `IMPORT_PATH` / `IMPORT_OBJECT` in
//!   the embedded descriptor set, with its events, topic and payload format.

pub mod context;
pub mod contract;
