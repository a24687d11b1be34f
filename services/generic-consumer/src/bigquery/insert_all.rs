//! `BIGQUERY_API=insert_all`: rows through `tabledata.insertAll` (the legacy streaming
//! API), each with its deterministic insert id (BigQuery drops a redelivered row with the
//! same id, best effort, for about a minute).
//!
//! A batch is cut into requests of at most `BIGQUERY_INSERT_ALL_ROWS` rows and
//! `BIGQUERY_REQUEST_BYTES` bytes, sent together. The sink never skips invalid rows
//! (`skipInvalidRows=false`): when one row is `invalid`, BigQuery inserts none of the
//! request and marks the others `stopped`; the invalid one is dead-lettered and the
//! stopped ones are sent again at once. A request over BigQuery's size limit is halved
//! until it fits. Transient failures (5xx, `backendError`, `rateLimitExceeded`,
//! `quotaExceeded`) leave the rows to the pipeline's backoff; 403/404 and requests
//! BigQuery refuses as they are stop the instance.

use std::{
    collections::{HashMap, HashSet},
    ops::Range,
};

use serde_json::Value;

use super::{
    layout::{ColumnType, Layout},
    rest::{Failure, Rest},
};
use crate::{
    row::{self, Body, Row},
    sink::{Fatal, Retry, RowOutcome, Table},
};

/// Rounds of sending within one write (halvings of a request over the limit, resends of
/// stopped rows); what is left after them is retried by the pipeline.
const MAX_ROUNDS: usize = 12;

/// A table written through insertAll.
#[derive(Debug)]
pub struct InsertAllTable {
    pub(super) rest: Rest,
    pub(super) table: String,
    /// Flattened rows: the JSON columns (their values are sent as JSON text).
    pub(super) json_columns: HashSet<String>,
    pub(super) max_rows: usize,
    pub(super) max_bytes: usize,
}

impl InsertAllTable {
    pub(super) fn new(
        rest: Rest,
        table: &str,
        layout: &Layout,
        max_rows: usize,
        max_bytes: usize,
    ) -> Self {
        Self {
            rest,
            table: table.to_owned(),
            json_columns: layout
                .columns
                .iter()
                .filter(|c| c.kind == ColumnType::Json)
                .map(|c| c.name.clone())
                .collect(),
            max_rows,
            max_bytes,
        }
    }

    /// Appends `row` as one element of insertAll's `rows`:
    /// `{"insertId": ..., "json": {columns}}`. TIMESTAMP columns as RFC 3339 text, JSON
    /// columns as a string holding the JSON text (the form insertAll takes for them).
    fn write_entry(&self, row: &Row, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"insertId\":\"");
        row::push_insert_id(out, row);
        out.extend_from_slice(b"\",\"json\":{\"event_name\":");
        row::push_str(out, &row.event_name);
        if let Some(id) = &row.event_id {
            out.extend_from_slice(b",\"event_id\":");
            row::push_str(out, id);
        }
        if row.event_timestamp.is_some() {
            out.extend_from_slice(b",\"event_timestamp\":");
            row::push_timestamp(out, row.event_timestamp);
        }
        out.extend_from_slice(b",\"kafka_topic\":");
        row::push_str(out, &row.kafka_topic);
        out.extend_from_slice(b",\"kafka_partition\":");
        row::push_int(out, i64::from(row.kafka_partition));
        out.extend_from_slice(b",\"kafka_offset\":");
        row::push_int(out, row.kafka_offset);
        if row.kafka_timestamp.is_some() {
            out.extend_from_slice(b",\"kafka_timestamp\":");
            row::push_timestamp(out, row.kafka_timestamp);
        }
        out.extend_from_slice(b",\"ingested_at\":");
        row::push_timestamp(out, Some(row.ingested_at));
        match &row.body {
            Body::Payload(json) => {
                out.extend_from_slice(b",\"payload\":");
                json.push_as_string(out);
            }
            Body::Columns(columns) => {
                for (name, value) in columns {
                    out.push(b',');
                    row::push_str(out, name);
                    out.push(b':');
                    if self.json_columns.contains(&**name) {
                        value.push_as_string(out);
                    } else {
                        out.extend_from_slice(value.as_bytes());
                    }
                }
            }
        }
        out.extend_from_slice(b"}}");
    }

    /// The request body holding the entries `rows` of `entries`.
    fn body(encoded: &[u8], entries: &[Range<usize>], rows: &[usize]) -> Vec<u8> {
        let size: usize = rows.iter().map(|&i| entries[i].len() + 1).sum();
        let mut body = Vec::with_capacity(size + 64);
        body.extend_from_slice(
            b"{\"skipInvalidRows\":false,\"ignoreUnknownValues\":false,\"rows\":[",
        );
        for (n, &i) in rows.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&encoded[entries[i].clone()]);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// Cuts `rows` into requests within the row and byte limits.
    fn requests(
        &self,
        entries: &[Range<usize>],
        rows: impl Iterator<Item = usize>,
    ) -> Vec<Vec<usize>> {
        super::cut_requests(
            rows,
            |i| entries[i].len() + 1,
            (self.max_rows, self.max_bytes, 64),
        )
    }
}

