//! gandalf-aggregator end to end: a real gandalf-cluster and real aggregators in-process
//! on 127.0.0.1:0, connectors through the connector client library.

mod helpers;

mod commands;
mod events;
mod lifecycle;
mod mesh;
mod registry;
mod topology;
