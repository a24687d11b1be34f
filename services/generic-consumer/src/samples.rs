//! Sample events for any contract, made from its descriptors alone: the demo, the
//! benchmark and the tests produce realistic-looking traffic for a domain (a new one too)
//! without per-domain code. Sample `n` carries the contract's event `n mod events`, with
//! every field filled: `event_id` unique per `n`, timestamps, numbers, enums, nested and
//! repeated messages.

use std::time::Duration;

use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use rdkafka::{
    error::KafkaError,
    message::ToBytes,
    producer::{BaseProducer, BaseRecord},
    types::RDKafkaErrorCode,
};

use crate::{context::Format, contract::Contract};

/// Nesting depth at which sample messages stop filling message fields.
const MAX_DEPTH: usize = 3;
/// 2026-11-22T00:00:00Z: sample timestamps count seconds from here.
const EPOCH: i64 = 1_795_305_600;

/// The name of sample `n`'s event and the topic message carrying it.
pub fn sample(contract: &Contract, n: u64) -> (String, DynamicMessage) {
    let index = (n % contract.events.len().max(1) as u64) as usize;
    let mut topic = DynamicMessage::new(contract.topic_message.clone());
    let Some((name, field)) = contract.events.iter().nth(index) else {
        return (String::new(), topic);
    };
    if let Kind::Message(event) = field.kind() {
        topic.set_field(field, Value::Message(fill(&event, n, 0)));
    }
    (name.clone(), topic)
}

/// Sample `n` encoded as the contract's topic carries it (protobuf or proto3 JSON).
pub fn encoded(contract: &Contract, n: u64) -> (String, Vec<u8>) {
    let (event, message) = sample(contract, n);
    (event, encode(contract, &message))
}

/// `message` in the contract's payload format.
pub fn encode(contract: &Contract, message: &DynamicMessage) -> Vec<u8> {
    match contract.format {
        Format::Protobuf => message.encode_to_vec(),
        // Serialising a dynamic message cannot fail: every value is representable.
        Format::Json => serde_json::to_vec(message).unwrap_or_default(),
    }
}

/// Queues `record` on `producer`; while the producer's queue is full, serves its delivery
/// reports and tries again (producing samples in bulk outruns the queue).
pub fn send<K, P>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((err, back)) if err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(5));
                record = back;
            }
            Err((err, _)) => return Err(err),
        }
    }
}

fn fill(descriptor: &MessageDescriptor, n: u64, depth: usize) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    if descriptor.full_name() == "google.protobuf.Timestamp" {
        for field in descriptor.fields() {
            match field.name() {
                "seconds" => message.set_field(&field, Value::I64(EPOCH + n as i64)),
                "nanos" => message.set_field(&field, Value::I32(((n % 1000) * 1_000_000) as i32)),
                _ => {}
            }
        }
        return message;
    }
    for field in descriptor.fields() {
        // One member per oneof: the first.
        if let Some(oneof) = field.containing_oneof()
            && !oneof.is_synthetic()
            && oneof.fields().next().is_some_and(|first| first != field)
        {
            continue;
        }
        if field.is_map() {
            continue;
        }
        let Some(value) = scalar(&field, n, depth) else {
            continue;
        };
        if field.is_list() {
            // Four to twelve entries, varying with n: realistic sizes, not a fixed shape.
            let mut values = vec![value];
            for k in 1..(4 + n % 9) {
                values.push(scalar(&field, n + k, depth).unwrap_or_else(|| values[0].clone()));
            }
            message.set_field(&field, Value::List(values));
        } else {
            message.set_field(&field, value);
        }
    }
    message
}

/// The text a string field called `name` carries in sample `n` (besides `event_id` and
/// currencies): the name and a number scrambled from `n`, as long as a real identifier.
pub fn text(name: &str, n: u64) -> String {
    format!(
        "{name}-{:012x}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
    )
}

