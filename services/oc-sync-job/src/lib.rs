//! oc-sync-job: keeps the Compass applications of one runtime in step with the connector
//! instances of one SAP Open Connectors tenant (spec `02-oc-sync-job.md`).
//!
//! Built so far: [`config`] (the Go job's JSON file, field for field, its new keys, and
//! every check made before any call), [`cli`] (the command line, the legacy
//! `-config PATH` included) and [`plan`] (the reconcile's decisions from the two
//! listings). The Open Connectors and Compass clients, carrying the plan out and the
//! binary come next.

pub mod cli;
pub mod compass;
pub mod config;
pub mod http;
pub mod oc;
pub mod plan;
