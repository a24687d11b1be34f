//! Where rows go. A [`Sink`] opens a table once, before anything is consumed (BigQuery:
//! fetch the table's schema, check that the rows fit it, build what it sends); the opened
//! [`Table`] then takes batches, several in flight at once, and answers row by row:
//! written, retry later (the consumer keeps the row and does not commit past it; the sink
//! may say when), or invalid (the row goes to the dead-letter path). A [`Fatal`] error is
//! one no retry can fix (403, 404, a schema that does not fit): the instance stops, exit 1.
//!
//! `jsonl` writes newline-delimited JSON files, one per table.

use std::{
    future::Future,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::row::Row;

/// Why a row is to be written again, and, when the sink knows, not before when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub reason: String,
    /// The sink's hint (a `Retry-After`, a throttle's delay); the pipeline waits at least
    /// this long, and at least its own backoff.
    pub after: Option<Duration>,
}

impl Retry {
    pub fn after(mut self, delay: Duration) -> Self {
        self.after = Some(delay);
        self
    }
}

impl From<&str> for Retry {
    fn from(reason: &str) -> Self {
        reason.to_owned().into()
    }
}

impl From<String> for Retry {
    fn from(reason: String) -> Self {
        Self {
            reason,
            after: None,
        }
    }
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Written,
    /// Not written this time (an outage, a throttle): try again.
    Retry(Retry),
    /// Never writable as it is: dead-letter it.
    Invalid(String),
}

/// A sink-level error no retry fixes; the instance stops (exit 1) and commits nothing
/// past what was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// A destination for rows.
pub trait Sink: Send + Sync + 'static {
    type Table: Table;

    /// Prepares writing to `table`; called once, before anything is consumed.
    fn open(&self, table: &str) -> impl Future<Output = Result<Self::Table, Fatal>> + Send;
}

/// An opened table.
pub trait Table: Send + Sync + 'static {
    /// Writes `rows`: one outcome per row, in order. Several writes may be in flight at
    /// once; their order of completion does not matter.
    fn write(&self, rows: &[Row]) -> impl Future<Output = Result<Vec<RowOutcome>, Fatal>> + Send;
}

/// Newline-delimited JSON files: `<dir>/<table>.jsonl`, each line a row with its
/// `insert_id` first. Appends (one write at a time, each synced to disk before it is
/// answered). A line cut short by a crash (never acknowledged, so consumed again) is cut
/// off when the table is opened; a failed append is cut back the same way.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    dir: PathBuf,
}

impl JsonlSink {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file a table's rows go to.
    pub fn path(&self, table: &str) -> PathBuf {
        self.dir.join(format!("{table}.jsonl"))
    }
}

/// A table of the `jsonl` sink: its file, open for appending, and the buffers batches are
/// written into (kept for the next batches: a batch's megabytes are not fresh pages, and
/// so page faults, each time).
#[derive(Debug)]
pub struct JsonlTable {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
    buffers: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept for reuse, and the largest one kept.
const KEPT_BUFFERS: usize = 8;
const KEPT_BUFFER_BYTES: usize = 16 * 1024 * 1024;

impl Sink for JsonlSink {
    type Table = JsonlTable;

    async fn open(&self, table: &str) -> Result<JsonlTable, Fatal> {
        if !valid_table(table) {
            return Err(Fatal(format!(
                "table name {table:?} is not usable as a file name (letters, digits, '_', '-', '.')"
            )));
        }
        let dir = self.dir.clone();
        let path = self.path(table);
        let opening = path.clone();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            std::fs::create_dir_all(&dir)?;
            let cut = cut_partial_line(&opening)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&opening)?;
            Ok((cut, file))
        })
        .await
        .map_err(|e| Fatal(format!("cannot open {}: {e}", path.display())))?;
        let (cut, file) =
            opened.map_err(|e| Fatal(format!("cannot open {}: {e}", path.display())))?;
        if let Some(bytes) = cut {
            tracing::warn!(
                table,
                bytes,
                "cut a partial line left by an interrupted write"
            );
        }
        Ok(JsonlTable {
            path,
            file: Arc::new(Mutex::new(file)),
            buffers: Mutex::default(),
        })
    }
}

