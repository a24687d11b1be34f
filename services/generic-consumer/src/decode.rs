//! From a Kafka message to a row: decode the payload with the domain's contract
//! (protobuf or proto3 JSON), take the event out of the topic message's oneof, skip it when
//! ignored (before any row is built), and build the typed [`Row`]: metadata columns as
//! integers, the event serialized to JSON text once, the insert id derived from the
//! position (`<topic>:<partition>:<offset>`, so a redelivery is deduped).
//!
//! JSON domains ignore fields the contract does not know (a producer that adds a field must
//! not dead-letter the topic); rows keep zero values (`0`, `false`, `""`, enum 0 are
//! values, not missing), as protobuf rows and JSON rows alike.

use std::{collections::HashMap, sync::Arc};

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Value,
};
use serde_json::Value as JsonValue;

use crate::{
    context::{Format, RowMode},
    contract::Contract,
    row::{self, Body, Json, Micros, Row},
    transcode::{Capture, Captured, Plans, Reader},
};

/// Where a message came from, within the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp, unix milliseconds, when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The event is in the ignore list: no row.
    Ignored {
        event: Arc<str>,
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
    #[error(
        "{message} carries no event (its oneof is unset, or set to an event this contract does not know)"
    )]
    NoEvent { message: String },
    #[error("event {event} cannot be turned into a row: {reason}")]
    Row { event: String, reason: String },
}

/// Fields read as the event's timestamp, in order.
const TIMESTAMP_FIELDS: [&str; 3] = ["occurred_at", "event_timestamp", "timestamp"];

/// How an event's timestamp field is read.
#[derive(Debug, Clone)]
enum TimestampField {
    /// A `google.protobuf.Timestamp`.
    Message(FieldDescriptor),
    /// RFC 3339 text.
    Text(FieldDescriptor),
}

/// What the decoder knows of one event of the oneof, resolved once.
#[derive(Debug, Clone)]
struct Event {
    name: Arc<str>,
    ignored: bool,
    id: Option<FieldDescriptor>,
    timestamp: Option<TimestampField>,
    /// The event's plan, when the decoder transcodes (protobuf, payload rows).
    plan: Option<usize>,
    capture: Capture,
}

impl Event {
    fn new(name: &str, descriptor: &MessageDescriptor, ignored: bool) -> Self {
        let id = descriptor
            .get_field_by_name("event_id")
            .filter(|f| matches!(f.kind(), Kind::String) && !f.is_list());
        let timestamp = TIMESTAMP_FIELDS.iter().find_map(|name| {
            let field = descriptor.get_field_by_name(name)?;
            if field.is_list() {
                return None;
            }
            match field.kind() {
                Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
                    Some(TimestampField::Message(field))
                }
                Kind::String => Some(TimestampField::Text(field)),
                _ => None,
            }
        });
        let capture = Capture {
            event_id: id.as_ref().map(FieldDescriptor::number),
            timestamp: timestamp.as_ref().map(|t| match t {
                TimestampField::Message(f) | TimestampField::Text(f) => f.number(),
            }),
        };
        Self {
            name: name.into(),
            ignored,
            id,
            timestamp,
            plan: None,
            capture,
        }
    }

    fn timestamp_of(&self, event: &DynamicMessage) -> Option<Micros> {
        match self.timestamp.as_ref()? {
            TimestampField::Message(field) => {
                if !event.has_field(field) {
                    return None;
                }
                let Value::Message(ts) = &*event.get_field(field) else {
                    return None;
                };
                let seconds = ts.get_field_by_number(1).and_then(|v| v.as_i64())?;
                let nanos = ts.get_field_by_number(2).and_then(|v| v.as_i32())?;
                Some(row::micros_of(seconds, nanos))
            }
            TimestampField::Text(field) => match &*event.get_field(field) {
                Value::String(text) => row::parse_rfc3339(text),
                _ => None,
            },
        }
    }

    fn id_of(&self, event: &DynamicMessage) -> Option<Box<str>> {
        match &*event.get_field(self.id.as_ref()?) {
            Value::String(id) if !id.is_empty() => Some(id.as_str().into()),
            _ => None,
        }
    }
}

