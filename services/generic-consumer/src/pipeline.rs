//! The pipeline behind the consumer: gathers consumed messages into batches (bounded by
//! rows, bytes and a linger time), decodes them, and hands each batch to a write task:
//! several batches are in flight at once (the watermarks take acknowledgements in any
//! order). A write task dead-letters what cannot be written (all of a batch's letters
//! sent at once, then awaited), writes the rest to the table (retrying with backoff what
//! the table could not take), and reports every finished message back, so the consumer
//! can move its watermarks. Nothing is reported finished before it is in the table or in
//! the dead-letter topic.
//!
//! The pipeline ends with an error, which stops the instance, when the table says a write
//! can never succeed ([`Fatal`]), when the dead-letter topic refuses a letter for good,
//! or when a write task panics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use platform::retry::Backoff;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    decode::{self, Decoded, Decoder, Position},
    kafka::{self, DeadLetter, DeadLetters},
    row::Row,
    sink::{Fatal, RowOutcome, Table},
};

/// A consumed message, owned: its key and payload copied out of librdkafka's buffer into
/// one allocation.
#[derive(Debug, Clone)]
pub struct Item {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// The key, then the payload.
    bytes: Box<[u8]>,
    /// The key's length; `None` when the message has no key.
    key_len: Option<usize>,
    has_payload: bool,
}

impl Item {
    pub fn new(
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Self {
        let key_len = key.map(<[u8]>::len);
        let mut bytes = Vec::with_capacity(key_len.unwrap_or(0) + payload.map_or(0, <[u8]>::len));
        bytes.extend_from_slice(key.unwrap_or_default());
        bytes.extend_from_slice(payload.unwrap_or_default());
        Self {
            partition,
            offset,
            timestamp_ms,
            bytes: bytes.into_boxed_slice(),
            key_len,
            has_payload: payload.is_some(),
        }
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|len| &self.bytes[..len])
    }

    pub fn payload(&self) -> Option<&[u8]> {
        self.has_payload
            .then(|| &self.bytes[self.key_len.unwrap_or(0)..])
    }

    /// The bytes it holds, as the in-flight bound counts them.
    pub fn size(&self) -> usize {
        64 + self.bytes.len()
    }

    fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Finished messages: `(partition, offset)`.
pub type Finished = Vec<(i32, i64)>;

/// How many times each partition was revoked, shared by the consumer (which counts a
/// revocation once it has committed and forgotten the partition) and the write tasks
/// (which drop the rows of a partition revoked since their batch formed, instead of
/// retrying them: the next owner consumes them again, and they were no longer counted in
/// the in-flight bound).
#[derive(Debug, Default)]
pub struct Revocations(std::sync::Mutex<std::collections::HashMap<i32, u64>>);

impl Revocations {
    pub fn revoke(&self, partitions: &[i32]) {
        let mut epochs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for partition in partitions {
            *epochs.entry(*partition).or_default() += 1;
        }
    }

    /// The revocation count of each of `partitions`.
    fn snapshot(&self, partitions: impl Iterator<Item = i32>) -> Vec<(i32, u64)> {
        let epochs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: Vec<(i32, u64)> = Vec::new();
        for partition in partitions {
            if !taken.iter().any(|(p, _)| *p == partition) {
                taken.push((partition, epochs.get(&partition).copied().unwrap_or(0)));
            }
        }
        taken
    }

