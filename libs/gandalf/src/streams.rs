//! The settings every Gandalf stream end shares, the aggregator's and the cluster's alike:
//! the outgoing queue, heartbeats, HTTP/2 keepalive and the largest message. Both
//! services have the same keys for them (`queue_messages`, `queue_bytes`,
//! `stall_timeout_ms`, `heartbeat_interval_ms`, `keepalive_interval_ms`,
//! `max_message_bytes`), read into one [`Settings`].

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

use crate::{heartbeat, outbox::Limits};

/// How a service's streams are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Each connection's outgoing queue.
    pub queue: Limits,
    /// Interval of the heartbeats sent, and of the silence rule.
    pub heartbeat: Duration,
    /// HTTP/2 keepalive PING interval, and how long a PING may go unanswered.
    pub keepalive: Duration,
    /// Largest envelope accepted or sent, encoded.
    pub max_message_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            queue: Limits::default(),
            heartbeat: heartbeat::DEFAULT_INTERVAL,
            keepalive: Duration::from_secs(20),
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Settings {
    /// From the services' config keys of the same names.
    pub fn from_keys(
        queue_messages: usize,
        queue_bytes: usize,
        stall_timeout_ms: u64,
        heartbeat_interval_ms: u64,
        keepalive_interval_ms: u64,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            queue: Limits::from_keys(queue_messages, queue_bytes, stall_timeout_ms),
            heartbeat: Duration::from_millis(heartbeat_interval_ms),
            keepalive: Duration::from_millis(keepalive_interval_ms),
            max_message_bytes,
        }
    }

    /// What is wrong with them, one line per key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.queue.problems();
        if self.max_message_bytes < 1024 {
            problems.push("max_message_bytes: must be at least 1024".into());
        }
        if self.queue.bytes < self.max_message_bytes {
            problems.push(format!(
                "queue_bytes: {} cannot hold one message of max_message_bytes ({})",
                self.queue.bytes, self.max_message_bytes
            ));
        }
        if self.heartbeat.is_zero() {
            problems.push("heartbeat_interval_ms: must be at least 1".into());
        }
        if self.keepalive < Duration::from_secs(1) {
            problems.push("keepalive_interval_ms: must be at least 1000".into());
        }
        problems
    }

    /// A gRPC server with the keepalive set.
    pub fn server(&self) -> Server {
        Server::builder()
            .http2_keepalive_interval(Some(self.keepalive))
            .http2_keepalive_timeout(Some(self.keepalive))
    }

    /// `endpoint` with the keepalive set (kept up while idle too).
    pub fn endpoint(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_key_is_named() {
        assert!(Settings::default().problems().is_empty());
        let bad = Settings::from_keys(0, 1 << 20, 0, 0, 10, 2 << 20);
        let text = bad.problems().join("\n");
        for key in [
            "queue_messages",
            "stall_timeout_ms",
            "queue_bytes",
            "heartbeat_interval_ms",
            "keepalive_interval_ms",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
    }
}