/// Decodes messages of one domain.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: Format,
    topic_message: MessageDescriptor,
    topic: Arc<str>,
    /// Oneof field number -> the event it carries.
    events: HashMap<u32, Event>,
    row_mode: RowMode,
    serialize: SerializeOptions,
    deserialize: DeserializeOptions,
    /// Wire-to-JSON plans (protobuf domains with payload rows whose types they cover).
    plans: Option<Arc<Plans>>,
}

impl Decoder {
    pub fn new(
        contract: &Contract,
        ignore: &std::collections::BTreeSet<String>,
        row_mode: RowMode,
    ) -> Self {
        let mut events: HashMap<u32, Event> = contract
            .events
            .iter()
            .filter_map(|(name, field)| match field.kind() {
                Kind::Message(descriptor) => Some((
                    field.number(),
                    Event::new(name, &descriptor, ignore.contains(name)),
                )),
                _ => None,
            })
            .collect();
        let plans = (contract.format == Format::Protobuf && row_mode == RowMode::Payload)
            .then(|| Plans::compile(&contract.topic_message))
            .flatten();
        if let Some(plans) = &plans {
            for (number, event) in &mut events {
                event.plan =
                    contract.topic_message.get_field(*number).and_then(|field| {
                        match field.kind() {
                            Kind::Message(m) => plans.index_of(m.full_name()),
                            _ => None,
                        }
                    });
            }
        }
        Self {
            plans: plans.map(Arc::new),
            format: contract.format,
            topic_message: contract.topic_message.clone(),
            topic: contract.topic.as_str().into(),
            events,
            row_mode,
            // Column names are the contract's field names; 64-bit integers stay numbers;
            // zero values are written (they are values, not NULLs).
            serialize: SerializeOptions::new()
                .use_proto_field_name(true)
                .stringify_64_bit_integers(false)
                .skip_default_fields(false),
            deserialize: DeserializeOptions::new().deny_unknown_fields(false),
        }
    }

    /// The topic rows are stamped with.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// Decodes one payload; `ingested_at` is stamped on the row.
    pub fn decode(
        &self,
        payload: &[u8],
        position: Position,
        ingested_at: Micros,
    ) -> Result<Decoded, DecodeError> {
        if let Some(plans) = &self.plans {
            return self.transcode(plans, payload, position, ingested_at);
        }
        let descriptor = self.topic_message.clone();
        let message_name = || descriptor.name().to_owned();
        let mut topic_message = match self.format {
            Format::Protobuf => {
                DynamicMessage::decode(descriptor.clone(), payload).map_err(|e| {
                    DecodeError::Protobuf {
                        message: message_name(),
                        reason: e.to_string(),
                    }
                })?
            }
            Format::Json => {
                let json_error = |e: serde_json::Error| DecodeError::Json {
                    message: message_name(),
                    reason: e.to_string(),
                };
                let mut deserializer = serde_json::Deserializer::from_slice(payload);
                let message = DynamicMessage::deserialize_with_options(
                    descriptor.clone(),
                    &mut deserializer,
                    &self.deserialize,
                )
                .map_err(json_error)?;
                deserializer.end().map_err(json_error)?;
                message
            }
        };

        let Some((field, event)) = topic_message
            .fields()
            .find_map(|(field, _)| Some((field.clone(), self.events.get(&field.number())?)))
        else {
            return Err(DecodeError::NoEvent {
                message: message_name(),
            });
        };
        // The ignore list is applied before any row is built.
        if event.ignored {
            return Ok(Decoded::Ignored {
                event: Arc::clone(&event.name),
            });
        }
        let Some(Value::Message(message)) = topic_message.take_field(&field) else {
            return Err(DecodeError::NoEvent {
                message: message_name(),
            });
        };
        let row_error = |reason: String| DecodeError::Row {
            event: event.name.to_string(),
            reason,
        };
        let body = match self.row_mode {
            RowMode::Payload => {
                let mut text = Vec::with_capacity(payload.len() * 2 + 64);
                message
                    .serialize_with_options(
                        &mut serde_json::Serializer::new(&mut text),
                        &self.serialize,
                    )
                    .map_err(|e| row_error(e.to_string()))?;
                Body::Payload(Json::from_serialized(text))
            }
            RowMode::Flatten => {
                let fields = match message
                    .serialize_with_options(serde_json::value::Serializer, &self.serialize)
                    .map_err(|e| row_error(e.to_string()))?
                {
                    JsonValue::Object(fields) => fields,
                    other => return Err(row_error(format!("expected an object, got {other}"))),
                };
                let columns = fields
                    .into_iter()
                    .filter_map(|(name, value)| {
                        let column = row::flattened_column(&name)?;
                        Some((column.into_boxed_str(), Json::from_value(&value)))
                    })
                    .collect();
                Body::Columns(columns)
            }
        };
        let captured = Captured {
            event_id: event.id_of(&message),
            timestamp: event.timestamp_of(&message),
        };
        Ok(self.row(event, captured, position, ingested_at, body))
    }

