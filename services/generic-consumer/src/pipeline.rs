//! The pipeline behind the consumer: gathers consumed messages into batches, decodes them,
//! dead-letters what cannot be written, writes the rest to the sink (retrying with
//! backoff what the sink could not take) and reports every finished message back, so the
//! consumer can move its watermarks. Nothing is reported finished before it is in the
//! sink or in the dead-letter topic.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    decode::{Decoded, Decoder, KafkaMeta, Row},
    kafka::{DeadLetter, DeadLetters},
    sink::{RowOutcome, Sink},
};

/// A consumed message, owned.
#[derive(Debug, Clone)]
pub struct Item {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Finished messages: `(partition, offset)`.
pub type Finished = Vec<(i32, i64)>;

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
    pub linger: Duration,
    /// First backoff after a failed write or dead letter; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            batch_rows: 1000,
            linger: Duration::from_millis(200),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff with jitter (0.5x to 1x of the current step).
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(options: &PipelineOptions) -> Self {
        Self {
            next: options.retry_initial,
            max: options.retry_max,
        }
    }

    fn step(&mut self) -> Duration {
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

/// Waits `delay` unless `abort` comes first; false when aborted.
async fn pause(delay: Duration, abort: &CancellationToken) -> bool {
    tokio::select! {
        _ = abort.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Decodes, writes and reports; see the module documentation.
pub struct Pipeline<S> {
    pub decoder: Decoder,
    pub sink: S,
    pub table: String,
    pub topic: String,
    pub dead_letters: DeadLetters,
    pub options: PipelineOptions,
    pub counts: Arc<Counts>,
}

impl<S: Sink> Pipeline<S> {
    /// Runs until `items` is closed and drained, or `abort` is cancelled (then what is not
    /// finished stays unreported, to be consumed again by whoever owns it next).
    pub async fn run(
        self,
        mut items: mpsc::UnboundedReceiver<Vec<Item>>,
        finished: std::sync::mpsc::Sender<Finished>,
        abort: CancellationToken,
    ) {
        let mut batch: Vec<Item> = Vec::with_capacity(self.options.batch_rows);
        loop {
            let first = tokio::select! {
                _ = abort.cancelled() => return,
                first = items.recv() => first,
            };
            let Some(first) = first else { return };
            batch.extend(first);
            let deadline = tokio::time::Instant::now() + self.options.linger;
            let mut closed = false;
            while batch.len() < self.options.batch_rows {
                match tokio::time::timeout_at(deadline, items.recv()).await {
                    Ok(Some(more)) => batch.extend(more),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !self.process(&mut batch, &finished, &abort).await || closed {
                return;
            }
        }
    }

    /// Handles one batch; false when aborted.
    async fn process(
        &self,
        batch: &mut Vec<Item>,
        finished: &std::sync::mpsc::Sender<Finished>,
        abort: &CancellationToken,
    ) -> bool {
        let ingested_at = OffsetDateTime::now_utc();
        let mut done: Finished = Vec::with_capacity(batch.len());
        let mut rows: Vec<Row> = Vec::with_capacity(batch.len());
        let mut row_items: Vec<usize> = Vec::with_capacity(batch.len());
        let mut dead: Vec<(usize, &'static str, String)> = Vec::new();
        for (index, item) in batch.iter().enumerate() {
            let meta = KafkaMeta {
                topic: self.topic.clone(),
                partition: item.partition,
                offset: item.offset,
                timestamp_ms: item.timestamp_ms,
            };
            let Some(payload) = item.payload.as_deref() else {
                dead.push((index, "decode", "the message has no payload".to_owned()));
                continue;
            };
            match self.decoder.decode(payload, &meta, ingested_at) {
                Ok(Decoded::Ignored { .. }) => done.push((item.partition, item.offset)),
                Ok(Decoded::Row(row)) => {
                    rows.push(row);
                    row_items.push(index);
                }
                Err(err) => dead.push((index, "decode", err.to_string())),
            }
        }
        let ignored = done.len();
        Counts::add(&self.counts.ignored, ignored);
        metrics::counter!("consumer_messages_ignored_total").increment(ignored as u64);

        if !self.dead_letter(batch, &dead, &mut done, abort).await {
            return false;
        }
        if !done.is_empty() {
            let _ = finished.send(std::mem::take(&mut done));
        }

        let mut backoff = Backoff::new(&self.options);
        while !rows.is_empty() {
            let started = Instant::now();
            let outcomes = self.sink.write(&self.table, &rows).await;
            metrics::histogram!("consumer_batch_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("consumer_batches_total").increment(1);
            Counts::add(&self.counts.batches, 1);

            let outcomes = if outcomes.len() == rows.len() {
                outcomes
            } else {
                let reason = format!(
                    "the sink answered {} outcomes for {} rows",
                    outcomes.len(),
                    rows.len()
                );
                vec![RowOutcome::Retry(reason); rows.len()]
            };
            let mut retry_rows = Vec::new();
            let mut retry_items = Vec::new();
            let mut invalid = Vec::new();
            let mut last_reason = None;
            for ((row, index), outcome) in rows.into_iter().zip(row_items).zip(outcomes) {
                let item = &batch[index];
                match outcome {
                    RowOutcome::Written => done.push((item.partition, item.offset)),
                    RowOutcome::Invalid(reason) => invalid.push((index, "sink", reason)),
                    RowOutcome::Retry(reason) => {
                        retry_rows.push(row);
                        retry_items.push(index);
                        last_reason = Some(reason);
                    }
                }
            }
            Counts::add(&self.counts.written, done.len());
            metrics::counter!("consumer_rows_written_total").increment(done.len() as u64);
            if !self.dead_letter(batch, &invalid, &mut done, abort).await {
                return false;
            }
            if !done.is_empty() {
                let _ = finished.send(std::mem::take(&mut done));
            }
            rows = retry_rows;
            row_items = retry_items;
            if let Some(reason) = last_reason {
                let delay = backoff.step();
                metrics::counter!("consumer_sink_errors_total").increment(1);
                metrics::counter!("consumer_sink_retries_total").increment(rows.len() as u64);
                Counts::add(&self.counts.retries, rows.len());
                tracing::warn!(
                    rows = rows.len(),
                    table = %self.table,
                    retry_in_ms = delay.as_millis() as u64,
                    %reason,
                    "the sink did not take every row; retrying"
                );
                if !pause(delay, abort).await {
                    return false;
                }
            }
        }
        batch.clear();
        true
    }

    /// Sends `letters` to the dead-letter topic, retrying until the broker has each one;
    /// adds them to `done`. False when aborted first.
    async fn dead_letter(
        &self,
        batch: &[Item],
        letters: &[(usize, &'static str, String)],
        done: &mut Finished,
        abort: &CancellationToken,
    ) -> bool {
        for (index, stage, error) in letters {
            let item = &batch[*index];
            let letter = DeadLetter {
                partition: item.partition,
                offset: item.offset,
                key: item.key.as_deref(),
                payload: item.payload.as_deref(),
                stage,
                error,
            };
            tracing::warn!(
                partition = item.partition,
                offset = item.offset,
                stage,
                %error,
                dlq = self.dead_letters.topic(),
                "dead-lettering a message"
            );
            let mut backoff = Backoff::new(&self.options);
            loop {
                match self.dead_letters.send(&letter).await {
                    Ok(()) => break,
                    Err(err) => {
                        let delay = backoff.step();
                        metrics::counter!("consumer_dead_letter_errors_total").increment(1);
                        tracing::error!(
                            error = %err,
                            dlq = self.dead_letters.topic(),
                            retry_in_ms = delay.as_millis() as u64,
                            "cannot send a dead letter; the partition waits"
                        );
                        if !pause(delay, abort).await {
                            return false;
                        }
                    }
                }
            }
            done.push((item.partition, item.offset));
            Counts::add(&self.counts.dead_lettered, 1);
            metrics::counter!("consumer_messages_dead_lettered_total", "stage" => *stage)
                .increment(1);
        }
        true
    }
}
