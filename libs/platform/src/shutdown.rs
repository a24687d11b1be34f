//! Graceful shutdown: SIGTERM and SIGINT become a [`CancellationToken`] that every part of
//! a service watches, and [`drain`] bounds how long in-flight work may take to finish.

use std::{future::Future, time::Duration};

pub use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. Must be called inside a tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested");
        trigger.cancel();
    });
    token
}

/// Waits for SIGTERM or SIGINT and names the one that came.
pub async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// The grace period ran out before in-flight work finished.
#[derive(Debug, thiserror::Error)]
#[error("in-flight work did not finish within the {0:?} grace period")]
pub struct GraceExceeded(pub Duration);

/// Runs `work` to completion, or gives up after `grace`.
pub async fn drain<F: Future>(work: F, grace: Duration) -> Result<F::Output, GraceExceeded> {
    tokio::time::timeout(grace, work)
        .await
        .map_err(|_| GraceExceeded(grace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_returns_work_that_finishes_in_time() {
        let out = drain(async { 7 }, Duration::from_secs(1))
            .await
            .expect("in time");
        assert_eq!(out, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_grace_period() {
        let err = drain(
            tokio::time::sleep(Duration::from_secs(60)),
            Duration::from_secs(5),
        )
        .await
        .expect_err("too slow");
        assert_eq!(err.0, Duration::from_secs(5));
    }
}
