//! gandalf-cluster end to end: the real server on 127.0.0.1:0, aggregators played by raw
//! gRPC streams.

mod cli;
mod helpers;
mod routing;
mod streams;
