//! oc-sync-job end to end: the real binary against a fake Open Connectors tenant and a
//! fake Compass (token endpoint and Director), both on 127.0.0.1 in the test.

mod fake_compass;
mod fake_oc;
mod helpers;

mod cli;
mod faults;
mod safety;
mod sync;
mod telemetry;
