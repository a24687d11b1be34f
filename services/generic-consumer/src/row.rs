//! The row a kept message becomes, typed so that no sink re-encodes it: timestamps are
//! integers (microseconds since the Unix epoch, UTC, the unit BigQuery's TIMESTAMP takes
//! over the Storage Write API), the event is JSON text built once by the decoder, and the
//! insert id is derived from the position on demand (nothing allocated for it).

use std::{fmt, sync::Arc};

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// JSON text, valid by construction (only the decoder and [`Json::from_value`] make it).
/// Kept as written (not shrunk to fit: that would copy it once more).
#[derive(Clone, PartialEq, Eq)]
pub struct Json(Vec<u8>);

impl Json {
    /// Wraps bytes a JSON serializer produced.
    pub(crate) fn from_serialized(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The JSON text of `value`.
    pub fn from_value(value: &serde_json::Value) -> Self {
        // Serialising a `Value` to memory cannot fail.
        Self::from_serialized(serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // serde_json writes UTF-8 only.
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// Appends the text as one JSON string literal (insertAll takes JSON columns so).
    /// The text is compact JSON of our own writing: only `"` and `\` need escaping, and
    /// a control byte (never written raw by a JSON serializer) sends it to serde_json.
    pub fn push_as_string(&self, out: &mut Vec<u8>) {
        let text = self.as_bytes();
        if text.iter().fold(false, |control, &b| control | (b < 0x20)) {
            push_json_utf8(out, text, true);
            return;
        }
        out.reserve(text.len() + text.len() / 4 + 2);
        out.push(b'"');
        let mut run = 0;
        for (i, &b) in text.iter().enumerate() {
            if b == b'"' || b == b'\\' {
                out.extend_from_slice(&text[run..i]);
                out.push(b'\\');
                // The byte itself starts the next run.
                run = i;
            }
        }
        out.extend_from_slice(&text[run..]);
        out.push(b'"');
    }

    /// Parsed back (tests, diagnostics; never on the write path).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a row carries besides its metadata columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `ROW_MODE=payload`: the event as one JSON object, the `payload` column.
    Payload(Json),
    /// `ROW_MODE=flatten`: the event's top-level fields, each its own column.
    Columns(Vec<(Box<str>, Json)>),
}

/// One row for the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The event's message name, shared by every row of that event.
    pub event_name: Arc<str>,
    pub event_id: Option<Box<str>>,
    pub event_timestamp: Option<Micros>,
    pub kafka_topic: Arc<str>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub kafka_timestamp: Option<Micros>,
    pub ingested_at: Micros,
    pub body: Body,
}

/// The metadata columns, in the order every sink writes them.
pub const METADATA_COLUMNS: [&str; 8] = [
    "event_name",
    "event_id",
    "event_timestamp",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "ingested_at",
];

/// The column an event's top-level field becomes in a flattened row: its own name, or
/// `event_<name>` where it would clash with a metadata column; `None` for the event's
/// `event_id` (the `event_id` column holds it already).
pub fn flattened_column(field: &str) -> Option<String> {
    if field == "event_id" {
        return None;
    }
    Some(
        if METADATA_COLUMNS.contains(&field) || field == "payload" || field == "insert_id" {
            format!("event_{field}")
        } else {
            field.to_owned()
        },
    )
}

/// `<topic>:<partition>:<offset>`, written where it is needed.
#[derive(Debug, Clone, Copy)]
pub struct InsertId<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl fmt::Display for InsertId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

impl Row {
    /// The deterministic insert id: the same message always gets the same one.
    pub fn insert_id(&self) -> InsertId<'_> {
        InsertId {
            topic: &self.kafka_topic,
            partition: self.kafka_partition,
            offset: self.kafka_offset,
        }
    }

    /// About how many bytes the row takes in a request (batches are bounded by it).
    pub fn size(&self) -> usize {
        let body = match &self.body {
            Body::Payload(json) => json.as_bytes().len(),
            Body::Columns(columns) => columns
                .iter()
                .map(|(name, value)| name.len() + value.as_bytes().len() + 4)
                .sum(),
        };
        160 + self.event_name.len()
            + self.event_id.as_deref().map_or(0, str::len)
            + 2 * self.kafka_topic.len()
            + body
    }

    /// Appends the row as one JSON object to `out`: `insert_id` first, then the metadata
    /// columns (timestamps as RFC 3339 text), then `payload` or the event's columns.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"insert_id\":\"");
        push_insert_id(out, self);
        out.extend_from_slice(b"\",\"event_name\":");
        push_str(out, &self.event_name);
        out.extend_from_slice(b",\"event_id\":");
        match &self.event_id {
            Some(id) => push_str(out, id),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"event_timestamp\":");
        push_timestamp(out, self.event_timestamp);
        out.extend_from_slice(b",\"kafka_topic\":");
        push_str(out, &self.kafka_topic);
        out.extend_from_slice(b",\"kafka_partition\":");
        push_int(out, i64::from(self.kafka_partition));
        out.extend_from_slice(b",\"kafka_offset\":");
        push_int(out, self.kafka_offset);
        out.extend_from_slice(b",\"kafka_timestamp\":");
        push_timestamp(out, self.kafka_timestamp);
        out.extend_from_slice(b",\"ingested_at\":");
        push_timestamp(out, Some(self.ingested_at));
        match &self.body {
            Body::Payload(json) => {
                out.extend_from_slice(b",\"payload\":");
                out.extend_from_slice(json.as_bytes());
            }
            Body::Columns(columns) => {
                for (name, value) in columns {
                    out.push(b',');
                    push_str(out, name);
                    out.push(b':');
                    out.extend_from_slice(value.as_bytes());
                }
            }
        }
        out.push(b'}');
    }

