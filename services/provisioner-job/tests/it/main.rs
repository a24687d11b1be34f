//! provisioner-job end to end: the real binary against a real PostgreSQL (from
//! `TEST_DATABASE_URL`, which `make test` provides) and a real SQLite file.

mod helpers;
mod kube;

mod apply;
mod cli;
mod concurrency;
mod database;
mod delivery;
mod drift;
mod failures;
mod telemetry;
mod validation;