impl Table for InsertAllTable {
    async fn write(&self, rows: &[Row]) -> Result<Vec<RowOutcome>, Fatal> {
        let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
        let mut encoded = Vec::with_capacity(rows.iter().map(Row::size).sum::<usize>() * 11 / 10);
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let start = encoded.len();
            self.write_entry(row, &mut encoded);
            entries.push(start..encoded.len());
        }
        let sendable = (0..rows.len()).filter(|&i| {
            let fits = entries[i].len() + 64 <= self.max_bytes;
            if !fits {
                outcomes[i] = Some(RowOutcome::Invalid(format!(
                    "the row takes {} bytes in an insertAll request, over the limit of {} \
                     (BIGQUERY_REQUEST_BYTES)",
                    entries[i].len(),
                    self.max_bytes
                )));
            }
            fits
        });
        let mut pending = self.requests(&entries, sendable.collect::<Vec<_>>().into_iter());
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let sent = futures::future::join_all(pending.iter().map(|request| {
                let body = Self::body(&encoded, &entries, request);
                self.rest.insert_all(&self.table, body)
            }))
            .await;
            let mut next = Vec::new();
            for (request, answer) in pending.drain(..).zip(sent) {
                match answer {
                    Ok(answer) => {
                        let resend = settle(&request, &answer, &mut outcomes);
                        next.extend(self.requests(&entries, resend.into_iter()));
                    }
                    Err(Failure::TooLarge(reason)) => {
                        if request.len() > 1 {
                            metrics::counter!("bigquery_request_splits_total", "api" => "insert_all")
                                .increment(1);
                            let (a, b) = request.split_at(request.len() / 2);
                            next.push(a.to_vec());
                            next.push(b.to_vec());
                        } else {
                            outcomes[request[0]] = Some(RowOutcome::Invalid(format!(
                                "the row alone is too large for insertAll: {reason}"
                            )));
                        }
                    }
                    Err(Failure::Transient { reason, after }) => {
                        let retry = Retry { reason, after };
                        for &i in &request {
                            outcomes[i] = Some(RowOutcome::Retry(retry.clone()));
                        }
                    }
                    Err(Failure::Fatal(reason)) => return Err(Fatal(reason)),
                }
            }
            pending = next;
        }
        let outcomes: Vec<RowOutcome> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    RowOutcome::Retry(
                        format!("still stopped after {MAX_ROUNDS} insertAll rounds").into(),
                    )
                })
            })
            .collect();
        super::count_outcomes("insert_all", &outcomes);
        Ok(outcomes)
    }
}

/// Records the outcome of each row of a request BigQuery answered; returns the rows to
/// send again (`stopped`: not inserted because another row of the request was invalid).
fn settle(request: &[usize], answer: &Value, outcomes: &mut [Option<RowOutcome>]) -> Vec<usize> {
    let mut errors: HashMap<usize, &Vec<Value>> = HashMap::new();
    for error in answer["insertErrors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let (Some(index), Some(list)) = (error["index"].as_u64(), error["errors"].as_array()) {
            errors.insert(index as usize, list);
        }
    }
    let mut resend = Vec::new();
    for (n, &i) in request.iter().enumerate() {
        let Some(list) = errors.get(&n) else {
            outcomes[i] = Some(RowOutcome::Written);
            continue;
        };
        let reasons: Vec<&str> = list.iter().filter_map(|e| e["reason"].as_str()).collect();
        if reasons.contains(&"invalid") {
            let detail: Vec<String> = list
                .iter()
                .filter(|e| e["reason"] == "invalid")
                .map(|e| {
                    let location = e["location"].as_str().unwrap_or_default();
                    let message = e["message"].as_str().unwrap_or_default();
                    if location.is_empty() {
                        message.to_owned()
                    } else {
                        format!("{location}: {message}")
                    }
                })
                .collect();
            outcomes[i] = Some(RowOutcome::Invalid(format!(
                "insertAll refused the row as invalid: {}",
                detail.join("; ")
            )));
        } else if reasons.iter().all(|r| *r == "stopped") {
            resend.push(i);
        } else {
            outcomes[i] = Some(RowOutcome::Retry(
                format!("insertAll did not insert the row: {}", reasons.join(", ")).into(),
            ));
        }
    }
    resend
}
