//! Rows as the Storage Write API takes them: a `writer_schema` (a proto2
//! `DescriptorProto` with one field per column of the layout, in its order) and each row
//! serialized against it. TIMESTAMP columns are int64 microseconds since the epoch (the
//! row holds them so), JSON columns strings holding the JSON text, INTEGER int64, FLOAT
//! double, BOOLEAN bool, BYTES bytes.

use base64::Engine as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_types::{
    DescriptorProto, FieldDescriptorProto,
    field_descriptor_proto::{Label, Type},
};

use super::layout::{ColumnType, Layout};
use crate::row::{Body, Micros, Row};

/// The message name of the writer schema.
pub const ROW_MESSAGE: &str = "Row";

/// The writer schema of `layout`: field `n + 1` is column `n`.
pub fn writer_schema(layout: &Layout) -> DescriptorProto {
    DescriptorProto {
        name: Some(ROW_MESSAGE.to_owned()),
        field: layout
            .columns
            .iter()
            .enumerate()
            .map(|(n, column)| FieldDescriptorProto {
                name: Some(column.name.clone()),
                number: Some(n as i32 + 1),
                label: Some(Label::Optional as i32),
                r#type: Some(proto_type(column.kind) as i32),
                ..FieldDescriptorProto::default()
            })
            .collect(),
        ..DescriptorProto::default()
    }
}

fn proto_type(kind: ColumnType) -> Type {
    match kind {
        ColumnType::String | ColumnType::Json => Type::String,
        ColumnType::Integer | ColumnType::Timestamp => Type::Int64,
        ColumnType::Float => Type::Double,
        ColumnType::Boolean => Type::Bool,
        ColumnType::Bytes => Type::Bytes,
    }
}

/// Writes rows of one layout.
#[derive(Debug, Clone)]
pub struct RowEncoder {
    /// Flattened columns: name -> (field number, type).
    columns: std::collections::HashMap<String, (u32, ColumnType)>,
}

fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn put_int(tag: u32, value: i64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(value as u64, out);
}

impl RowEncoder {
    pub fn new(layout: &Layout) -> Self {
        Self {
            columns: layout
                .columns
                .iter()
                .enumerate()
                .map(|(n, c)| (c.name.clone(), (n as u32 + 1, c.kind)))
                .collect(),
        }
    }

    /// Appends `row` serialized against the writer schema; `Err` says why a flattened
    /// value does not fit its column (the row is then invalid as it is).
    pub fn encode(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), String> {
        put_bytes(1, row.event_name.as_bytes(), out);
        if let Some(id) = &row.event_id {
            put_bytes(2, id.as_bytes(), out);
        }
        if let Some(ts) = row.event_timestamp {
            put_int(3, ts, out);
        }
        put_bytes(4, row.kafka_topic.as_bytes(), out);
        put_int(5, i64::from(row.kafka_partition), out);
        put_int(6, row.kafka_offset, out);
        if let Some(ts) = row.kafka_timestamp {
            put_int(7, ts, out);
        }
        put_int(8, row.ingested_at, out);
        match &row.body {
            Body::Payload(json) => put_bytes(9, json.as_bytes(), out),
            Body::Columns(columns) => {
                for (name, value) in columns {
                    let Some(&(tag, kind)) = self.columns.get(&**name) else {
                        return Err(format!("no column {name} in the table layout"));
                    };
                    encode_value(tag, kind, value.as_bytes(), out)
                        .map_err(|e| format!("column {name} ({}): {e}", kind.name()))?;
                }
            }
        }
        Ok(())
    }
}

/// One flattened column's JSON value as its column's proto field (nothing for null).
fn encode_value(tag: u32, kind: ColumnType, json: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if json == b"null" {
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let bad = || format!("{value} does not fit");
    match kind {
        ColumnType::Json => put_bytes(tag, json, out),
        ColumnType::String => put_bytes(tag, value.as_str().ok_or_else(bad)?.as_bytes(), out),
        ColumnType::Integer => {
            let n = match &value {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            put_int(tag, n.ok_or_else(bad)?, out);
        }
        ColumnType::Float => {
            let f = match &value {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => match s.as_str() {
                    "NaN" => Some(f64::NAN),
                    "Infinity" => Some(f64::INFINITY),
                    "-Infinity" => Some(f64::NEG_INFINITY),
                    _ => None,
                },
                _ => None,
            };
            encode_key(tag, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.ok_or_else(bad)?.to_le_bytes());
        }
        ColumnType::Boolean => put_int(tag, i64::from(value.as_bool().ok_or_else(bad)?), out),
        ColumnType::Timestamp => put_int(tag, parse_micros(value.as_str().ok_or_else(bad)?)?, out),
        ColumnType::Bytes => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().ok_or_else(bad)?)
                .map_err(|e| format!("not base64: {e}"))?;
            put_bytes(tag, &bytes, out);
        }
    }
    Ok(())
}