    /// The partitions of `snapshot` revoked since it was taken.
    fn revoked_since(&self, snapshot: &[(i32, u64)]) -> Vec<i32> {
        let epochs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        snapshot
            .iter()
            .filter(|(p, epoch)| epochs.get(p).copied().unwrap_or(0) != *epoch)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Counts kept for the run's summary (the metrics carry the same, for Prometheus).
#[derive(Debug, Default)]
pub struct Counts {
    pub consumed: AtomicU64,
    pub ignored: AtomicU64,
    pub written: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
}

impl Counts {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How the pipeline batches and retries.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub batches_in_flight: usize,
    /// First backoff after a failed write or dead letter; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            batch_rows: 1000,
            batch_bytes: 5 * 1024 * 1024,
            linger: Duration::from_millis(200),
            batches_in_flight: 4,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Why the pipeline stopped the instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error("the sink cannot write to {table}: {source}")]
    Sink { table: String, source: Fatal },
    #[error("the dead-letter topic {topic} refuses letters: {error}")]
    DeadLetters { topic: String, error: String },
    #[error("a write task failed: {0}")]
    Task(String),
}

/// A message that goes to the dead-letter topic, with why and at which stage.
#[derive(Debug)]
struct Letter {
    item: Item,
    stage: &'static str,
    error: String,
}

/// What every write task shares.
struct Shared<T> {
    table: Arc<T>,
    table_name: String,
    dead_letters: DeadLetters,
    options: PipelineOptions,
    counts: Arc<Counts>,
    finished: std_mpsc::Sender<Finished>,
    revocations: Arc<Revocations>,
}

impl<T> Shared<T> {
    fn report(&self, done: Finished) {
        if !done.is_empty() {
            // A closed receiver means the consumer is gone: nothing to report to.
            let _ = self.finished.send(done);
        }
    }
}

/// Decodes, writes and reports; see the module documentation.
pub struct Pipeline<T> {
    pub decoder: Decoder,
    pub table: Arc<T>,
    pub table_name: String,
    pub dead_letters: DeadLetters,
    pub options: PipelineOptions,
    pub counts: Arc<Counts>,
    pub revocations: Arc<Revocations>,
}

impl<T: Table> Pipeline<T> {
    /// Runs until `items` is closed and everything in it is finished (`Ok`), `abort` is
    /// cancelled (`Ok`; what is not finished stays unreported, to be consumed again by
    /// whoever owns it next), or a write fails for good (`Err`).
    pub async fn run(
        self,
        mut items: mpsc::Receiver<Vec<Item>>,
        finished: std_mpsc::Sender<Finished>,
        abort: CancellationToken,
    ) -> Result<(), PipelineError> {
        let shared = Arc::new(Shared {
            table: Arc::clone(&self.table),
            table_name: self.table_name.clone(),
            dead_letters: self.dead_letters.clone(),
            options: self.options,
            counts: Arc::clone(&self.counts),
            finished,
            revocations: Arc::clone(&self.revocations),
        });
        let mut writes: JoinSet<Result<(), PipelineError>> = JoinSet::new();
        let mut carry: Vec<Item> = Vec::new();
        loop {
            // The first messages of the next batch, unless a write ends badly first.
            let mut batch = std::mem::take(&mut carry);
            if batch.is_empty() {
                let first = tokio::select! {
                    _ = abort.cancelled() => return Ok(()),
                    Some(done) = writes.join_next() => {
                        settle(done)?;
                        continue;
                    }
                    first = items.recv() => first,
                };
                let Some(first) = first else { break };
                batch = first;
            }
            let mut bytes: usize = batch.iter().map(Item::size).sum();
            let deadline = tokio::time::Instant::now() + self.options.linger;
            let mut closed = false;
            while batch.len() < self.options.batch_rows && bytes < self.options.batch_bytes {
                match tokio::time::timeout_at(deadline, items.recv()).await {
                    Ok(Some(more)) => {
                        bytes += more.iter().map(Item::size).sum::<usize>();
                        batch.extend(more);
                    }
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // A chunk may overfill the batch, in rows or in bytes: the rest starts the next
            // one (a batch holds one message at least, however large).
            let mut cut = batch.len().min(self.options.batch_rows);
            if bytes > self.options.batch_bytes {
                let mut taken = 0usize;
                for (i, item) in batch.iter().enumerate().take(cut) {
                    taken += item.size();
                    if taken > self.options.batch_bytes {
                        cut = i.max(1);
                        break;
                    }
                }
            }
            if cut < batch.len() {
                carry = batch.split_off(cut);
            }

            let work = self.decode(batch, &shared);
            while writes.len() >= self.options.batches_in_flight.max(1) {
                if !settle_next(&mut writes, &abort).await? {
                    return Ok(());
                }
            }
            if let Some(work) = work {
                let shared = Arc::clone(&shared);
                let abort = abort.clone();
                writes.spawn(async move { work.run(&shared, &abort).await });
            }
            if closed && carry.is_empty() {
                break;
            }
        }
        // Closed: let every write finish (or stop at abort).
        while settle_next(&mut writes, &abort).await? {}
        Ok(())
    }

    /// Decodes a batch: ignored messages are reported at once; the rest becomes the
    /// batch's work (rows to write, letters to send), `None` when nothing is left.
    fn decode(&self, batch: Vec<Item>, shared: &Shared<T>) -> Option<Work> {
        let ingested_at = decode::now_micros();
        let mut ignored: Finished = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        let mut row_items = Vec::with_capacity(batch.len());
        let mut letters = Vec::new();
        for item in batch {
            let Some(payload) = item.payload() else {
                letters.push(Letter {
                    item,
                    stage: "decode",
                    error: "the message has no payload".to_owned(),
                });
                continue;
            };
            match self.decoder.decode(payload, item.position(), ingested_at) {
                Ok(Decoded::Ignored { .. }) => ignored.push((item.partition, item.offset)),
                Ok(Decoded::Row(row)) => {
                    rows.push(row);
                    row_items.push(item);
                }
                Err(err) => letters.push(Letter {
                    item,
                    stage: "decode",
                    error: err.to_string(),
                }),
            }
        }
        Counts::add(&self.counts.ignored, ignored.len());
        metrics::counter!("consumer_messages_ignored_total").increment(ignored.len() as u64);
        shared.report(ignored);
        let epochs = shared
            .revocations
            .snapshot(row_items.iter().map(|item| item.partition));
        (!rows.is_empty() || !letters.is_empty()).then_some(Work {
            rows,
            row_items,
            letters,
            epochs,
        })
    }
}

/// Waits for the next write to end and takes its result; false when none is left or
/// `abort` came first.
async fn settle_next(
    writes: &mut JoinSet<Result<(), PipelineError>>,
    abort: &CancellationToken,
) -> Result<bool, PipelineError> {
    let done = tokio::select! {
        _ = abort.cancelled() => return Ok(false),
        done = writes.join_next() => done,
    };
    match done {
        Some(done) => settle(done).map(|()| true),
        None => Ok(false),
    }
}

/// A write task's result, as the pipeline takes it.
fn settle(
    done: Result<Result<(), PipelineError>, tokio::task::JoinError>,
) -> Result<(), PipelineError> {
    match done {
        Ok(result) => result,
        Err(err) if err.is_cancelled() => Ok(()),
        Err(err) => {
            let reason = match err.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned()),
                Err(err) => err.to_string(),
            };
            Err(PipelineError::Task(reason))
        }
    }
}

/// One batch's work after decoding.
struct Work {
    rows: Vec<Row>,
    /// The message of each row (for the dead-letter topic, should the table reject it).
    row_items: Vec<Item>,
    letters: Vec<Letter>,
    /// The revocation count of the rows' partitions when the batch formed.
    epochs: Vec<(i32, u64)>,
}

impl Work {
    async fn run<T: Table>(
        self,
        shared: &Shared<T>,
        abort: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let Self {
            mut rows,
            mut row_items,
            letters,
            epochs,
        } = self;
        if !dead_letter(shared, letters, abort).await? {
            return Ok(());
        }
        let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
        let mut first = true;
        while !rows.is_empty() {
            if !std::mem::take(&mut first) {
                let revoked = shared.revocations.revoked_since(&epochs);
                if !revoked.is_empty() {
                    let before = rows.len();
                    let (kept_rows, kept_items): (Vec<Row>, Vec<Item>) = rows
                        .into_iter()
                        .zip(row_items)
                        .filter(|(_, item)| !revoked.contains(&item.partition))
                        .unzip();
                    rows = kept_rows;
                    row_items = kept_items;
                    tracing::info!(
                        dropped = before - rows.len(),
                        partitions = ?revoked,
                        "rows of revoked partitions are not retried; their next owner writes them"
                    );
                    if rows.is_empty() {
                        break;
                    }
                }
            }
            let started = Instant::now();
            let outcomes = shared.table.write(&rows).await;
            metrics::histogram!("consumer_batch_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("consumer_batches_total").increment(1);
            Counts::add(&shared.counts.batches, 1);
            let outcomes = outcomes.map_err(|source| PipelineError::Sink {
                table: shared.table_name.clone(),
                source,
            })?;
            let outcomes = if outcomes.len() == rows.len() {
                outcomes
            } else {
                let reason = format!(
                    "the sink answered {} outcomes for {} rows",
                    outcomes.len(),
                    rows.len()
                );
                vec![RowOutcome::Retry(reason.into()); rows.len()]
            };
            let mut done = Vec::with_capacity(rows.len());
            let mut retry_rows = Vec::new();
            let mut retry_items = Vec::new();
            let mut invalid = Vec::new();
            let mut last_retry = None;
            for ((row, item), outcome) in rows.into_iter().zip(row_items).zip(outcomes) {
                match outcome {
                    RowOutcome::Written => done.push((item.partition, item.offset)),
                    RowOutcome::Invalid(error) => invalid.push(Letter {
                        item,
                        stage: "sink",
                        error,
                    }),
                    RowOutcome::Retry(retry) => {
                        retry_rows.push(row);
                        retry_items.push(item);
                        last_retry = Some(retry);
                    }
                }
            }
            Counts::add(&shared.counts.written, done.len());
            metrics::counter!("consumer_rows_written_total").increment(done.len() as u64);
            shared.report(done);
            if !dead_letter(shared, invalid, abort).await? {
                return Ok(());
            }
            rows = retry_rows;
            row_items = retry_items;
            if let Some(retry) = last_retry {
                let delay = backoff.step().max(retry.after.unwrap_or_default());
                metrics::counter!("consumer_sink_errors_total").increment(1);
                metrics::counter!("consumer_sink_retries_total").increment(rows.len() as u64);
                Counts::add(&shared.counts.retries, rows.len());
                tracing::warn!(
                    rows = rows.len(),
                    table = %shared.table_name,
                    retry_in_ms = delay.as_millis() as u64,
                    reason = %retry.reason,
                    "the sink did not take every row; retrying"
                );
                if !pause(delay, abort).await {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Waits `delay` unless `abort` comes first; false when aborted.
async fn pause(delay: Duration, abort: &CancellationToken) -> bool {
    tokio::select! {
        _ = abort.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Sends `letters` to the dead-letter topic, all at once, and waits until the broker has
/// each; those that failed for a while are sent again with backoff, those refused for
/// good stop the pipeline. Reports them finished. `Ok(false)` when aborted first.
async fn dead_letter<T>(
    shared: &Shared<T>,
    mut letters: Vec<Letter>,
    abort: &CancellationToken,
) -> Result<bool, PipelineError> {
    let topic = shared.dead_letters.topic();
    for letter in &letters {
        tracing::warn!(
            partition = letter.item.partition,
            offset = letter.item.offset,
            stage = letter.stage,
            error = %letter.error,
            dlq = topic,
            "dead-lettering a message"
        );
    }
    let mut backoff = Backoff::new(shared.options.retry_initial, shared.options.retry_max);
    while !letters.is_empty() {
        let sent = {
            let sends = letters.iter().map(|letter| {
                shared.dead_letters.send(DeadLetter {
                    partition: letter.item.partition,
                    offset: letter.item.offset,
                    key: letter.item.key(),
                    payload: letter.item.payload(),
                    stage: letter.stage,
                    error: &letter.error,
                })
            });
            tokio::select! {
                _ = abort.cancelled() => return Ok(false),
                sent = futures::future::join_all(sends) => sent,
            }
        };
        let mut done = Vec::new();
        let mut again = Vec::new();
        let mut last_error = None;
        for (letter, result) in letters.into_iter().zip(sent) {
            match result {
                Ok(()) => {
                    metrics::counter!("consumer_messages_dead_lettered_total", "stage" => letter.stage)
                        .increment(1);
                    done.push((letter.item.partition, letter.item.offset));
                }
                Err(err) if kafka::is_permanent(&err) => {
                    metrics::counter!("consumer_dead_letter_errors_total").increment(1);
                    shared.report(done);
                    return Err(PipelineError::DeadLetters {
                        topic: topic.to_owned(),
                        error: err.to_string(),
                    });
                }
                Err(err) => {
                    metrics::counter!("consumer_dead_letter_errors_total").increment(1);
                    last_error = Some(err);
                    again.push(letter);
                }
            }
        }
        Counts::add(&shared.counts.dead_lettered, done.len());
        shared.report(done);
        letters = again;
        if let Some(err) = last_error {
            let delay = backoff.step();
            tracing::error!(
                error = %err,
                letters = letters.len(),
                dlq = topic,
                retry_in_ms = delay.as_millis() as u64,
                "cannot send dead letters; their partitions wait"
            );
            if !pause(delay, abort).await {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_keeps_key_and_payload_apart_in_one_allocation() {
        let item = Item::new(1, 7, None, Some(b"key"), Some(b"payload"));
        assert_eq!(item.key(), Some(&b"key"[..]));
        assert_eq!(item.payload(), Some(&b"payload"[..]));
        assert_eq!(item.size(), 64 + 10);
        let bare = Item::new(0, 0, None, None, Some(b""));
        assert_eq!(bare.key(), None);
        assert_eq!(bare.payload(), Some(&b""[..]), "empty is not missing");
        let tombstone = Item::new(0, 1, None, Some(b"k"), None);
        assert_eq!(tombstone.payload(), None);
        assert_eq!(tombstone.key(), Some(&b"k"[..]));
    }
}
