//! The consuming side: one thread owns the librdkafka consumer, hands messages to the
//! [`pipeline`](crate::pipeline) in chunks over a bounded channel, moves the per-partition
//! watermarks as the pipeline reports messages finished, and commits them.
//!
//! Bounded: when `MAX_IN_FLIGHT` messages or `MAX_IN_FLIGHT_BYTES` bytes are unfinished
//! (or the channel is full) it stops polling until the pipeline catches up, and pauses
//! fetching if that takes longer than a moment (a stalled sink), so memory stays bounded
//! while polling goes on serving the group. The pause is a state of the instance, not of
//! an assignment: partitions assigned while it holds are paused too, and every partition
//! assigned while it does not is fetching (librdkafka keeps a partition's pause across a
//! revoke and a new assignment, so both are set explicitly).
//!
//! Before partitions are revoked it waits for their rows (bounded by the grace period, and
//! never past the closing deadline) and commits; on shutdown it stops fetching, waits for
//! the pipeline within the grace period, commits and closes.

use std::{
    sync::{Mutex, MutexGuard, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaResult,
};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::{
    offsets::Watermarks,
    pipeline::{Counts, Finished, Item, Revocations},
};

/// Messages per chunk handed to the pipeline.
const CHUNK: usize = 256;
/// How long a poll waits when there is nothing to hand over.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a chunk waits to fill once it has a message: a broker that delivers a few
/// messages at a time would otherwise cost a hand-over (and a wake-up of the pipeline)
/// every few messages.
const CHUNK_LINGER: Duration = Duration::from_millis(5);
/// How often acknowledged positions are committed while consuming.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
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
    to_pipeline: Option<mpsc::Sender<Vec<Item>>>,
    finished: std_mpsc::Receiver<Finished>,
    /// Fetching is paused: the in-flight buffer stayed full.
    paused: bool,
    /// How long a revocation waits for the revoked partitions' rows.
    revoke_wait: Duration,
    /// Set once shutting down: no wait goes past it.
    closing_by: Option<Instant>,
}

impl Shared {
    /// Hands the chunk to the pipeline; false when the channel is full (the chunk stays).
    fn hand_over(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        let Some(to_pipeline) = &self.to_pipeline else {
            return true;
        };
        match to_pipeline.try_send(chunk) {
            Ok(()) => true,
            Err(TrySendError::Full(chunk)) => {
                self.chunk = chunk;
                false
            }
            // A closed pipeline leaves these unfinished: never committed.
            Err(TrySendError::Closed(_)) => true,
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

    fn unfinished_of(&self, partitions: Option<&[i32]>) -> usize {
        match partitions {
            Some(partitions) => self.marks.unfinished_in(partitions),
            None => self.marks.unfinished(),
        }
    }

    /// Waits until `partitions` (all when `None`) have nothing unfinished, or `deadline`
    /// (or the closing deadline, when that comes first). Returns how many stay unfinished.
    fn wait_finished(&mut self, partitions: Option<&[i32]>, deadline: Instant) -> usize {
        let deadline = self.closing_by.map_or(deadline, |by| by.min(deadline));
        loop {
            self.hand_over();
            self.drain_finished();
            let unfinished = self.unfinished_of(partitions);
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
                    return self.unfinished_of(partitions);
                }
            }
        }
    }
}

/// The consumer's context: rebalance, commit and statistics callbacks.
pub struct Hooks {
    topic: String,
    shared: Mutex<Shared>,
    revocations: std::sync::Arc<Revocations>,
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
                let left = {
                    let mut shared = self.shared();
                    let deadline = Instant::now() + shared.revoke_wait;
                    shared.wait_finished(Some(&partitions), deadline)
                };
                if left > 0 {
                    tracing::warn!(
                        left,
                        ?partitions,
                        "revoked before every row was written; the next owner consumes them again"
                    );
                }
                self.commit_now(consumer, Some(&partitions));
                self.shared().marks.forget(&partitions);
                self.revocations.revoke(&partitions);
                tracing::info!(?partitions, "partitions revoked");
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = ?partitions_of(list), "partitions assigned");
            }
            Rebalance::Error(err) => tracing::error!(error = %err, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        // librdkafka keeps a partition's pause across a revoke and a new assignment: say
        // for every assigned partition whether it fetches, as the instance does now.
        let paused = self.shared().paused;
        let result = if paused {
            consumer.pause(list)
        } else {
            consumer.resume(list)
        };
        match result {
            Ok(()) if paused => tracing::info!(
                partitions = ?partitions_of(list),
                "assigned while the in-flight buffer is full: paused until it drains"
            ),
            Ok(()) => {}
            Err(err) => {
                tracing::warn!(error = %err, paused, "cannot set fetching of the new assignment")
            }
        }
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
    pub max_in_flight_bytes: usize,
    /// How long shutdown, and a revocation, wait for rows in flight.
    pub shutdown_grace: Duration,
}

impl LoopOptions {
    /// Chunks the channel to the pipeline holds: enough for the whole in-flight bound in
    /// full chunks, so the channel is never the tighter bound in steady state.
    pub fn channel_chunks(&self) -> usize {
        self.max_in_flight.div_ceil(CHUNK).clamp(4, 4096)
    }
}

