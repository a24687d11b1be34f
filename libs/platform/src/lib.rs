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
//! - [`cli`]: the `--config` / `--print-config` flags every binary takes.

pub mod cli;
pub mod config;
pub mod job;
pub mod ops;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
