//! The command log: every command the aggregator routed, with its outcome, in the
//! tenant's database: one record per (aggregator, uuid, leg), where the leg is
//! `to_cluster` (a connector's command sent on to the members) or `to_connector` (a
//! command from a member delivered to a connector here, naming the connector that
//! acknowledged it). Records are queued (never awaited on the routing path) and written
//! in batches by one task.

use std::time::Duration;

use sqlx::{PgPool, QueryBuilder, Row, migrate::Migrator, postgres::PgPoolOptions};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Largest batch per INSERT.
const BATCH: usize = 500;
/// How long the writer gathers a batch.
const GATHER: Duration = Duration::from_millis(100);

/// One routed command.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub uuid: String,
    /// `to_cluster` or `to_connector`.
    pub leg: &'static str,
    pub command: String,
    pub origin: String,
    /// `acknowledged` or `undeliverable`.
    pub outcome: &'static str,
    pub acknowledged_by: Option<String>,
    pub latency_ms: i64,
}

enum Message {
    Record(CommandRecord, OffsetDateTime),
    Flush(oneshot::Sender<()>),
}

/// A handle to the command log; cheap to clone.
#[derive(Clone)]
pub struct CommandLog {
    pool: PgPool,
    tx: mpsc::Sender<Message>,
}

impl CommandLog {
    /// Connects, migrates and starts the writer.
    pub async fn start(url: &str, aggregator: &str, tenant: &str) -> Result<Self, String> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to the tenant database: {e}"))?;
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|e| format!("cannot create the command log table: {e}"))?;
        let (tx, rx) = mpsc::channel(10_000);
        tokio::spawn(write_batches(
            pool.clone(),
            rx,
            aggregator.to_owned(),
            tenant.to_owned(),
        ));
        Ok(Self { pool, tx })
    }

    /// Queues a record; never waits (a full queue drops it, counted).
    pub fn record(&self, record: CommandRecord) {
        if self
            .tx
            .try_send(Message::Record(record, OffsetDateTime::now_utc()))
            .is_err()
        {
            metrics::counter!("gandalf_aggregator_messages_dropped_total", "reason" => "command_log_full").increment(1);
        }
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Records routed at or after `since`, by `aggregator` when given (else by every
    /// aggregator of the database), oldest first (at most 1000).
    pub async fn since(
        &self,
        since: OffsetDateTime,
        aggregator: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT uuid, leg, aggregator, tenant, command, origin, outcome, acknowledged_by, latency_ms, \
                    (EXTRACT(EPOCH FROM routed_at) * 1000)::BIGINT AS routed_at_ms \
             FROM gandalf_command_log WHERE routed_at >= $1 AND ($2::TEXT IS NULL OR aggregator = $2) \
             ORDER BY routed_at, uuid, leg LIMIT 1000",
        )
        .bind(since)
        .bind(aggregator)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(serde_json::json!({
                    "uuid": row.try_get::<String, _>("uuid")?,
                    "leg": row.try_get::<String, _>("leg")?,
                    "aggregator": row.try_get::<String, _>("aggregator")?,
                    "tenant": row.try_get::<String, _>("tenant")?,
                    "command": row.try_get::<String, _>("command")?,
                    "origin": row.try_get::<String, _>("origin")?,
                    "outcome": row.try_get::<String, _>("outcome")?,
                    "acknowledged_by": row.try_get::<Option<String>, _>("acknowledged_by")?,
                    "latency_ms": row.try_get::<i64, _>("latency_ms")?,
                    "routed_at_ms": row.try_get::<i64, _>("routed_at_ms")?,
                }))
            })
            .collect()
    }
}

async fn write_batches(
    pool: PgPool,
    mut rx: mpsc::Receiver<Message>,
    aggregator: String,
    tenant: String,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        let deadline = tokio::time::Instant::now() + GATHER;
        while let Some(message) = next.take() {
            match message {
                Message::Record(record, at) => batch.push((record, at)),
                Message::Flush(done) => flushes.push(done),
            }
            // A flush writes what is there now; otherwise gather up to a batch or GATHER.
            if flushes.is_empty() && batch.len() < BATCH {
                next = tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten();
            }
        }
        if !batch.is_empty() {
            let mut insert = QueryBuilder::new(
                "INSERT INTO gandalf_command_log \
                 (uuid, leg, aggregator, tenant, command, origin, outcome, acknowledged_by, latency_ms, routed_at) ",
            );
            insert.push_values(&batch, |mut row, (r, at)| {
                row.push_bind(r.uuid.clone())
                    .push_bind(r.leg)
                    .push_bind(aggregator.clone())
                    .push_bind(tenant.clone())
                    .push_bind(r.command.clone())
                    .push_bind(r.origin.clone())
                    .push_bind(r.outcome)
                    .push_bind(r.acknowledged_by.clone())
                    .push_bind(r.latency_ms)
                    .push_bind(*at);
            });
            // A redelivered record (same aggregator, uuid and leg) is the same record.
            insert.push(" ON CONFLICT (aggregator, uuid, leg) DO NOTHING");
            if let Err(err) = insert.build().execute(&pool).await {
                tracing::warn!(error = %err, records = batch.len(), "command log write failed");
                metrics::counter!("gandalf_aggregator_messages_dropped_total", "reason" => "command_log_error")
                    .increment(batch.len() as u64);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
