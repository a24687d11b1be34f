//! oc-sync-job: keeps the Compass applications of one runtime in step with the connector
//! instances of one SAP Open Connectors tenant (spec `02-oc-sync-job.md`).
//!
//! - [`config`]: the Go job's JSON file, field for field, its new keys, and every check
//!   made before any call; [`cli`]: the command line, the legacy `-config PATH` included.
//! - [`oc`] and [`compass`]: the two APIs' clients, over [`http`] (timeouts, retries with
//!   backoff, bounded bodies, call counts).
//! - [`plan`]: the reconcile's decisions from the two listings; [`sync`]: the run that
//!   lists, plans and carries the plan out; [`summary`]: what the run prints.

pub mod cli;
pub mod compass;
pub mod config;
pub mod http;
pub mod oc;
pub mod plan;
pub mod summary;
pub mod sync;

pub use cli::Cli;
pub use sync::run;
