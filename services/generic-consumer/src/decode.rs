//! From a Kafka message to a row: decode the payload with the domain's contract
//! (protobuf or proto3 JSON), take the event from the topic message's oneof, skip it when
//! ignored (before any row is built), and build the row with its metadata columns and a
//! deterministic insert id (`<topic>:<partition>:<offset>`), so a redelivery is deduped.

use std::collections::BTreeSet;

use prost_reflect::{DynamicMessage, SerializeOptions, Value};
use serde_json::{Map, Value as Json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    context::{Format, RowMode},
    contract::Contract,
};

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMeta {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp, unix milliseconds, when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

impl KafkaMeta {
    /// `<topic>:<partition>:<offset>`: the same message always gets the same id.
    pub fn insert_id(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// One row for the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub insert_id: String,
    pub columns: Map<String, Json>,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The event is in the ignore list: no row.
    Ignored {
        event: String,
    },
    Row(Row),
}

/// Why a message cannot become a row (it goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid {message} (protobuf): {reason}")]
    Protobuf { message: String, reason: String },
    #[error("not a valid {message} (JSON): {reason}")]
    Json { message: String, reason: String },
    #[error("{message} carries no event (its oneof is unset)")]
    NoEvent { message: String },
    #[error("event {event} cannot be turned into a row: {reason}")]
    Row { event: String, reason: String },
}

/// Fields read as the event's timestamp, in order.
const TIMESTAMP_FIELDS: [&str; 3] = ["occurred_at", "event_timestamp", "timestamp"];

/// Decodes messages of one domain.
#[derive(Debug, Clone)]
pub struct Decoder {
    contract: Contract,
    ignore: BTreeSet<String>,
    row_mode: RowMode,
    json: SerializeOptions,
}

impl Decoder {
    pub fn new(contract: Contract, ignore: BTreeSet<String>, row_mode: RowMode) -> Self {
        // Column names are the contract's field names; 64-bit integers stay numbers.
        let json = SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false);
        Self {
            contract,
            ignore,
            row_mode,
            json,
        }
    }

    /// Decodes one payload; `ingested_at` is stamped on the row.
    pub fn decode(
        &self,
        payload: &[u8],
        meta: &KafkaMeta,
        ingested_at: OffsetDateTime,
    ) -> Result<Decoded, DecodeError> {
        let descriptor = self.contract.topic_message.clone();
        let message_name = descriptor.name().to_owned();
        let topic_message =
            match self.contract.format {
                Format::Protobuf => DynamicMessage::decode(descriptor, payload).map_err(|e| {
                    DecodeError::Protobuf {
                        message: message_name.clone(),
                        reason: e.to_string(),
                    }
                })?,
                Format::Json => {
                    let mut deserializer = serde_json::Deserializer::from_slice(payload);
                    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
                        .map_err(|e| DecodeError::Json {
                            message: message_name.clone(),
                            reason: e.to_string(),
                        })?;
                    deserializer.end().map_err(|e| DecodeError::Json {
                        message: message_name.clone(),
                        reason: e.to_string(),
                    })?;
                    message
                }
            };

        let (event_name, event) = self
            .contract
            .events
            .iter()
            .find(|(_, field)| topic_message.has_field(field))
            .and_then(
                |(name, field)| match topic_message.get_field(field).into_owned() {
                    Value::Message(event) => Some((name.clone(), event)),
                    _ => None,
                },
            )
            .ok_or(DecodeError::NoEvent {
                message: message_name,
            })?;

        // The ignore list is applied before any row is built.
        if self.ignore.contains(&event_name) {
            return Ok(Decoded::Ignored { event: event_name });
        }

        let row_error = |reason: String| DecodeError::Row {
            event: event_name.clone(),
            reason,
        };
        let fields = match event
            .serialize_with_options(serde_json::value::Serializer, &self.json)
            .map_err(|e| row_error(e.to_string()))?
        {
            Json::Object(fields) => fields,
            other => return Err(row_error(format!("expected an object, got {other}"))),
        };

        let mut columns = Map::new();
        columns.insert("event_name".into(), Json::String(event_name.clone()));
        columns.insert(
            "event_id".into(),
            fields
                .get("event_id")
                .cloned()
                .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                .unwrap_or(Json::Null),
        );
        columns.insert(
            "event_timestamp".into(),
            TIMESTAMP_FIELDS
                .iter()
                .find_map(|name| fields.get(*name).cloned())
                .unwrap_or(Json::Null),
        );
        columns.insert("kafka_topic".into(), Json::String(meta.topic.clone()));
        columns.insert("kafka_partition".into(), Json::from(meta.partition));
        columns.insert("kafka_offset".into(), Json::from(meta.offset));
        columns.insert(
            "kafka_timestamp".into(),
            meta.timestamp_ms
                .and_then(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                })
                .and_then(|t| t.format(&Rfc3339).ok())
                .map_or(Json::Null, Json::String),
        );
        columns.insert(
            "ingested_at".into(),
            ingested_at
                .format(&Rfc3339)
                .map(Json::String)
                .map_err(|e| row_error(e.to_string()))?,
        );
        match self.row_mode {
            RowMode::Payload => {
                columns.insert("payload".into(), Json::Object(fields));
            }
            RowMode::Flatten => {
                for (name, value) in fields {
                    // Metadata columns keep their meaning; a clashing event field is prefixed.
                    let column = if columns.contains_key(&name) && name != "event_id" {
                        format!("event_{name}")
                    } else {
                        name
                    };
                    columns.insert(column, value);
                }
            }
        }
        Ok(Decoded::Row(Row {
            insert_id: meta.insert_id(),
            columns,
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn decoder_for(domain: &str, path: &str, object: &str, extra: &[(&str, &str)]) -> Decoder {
        let (context, contract) = crate::contract::for_test(domain, path, object, extra);
        Decoder::new(contract, context.ignore_events.clone(), context.row_mode)
    }

    fn delivery(extra: &[(&str, &str)]) -> Decoder {
        decoder_for(
            "delivery",
            "contracts.delivery.delivery_events_v10",
            "DeliveryEventsV10Topic",
            extra,
        )
    }

    /// A delivery topic message from its proto3 JSON form, encoded as protobuf.
    fn delivery_bytes(json: &str) -> Vec<u8> {
        let pool = contracts::descriptor_pool().expect("pool");
        let descriptor = pool
            .get_message_by_name("contracts.delivery.DeliveryEventsV10Topic")
            .expect("message");
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(descriptor, &mut de)
            .expect("valid JSON")
            .encode_to_vec()
    }

    fn meta(offset: i64) -> KafkaMeta {
        KafkaMeta {
            topic: "delivery.events.v10".into(),
            partition: 2,
            offset,
            timestamp_ms: Some(1_795_341_600_000),
        }
    }

    const SCHEDULED: &str = r#"{"deliveryScheduled": {"eventId": "ev-1", "occurredAt": "2026-11-22T10:00:00Z",
        "orderId": "o-9", "carrier": "postnord"}}"#;

    #[test]
    fn a_protobuf_event_becomes_a_row_with_metadata_and_payload() {
        let ingested = OffsetDateTime::from_unix_timestamp(1_795_341_700).expect("time");
        let decoded = delivery(&[])
            .decode(&delivery_bytes(SCHEDULED), &meta(41), ingested)
            .expect("decodes");
        let Decoded::Row(row) = decoded else {
            panic!("a row")
        };
        assert_eq!(row.insert_id, "delivery.events.v10:2:41");
        let c = &row.columns;
        assert_eq!(c["event_name"], "DeliveryScheduledEvent");
        assert_eq!(c["event_id"], "ev-1");
        assert_eq!(c["event_timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(c["kafka_partition"], 2);
        assert_eq!(c["kafka_offset"], 41);
        assert_eq!(c["kafka_timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(c["ingested_at"], "2026-11-22T10:01:40Z");
        assert_eq!(
            c["payload"]["order_id"], "o-9",
            "contract field names, not camelCase"
        );
        assert_eq!(c["payload"]["carrier"], "postnord");
    }

    #[test]
    fn ignored_events_never_become_rows() {
        let decoder = delivery(&[(
            "IGNORE_EVENTS_DELIVERY",
            r#""[\"ShippingPricesEstimatedEvent\"]""#,
        )]);
        let estimated = delivery_bytes(
            r#"{"shippingPricesEstimated": {"eventId": "ev-2", "prices": [{"carrier": "dhl", "priceMinor": "1299"}]}}"#,
        );
        let decoded = decoder
            .decode(&estimated, &meta(1), OffsetDateTime::now_utc())
            .expect("decodes");
        assert_eq!(
            decoded,
            Decoded::Ignored {
                event: "ShippingPricesEstimatedEvent".into()
            }
        );
        let kept = decoder
            .decode(
                &delivery_bytes(SCHEDULED),
                &meta(2),
                OffsetDateTime::now_utc(),
            )
            .expect("decodes");
        assert!(matches!(kept, Decoded::Row(_)));
    }

    #[test]
    fn flatten_mode_writes_the_events_fields_as_columns() {
        let decoded = delivery(&[("ROW_MODE_DELIVERY", "flatten")])
            .decode(
                &delivery_bytes(SCHEDULED),
                &meta(3),
                OffsetDateTime::now_utc(),
            )
            .expect("decodes");
        let Decoded::Row(row) = decoded else {
            panic!("a row")
        };
        assert_eq!(row.columns["order_id"], "o-9");
        assert_eq!(row.columns["carrier"], "postnord");
        assert!(!row.columns.contains_key("payload"));
    }

    #[test]
    fn json_payloads_follow_the_contracts_format() {
        let decoder = decoder_for(
            "payments",
            "contracts.payments.payment_events_v2",
            "PaymentEventsV2Topic",
            &[],
        );
        let payload = br#"{"paymentCaptured": {"eventId": "p-1", "paymentId": "pay-7", "amountMinor": "4200"}}"#;
        let decoded = decoder
            .decode(payload, &meta(9), OffsetDateTime::now_utc())
            .expect("decodes");
        let Decoded::Row(row) = decoded else {
            panic!("a row")
        };
        assert_eq!(row.columns["event_name"], "PaymentCapturedEvent");
        assert_eq!(
            row.columns["payload"]["amount_minor"], 4200,
            "64-bit integers stay numbers"
        );
    }

    #[test]
    fn undecodable_messages_are_errors_that_say_why() {
        let decoder = delivery(&[]);
        let garbage = decoder.decode(&[0xff, 0xff, 0xff], &meta(4), OffsetDateTime::now_utc());
        assert!(
            matches!(garbage, Err(DecodeError::Protobuf { .. })),
            "{garbage:?}"
        );
        let empty = decoder.decode(&[], &meta(5), OffsetDateTime::now_utc());
        assert_eq!(
            empty,
            Err(DecodeError::NoEvent {
                message: "DeliveryEventsV10Topic".into()
            })
        );

        let json = decoder_for(
            "payments",
            "contracts.payments.payment_events_v2",
            "PaymentEventsV2Topic",
            &[],
        );
        let bad = json.decode(
            br#"{"paymentCaptured": {"amountMinor": "lots"}}"#,
            &meta(6),
            OffsetDateTime::now_utc(),
        );
        assert!(matches!(bad, Err(DecodeError::Json { .. })), "{bad:?}");
        let trailing = json.decode(br#"{} {}"#, &meta(7), OffsetDateTime::now_utc());
        assert!(
            matches!(trailing, Err(DecodeError::Json { .. })),
            "{trailing:?}"
        );
    }
}