/// RFC 3339 text to microseconds since the epoch.
fn parse_micros(text: &str) -> Result<Micros, String> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp: {e}"))?;
    i64::try_from(at.unix_timestamp_nanos() / 1000).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, DynamicMessage, Value};
    use prost_types::{FileDescriptorProto, FileDescriptorSet};

    use super::*;
    use crate::{
        context::RowMode,
        row::{Body, Json},
    };

    fn layout(mode: RowMode) -> Layout {
        let (_, contract) = crate::contract::for_test(
            "delivery",
            "contracts.delivery.delivery_events_v10",
            "DeliveryEventsV10Topic",
            &[],
        );
        Layout::of(&contract, mode)
    }

    /// Decodes `bytes` with the writer schema, as the Storage Write API does.
    fn decode(layout: &Layout, bytes: &[u8]) -> DynamicMessage {
        let file = FileDescriptorProto {
            name: Some("row.proto".into()),
            message_type: vec![writer_schema(layout)],
            ..FileDescriptorProto::default()
        };
        let pool = DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] })
            .expect("the writer schema is a valid descriptor");
        let row = pool.get_message_by_name(ROW_MESSAGE).expect("Row");
        DynamicMessage::decode(row, bytes).expect("decodes")
    }

    fn row(body: Body) -> Row {
        Row {
            event_name: "DeliveryScheduledEvent".into(),
            event_id: Some("id-1".into()),
            event_timestamp: Some(1_796_000_000_123_456),
            kafka_topic: "delivery.events.v10".into(),
            kafka_partition: 2,
            kafka_offset: 41,
            kafka_timestamp: None,
            ingested_at: 1_796_000_001_000_000,
            body,
        }
    }

    #[test]
    fn payload_rows_decode_with_the_writer_schema() {
        let layout = layout(RowMode::Payload);
        let payload = br#"{"order_id":"o-1","parcels":[]}"#;
        let row = row(Body::Payload(Json::from_value(
            &serde_json::from_slice(payload).expect("json"),
        )));
        let mut bytes = Vec::new();
        RowEncoder::new(&layout)
            .encode(&row, &mut bytes)
            .expect("encodes");
        let message = decode(&layout, &bytes);
        let get = |name: &str| message.get_field_by_name(name).expect(name).into_owned();
        assert_eq!(
            get("event_name"),
            Value::String("DeliveryScheduledEvent".into())
        );
        assert_eq!(get("event_timestamp"), Value::I64(1_796_000_000_123_456));
        assert_eq!(get("kafka_partition"), Value::I64(2));
        assert_eq!(get("kafka_offset"), Value::I64(41));
        assert!(
            !message.has_field_by_name("kafka_timestamp"),
            "NULL is left out"
        );
        assert_eq!(
            get("payload"),
            Value::String(String::from_utf8(payload.to_vec()).expect("utf-8"))
        );
    }

    #[test]
    fn flattened_values_take_their_columns_types_or_say_why_not() {
        let layout = layout(RowMode::Flatten);
        let columns = |pairs: &[(&str, &str)]| {
            Body::Columns(
                pairs
                    .iter()
                    .map(|(n, v)| {
                        (
                            (*n).into(),
                            Json::from_value(&serde_json::from_str(v).expect("json")),
                        )
                    })
                    .collect(),
            )
        };
        let encoder = RowEncoder::new(&layout);
        let mut bytes = Vec::new();
        encoder
            .encode(
                &row(columns(&[
                    ("order_id", r#""o-7""#),
                    ("occurred_at", r#""2026-11-22T00:00:01.5Z""#),
                    ("signature_required", "true"),
                    ("prices", r#"[{"carrier":"dhl"}]"#),
                ])),
                &mut bytes,
            )
            .expect("encodes");
        let message = decode(&layout, &bytes);
        let get = |name: &str| message.get_field_by_name(name).expect(name).into_owned();
        assert_eq!(get("order_id"), Value::String("o-7".into()));
        assert_eq!(get("occurred_at"), Value::I64(1_795_305_601_500_000));
        assert_eq!(get("signature_required"), Value::Bool(true));
        assert_eq!(
            get("prices"),
            Value::String(r#"[{"carrier":"dhl"}]"#.into())
        );

        let error = encoder
            .encode(
                &row(columns(&[("signature_required", r#""yes""#)])),
                &mut Vec::new(),
            )
            .expect_err("a string is no BOOLEAN");
        assert_eq!(
            error,
            r#"column signature_required (BOOLEAN): "yes" does not fit"#
        );
    }
}
