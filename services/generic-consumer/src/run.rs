//! One instance, end to end: the table opened, then the consumer thread and the pipeline
//! task wired together, run until shutdown, or until the pipeline ends (which stops the
//! consumer: a pipeline that cannot write never leaves it fetching into nothing).

use std::sync::{Arc, atomic::AtomicU64, mpsc as std_mpsc};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    consumer::{self, LoopOptions},
    context::Context,
    contract::Contract,
    decode::Decoder,
    kafka::{self, DeadLetters},
    pipeline::{Counts, Pipeline, PipelineError, PipelineOptions, Revocations},
    sink::{Fatal, Sink},
};

/// Why an instance could not run, or stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the table {table}: {source}")]
    Open { table: String, source: Fatal },
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(rdkafka::error::KafkaError),
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create the dead-letter producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    #[error("the consumer thread failed: {0}")]
    Thread(String),
    #[error("{0}")]
    Pipeline(PipelineError),
}

/// What a run did, for the exit log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub consumed: u64,
    pub ignored: u64,
    pub written: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub retries: u64,
    /// Consumed, not written when the grace period ended; not committed.
    pub unfinished: usize,
}

/// A resolved instance, ready to run.
pub struct Instance {
    pub context: Context,
    pub contract: Contract,
    pub counts: Arc<Counts>,
}

impl Instance {
    pub fn new(context: Context, contract: Contract) -> Self {
        Self {
            context,
            contract,
            counts: Arc::default(),
        }
    }

    /// Opens the table, then consumes into it until `shutdown` is cancelled; then flushes
    /// and commits within the grace period. `on_subscribed` runs once the consumer has
    /// subscribed. `Err` when the table cannot be opened (nothing consumed) or the
    /// pipeline stopped for good (a fatal sink error, a dead-letter topic refusing
    /// letters, a panic): what it had written is committed, nothing past it.
    pub async fn run<S: Sink>(
        &self,
        sink: S,
        shutdown: CancellationToken,
        on_subscribed: impl FnOnce() + Send,
    ) -> Result<Summary, RunError> {
        let topic = self.contract.topic.clone();
        let tuning = self.context.tuning;
        let table_name = self.context.bq_table.clone();
        let table = sink
            .open(&table_name)
            .await
            .map_err(|source| RunError::Open {
                table: table_name.clone(),
                source,
            })?;
        let options = LoopOptions {
            max_in_flight: tuning.max_in_flight,
            max_in_flight_bytes: tuning.max_in_flight_bytes,
            shutdown_grace: tuning.shutdown_grace,
        };
        let (to_pipeline, items) = mpsc::channel(options.channel_chunks());
        let (finished_tx, finished_rx) = std_mpsc::channel();

        let revocations = Arc::new(Revocations::default());
        let hooks = consumer::hooks(
            &topic,
            &options,
            to_pipeline,
            finished_rx,
            Arc::clone(&revocations),
        );
        let consumer: BaseConsumer<consumer::Hooks> = kafka::consumer_config(&self.context)
            .create_with_context(hooks)
            .map_err(RunError::Consumer)?;
        consumer
            .subscribe(&[&topic])
            .map_err(|source| RunError::Subscribe {
                topic: topic.clone(),
                source,
            })?;
        let dead_letters = DeadLetters::new(&self.context, &topic).map_err(RunError::Producer)?;
        tracing::info!(
            domain = %self.context.domain,
            %topic,
            group = %self.context.group_id,
            table = %table_name,
            dlq = dead_letters.topic(),
            "consuming"
        );
        on_subscribed();

        let pipeline = Pipeline {
            decoder: Decoder::new(
                &self.contract,
                &self.context.ignore_events,
                self.context.row_mode,
            ),
            table: Arc::new(table),
            table_name,
            dead_letters,
            options: PipelineOptions {
                batch_rows: tuning.batch_rows,
                batch_bytes: tuning.batch_bytes,
                linger: tuning.linger,
                batches_in_flight: tuning.batches_in_flight,
                retry_max: tuning.retry_max,
                ..PipelineOptions::default()
            },
            counts: Arc::clone(&self.counts),
            revocations,
        };
        let abort = CancellationToken::new();
        let pipeline_gone = CancellationToken::new();
        let pipeline = {
            // Cancelled when the task ends, however it ends (a panic too).
            let ended = pipeline_gone.clone().drop_guard();
            let abort = abort.clone();
            tokio::spawn(async move {
                let _ended = ended;
                pipeline.run(items, finished_tx, abort).await
            })
        };

        let counts = Arc::clone(&self.counts);
        let stop = shutdown.clone();
        let gone = pipeline_gone.clone();
        let span = tracing::Span::current();
        let stopped = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            consumer::consume(consumer, options, &counts, &stop, &gone)
        })
        .await;
        // Whatever the pipeline still holds is not committed: stop it.
        abort.cancel();
        let ended = pipeline.await;
        let stopped = stopped.map_err(|e| RunError::Thread(e.to_string()))?;
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(RunError::Pipeline(err)),
            Err(err) => {
                return Err(RunError::Pipeline(PipelineError::Task(format!(
                    "the pipeline task ended: {err}"
                ))));
            }
        }
        let get = |counter: &AtomicU64| Counts::get(counter);
        Ok(Summary {
            consumed: get(&self.counts.consumed),
            ignored: get(&self.counts.ignored),
            written: get(&self.counts.written),
            dead_lettered: get(&self.counts.dead_lettered),
            batches: get(&self.counts.batches),
            retries: get(&self.counts.retries),
            unfinished: stopped.unfinished,
        })
    }
}

