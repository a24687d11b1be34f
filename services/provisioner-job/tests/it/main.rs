//! provisioner-job end to end: the real binary against a real PostgreSQL (from
//! `TEST_DATABASE_URL`, which `make test` provides) and a real SQLite file.

mod helpers;

mod apply;
mod cli;
mod concurrency;
mod drift;
mod failures;
mod telemetry;
mod validation;
