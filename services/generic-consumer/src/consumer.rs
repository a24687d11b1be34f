//! The consuming side: one thread owns the librdkafka consumer, hands messages to the
//! [`pipeline`](crate::pipeline) in chunks, moves the per-partition watermarks as the
//! pipeline reports messages finished, and commits them. When too many messages are
//! unfinished it stops polling until the pipeline catches up, and pauses fetching if that
//! takes longer than a moment (a stalled sink), so memory stays bounded; it flushes and commits before partitions
//! are revoked, and on shutdown stops fetching, waits for the pipeline (bounded by the
//! grace period), commits and closes.

use std::{
    sync::{Mutex, MutexGuard, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaResult,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    offsets::Watermarks,
    pipeline::{Counts, Finished, Item},
};

/// Messages per chunk handed to the pipeline.
const CHUNK: usize = 256;
/// How long a poll waits when there is nothing to hand over.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often acknowledged positions are committed while consuming.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a revocation waits for the revoked partitions' rows.
const REVOKE_FLUSH: Duration = Duration::from_secs(20);
/// How long a full in-flight buffer holds polling (the pipeline catches up, nothing
/// prefetched is dropped) before fetching is paused instead (a stalled sink: polling must
/// go on to keep the group membership and serve rebalances).
const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(2);
/// How long one wait for the pipeline lasts while the buffer is full.
const HOLD_STEP: Duration = Duration::from_millis(20);

/// What the consuming thread shares with librdkafka's callbacks (which run on it too,
/// inside `poll`).
struct Shared {
    marks: Watermarks,
    chunk: Vec<Item>,
    to_pipeline: Option<mpsc::UnboundedSender<Vec<Item>>>,
    finished: std_mpsc::Receiver<Finished>,
    paused: bool,
}

impl Shared {
    fn hand_over(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        if let Some(to_pipeline) = &self.to_pipeline {
            // A closed pipeline (aborted) leaves these unfinished: never committed.
            let _ = to_pipeline.send(chunk);
        }
    }

    fn apply(&mut self, finished: Finished) {
        for (partition, offset) in finished {
            self.marks.finish(partition, offset);
        }
    }

    fn drain_finished(&mut self) {
        while let Ok(finished) = self.finished.try_recv() {
            self.apply(finished);
        }
    }

    /// Waits up to `wait` for the pipeline to finish something.
    fn wait_some(&mut self, wait: Duration) {
        self.hand_over();
        if let Ok(finished) = self.finished.recv_timeout(wait) {
            self.apply(finished);
        }
        self.drain_finished();
    }

    /// Waits until `partitions` (all when `None`) have nothing unfinished, or `deadline`.
    /// Returns how many stay unfinished.
    fn wait_finished(&mut self, partitions: Option<&[i32]>, deadline: Instant) -> usize {
        self.hand_over();
        loop {
            self.drain_finished();
            let unfinished = match partitions {
                Some(partitions) => self.marks.unfinished_in(partitions),
                None => self.marks.unfinished(),
            };
            let now = Instant::now();
            if unfinished == 0 || now >= deadline {
                return unfinished;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            match self.finished.recv_timeout(wait) {
                Ok(finished) => self.apply(finished),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.drain_finished();
                    return match partitions {
                        Some(partitions) => self.marks.unfinished_in(partitions),
                        None => self.marks.unfinished(),
                    };
                }
            }
        }
    }
}

/// The consumer's context: rebalance, commit and statistics callbacks.
pub struct Hooks {
    topic: String,
    shared: Mutex<Shared>,
}

impl Hooks {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits the acknowledged positions of `partitions` (all when `None`), at once.
    fn commit_now(&self, consumer: &BaseConsumer<Self>, partitions: Option<&[i32]>) {
        let positions = self.shared().marks.take_commits(partitions, true);
        commit(consumer, &self.topic, &positions, CommitMode::Sync);
    }
}

fn commit(consumer: &BaseConsumer<Hooks>, topic: &str, positions: &[(i32, i64)], mode: CommitMode) {
    if positions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for (partition, offset) in positions {
        if let Err(err) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::error!(partition, offset, error = %err, "cannot build a commit");
            return;
        }
    }
    match consumer.commit(&list, mode) {
        Ok(()) => {
            if matches!(mode, CommitMode::Sync) {
                tracing::info!(?positions, "committed");
            }
        }
        Err(err) => {
            metrics::counter!("consumer_commit_errors_total").increment(1);
            tracing::warn!(error = %err, ?positions, "commit failed; it is retried with the next one");
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for Hooks {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, stats) in &topic.partitions {
            // -1 is librdkafka's internal unassigned partition; lag -1 means unknown.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                metrics::gauge!("consumer_lag", "partition" => partition.to_string())
                    .set(stats.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for Hooks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(list);
                let deadline = Instant::now() + REVOKE_FLUSH;
                let left = self.shared().wait_finished(Some(&partitions), deadline);
                if left > 0 {
                    tracing::warn!(
                        left,
                        ?partitions,
                        "revoked before every row was written; the next owner consumes them again"
                    );
                }
                self.commit_now(consumer, Some(&partitions));
                self.shared().marks.forget(&partitions);
                tracing::info!(?partitions, "partitions revoked");
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = ?partitions_of(list), "partitions assigned");
            }
            Rebalance::Error(err) => tracing::error!(error = %err, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        // A new assignment is fetching; backpressure pauses it again if it must.
        self.shared().paused = false;
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(err) = result {
            metrics::counter!("consumer_commit_errors_total").increment(1);
            tracing::warn!(error = %err, partitions = ?partitions_of(offsets), "commit failed");
        }
    }
}

/// The consuming loop's settings.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    pub max_in_flight: usize,
    pub shutdown_grace: Duration,
}

/// Creates the hooks for a consumer that hands chunks to `to_pipeline` and hears of
/// finished messages on `finished`.
pub fn hooks(
    topic: &str,
    to_pipeline: mpsc::UnboundedSender<Vec<Item>>,
    finished: std_mpsc::Receiver<Finished>,
) -> Hooks {
    Hooks {
        topic: topic.to_owned(),
        shared: Mutex::new(Shared {
            marks: Watermarks::default(),
            chunk: Vec::with_capacity(CHUNK),
            to_pipeline: Some(to_pipeline),
            finished,
            paused: false,
        }),
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Messages consumed but not written when the grace period ran out (they are not
    /// committed and will be consumed again).
    pub unfinished: usize,
}

/// Consumes until `shutdown`, then stops fetching, waits for the pipeline up to the grace
/// period, commits and closes the consumer. Runs on its own thread.
pub fn consume(
    consumer: BaseConsumer<Hooks>,
    options: LoopOptions,
    counts: &Counts,
    shutdown: &CancellationToken,
) -> Stopped {
    let hooks = consumer.context();
    let topic = hooks.topic.clone();
    let mut last_commit = Instant::now();
    let mut consumed = 0u64;
    let mut full_since: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let mut shared = hooks.shared();
        shared.drain_finished();
        let unfinished = shared.marks.unfinished();
        if unfinished < options.max_in_flight {
            full_since = None;
        } else if !shared.paused {
            // Full: let the pipeline catch up before fetching more.
            let since = *full_since.get_or_insert_with(Instant::now);
            if since.elapsed() < HOLD_BEFORE_PAUSE {
                shared.wait_some(HOLD_STEP);
                drop(shared);
                commit_due(&consumer, &topic, &mut last_commit);
                continue;
            }
            if set_paused(&consumer, true) {
                shared.paused = true;
                tracing::info!(
                    unfinished,
                    "in-flight buffer full for {HOLD_BEFORE_PAUSE:?}: fetching paused"
                );
            }
        }
        if shared.paused && unfinished <= options.max_in_flight / 2 && set_paused(&consumer, false)
        {
            shared.paused = false;
            tracing::info!(unfinished, "in-flight buffer: fetching resumed");
        }
        let timeout = if shared.chunk.is_empty() {
            IDLE_POLL
        } else {
            Duration::ZERO
        };
        drop(shared);

        let polled = consumer.poll(timeout);
        let mut shared = hooks.shared();
        match polled {
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                shared.marks.track(partition, offset);
                shared.chunk.push(Item {
                    partition,
                    offset,
                    timestamp_ms: message.timestamp().to_millis(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                });
                consumed += 1;
                if shared.chunk.len() >= CHUNK {
                    shared.hand_over();
                }
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "consumer error");
                shared.hand_over();
            }
            None => shared.hand_over(),
        }
        let unfinished = shared.marks.unfinished();
        drop(shared);
        commit_due(&consumer, &topic, &mut last_commit);
        if consumed > 0 {
            Counts::add(&counts.consumed, consumed as usize);
            metrics::counter!("consumer_messages_consumed_total").increment(consumed);
            consumed = 0;
        }
        metrics::gauge!("consumer_in_flight_rows").set(unfinished as f64);
    }

    tracing::info!("stopping: fetching stopped, waiting for the rows in flight");
    let deadline = Instant::now() + options.shutdown_grace;
    let unfinished = {
        let mut shared = hooks.shared();
        shared.hand_over();
        // Closing the channel lets the pipeline finish once it has drained it.
        shared.to_pipeline = None;
        shared.wait_finished(None, deadline)
    };
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "grace period over before every row was written; they are not committed and will be consumed again"
        );
    }
    hooks.commit_now(&consumer, None);
    metrics::gauge!("consumer_in_flight_rows").set(unfinished as f64);
    // Dropping the consumer leaves the group (a last revoke, with nothing left to flush).
    drop(consumer);
    Stopped { unfinished }
}

/// Commits the acknowledged positions (asynchronously) when the commit interval is over.
fn commit_due(consumer: &BaseConsumer<Hooks>, topic: &str, last_commit: &mut Instant) {
    if last_commit.elapsed() < COMMIT_INTERVAL {
        return;
    }
    let positions = consumer.context().shared().marks.take_commits(None, false);
    commit(consumer, topic, &positions, CommitMode::Async);
    *last_commit = Instant::now();
}

/// Pauses or resumes the whole assignment; false when librdkafka refused.
fn set_paused(consumer: &BaseConsumer<Hooks>, paused: bool) -> bool {
    let result = consumer.assignment().and_then(|assignment| {
        if paused {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        }
    });
    match result {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, paused, "cannot change fetching");
            false
        }
    }
}
