//! What every service of the product shares, so that no service writes it again.
//!
//! - [`config`]: layered configuration (built-in defaults < `--config` file < `PREFIX__a__b`
//!   environment), validation with one clear line per problem, and `--print-config` with
//!   secrets redacted ([`secret`]).
//! - [`telemetry`]: `tracing` with text or JSON logs, OpenTelemetry traces over OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace-context propagation, flushed on exit.
//! - [`ops`]: the admin HTTP endpoint of long-running services (`/healthz`, `/readyz`,
//!   `/metrics`), to which a service merges its own routes.
//! - [`shutdown`]: SIGTERM/SIGINT turned into a cancellation token, and a bounded drain.
//! - [`job`]: the exit codes and the run summary shared by the CronJob binaries.
//! - [`retry`]: exponential backoff with jitter, `Retry-After`.
//! - `otlp_collector` (feature `otlp-collector`): an OTLP trace collector for tests.
//! - [`cli`]: the one command-line parser (exit codes shared by every binary), the
//!   `--config` / `--print-config` flags and the start of every `main`.
//!
//! [`each_backend!`] writes one block of SQL code for a PostgreSQL-or-SQLite enum.
//!
//! [`service!`] names the running service (its crate's name and version) for the
//! telemetry and the logs.

pub mod cli;
pub mod config;
pub mod job;
pub mod ops;
#[cfg(feature = "otlp-collector")]
pub mod otlp_collector;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

/// The running service: its name and version, as telemetry reports them
/// (`service.name`, `service.version`). Build it with [`service!`] in the binary, so the
/// version is the service's own, not this crate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub version: &'static str,
}

/// The [`Service`] of the crate this is written in: `platform::service!()`.
#[macro_export]
macro_rules! service {
    () => {
        $crate::Service {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
        }
    };
}

/// Writes `$body` once and compiles it for each backend of an enum with `Postgres(..)`
/// and `Sqlite(..)` variants, with `$conn` bound to that backend's pool, connection or
/// transaction: `platform::each_backend!(self, Self, |pool| { query.execute(pool).await })`.
#[macro_export]
macro_rules! each_backend {
    ($value:expr, $ty:ident, |$conn:ident| $body:block) => {
        match $value {
            $ty::Postgres($conn) => $body,
            $ty::Sqlite($conn) => $body,
        }
    };
}
