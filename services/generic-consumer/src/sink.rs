//! Where rows go. A sink takes a batch and answers row by row: written, retry later
//! (the consumer keeps the row and does not commit past it), or invalid (the row goes to
//! the dead-letter path). `jsonl` writes newline-delimited JSON files, one per table.

use std::{
    collections::HashSet,
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::{Map, Value as Json};
use tokio::io::AsyncWriteExt;

use crate::decode::Row;

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Written,
    /// Not written this time (an outage, a throttle): try again.
    Retry(String),
    /// Never writable as it is: dead-letter it.
    Invalid(String),
}

/// A destination for rows.
pub trait Sink: Send + Sync {
    /// Writes `rows` to `table`; one outcome per row, in order.
    fn write(&self, table: &str, rows: &[Row]) -> impl Future<Output = Vec<RowOutcome>> + Send;
}

/// Newline-delimited JSON files: `<dir>/<table>.jsonl`, each line a row with its
/// `insert_id`. Appends, and syncs each batch to disk before answering. A line cut short
/// by a crash (never acknowledged, so consumed again) is cut off before the first append.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    dir: PathBuf,
    repaired: Arc<Mutex<HashSet<String>>>,
}

impl JsonlSink {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            repaired: Arc::default(),
        }
    }

    /// The file a table's rows go to.
    pub fn path(&self, table: &str) -> PathBuf {
        self.dir.join(format!("{table}.jsonl"))
    }

    async fn append(&self, table: &str, rows: &[Row]) -> std::io::Result<()> {
        let mut text = Vec::with_capacity(rows.len() * 256);
        for row in rows {
            let mut line = Map::with_capacity(row.columns.len() + 1);
            line.insert("insert_id".into(), Json::String(row.insert_id.clone()));
            line.extend(row.columns.iter().map(|(k, v)| (k.clone(), v.clone())));
            serde_json::to_writer(&mut text, &line)?;
            text.push(b'\n');
        }
        tokio::fs::create_dir_all(&self.dir).await?;
        let first = !self
            .repaired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(table);
        if first {
            let path = self.path(table);
            let cut = tokio::task::spawn_blocking(move || cut_partial_line(&path))
                .await
                .map_err(std::io::Error::other)??;
            if let Some(bytes) = cut {
                tracing::warn!(
                    table,
                    bytes,
                    "cut a partial line left by an interrupted write"
                );
            }
            self.repaired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(table.to_owned());
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(table))
            .await?;
        file.write_all(&text).await?;
        file.sync_data().await
    }
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

impl Sink for JsonlSink {
    async fn write(&self, table: &str, rows: &[Row]) -> Vec<RowOutcome> {
        if !valid_table(table) {
            let reason = format!("table name {table:?} is not usable as a file name");
            return vec![RowOutcome::Invalid(reason); rows.len()];
        }
        match self.append(table, rows).await {
            Ok(()) => vec![RowOutcome::Written; rows.len()],
            Err(err) => {
                let reason = format!("cannot write {}: {err}", self.path(table).display());
                vec![RowOutcome::Retry(reason); rows.len()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: i64) -> Row {
        let mut columns = Map::new();
        columns.insert(
            "event_name".into(),
            Json::String("DeliveryScheduledEvent".into()),
        );
        columns.insert("kafka_offset".into(), Json::from(offset));
        Row {
            insert_id: format!("delivery.events.v10:0:{offset}"),
            columns,
        }
    }

    #[tokio::test]
    async fn rows_are_appended_as_json_lines_with_their_insert_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonlSink::new(dir.path().join("out"));
        assert_eq!(
            sink.write("delivery_events", &[row(1), row(2)]).await,
            vec![RowOutcome::Written; 2]
        );
        assert_eq!(
            sink.write("delivery_events", &[row(3)]).await,
            vec![RowOutcome::Written]
        );

        let text = std::fs::read_to_string(sink.path("delivery_events")).expect("file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["insert_id"], "delivery.events.v10:0:1");
        assert_eq!(lines[2]["kafka_offset"], 3);
        assert_eq!(lines[1]["event_name"], "DeliveryScheduledEvent");
    }

    #[tokio::test]
    async fn a_line_cut_short_by_a_crash_is_removed_before_the_first_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonlSink::new(dir.path());
        let path = sink.path("t");
        std::fs::write(&path, "{\"insert_id\":\"a\"}\n{\"insert_id\":\"b\",\"kaf").expect("write");
        assert_eq!(sink.write("t", &[row(7)]).await, vec![RowOutcome::Written]);
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
    async fn an_unusable_table_is_invalid_and_an_unwritable_directory_is_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = JsonlSink::new(dir.path());
        let outcomes = sink.write("../escape", &[row(1)]).await;
        assert!(
            matches!(&outcomes[..], [RowOutcome::Invalid(reason)] if reason.contains("../escape")),
            "{outcomes:?}"
        );

        // A file where the directory should be: writing fails, the rows are kept for retry.
        let blocker = dir.path().join("blocked");
        std::fs::write(&blocker, "not a directory").expect("write");
        let sink = JsonlSink::new(&blocker);
        let outcomes = sink.write("t", &[row(1), row(2)]).await;
        assert!(
            outcomes.iter().all(|o| matches!(o, RowOutcome::Retry(_))),
            "{outcomes:?}"
        );
    }
}