    /// The row as a JSON object, as [`Row::write_json`] writes it (tests, diagnostics).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        match serde_json::from_slice(&out) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// `row`'s insert id, escaped for the inside of a JSON string, without allocating.
pub(crate) fn push_insert_id(out: &mut Vec<u8>, row: &Row) {
    push_escaped_inner(out, &row.kafka_topic);
    out.push(b':');
    push_int(out, i64::from(row.kafka_partition));
    out.push(b':');
    push_int(out, row.kafka_offset);
}

pub(crate) fn push_int(out: &mut Vec<u8>, n: i64) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(n).as_bytes());
}

/// A JSON string literal.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    push_json_str(out, s);
}

/// Whether text needs escaping in a JSON string: one branch-free pass (it vectorises).
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |special, &b| {
        special | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// `text` as a JSON string literal: copied as it is when nothing needs escaping (the
/// common case), else escaped by serde_json.
pub(crate) fn push_json_str(out: &mut Vec<u8>, text: &str) {
    push_json_utf8(out, text.as_bytes(), needs_escape(text.as_bytes()));
}

/// [`push_json_str`] for UTF-8 bytes whose caller has already checked whether they need
/// escaping.
pub(crate) fn push_json_utf8(out: &mut Vec<u8>, utf8: &[u8], escape: bool) {
    if escape {
        let text = std::str::from_utf8(utf8).unwrap_or_default();
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.push(b'"');
        out.extend_from_slice(utf8);
        out.push(b'"');
    }
}

/// `text` escaped for the inside of a JSON string (no quotes).
pub(crate) fn push_escaped_inner(out: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    // Rare: let serde_json escape it, then drop the quotes it adds.
    let quoted = serde_json::to_vec(text).unwrap_or_else(|_| b"\"\"".to_vec());
    out.extend_from_slice(&quoted[1..quoted.len() - 1]);
}

pub(crate) fn push_timestamp(out: &mut Vec<u8>, micros: Option<Micros>) {
    match micros {
        None => out.extend_from_slice(b"null"),
        Some(micros) => {
            out.push(b'"');
            write_rfc3339(out, micros);
            out.push(b'"');
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` for `micros` (the fraction only when not zero).
pub fn write_rfc3339(out: &mut Vec<u8>, micros: Micros) {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let two = |out: &mut Vec<u8>, n: i64| {
        out.push(b'0' + (n / 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    };
    if (0..=9999).contains(&year) {
        two(out, year / 100);
        two(out, year % 100);
    } else {
        push_int(out, year);
    }
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, of_day / 3600);
    out.push(b':');
    two(out, of_day / 60 % 60);
    out.push(b':');
    two(out, of_day % 60);
    if fraction != 0 {
        out.push(b'.');
        let mut digits = [b'0'; 6];
        let mut rest = fraction;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&digits);
    }
    out.push(b'Z');
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Microseconds of a protobuf `Timestamp` (seconds, nanos).
pub fn micros_of(seconds: i64, nanos: i32) -> Micros {
    seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(nanos) / 1000)
}

/// Microseconds of RFC 3339 text, when it is such.
pub fn parse_rfc3339(text: &str) -> Option<Micros> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(micros: Micros) -> String {
        let mut out = Vec::new();
        write_rfc3339(&mut out, micros);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn json_text_as_a_string_is_what_serde_json_writes() {
        let texts = [
            r#"{"a":"b","n":1,"list":[true,null,-2.5e3],"nested":{"x":""}}"#,
            r#"{"quote":"say \"hi\"","slash":"a\\b","unicode":"grüße ✓ \u0001"}"#,
            r#""just a string""#,
            "42",
            "{}",
            // Whitespace a pretty printer leaves between tokens: raw control bytes.
            "{\n  \"a\": 1\n}",
        ];
        for text in texts {
            let json = Json::from_serialized(text.as_bytes().to_vec());
            let mut out = b"prefix".to_vec();
            json.push_as_string(&mut out);
            let expected = format!("prefix{}", serde_json::to_string(text).expect("json"));
            assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{text}");
        }
    }

    #[test]
    fn timestamps_are_written_as_rfc3339_and_agree_with_the_time_crate() {
        assert_eq!(text(0), "1970-01-01T00:00:00Z");
        assert_eq!(text(1_795_341_600_000_000), "2026-11-22T10:00:00Z");
        assert_eq!(text(1_795_341_600_000_042), "2026-11-22T10:00:00.000042Z");
        assert_eq!(text(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(text(951_782_400_000_000), "2000-02-29T00:00:00Z");
        let format = time::format_description::well_known::Rfc3339;
        for micros in (0..2000).map(|i| i * 987_654_321_123 + 13) {
            let expected =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                    .expect("in range")
                    .format(&format)
                    .expect("formats");
            // The time crate trims trailing zeros of the fraction; this keeps six digits.
            let ours = text(micros);
            assert_eq!(parse_rfc3339(&ours), Some(micros), "{ours} vs {expected}");
            assert_eq!(parse_rfc3339(&expected), Some(micros));
        }
    }

    #[test]
    fn a_row_is_one_json_object_with_its_insert_id_first() {
        let row = Row {
            event_name: "DeliveryScheduledEvent".into(),
            event_id: Some("ev-\"1\"".into()),
            event_timestamp: Some(1_795_341_600_000_000),
            kafka_topic: "delivery.events.v10".into(),
            kafka_partition: 2,
            kafka_offset: 41,
            kafka_timestamp: None,
            ingested_at: 1_795_341_700_000_000,
            body: Body::Payload(Json::from_value(&serde_json::json!({"order_id": "o-9"}))),
        };
        let mut out = Vec::new();
        row.write_json(&mut out);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.starts_with(r#"{"insert_id":"delivery.events.v10:2:41","event_name":"#),
            "{text}"
        );
        let json = row.to_json();
        assert_eq!(json["event_id"], "ev-\"1\"");
        assert_eq!(json["event_timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(json["kafka_timestamp"], serde_json::Value::Null);
        assert_eq!(json["ingested_at"], "2026-11-22T10:01:40Z");
        assert_eq!(json["payload"]["order_id"], "o-9");
        assert_eq!(row.insert_id().to_string(), "delivery.events.v10:2:41");
        assert!(row.size() > text.len() / 2);
    }
}
