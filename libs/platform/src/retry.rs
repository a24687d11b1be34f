//! Retrying a call: exponential backoff with jitter, and the server's `Retry-After`.

use std::time::Duration;

/// Exponential backoff with jitter: each step waits 0.5x to 1x of the current delay,
/// which doubles up to `max`. The jitter spreads retries of many clients that failed
/// together.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial.min(max),
            max,
        }
    }

    /// How long to wait before the next attempt.
    pub fn step(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut byte = [0u8; 1];
        let jitter = match getrandom::fill(&mut byte) {
            Ok(()) => 0.5 + f64::from(byte[0]) / 510.0,
            Err(_) => 0.75,
        };
        current.mul_f64(jitter)
    }
}

/// A `Retry-After` value in seconds (the form APIs send with 429 and 503), at most
/// `cap`; `None` for anything else (an HTTP date is not honoured: the backoff applies).
pub fn retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_below_each_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let steps: Vec<Duration> = (0..6).map(|_| backoff.step()).collect();
        for (step, ceiling) in steps.iter().zip([100u64, 200, 400, 500, 500, 500]) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(*step <= ceiling && *step >= ceiling / 2, "{steps:?}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_within_the_cap() {
        let cap = Duration::from_secs(60);
        assert_eq!(retry_after(" 7 ", cap), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("3600", cap), Some(cap));
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT", cap), None);
        assert_eq!(retry_after("-1", cap), None);
    }
}
