//! Graceful shutdown: SIGTERM and SIGINT become a [`CancellationToken`] that every part of
//! a service watches; a second signal forces the exit at once (an operator who presses
//! Ctrl-C twice, or a kubelet that escalates, is not kept waiting). [`Drain`] tracks the
//! work a service spawns, so that the drain waits for exactly that work, within a grace
//! period.

use std::{future::Future, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};
pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The exit code of a process stopped by a second signal before it finished draining.
pub const FORCED_EXIT_CODE: i32 = 1;

/// A token cancelled on the first SIGTERM or SIGINT; the second one exits the process at
/// once with [`FORCED_EXIT_CODE`]. Must be called inside a tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let (send, receive) = mpsc::channel(4);
    tokio::spawn(async move {
        let Some(mut signals) = Signals::new() else {
            return;
        };
        while send.send(signals.next().await).await.is_ok() {}
    });
    tokio::spawn(watch(receive, token.clone(), |signal| {
        eprintln!("{signal} again: exiting now, without finishing the drain");
        std::process::exit(FORCED_EXIT_CODE);
    }));
    token
}

/// Cancels `token` on the first signal that arrives and calls `force` on the second.
pub async fn watch(
    mut signals: mpsc::Receiver<&'static str>,
    token: CancellationToken,
    force: impl FnOnce(&'static str),
) {
    let Some(signal) = signals.recv().await else {
        return;
    };
    tracing::info!(signal, "shutdown requested; a second signal exits at once");
    token.cancel();
    if let Some(signal) = signals.recv().await {
        tracing::warn!(signal, "second signal: exiting without finishing the drain");
        force(signal);
    }
}

/// SIGTERM and SIGINT, each listened to once for the life of the process.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Option<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some(Self { term, int }),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM/SIGINT; signals stop the process at once");
                    None
                }
            }
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            std::future::pending().await
        }
    }
}

/// Waits for SIGTERM or SIGINT and names the one that came.
pub async fn wait_for_signal() -> &'static str {
    match Signals::new() {
        Some(mut signals) => signals.next().await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// The grace period ran out before the tracked work finished.
#[derive(Debug, thiserror::Error)]
#[error("{unfinished} task(s) still running after the {grace:?} grace period")]
pub struct GraceExceeded {
    pub grace: Duration,
    pub unfinished: usize,
}

/// The work a service spawned (a stream's handler, a writer, a supervisor): spawn it
/// through the drain, then [`Drain::wait`] waits for exactly that work at shutdown.
/// Cheap to clone; every clone tracks into the same set.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    tracker: TaskTracker,
}

impl Drain {
    /// An empty drain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `work` on the runtime and tracks it until it finishes.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// How many tracked tasks are still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Stops taking new work (spawning still works, but is waited for too) and waits
    /// until every tracked task has finished, or `grace` has passed.
    pub async fn wait(&self, grace: Duration) -> Result<(), GraceExceeded> {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .map_err(|_| GraceExceeded {
                grace,
                unfinished: self.tracker.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_the_tracked_work() {
        let drain = Drain::new();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        drain.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(drain.running(), 1);
        drain.wait(Duration::from_secs(10)).await.expect("in time");
        assert!(
            done.load(Ordering::SeqCst),
            "returned before the work finished"
        );
        assert_eq!(drain.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_gives_up_after_the_grace_period_and_says_how_much_is_left() {
        let drain = Drain::new();
        for _ in 0..2 {
            drain.spawn(tokio::time::sleep(Duration::from_secs(60)));
        }
        drain.spawn(async {});
        let err = drain
            .wait(Duration::from_secs(5))
            .await
            .expect_err("too slow");
        assert_eq!(err.grace, Duration::from_secs(5));
        assert_eq!(err.unfinished, 2);
    }

    #[tokio::test]
    async fn the_first_signal_cancels_and_the_second_forces_the_exit() {
        let (send, receive) = mpsc::channel::<&'static str>(4);
        let token = CancellationToken::new();
        let (forced_tx, mut forced_rx) = mpsc::channel::<&'static str>(1);
        let watcher = tokio::spawn(watch(receive, token.clone(), move |signal| {
            let _ = forced_tx.try_send(signal);
        }));
        send.send("SIGTERM").await.expect("send");
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("the first signal cancels");
        assert!(
            forced_rx.try_recv().is_err(),
            "the first signal does not force"
        );

        send.send("SIGINT").await.expect("send");
        let forced = tokio::time::timeout(Duration::from_secs(5), forced_rx.recv())
            .await
            .expect("the second signal forces");
        assert_eq!(forced, Some("SIGINT"));
        watcher.await.expect("watcher ends");
    }
}