impl Table for JsonlTable {
    async fn write(&self, rows: &[Row]) -> Result<Vec<RowOutcome>, Fatal> {
        let mut text = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        text.clear();
        text.reserve(rows.iter().map(Row::size).sum::<usize>() + rows.len());
        for row in rows {
            row.write_json(&mut text);
            text.push(b'\n');
        }
        let file = Arc::clone(&self.file);
        let appended = tokio::task::spawn_blocking(move || {
            let result = append(&file, &text);
            (result, text)
        })
        .await;
        Ok(match appended {
            Ok((result, text)) => {
                if text.capacity() <= KEPT_BUFFER_BYTES {
                    let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
                    if buffers.len() < KEPT_BUFFERS {
                        buffers.push(text);
                    }
                }
                match result {
                    Ok(()) => vec![RowOutcome::Written; rows.len()],
                    Err(err) => {
                        let reason = format!("cannot write {}: {err}", self.path.display());
                        vec![RowOutcome::Retry(reason.into()); rows.len()]
                    }
                }
            }
            Err(err) => {
                let reason = format!("the write to {} did not finish: {err}", self.path.display());
                vec![RowOutcome::Retry(reason.into()); rows.len()]
            }
        })
    }
}

/// Appends `text` and syncs it; on failure cuts the file back to where it was, so no
/// partial line stays in front of the next append.
fn append(file: &Mutex<std::fs::File>, text: &[u8]) -> std::io::Result<()> {
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    let before = file.metadata()?.len();
    let written = file.write_all(text).and_then(|()| file.sync_data());
    if written.is_err() {
        let _ = file.set_len(before);
    }
    written
}

/// Truncates `path` after its last newline when it does not end with one; returns how
/// many bytes were cut. A missing file is fine.
fn cut_partial_line(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end == len {
        return Ok(None);
    }
    file.set_len(end)?;
    file.sync_data()?;
    Ok(Some(len - end))
}

/// A table name that is safe as a file name: letters, digits, `_`, `-`, `.` (not first).
fn valid_table(table: &str) -> bool {
    !table.is_empty()
        && !table.starts_with('.')
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{Body, Json};

    fn row(offset: i64) -> Row {
        Row {
            event_name: "DeliveryScheduledEvent".into(),
            event_id: None,
            event_timestamp: None,
            kafka_topic: "delivery.events.v10".into(),
            kafka_partition: 0,
            kafka_offset: offset,
            kafka_timestamp: None,
            ingested_at: 0,
            body: Body::Payload(Json::from_value(&serde_json::json!({"n": offset}))),
        }
    }

    #[tokio::test]
    async fn rows_are_appended_as_json_lines_with_their_insert_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonlSink::new(dir.path().join("out"));
        let table = sink.open("delivery_events").await.expect("opens");
        assert_eq!(
            table.write(&[row(1), row(2)]).await,
            Ok(vec![RowOutcome::Written; 2])
        );
        assert_eq!(table.write(&[row(3)]).await, Ok(vec![RowOutcome::Written]));

        let text = std::fs::read_to_string(sink.path("delivery_events")).expect("file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["insert_id"], "delivery.events.v10:0:1");
        assert_eq!(lines[2]["kafka_offset"], 3);
        assert_eq!(lines[1]["event_name"], "DeliveryScheduledEvent");
        assert_eq!(lines[1]["payload"]["n"], 2);
    }

    #[tokio::test]
    async fn a_line_cut_short_by_a_crash_is_removed_when_the_table_is_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonlSink::new(dir.path());
        let path = sink.path("t");
        std::fs::write(&path, "{\"insert_id\":\"a\"}\n{\"insert_id\":\"b\",\"kaf").expect("write");
        let table = sink.open("t").await.expect("opens");
        assert_eq!(table.write(&[row(7)]).await, Ok(vec![RowOutcome::Written]));
        let text = std::fs::read_to_string(&path).expect("file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "{\"insert_id\":\"a\"}");
        assert!(lines[1].contains("delivery.events.v10:0:7"), "{text}");

        // A file that is one partial line is emptied; a complete file is left alone.
        std::fs::write(&path, "{\"insert_").expect("write");
        assert_eq!(cut_partial_line(&path).expect("cut"), Some(9));
        assert_eq!(std::fs::read(&path).expect("file"), b"");
        std::fs::write(&path, "{}\n").expect("write");
        assert_eq!(cut_partial_line(&path).expect("cut"), None);
    }

    #[tokio::test]
    async fn an_unusable_table_or_directory_is_fatal_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonlSink::new(dir.path());
        let err = sink.open("../escape").await.expect_err("not a file name");
        assert!(err.0.contains("../escape"), "{err}");

        // A file where the directory should be: the table cannot be opened.
        let blocker = dir.path().join("blocked");
        std::fs::write(&blocker, "not a directory").expect("write");
        let err = JsonlSink::new(&blocker)
            .open("t")
            .await
            .expect_err("no directory");
        assert!(err.0.contains("cannot open"), "{err}");
    }

    #[test]
    fn a_failed_append_leaves_no_partial_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{}\n").expect("write");
        // Opened read-only: the append fails, and the file is as it was.
        let file = Mutex::new(std::fs::File::open(&path).expect("open"));
        assert!(append(&file, b"{\"partial\":").is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"{}\n");
    }
}
