//! generic-consumer against real Kafka-protocol brokers: librdkafka's mock cluster
//! in-process for the fast tests (it listens on loopback, so the binary can use it too),
//! and a tansu broker process for the end-to-end one.

mod bigquery;
mod broker;
mod consuming;
mod domains;
mod fake_bigquery;
mod helpers;
mod process;
mod tansu;
