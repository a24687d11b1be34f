//! The Gandalf protocol as the services and connectors of this workspace speak it.
//!
//! - [`protocol`]: stream metadata, the message vocabulary (`VALIDATION`, `ON_GOING`,
//!   error events), envelope builders and the checks every receiver applies.
//! - [`connector`]: the client library for connector authors: connect and validate a
//!   secret, send a command and await its acknowledgement, receive commands and events.
//! - [`dedup`]: bounded, expiring sets and maps for uuid dedup and reply routing.
//! - [`frame`]: envelopes as shared encoded bytes, the codec and the `Connect` server
//!   that forward them without re-encoding.
//! - [`heartbeat`]: heartbeats sent at an interval; a heartbeating peer silent past the
//!   idle limit is taken for gone.
//! - [`legs`]: a command's legs through a router: answers only from where it went, one
//!   time budget per command, commands in flight bounded.
//! - [`streams`]: the stream settings both services share (queue, heartbeats,
//!   keepalive, largest message) and the server and endpoint built from them.
//! - [`outbox`]: a connection's outgoing queue, bounded in messages and bytes, filled
//!   without waiting; a peer that stops reading is detected and closed.

pub mod connector;
pub mod dedup;
pub mod frame;
pub mod heartbeat;
pub mod legs;
pub mod outbox;
pub mod protocol;
pub mod streams;

pub use contracts::gandalf::v1 as wire;
