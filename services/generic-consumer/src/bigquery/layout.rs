//! The table a domain's rows fit: its columns and their BigQuery types, derived from the
//! row mode and the contract. From it come the schema of a table the sink creates, the
//! check of an existing table's schema at start, and (Storage Write) the writer schema.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::{Value, json};

use crate::{context::RowMode, contract::Contract, row};

/// A column's BigQuery type (GoogleSQL names, as `tables.insert` takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Integer,
    Float,
    Boolean,
    Timestamp,
    Bytes,
    Json,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::Integer => "INTEGER",
            Self::Float => "FLOAT",
            Self::Boolean => "BOOLEAN",
            Self::Timestamp => "TIMESTAMP",
            Self::Bytes => "BYTES",
            Self::Json => "JSON",
        }
    }

    /// Whether a table column of type `name` (as `tables.get` reports it, legacy or
    /// GoogleSQL spelling) takes this column's values.
    fn fits(self, name: &str) -> bool {
        let name = name.to_ascii_uppercase();
        match self {
            Self::String => name == "STRING",
            Self::Integer => matches!(name.as_str(), "INTEGER" | "INT64"),
            Self::Float => matches!(name.as_str(), "FLOAT" | "FLOAT64"),
            Self::Boolean => matches!(name.as_str(), "BOOLEAN" | "BOOL"),
            Self::Timestamp => name == "TIMESTAMP",
            Self::Bytes => name == "BYTES",
            Self::Json => name == "JSON",
        }
    }
}

/// One column of the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
    /// Written in every row (never NULL).
    pub required: bool,
}

/// The columns every row carries, in the order the sinks write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub columns: Vec<Column>,
    pub row_mode: RowMode,
}

impl Layout {
    /// The columns of `contract`'s rows in `row_mode`: the metadata columns, then
    /// `payload` (JSON) or, flattened, the events' top-level fields (scalars as their
    /// type, enums as STRING, timestamps as TIMESTAMP, messages and lists as JSON; a name
    /// two events give different types becomes JSON).
    pub fn of(contract: &Contract, row_mode: RowMode) -> Self {
        use ColumnType::{Integer, Json, String, Timestamp};
        let meta = |name: &str, kind, required| Column {
            name: name.to_owned(),
            kind,
            required,
        };
        let mut columns = vec![
            meta("event_name", String, true),
            meta("event_id", String, false),
            meta("event_timestamp", Timestamp, false),
            meta("kafka_topic", String, true),
            meta("kafka_partition", Integer, true),
            meta("kafka_offset", Integer, true),
            meta("kafka_timestamp", Timestamp, false),
            meta("ingested_at", Timestamp, true),
        ];
        debug_assert!(
            columns
                .iter()
                .map(|c| c.name.as_str())
                .eq(row::METADATA_COLUMNS)
        );
        match row_mode {
            RowMode::Payload => columns.push(meta("payload", Json, true)),
            RowMode::Flatten => {
                let mut fields: BTreeMap<std::string::String, ColumnType> = BTreeMap::new();
                for event in contract.events.values() {
                    let Kind::Message(event) = event.kind() else {
                        continue;
                    };
                    for field in event.fields() {
                        let Some(name) = row::flattened_column(field.name()) else {
                            continue;
                        };
                        let kind = column_type(&field);
                        fields
                            .entry(name)
                            .and_modify(|k| {
                                if *k != kind {
                                    *k = Json;
                                }
                            })
                            .or_insert(kind);
                    }
                }
                columns.extend(fields.into_iter().map(|(name, kind)| Column {
                    name,
                    kind,
                    required: false,
                }));
            }
        }
        Self { columns, row_mode }
    }