fn scalar(field: &FieldDescriptor, n: u64, depth: usize) -> Option<Value> {
    let name = field.name();
    Some(match field.kind() {
        Kind::String if name == "event_id" => Value::String(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (n >> 32) as u32,
            (n >> 16) as u16,
            n % 0x1000,
            (n / 7) % 0x1000,
            n
        )),
        Kind::String if name.ends_with("currency") => Value::String("SEK".into()),
        Kind::String => Value::String(text(name, n)),
        Kind::Bytes => Value::Bytes(n.to_be_bytes().to_vec().into()),
        Kind::Bool => Value::Bool(n.is_multiple_of(2)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32((n % 10_000) as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64((n % 100_000) as i64 * 7),
        Kind::Uint32 | Kind::Fixed32 => Value::U32((n % 10_000) as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(n % 100_000),
        Kind::Double => Value::F64((n % 10_000) as f64 * 1.25),
        Kind::Float => Value::F32((n % 10_000) as f32 * 0.5),
        Kind::Enum(descriptor) => {
            let values: Vec<_> = descriptor.values().filter(|v| v.number() != 0).collect();
            if values.is_empty() {
                return None;
            }
            Value::EnumNumber(values[(n % values.len() as u64) as usize].number())
        }
        Kind::Message(descriptor) => {
            if depth >= MAX_DEPTH {
                return None;
            }
            Value::Message(fill(&descriptor, n, depth + 1))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        context::RowMode,
        decode::{Decoded, Decoder, Position},
    };

    fn contract(domain: &str, path: &str, object: &str) -> Contract {
        crate::contract::for_test(domain, path, object, &[]).1
    }

    #[test]
    fn samples_cycle_through_every_event_and_decode_back() {
        for contract in [
            contract(
                "delivery",
                "contracts.delivery.delivery_events_v10",
                "DeliveryEventsV10Topic",
            ),
            contract(
                "payments",
                "contracts.payments.payment_events_v2",
                "PaymentEventsV2Topic",
            ),
        ] {
            let decoder = Decoder::new(&contract, &BTreeSet::new(), RowMode::Payload);
            let mut seen = BTreeSet::new();
            for n in 0..(contract.events.len() as u64 * 2) {
                let (event, bytes) = encoded(&contract, n);
                let position = Position {
                    partition: 0,
                    offset: n as i64,
                    timestamp_ms: None,
                };
                let Decoded::Row(row) = decoder.decode(&bytes, position, 0).expect("decodes")
                else {
                    panic!("not ignored");
                };
                assert_eq!(&*row.event_name, event.as_str());
                assert!(
                    row.event_id.as_deref().is_some_and(|id| id.len() == 36),
                    "{row:?}"
                );
                assert!(row.event_timestamp.is_some(), "{row:?}");
                seen.insert(event);
            }
            assert_eq!(seen.len(), contract.events.len(), "{seen:?}");
        }
    }

    #[test]
    fn delivery_samples_are_about_a_kibibyte() {
        let contract = contract(
            "delivery",
            "contracts.delivery.delivery_events_v10",
            "DeliveryEventsV10Topic",
        );
        let total: usize = (0..1000).map(|n| encoded(&contract, n).1.len()).sum();
        let average = total / 1000;
        assert!(
            (600..=1600).contains(&average),
            "{average} bytes on average"
        );
    }

    /// The benchmark's second floor decodes the samples with the generated types: they
    /// must read them whole, the event of the oneof found.
    #[test]
    fn delivery_samples_decode_with_the_generated_types() {
        use contracts::contracts::delivery::{DeliveryEventsV10Topic, delivery_events_v10_topic};
        use prost::Message as _;

        let contract = contract(
            "delivery",
            "contracts.delivery.delivery_events_v10",
            "DeliveryEventsV10Topic",
        );
        for n in 0..8 {
            let (event, bytes) = encoded(&contract, n);
            let decoded = DeliveryEventsV10Topic::decode(bytes.as_slice()).expect("decodes");
            let name = match decoded.event.as_ref().expect("an event") {
                delivery_events_v10_topic::Event::ShippingPricesEstimated(_) => {
                    "ShippingPricesEstimatedEvent"
                }
                delivery_events_v10_topic::Event::DeliveryScheduled(_) => "DeliveryScheduledEvent",
                delivery_events_v10_topic::Event::DeliveryDispatched(_) => {
                    "DeliveryDispatchedEvent"
                }
                delivery_events_v10_topic::Event::DeliveryCompleted(_) => "DeliveryCompletedEvent",
            };
            assert_eq!(name, event, "sample {n}");
            assert_eq!(decoded.encoded_len(), bytes.len(), "sample {n} read whole");
        }
    }
}