    /// The row of `event` at `position`.
    fn row(
        &self,
        event: &Event,
        captured: Captured,
        position: Position,
        ingested_at: Micros,
        body: Body,
    ) -> Decoded {
        Decoded::Row(Row {
            event_name: Arc::clone(&event.name),
            event_id: captured.event_id,
            event_timestamp: captured.timestamp,
            kafka_topic: Arc::clone(&self.topic),
            kafka_partition: position.partition,
            kafka_offset: position.offset,
            kafka_timestamp: position.timestamp_ms.map(|ms| ms.saturating_mul(1000)),
            ingested_at,
            body,
        })
    }
}

impl Decoder {
    /// The fast path: the event found on the wire, its JSON written straight from it.
    fn transcode(
        &self,
        plans: &Plans,
        payload: &[u8],
        position: Position,
        ingested_at: Micros,
    ) -> Result<Decoded, DecodeError> {
        let protobuf_error = |reason: String| DecodeError::Protobuf {
            message: self.topic_message.name().to_owned(),
            reason,
        };
        // The oneof's last member on the wire wins; a member that occurs twice is merged.
        let mut reader = Reader { data: payload };
        let mut chosen: Option<u32> = None;
        // Nearly always one occurrence: no allocation for it.
        let mut first: &[u8] = &[];
        let mut more: Vec<&[u8]> = Vec::new();
        while !reader.done() {
            let (number, wire) = reader.key().map_err(|e| protobuf_error(e.0))?;
            let value = reader
                .bytes_or_skip(wire)
                .map_err(|e| protobuf_error(e.0))?;
            if !self.events.contains_key(&number) {
                continue;
            }
            let Some(bytes) = value else {
                return Err(protobuf_error(format!(
                    "field {number} carries an event but is not length-delimited"
                )));
            };
            if chosen != Some(number) {
                chosen = Some(number);
                first = bytes;
                more.clear();
            } else {
                if more.is_empty() {
                    more.push(first);
                }
                more.push(bytes);
            }
        }
        let Some(event) = chosen.and_then(|number| self.events.get(&number)) else {
            return Err(DecodeError::NoEvent {
                message: self.topic_message.name().to_owned(),
            });
        };
        if event.ignored {
            return Ok(Decoded::Ignored {
                event: Arc::clone(&event.name),
            });
        }
        let Some(plan) = event.plan else {
            return Err(protobuf_error(format!("no plan for {}", event.name)));
        };
        let mut text = Vec::with_capacity(payload.len() * 2 + 64);
        let single = [first];
        let ranges: &[&[u8]] = if more.is_empty() { &single } else { &more };
        let captured = plans
            .write(plan, ranges, &mut text, &event.capture)
            .map_err(|e| protobuf_error(e.0))?;
        let body = Body::Payload(Json::from_serialized(text));
        Ok(self.row(event, captured, position, ingested_at, body))
    }