    /// `{"fields": [...]}` as `tables.insert` takes it.
    pub fn table_schema(&self) -> Value {
        let fields: Vec<Value> = self
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.kind.name(),
                    "mode": if c.required { "REQUIRED" } else { "NULLABLE" },
                })
            })
            .collect();
        json!({ "fields": fields })
    }

    /// The body of `tables.insert` for a new table: these columns, partitioned by day on
    /// `event_timestamp`, clustered by `event_name`.
    pub fn new_table(&self, project: &str, dataset: &str, table: &str) -> Value {
        json!({
            "tableReference": { "projectId": project, "datasetId": dataset, "tableId": table },
            "schema": self.table_schema(),
            "timePartitioning": { "type": "DAY", "field": "event_timestamp" },
            "clustering": { "fields": ["event_name"] },
            "description": "Rows written by generic-consumer, one per Kafka message kept",
        })
    }

    /// Whether an existing table (its `schema` as `tables.get` returns it) takes these
    /// rows; `Err` names every column that does not fit, with both types.
    pub fn check(&self, schema: &Value) -> Result<(), Vec<String>> {
        let fields = schema
            .get("fields")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let find = |name: &str| {
            fields
                .iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
        };
        let text = |f: &Value, key: &str, default: &'static str| {
            f.get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let mut problems = Vec::new();
        for column in &self.columns {
            let Some(field) = find(&column.name) else {
                problems.push(format!(
                    "column {} ({}) is missing from the table",
                    column.name,
                    column.kind.name()
                ));
                continue;
            };
            let kind = text(field, "type", "?");
            let mode = text(field, "mode", "NULLABLE").to_ascii_uppercase();
            if !column.kind.fits(&kind) {
                problems.push(format!(
                    "column {}: the table has {kind}, the rows need {}",
                    column.name,
                    column.kind.name()
                ));
            } else if mode == "REPEATED" {
                problems.push(format!(
                    "column {}: the table has REPEATED {kind}, the rows need one {} value",
                    column.name,
                    column.kind.name()
                ));
            } else if mode == "REQUIRED" && !column.required {
                problems.push(format!(
                    "column {}: the table has REQUIRED {kind}, the rows may leave it NULL \
                     (make it NULLABLE)",
                    column.name
                ));
            }
        }
        for field in fields {
            let name = text(field, "name", "?");
            let mode = text(field, "mode", "NULLABLE").to_ascii_uppercase();
            if mode == "REQUIRED" && !self.columns.iter().any(|c| c.name == name) {
                problems.push(format!(
                    "column {name}: REQUIRED in the table, but the rows have no such column"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The BigQuery type of an event field's column when rows are flattened.
fn column_type(field: &FieldDescriptor) -> ColumnType {
    if field.is_list() || field.is_map() {
        return ColumnType::Json;
    }
    match field.kind() {
        Kind::Double | Kind::Float => ColumnType::Float,
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Fixed32
        | Kind::Fixed64
        | Kind::Sfixed32
        | Kind::Sfixed64 => ColumnType::Integer,
        Kind::Bool => ColumnType::Boolean,
        Kind::String | Kind::Enum(_) => ColumnType::String,
        Kind::Bytes => ColumnType::Bytes,
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => ColumnType::Timestamp,
        Kind::Message(_) => ColumnType::Json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(mode: RowMode) -> Layout {
        let (_, contract) = crate::contract::for_test(
            "delivery",
            "contracts.delivery.delivery_events_v10",
            "DeliveryEventsV10Topic",
            &[],
        );
        Layout::of(&contract, mode)
    }

    #[test]
    fn payload_rows_have_the_metadata_columns_and_a_json_payload() {
        let layout = delivery(RowMode::Payload);
        let names: Vec<&str> = layout.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_name",
                "event_id",
                "event_timestamp",
                "kafka_topic",
                "kafka_partition",
                "kafka_offset",
                "kafka_timestamp",
                "ingested_at",
                "payload"
            ]
        );
        assert_eq!(layout.columns[2].kind, ColumnType::Timestamp);
        assert_eq!(layout.columns[8].kind, ColumnType::Json);
        // The table it creates takes its own rows.
        layout
            .check(&layout.table_schema())
            .expect("a created table fits");
        let table = layout.new_table("p", "d", "t");
        assert_eq!(table["timePartitioning"]["field"], "event_timestamp");
        assert_eq!(table["clustering"]["fields"][0], "event_name");
    }

    #[test]
    fn a_table_that_does_not_fit_is_refused_naming_each_column_and_both_types() {
        let layout = delivery(RowMode::Payload);
        let mut schema = layout.table_schema();
        let fields = schema["fields"].as_array_mut().expect("fields");
        fields.retain(|f| f["name"] != "kafka_offset");
        for f in fields.iter_mut() {
            if f["name"] == "payload" {
                f["type"] = "STRING".into();
            }
            if f["name"] == "event_id" {
                f["mode"] = "REQUIRED".into();
            }
        }
        fields.push(json!({"name": "region", "type": "STRING", "mode": "REQUIRED"}));
        let problems = layout.check(&schema).expect_err("does not fit");
        assert_eq!(
            problems,
            [
                "column event_id: the table has REQUIRED STRING, the rows may leave it NULL (make it NULLABLE)",
                "column kafka_offset (INTEGER) is missing from the table",
                "column payload: the table has STRING, the rows need JSON",
                "column region: REQUIRED in the table, but the rows have no such column",
            ]
        );
        // Legacy spellings and extra NULLABLE columns are fine.
        let mut schema = layout.table_schema();
        let fields = schema["fields"].as_array_mut().expect("fields");
        for f in fields.iter_mut() {
            if f["type"] == "INTEGER" {
                f["type"] = "INT64".into();
            }
        }
        fields.push(json!({"name": "note", "type": "STRING"}));
        layout.check(&schema).expect("fits");
    }

    #[test]
    fn flattened_rows_have_a_typed_column_per_event_field() {
        let layout = delivery(RowMode::Flatten);
        let kind = |name: &str| {
            layout
                .columns
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.kind)
                .unwrap_or_else(|| panic!("no column {name} in {layout:?}"))
        };
        assert_eq!(kind("order_id"), ColumnType::String);
        assert_eq!(kind("occurred_at"), ColumnType::Timestamp);
        assert_eq!(kind("prices"), ColumnType::Json);
        assert_eq!(kind("signature_required"), ColumnType::Boolean);
        assert!(layout.columns.iter().all(|c| c.name != "event_event_id"));
        layout.check(&layout.table_schema()).expect("fits");
    }
}
