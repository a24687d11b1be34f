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

use bytes::Bytes;
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

    /// Writes every row's entry, straight into the first round's request bodies, cut
    /// at `BIGQUERY_INSERT_ALL_ROWS` rows and `BIGQUERY_REQUEST_BYTES` bytes as they are
    /// written (no copy of the entries into bodies); a row too large for any request is
    /// invalid and not sent.
    fn encode(&self, rows: &[Row], outcomes: &mut [Option<RowOutcome>]) -> Encoded {
        let average = rows.iter().map(Row::size).sum::<usize>() * 11 / 10 / rows.len().max(1);
        let reserve = |left: usize| (average * left.min(self.max_rows)).min(self.max_bytes) + 64;
        let mut encoded = Encoded {
            bodies: Vec::new(),
            entries: Vec::with_capacity(rows.len()),
            first: Vec::new(),
        };
        let mut body: Vec<u8> = Vec::new();
        let mut members: Vec<usize> = Vec::new();
        let mut moved = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if body.is_empty() {
                body.reserve(reserve(rows.len() - i));
                body.extend_from_slice(PREFIX);
            }
            let mark = body.len();
            if !members.is_empty() {
                body.push(b',');
            }
            let start = body.len();
            self.write_entry(row, &mut body);
            let len = body.len() - start;
            if len + PREFIX.len() + SUFFIX.len() > self.max_bytes {
                body.truncate(mark);
                outcomes[i] = Some(RowOutcome::Invalid(format!(
                    "the row takes {len} bytes in an insertAll request, over the limit of {} \
                     (BIGQUERY_REQUEST_BYTES)",
                    self.max_bytes
                )));
                encoded.entries.push(None);
                continue;
            }
            if members.len() < self.max_rows && body.len() + SUFFIX.len() <= self.max_bytes {
                members.push(i);
                encoded
                    .entries
                    .push(Some((encoded.bodies.len(), start..body.len())));
                continue;
            }
            // Over the request's bounds: the body is closed without it, and the next
            // one starts with it.
            moved.clear();
            moved.extend_from_slice(&body[start..]);
            body.truncate(mark);
            body.extend_from_slice(SUFFIX);
            encoded.bodies.push(Bytes::from(std::mem::take(&mut body)));
            encoded.first.push(std::mem::take(&mut members));
            body.reserve(reserve(rows.len() - i));
            body.extend_from_slice(PREFIX);
            let start = body.len();
            body.extend_from_slice(&moved);
            members.push(i);
            encoded
                .entries
                .push(Some((encoded.bodies.len(), start..body.len())));
        }
        if !members.is_empty() {
            body.extend_from_slice(SUFFIX);
            encoded.bodies.push(Bytes::from(body));
            encoded.first.push(members);
        }
        encoded
    }

    /// Cuts `rows` into requests within the row and byte limits.
    fn requests(&self, encoded: &Encoded, rows: impl Iterator<Item = usize>) -> Vec<Vec<usize>> {
        super::cut_requests(
            rows,
            |i| encoded.entry(i).len() + 1,
            (self.max_rows, self.max_bytes, PREFIX.len() + SUFFIX.len()),
        )
    }
}

const PREFIX: &[u8] = b"{\"skipInvalidRows\":false,\"ignoreUnknownValues\":false,\"rows\":[";
const SUFFIX: &[u8] = b"]}";

/// A batch's rows as insertAll entries: the first round's request bodies, and where each
/// row's entry is in them for the rounds after it (resends, halvings).
struct Encoded {
    bodies: Vec<Bytes>,
    /// Per row: the body holding its entry and the entry's range (`None`: not sent).
    entries: Vec<Option<(usize, Range<usize>)>>,
    /// The rows of each first-round body.
    first: Vec<Vec<usize>>,
}

impl Encoded {
    fn entry(&self, row: usize) -> &[u8] {
        match &self.entries[row] {
            Some((body, range)) => &self.bodies[*body][range.clone()],
            None => &[],
        }
    }

    /// A new request body holding the entries of `rows` (a later round's).
    fn body(&self, rows: &[usize]) -> Bytes {
        let size: usize = rows.iter().map(|&i| self.entry(i).len() + 1).sum();
        let mut body = Vec::with_capacity(size + PREFIX.len() + SUFFIX.len());
        body.extend_from_slice(PREFIX);
        for (n, &i) in rows.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(self.entry(i));
        }
        body.extend_from_slice(SUFFIX);
        Bytes::from(body)
    }
}

impl Table for InsertAllTable {
    async fn write(&self, rows: &[Row]) -> Result<Vec<RowOutcome>, Fatal> {
        let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
        let encoded = self.encode(rows, &mut outcomes);
        // The first round sends the bodies as they were written.
        let mut written = Some(encoded.bodies.clone());
        let mut pending = encoded.first.clone();
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                break;
            }
            let bodies = written.take();
            let sent = futures::future::join_all(pending.iter().enumerate().map(|(k, request)| {
                let body = match &bodies {
                    Some(bodies) => bodies[k].clone(),
                    None => encoded.body(request),
                };
                self.rest.insert_all(&self.table, body)
            }))
            .await;
            let mut next = Vec::new();
            for (request, answer) in pending.drain(..).zip(sent) {
                match answer {
                    Ok(answer) => {
                        let resend = settle(&request, &answer, &mut outcomes);
                        next.extend(self.requests(&encoded, resend.into_iter()));
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