/// Describes the metrics, so `/metrics` carries their help text.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "consumer_messages_consumed_total",
        "Messages fetched from the topic"
    );
    describe_counter!(
        "consumer_messages_ignored_total",
        "Messages skipped because their event is in IGNORE_EVENTS"
    );
    describe_counter!("consumer_rows_written_total", "Rows the sink acknowledged");
    describe_counter!(
        "consumer_messages_dead_lettered_total",
        "Messages sent to the dead-letter topic, by stage (decode, sink)"
    );
    describe_counter!("consumer_batches_total", "Sink writes");
    describe_histogram!("consumer_batch_duration_seconds", "Time of one sink write");
    describe_counter!(
        "consumer_sink_retries_total",
        "Rows written again after the sink did not take them"
    );
    describe_counter!(
        "consumer_sink_errors_total",
        "Sink writes that left rows to retry"
    );
    describe_counter!(
        "consumer_dead_letter_errors_total",
        "Failed attempts to send a dead letter"
    );
    describe_counter!("consumer_commit_errors_total", "Failed offset commits");
    describe_gauge!(
        "consumer_lag",
        "Messages behind the end of each assigned partition (librdkafka statistics)"
    );
    describe_gauge!(
        "consumer_in_flight_rows",
        "Messages consumed and not yet written or dead-lettered"
    );
    describe_gauge!(
        "consumer_in_flight_bytes",
        "Bytes of the messages consumed and not yet written or dead-lettered"
    );
    describe_counter!("bigquery_rows_sent_total", "Rows BigQuery took, by API");
    describe_counter!(
        "bigquery_rows_failed_total",
        "Rows a BigQuery write did not take, by API and reason (retry, invalid)"
    );
    describe_counter!(
        "bigquery_requests_total",
        "BigQuery requests, by API and outcome (ok, HTTP status, unreachable)"
    );
    describe_counter!(
        "bigquery_request_splits_total",
        "BigQuery requests halved after a size refusal"
    );
    describe_histogram!(
        "bigquery_request_duration_seconds",
        "Time of one BigQuery request"
    );
    describe_counter!(
        "bigquery_request_bytes_total",
        "BigQuery request bytes sent"
    );
    describe_counter!(
        "bigquery_token_refreshes_total",
        "Google access tokens fetched"
    );
}