/// Creates the hooks for a consumer that hands chunks to `to_pipeline` and hears of
/// finished messages on `finished`.
pub fn hooks(
    topic: &str,
    options: &LoopOptions,
    to_pipeline: mpsc::Sender<Vec<Item>>,
    finished: std_mpsc::Receiver<Finished>,
    revocations: std::sync::Arc<Revocations>,
) -> Hooks {
    Hooks {
        topic: topic.to_owned(),
        revocations,
        shared: Mutex::new(Shared {
            marks: Watermarks::default(),
            chunk: Vec::with_capacity(CHUNK),
            to_pipeline: Some(to_pipeline),
            finished,
            paused: false,
            revoke_wait: options.shutdown_grace,
            closing_by: None,
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

/// Consumes until `shutdown` (or until `pipeline_gone`: the pipeline ended, nothing more
/// can be finished), then stops fetching, waits for the pipeline up to the grace period,
/// commits and closes the consumer. Runs on its own thread.
pub fn consume(
    consumer: BaseConsumer<Hooks>,
    options: LoopOptions,
    counts: &Counts,
    shutdown: &CancellationToken,
    pipeline_gone: &CancellationToken,
) -> Stopped {
    let hooks = consumer.context();
    let topic = hooks.topic.clone();
    let consumed_total = metrics::counter!("consumer_messages_consumed_total");
    let in_flight_rows = metrics::gauge!("consumer_in_flight_rows");
    let in_flight_bytes = metrics::gauge!("consumer_in_flight_bytes");
    let mut last_commit = Instant::now();
    let mut full_since: Option<Instant> = None;
    let over = |marks: &Watermarks| {
        marks.unfinished() >= options.max_in_flight
            || marks.unfinished_bytes() >= options.max_in_flight_bytes
    };
    while !shutdown.is_cancelled() && !pipeline_gone.is_cancelled() {
        let mut shared = hooks.shared();
        shared.drain_finished();
        let handed = shared.hand_over();
        let full = !handed || over(&shared.marks);
        if !full {
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
                    unfinished = shared.marks.unfinished(),
                    unfinished_bytes = shared.marks.unfinished_bytes(),
                    "in-flight buffer full for {HOLD_BEFORE_PAUSE:?}: fetching paused"
                );
            }
        }
        if shared.paused
            && handed
            && shared.marks.unfinished() <= options.max_in_flight / 2
            && shared.marks.unfinished_bytes() <= options.max_in_flight_bytes / 2
            && set_paused(&consumer, false)
        {
            shared.paused = false;
            full_since = None;
            tracing::info!(
                unfinished = shared.marks.unfinished(),
                "in-flight buffer: fetching resumed"
            );
        }
        let mut timeout = if shared.chunk.is_empty() {
            IDLE_POLL
        } else {
            Duration::ZERO
        };
        drop(shared);

        // A run of messages, one lock each (callbacks run inside `poll`, so it is not held
        // across one), until the queue is empty, a chunk is full or the bound is reached.
        let mut consumed = 0u64;
        let mut fill_by: Option<Instant> = None;
        loop {
            let polled = consumer.poll(timeout);
            timeout = Duration::ZERO;
            let Some(polled) = polled else {
                // Nothing more now: wait a moment for more, unless the chunk is empty.
                match fill_by.map(|by| by.saturating_duration_since(Instant::now())) {
                    Some(left) if !left.is_zero() => {
                        timeout = left;
                        continue;
                    }
                    _ => break,
                }
            };
            fill_by.get_or_insert_with(|| Instant::now() + CHUNK_LINGER);
            let message = match polled {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(error = %err, "consumer error");
                    break;
                }
            };
            let item = Item::new(
                message.partition(),
                message.offset(),
                message.timestamp().to_millis(),
                message.key(),
                message.payload(),
            );
            drop(message);
            consumed += 1;
            let mut shared = hooks.shared();
            shared.marks.track(item.partition, item.offset, item.size());
            shared.chunk.push(item);
            if shared.chunk.len() >= CHUNK || over(&shared.marks) {
                break;
            }
        }
        let (unfinished, bytes) = {
            let mut shared = hooks.shared();
            shared.hand_over();
            (shared.marks.unfinished(), shared.marks.unfinished_bytes())
        };
        commit_due(&consumer, &topic, &mut last_commit);
        if consumed > 0 {
            Counts::add(&counts.consumed, consumed as usize);
            consumed_total.increment(consumed);
        }
        in_flight_rows.set(unfinished as f64);
        in_flight_bytes.set(bytes as f64);
    }

    let deadline = if pipeline_gone.is_cancelled() && !shutdown.is_cancelled() {
        tracing::error!("stopping: the pipeline ended");
        Instant::now()
    } else {
        tracing::info!("stopping: fetching stopped, waiting for the rows in flight");
        Instant::now() + options.shutdown_grace
    };
    let unfinished = {
        let mut shared = hooks.shared();
        shared.closing_by = Some(deadline);
        while !shared.hand_over() && Instant::now() < deadline {
            shared.wait_some(HOLD_STEP);
        }
        // Closing the channel lets the pipeline finish once it has drained it.
        shared.to_pipeline = None;
        shared.wait_finished(None, deadline)
    };
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "stopped before every row was written; they are not committed and will be consumed again"
        );
    }
    hooks.commit_now(&consumer, None);
    in_flight_rows.set(unfinished as f64);
    // Dropping the consumer leaves the group (a last revoke, which waits no longer: the
    // closing deadline has passed).
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
