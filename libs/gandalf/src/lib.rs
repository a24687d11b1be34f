//! The Gandalf protocol as the services and connectors of this workspace speak it.
//!
//! - [`protocol`]: stream metadata, the message vocabulary (`VALIDATION`, `ON_GOING`,
//!   error events), envelope builders and the checks every receiver applies.
//! - [`connector`]: the client library for connector authors: connect and validate a
//!   secret, send a command and await its acknowledgement, receive commands and events.

pub mod connector;
pub mod protocol;

pub use contracts::gandalf::v1 as wire;
