//! `SINK=bigquery`: rows into a BigQuery table, authenticated with the mounted
//! service-account key (`GOOGLE_APPLICATION_CREDENTIALS`), in the project and dataset of
//! the write environment (`BQ_PROJECT_<WRITE_ENV>`, `BQ_DATASET_<WRITE_ENV>`).
//!
//! Opening the table (`tables.get`) checks that its columns take the rows (a missing
//! column or a wrong type stops the start, naming the column and both types), or creates
//! it when `BQ_CREATE_TABLE_<D>=true` (partitioned by day on `event_timestamp`, clustered
//! by `event_name`). Rows then go through `tabledata.insertAll` ([`insert_all`]) or the
//! Storage Write API's default stream, as `BIGQUERY_API` says.

pub mod auth;
pub mod insert_all;
pub mod layout;
pub mod proto_rows;
pub mod rest;
pub mod storage;

use std::sync::Arc;

use self::{
    auth::Auth, insert_all::InsertAllTable, layout::Layout, rest::Rest, storage::StorageWriteTable,
};
use crate::{
    context::{BigQueryApi, BigQueryTarget},
    sink::{Fatal, Sink},
};

/// The `bigquery` sink of one instance.
#[derive(Debug, Clone)]
pub struct BigQuerySink {
    target: BigQueryTarget,
    layout: Arc<Layout>,
    auth: Arc<Auth>,
    rest: Rest,
}

impl BigQuerySink {
    /// Reads the key file (an unreadable or malformed one is an error naming it) and
    /// prepares the clients; nothing is sent yet.
    pub fn new(target: &BigQueryTarget, layout: Layout) -> Result<Self, Fatal> {
        let auth = Arc::new(Auth::load(&target.credentials).map_err(Fatal)?);
        let rest = Rest::new(
            &target.endpoint,
            &target.project,
            &target.dataset,
            Arc::clone(&auth),
        )
        .map_err(Fatal)?;
        Ok(Self {
            target: target.clone(),
            layout: Arc::new(layout),
            auth,
            rest,
        })
    }

    /// Where `table` is, for messages: `project.dataset.table`.
    fn name(&self, table: &str) -> String {
        format!("{}.{}.{table}", self.target.project, self.target.dataset)
    }

    /// `tables.get`, then the schema check, or `tables.insert` of a missing table.
    async fn prepare(&self, table: &str) -> Result<(), Fatal> {
        let name = self.name(table);
        let found = self
            .rest
            .get_table(table)
            .await
            .map_err(|f| Fatal(format!("cannot open the table {name}: {}", describe(&f))))?;
        match found {
            Some(resource) => self.layout.check(&resource["schema"]).map_err(|problems| {
                Fatal(format!(
                    "the table {name} does not take these rows: {}",
                    problems.join("; ")
                ))
            }),
            None if self.target.create_table => {
                let resource =
                    self.layout
                        .new_table(&self.target.project, &self.target.dataset, table);
                self.rest.create_table(&resource).await.map_err(|f| {
                    Fatal(format!("cannot create the table {name}: {}", describe(&f)))
                })?;
                tracing::info!(table = %name, "created the table from the row layout");
                Ok(())
            }
            None => Err(Fatal(format!(
                "the table {name} does not exist (create it, or set BQ_CREATE_TABLE_<DOMAIN>=true \
                 to have it created from the row layout)"
            ))),
        }
    }
}

/// Cuts `rows` into requests of at most `max_rows` rows and `max_bytes` bytes, each
/// starting at `overhead` bytes and each row taking `size(row)` (a row over the bound
/// alone still gets a request of its own).
fn cut_requests(
    rows: impl Iterator<Item = usize>,
    size: impl Fn(usize) -> usize,
    (max_rows, max_bytes, overhead): (usize, usize, usize),
) -> Vec<Vec<usize>> {
    let mut requests = Vec::new();
    let mut current = Vec::new();
    let mut bytes = overhead;
    for i in rows {
        let row = size(i);
        if !current.is_empty() && (current.len() == max_rows || bytes + row > max_bytes) {
            requests.push(std::mem::take(&mut current));
            bytes = overhead;
        }
        bytes += row;
        current.push(i);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

/// An error with its causes ("token request failed" alone says little).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Counts a write's outcomes: rows BigQuery took, and those it did not, by reason.
fn count_outcomes(api: &'static str, outcomes: &[crate::sink::RowOutcome]) {
    use crate::sink::RowOutcome;
    let (mut written, mut retry, mut invalid) = (0u64, 0u64, 0u64);
    for outcome in outcomes {
        match outcome {
            RowOutcome::Written => written += 1,
            RowOutcome::Retry(_) => retry += 1,
            RowOutcome::Invalid(_) => invalid += 1,
        }
    }
    metrics::counter!("bigquery_rows_sent_total", "api" => api).increment(written);
    if retry > 0 {
        metrics::counter!("bigquery_rows_failed_total", "api" => api, "reason" => "retry")
            .increment(retry);
    }
    if invalid > 0 {
        metrics::counter!("bigquery_rows_failed_total", "api" => api, "reason" => "invalid")
            .increment(invalid);
    }
}

fn describe(failure: &rest::Failure) -> String {
    match failure {
        rest::Failure::TooLarge(r) | rest::Failure::Fatal(r) => r.clone(),
        rest::Failure::Transient { reason, .. } => reason.clone(),
    }
}

/// The table the sink opened, through the API chosen.
#[derive(Debug)]
pub enum BigQueryTable {
    InsertAll(InsertAllTable),
    StorageWrite(Box<StorageWriteTable>),
}

impl crate::sink::Table for BigQueryTable {
    async fn write(&self, rows: &[crate::row::Row]) -> Result<Vec<crate::sink::RowOutcome>, Fatal> {
        match self {
            Self::InsertAll(table) => table.write(rows).await,
            Self::StorageWrite(table) => table.write(rows).await,
        }
    }
}

impl Sink for BigQuerySink {
    type Table = BigQueryTable;

    async fn open(&self, table: &str) -> Result<BigQueryTable, Fatal> {
        self.prepare(table).await?;
        match self.target.api {
            BigQueryApi::InsertAll => Ok(BigQueryTable::InsertAll(InsertAllTable::new(
                self.rest.clone(),
                table,
                &self.layout,
                self.target.insert_all_rows,
                self.target.request_bytes,
            ))),
            BigQueryApi::StorageWrite => {
                let channel = storage::channel(&self.target.storage_endpoint).map_err(Fatal)?;
                Ok(BigQueryTable::StorageWrite(Box::new(
                    StorageWriteTable::new(
                        channel,
                        Arc::clone(&self.auth),
                        (&self.target.project, &self.target.dataset, table),
                        &self.layout,
                        self.target.request_bytes,
                    ),
                )))
            }
        }
    }
}
