//! Heartbeats: every stream end sends `Heartbeat` at an interval, and a peer that has
//! sent one and then stays silent past the idle limit (three to four intervals) is taken for
//! gone: its stream is half-open (a dead host, a cut route) and is closed. A peer that
//! never sent a heartbeat (an older connector) is not held to it; HTTP/2 keepalive
//! covers the transport for everyone.

use std::{pin::Pin, time::Duration};

use tokio::{task::JoinHandle, time::Sleep};
use tokio_util::sync::CancellationToken;

use crate::{
    outbox::Outbox,
    protocol,
    wire::{Envelope, Heartbeat, envelope::Body},
};

/// How many intervals of silence make a heartbeating peer gone.
pub const IDLE_INTERVALS: u32 = 3;

/// Default interval between heartbeats.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// What a stream's read loop knows of its peer's liveness. One timer per stream, firing
/// once an interval: a message only sets a flag (no clock read, no timer operation per
/// message), and three intervals in a row without one make a heartbeating peer silent,
/// so silence is noticed between three and four intervals after the last message.
#[derive(Debug)]
pub struct Watch {
    interval: Duration,
    heard: bool,
    quiet_intervals: u32,
    heartbeating: bool,
    timer: Pin<Box<Sleep>>,
}

impl Watch {
    /// Watches a peer expected to send heartbeats every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            heard: false,
            quiet_intervals: 0,
            heartbeating: false,
            timer: Box::pin(tokio::time::sleep(interval)),
        }
    }

    /// Notes a message from the peer.
    pub fn saw(&mut self, envelope: &Envelope) {
        self.heard(matches!(envelope.body, Some(Body::Heartbeat(_))));
    }

    /// Notes a message from the peer, `heartbeat` when it was one.
    pub fn heard(&mut self, heartbeat: bool) {
        self.heard = true;
        if !self.heartbeating && heartbeat {
            self.heartbeating = true;
            self.quiet_intervals = 0;
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.interval);
        }
    }

    /// Completes when a heartbeating peer has been silent past the idle limit; never
    /// for a peer that has not sent a heartbeat.
    pub async fn silent(&mut self) {
        if !self.heartbeating {
            return std::future::pending::<()>().await;
        }
        loop {
            self.timer.as_mut().await;
            if std::mem::take(&mut self.heard) {
                self.quiet_intervals = 0;
            } else {
                self.quiet_intervals += 1;
            }
            if self.quiet_intervals >= IDLE_INTERVALS {
                return;
            }
            // From now, not from the last deadline: a watch not polled for a while
            // (between two reads) must not count the missed intervals at once.
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + self.interval);
        }
    }

    /// The idle limit, for logs.
    pub fn idle_limit(&self) -> Duration {
        self.interval * IDLE_INTERVALS
    }
}

/// A heartbeat envelope.
pub fn heartbeat(tenant: &str, component_type: &str, logical_name: &str) -> Envelope {
    protocol::envelope(
        tenant,
        Body::Heartbeat(Heartbeat {
            component_type: component_type.to_owned(),
            logical_name: logical_name.to_owned(),
            bind_address: String::new(),
        }),
    )
}

/// Queues a heartbeat on `outbox` every `interval` until `stop` or the outbox closes. A
/// full queue skips a beat (the peer is not reading; the stall rule deals with it).
pub fn beat(
    outbox: Outbox,
    interval: Duration,
    tenant: String,
    component_type: &'static str,
    logical_name: String,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match outbox.push(heartbeat(&tenant, component_type, &logical_name)) {
                Err(crate::outbox::Refused::Closed) => return,
                _ => continue,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_peer_that_sent_a_heartbeat_is_held_to_the_idle_limit() {
        let mut watch = Watch::new(Duration::from_millis(20));
        let quiet = tokio::time::timeout(Duration::from_millis(150), watch.silent()).await;
        assert!(quiet.is_err(), "no heartbeat yet: never silent");
        watch.saw(&heartbeat("acme", "connector", "c"));
        // Messages keep it alive past the first expiry; silence then ends it.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            watch.saw(&heartbeat("acme", "connector", "c"));
        }
        let started = std::time::Instant::now();
        watch.silent().await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(40), "{took:?}");
    }
}