    /// Whether protobuf payloads are transcoded without a `DynamicMessage`.
    pub fn transcodes(&self) -> bool {
        self.plans.is_some()
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> Micros {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn decoder_for(domain: &str, path: &str, object: &str, extra: &[(&str, &str)]) -> Decoder {
        let (context, contract) = crate::contract::for_test(domain, path, object, extra);
        Decoder::new(&contract, &context.ignore_events, context.row_mode)
    }

    fn delivery(extra: &[(&str, &str)]) -> Decoder {
        decoder_for(
            "delivery",
            "contracts.delivery.delivery_events_v10",
            "DeliveryEventsV10Topic",
            extra,
        )
    }

    fn payments() -> Decoder {
        decoder_for(
            "payments",
            "contracts.payments.payment_events_v2",
            "PaymentEventsV2Topic",
            &[],
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

    fn at(offset: i64) -> Position {
        Position {
            partition: 2,
            offset,
            timestamp_ms: Some(1_795_341_600_000),
        }
    }

    fn a_row(decoded: Result<Decoded, DecodeError>) -> Row {
        match decoded {
            Ok(Decoded::Row(row)) => row,
            other => panic!("a row, not {other:?}"),
        }
    }

    const SCHEDULED: &str = r#"{"deliveryScheduled": {"eventId": "ev-1", "occurredAt": "2026-11-22T10:00:00Z",
        "orderId": "o-9", "carrier": "postnord"}}"#;

    #[test]
    fn a_protobuf_event_becomes_a_typed_row_with_metadata_and_payload() {
        let row =
            a_row(delivery(&[]).decode(&delivery_bytes(SCHEDULED), at(41), 1_795_341_700_000_000));
        assert!(
            delivery(&[]).transcodes(),
            "protobuf payload rows take the fast path"
        );
        assert!(!payments().transcodes(), "JSON domains do not");
        assert_eq!(row.insert_id().to_string(), "delivery.events.v10:2:41");
        assert_eq!(&*row.event_name, "DeliveryScheduledEvent");
        assert_eq!(row.event_id.as_deref(), Some("ev-1"));
        assert_eq!(row.event_timestamp, Some(1_795_341_600_000_000));
        assert_eq!(row.kafka_timestamp, Some(1_795_341_600_000_000));
        assert_eq!((row.kafka_partition, row.kafka_offset), (2, 41));
        let c = row.to_json();
        assert_eq!(c["event_timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(c["kafka_timestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(c["ingested_at"], "2026-11-22T10:01:40Z");
        assert_eq!(c["kafka_topic"], "delivery.events.v10");
        assert_eq!(
            c["payload"]["order_id"], "o-9",
            "contract field names, not camelCase"
        );
        assert_eq!(c["payload"]["carrier"], "postnord");
    }

    #[test]
    fn protobuf_rows_keep_zero_values() {
        // Every field at its zero value: on the wire they are absent, in the row they are
        // values (a count of 0, a flag that is false, the enum's first value).
        let zeros = delivery_bytes(
            r#"{"deliveryScheduled": {"eventId": "ev-0", "parcels": [{"parcelId": "p-1"}]}}"#,
        );
        let row = a_row(delivery(&[]).decode(&zeros, at(1), 0));
        let payload = &row.to_json()["payload"];
        assert_eq!(payload["signature_required"], false, "{payload}");
        assert_eq!(payload["instructions"], "", "{payload}");
        assert_eq!(
            payload["service_level"], "SERVICE_LEVEL_UNSPECIFIED",
            "{payload}"
        );
        assert_eq!(payload["parcels"][0]["weight_grams"], 0, "{payload}");
        assert_eq!(
            payload["parcels"][0]["skus"],
            serde_json::json!([]),
            "{payload}"
        );
        assert_eq!(payload["carrier"], "", "{payload}");
    }

    #[test]
    fn json_domains_ignore_fields_the_contract_does_not_know() {
        let payload = br#"{"paymentCaptured": {"eventId": "p-1", "paymentId": "pay-7",
            "amountMinor": "4200", "acquirerReference": "x-1", "fees": {"minor": 12}},
            "producedBy": "payments-service"}"#;
        let row = a_row(payments().decode(payload, at(9), 0));
        let json = row.to_json();
        assert_eq!(json["event_name"], "PaymentCapturedEvent");
        assert_eq!(
            json["payload"]["amount_minor"], 4200,
            "64-bit integers stay numbers"
        );
        assert!(
            json["payload"].get("acquirerReference").is_none(),
            "{json:?}"
        );
        // Zero values in JSON domains too.
        let row =
            a_row(payments().decode(br#"{"paymentCaptured": {"eventId": "p-2"}}"#, at(10), 0));
        assert_eq!(row.to_json()["payload"]["amount_minor"], 0);
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
        let decoded = decoder.decode(&estimated, at(1), 0).expect("decodes");
        assert_eq!(
            decoded,
            Decoded::Ignored {
                event: "ShippingPricesEstimatedEvent".into()
            }
        );
        let kept = decoder
            .decode(&delivery_bytes(SCHEDULED), at(2), 0)
            .expect("decodes");
        assert!(matches!(kept, Decoded::Row(_)));
    }

    #[test]
    fn flatten_mode_writes_the_events_fields_as_columns() {
        let row = a_row(delivery(&[("ROW_MODE_DELIVERY", "flatten")]).decode(
            &delivery_bytes(SCHEDULED),
            at(3),
            0,
        ));
        let json = row.to_json();
        assert_eq!(json["order_id"], "o-9");
        assert_eq!(json["carrier"], "postnord");
        assert_eq!(json["event_id"], "ev-1");
        assert!(
            !json.contains_key("event_occurred_at"),
            "occurred_at is not a metadata column"
        );
        assert_eq!(json["occurred_at"], "2026-11-22T10:00:00Z");
        assert!(!json.contains_key("payload"));
        let Body::Columns(columns) = &row.body else {
            panic!("columns")
        };
        let names: Vec<&str> = columns.iter().map(|(n, _)| &**n).collect();
        assert!(!names.contains(&"event_id"), "not twice: {names:?}");
    }

    #[test]
    fn undecodable_messages_are_errors_that_say_why() {
        let decoder = delivery(&[]);
        let garbage = decoder.decode(&[0xff, 0xff, 0xff], at(4), 0);
        assert!(
            matches!(garbage, Err(DecodeError::Protobuf { .. })),
            "{garbage:?}"
        );
        let empty = decoder.decode(&[], at(5), 0);
        assert_eq!(
            empty,
            Err(DecodeError::NoEvent {
                message: "DeliveryEventsV10Topic".into()
            })
        );

        let json = payments();
        let bad = json.decode(br#"{"paymentCaptured": {"amountMinor": "lots"}}"#, at(6), 0);
        assert!(matches!(bad, Err(DecodeError::Json { .. })), "{bad:?}");
        let trailing = json.decode(br#"{} {}"#, at(7), 0);
        assert!(
            matches!(trailing, Err(DecodeError::Json { .. })),
            "{trailing:?}"
        );
        // An event type the contract does not know is no event, not a silent empty row.
        let unknown = json.decode(br#"{"paymentDisputed": {"eventId": "d-1"}}"#, at(8), 0);
        assert!(
            matches!(unknown, Err(DecodeError::NoEvent { .. })),
            "{unknown:?}"
        );
    }
}
