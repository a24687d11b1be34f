//! A domain's contract: the topic message named by `IMPORT_PATH_<D>` (proto package +
//! file) and `IMPORT_OBJECT_<D>`, found in a descriptor pool with no per-domain code.
//! Its one `oneof` lists the events; an event's name is its message name. The topic and
//! payload format come from the message's `(contracts.topic)` / `(contracts.format)`
//! options, unless `TOPIC_<D>` / `FORMAT_<D>` override them.

use std::collections::BTreeMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::context::{Context, Format};

/// A resolved contract.
#[derive(Debug, Clone)]
pub struct Contract {
    pub topic_message: MessageDescriptor,
    /// Event name (message name) -> the oneof field carrying it.
    pub events: BTreeMap<String, FieldDescriptor>,
    pub topic: String,
    pub format: Format,
}

/// Finds the context's contract in `pool`; every problem names the variable to fix.
pub fn resolve(context: &Context, pool: &DescriptorPool) -> Result<Contract, Vec<String>> {
    let path_var = context.var("IMPORT_PATH");
    let object_var = context.var("IMPORT_OBJECT");
    let file = pool
        .files()
        .find(|file| module_of(file.name(), file.package_name()) == context.import_path);
    let Some(file) = file else {
        let known: Vec<String> = pool
            .files()
            .filter(|f| f.package_name().starts_with("contracts."))
            .map(|f| module_of(f.name(), f.package_name()))
            .collect();
        return Err(vec![format!(
            "{path_var}={}: no such contract (known: {})",
            context.import_path,
            known.join(", ")
        )]);
    };
    let full_name = format!("{}.{}", file.package_name(), context.import_object);
    let Some(topic_message) = pool
        .get_message_by_name(&full_name)
        .filter(|m| m.parent_file().name() == file.name())
    else {
        let known: Vec<String> = file.messages().map(|m| m.name().to_owned()).collect();
        return Err(vec![format!(
            "{object_var}={}: no such message in {} (messages: {})",
            context.import_object,
            file.name(),
            known.join(", ")
        )]);
    };

    let mut problems = Vec::new();
    let oneofs: Vec<_> = topic_message
        .oneofs()
        .filter(|o| !o.is_synthetic())
        .collect();
    let mut events = BTreeMap::new();
    match oneofs.as_slice() {
        [oneof] => {
            for field in oneof.fields() {
                match field.kind() {
                    Kind::Message(event) => {
                        // The event's name is its message name: two variants of one type
                        // would make rows of either indistinguishable.
                        if let Some(first) = events.insert(event.name().to_owned(), field.clone()) {
                            problems.push(format!(
                                "{object_var}: {}.{} and {}.{} both carry {}: an event type may \
                                 appear once in the oneof (its name is the event's name)",
                                topic_message.name(),
                                first.name(),
                                topic_message.name(),
                                field.name(),
                                event.full_name()
                            ));
                        }
                    }
                    _ => problems.push(format!(
                        "{object_var}: {}.{} is not a message, so not an event",
                        topic_message.name(),
                        field.name()
                    )),
                }
            }
        }
        _ => problems.push(format!(
            "{object_var}: {} must wrap its events in exactly one oneof (it has {})",
            topic_message.name(),
            oneofs.len()
        )),
    }

    for ignored in &context.ignore_events {
        if !events.contains_key(ignored) {
            problems.push(format!(
                "{}: {ignored} is not an event of {} (events: {})",
                context.var("IGNORE_EVENTS"),
                topic_message.name(),
                events.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }

    let topic = context
        .topic_override
        .clone()
        .or_else(|| string_option(pool, &topic_message, "contracts.topic"));
    let topic = topic.unwrap_or_else(|| {
        problems.push(format!(
            "{} has no (contracts.topic) option: declare it or set {}",
            topic_message.full_name(),
            context.var("TOPIC")
        ));
        String::new()
    });
    let format = match context.format_override {
        Some(format) => format,
        None => match string_option(pool, &topic_message, "contracts.format") {
            None => Format::Protobuf,
            Some(raw) => Format::parse(&raw).unwrap_or_else(|| {
                problems.push(format!(
                    "{}: (contracts.format) {raw:?} is not protobuf or json",
                    topic_message.full_name()
                ));
                Format::Protobuf
            }),
        },
    };

    if problems.is_empty() {
        Ok(Contract {
            topic_message,
            events,
            topic,
            format,
        })
    } else {
        Err(problems)
    }
}

/// `contracts/delivery/delivery_events_v10.proto` in `contracts.delivery` ->
/// `contracts.delivery.delivery_events_v10`, the form `IMPORT_PATH` uses.
fn module_of(file_name: &str, package: &str) -> String {
    let stem = file_name
        .rsplit('/')
        .next()
        .unwrap_or(file_name)
        .trim_end_matches(".proto");
    format!("{package}.{stem}")
}

/// A string-valued custom option of a message, when set.
fn string_option(
    pool: &DescriptorPool,
    message: &MessageDescriptor,
    extension: &str,
) -> Option<String> {
    let extension = pool.get_extension_by_name(extension)?;
    let options = message.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).as_ref() {
        Value::String(value) if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

/// `text` compiled as the contract file `path` (beside the shared `proto/` tree), for
/// tests that need a contract the embedded set does not hold.
#[cfg(test)]
pub(crate) fn compile_for_test(path: &str, text: &str) -> DescriptorPool {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(path);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, text).expect("write");
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let mut compiler =
        protox::Compiler::new([dir.path(), std::path::Path::new(shared)]).expect("compiler");
    compiler.open_file(path).expect("compiles");
    compiler.descriptor_pool()
}

/// A domain's context and contract from the embedded descriptor set, for tests: the
/// domain's required variables set, plus `extra`.
#[cfg(test)]
pub(crate) fn for_test(
    domain: &str,
    path: &str,
    object: &str,
    extra: &[(&str, &str)],
) -> (Context, Contract) {
    use crate::context::{Vars, resolve as resolve_context};
    let d = domain.to_ascii_uppercase();
    let names = [
        format!("BQ_TABLE_{d}"),
        format!("IMPORT_PATH_{d}"),
        format!("IMPORT_OBJECT_{d}"),
        format!("CONSUME_ENV_{d}"),
        format!("GROUP_ID_{d}"),
    ];
    let mut pairs: Vec<(&str, &str)> = vec![
        (&names[0], "events"),
        (&names[1], path),
        (&names[2], object),
        (&names[3], "local"),
        (&names[4], "group"),
        ("WRITE_ENV", "local"),
        ("KAFKA_BOOTSTRAP_LOCAL", "127.0.0.1:9092"),
        ("SINK", "jsonl"),
    ];
    pairs.extend_from_slice(extra);
    let context = resolve_context(domain, &Vars::from_pairs(pairs)).expect("context");
    let pool = contracts::descriptor_pool().expect("pool");
    let contract = resolve(&context, pool).expect("contract");
    (context, contract)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{Vars, resolve as resolve_context};

    fn context(extra: &[(&str, &str)]) -> Context {
        let mut pairs = vec![
            ("BQ_TABLE_DELIVERY", "delivery_events"),
            (
                "IMPORT_PATH_DELIVERY",
                "contracts.delivery.delivery_events_v10",
            ),
            ("IMPORT_OBJECT_DELIVERY", "DeliveryEventsV10Topic"),
            ("CONSUME_ENV_DELIVERY", "local"),
            ("GROUP_ID_DELIVERY", "delivery-consumer"),
            ("WRITE_ENV", "local"),
            ("KAFKA_BOOTSTRAP_LOCAL", "127.0.0.1:9092"),
            ("SINK", "jsonl"),
        ];
        pairs.extend_from_slice(extra);
        resolve_context("DELIVERY", &Vars::from_pairs(pairs)).expect("context")
    }

    fn pool() -> &'static DescriptorPool {
        contracts::descriptor_pool().expect("embedded descriptors")
    }

    #[test]
    fn the_delivery_contract_resolves_with_its_events_topic_and_format() {
        let contract = resolve(&context(&[]), pool()).expect("resolves");
        assert_eq!(
            contract.topic_message.full_name(),
            "contracts.delivery.DeliveryEventsV10Topic"
        );
        assert_eq!(contract.topic, "delivery.events.v10");
        assert_eq!(contract.format, Format::Protobuf);
        let events: Vec<&str> = contract.events.keys().map(String::as_str).collect();
        assert_eq!(
            events,
            [
                "DeliveryCompletedEvent",
                "DeliveryDispatchedEvent",
                "DeliveryScheduledEvent",
                "ShippingPricesEstimatedEvent"
            ]
        );
        assert_eq!(
            contract.events["ShippingPricesEstimatedEvent"].name(),
            "shipping_prices_estimated"
        );
    }

    #[test]
    fn a_second_domain_needs_only_its_variables() {
        let vars = Vars::from_pairs([
            ("BQ_TABLE_PAYMENTS", "payment_events"),
            (
                "IMPORT_PATH_PAYMENTS",
                "contracts.payments.payment_events_v2",
            ),
            ("IMPORT_OBJECT_PAYMENTS", "PaymentEventsV2Topic"),
            ("CONSUME_ENV_PAYMENTS", "local"),
            ("GROUP_ID_PAYMENTS", "payments-consumer"),
            ("WRITE_ENV", "local"),
            ("KAFKA_BOOTSTRAP_LOCAL", "127.0.0.1:9092"),
            ("SINK", "jsonl"),
        ]);
        let context = resolve_context("payments", &vars).expect("context");
        let contract = resolve(&context, pool()).expect("resolves");
        assert_eq!(contract.topic, "payments.events.v2");
        assert_eq!(contract.format, Format::Json, "declared on the contract");
        assert_eq!(contract.events.len(), 3);
    }

    #[test]
    fn overrides_win_over_the_contracts_options() {
        let contract = resolve(
            &context(&[
                ("TOPIC_DELIVERY", "delivery.replay"),
                ("FORMAT_DELIVERY", "json"),
            ]),
            pool(),
        )
        .expect("resolves");
        assert_eq!(contract.topic, "delivery.replay");
        assert_eq!(contract.format, Format::Json);
    }

    #[test]
    fn an_event_type_twice_in_the_oneof_is_a_contract_error() {
        let proto = r#"
syntax = "proto3";
package contracts.twice;
import "contracts/options.proto";
message TwiceEventsV1Topic {
  option (contracts.topic) = "twice.events.v1";
  oneof event {
    ThingHappenedEvent thing_happened = 1;
    ThingHappenedEvent thing_happened_again = 2;
  }
}
message ThingHappenedEvent { string event_id = 1; }
"#;
        let pool = compile_for_test("contracts/twice/twice_events_v1.proto", proto);
        let vars = Vars::from_pairs([
            ("BQ_TABLE_TWICE", "twice"),
            ("IMPORT_PATH_TWICE", "contracts.twice.twice_events_v1"),
            ("IMPORT_OBJECT_TWICE", "TwiceEventsV1Topic"),
            ("CONSUME_ENV_TWICE", "local"),
            ("GROUP_ID_TWICE", "twice"),
            ("WRITE_ENV", "local"),
            ("KAFKA_BOOTSTRAP_LOCAL", "127.0.0.1:9092"),
            ("SINK", "jsonl"),
        ]);
        let context = resolve_context("TWICE", &vars).expect("context");
        let problems = resolve(&context, &pool).expect_err("a contract error");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "IMPORT_OBJECT_TWICE: TwiceEventsV1Topic.thing_happened and \
                 TwiceEventsV1Topic.thing_happened_again both carry contracts.twice.ThingHappenedEvent"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_paths_objects_and_ignored_events_name_their_variable() {
        let problems = resolve(
            &context(&[(
                "IMPORT_PATH_DELIVERY",
                "contracts.delivery.delivery_events_v9",
            )]),
            pool(),
        )
        .expect_err("unknown path");
        assert!(
            problems[0].starts_with(
                "IMPORT_PATH_DELIVERY=contracts.delivery.delivery_events_v9: no such contract"
            ),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("contracts.delivery.delivery_events_v10"),
            "lists the known ones: {problems:?}"
        );

        let problems = resolve(
            &context(&[("IMPORT_OBJECT_DELIVERY", "DeliveryEventsTopic")]),
            pool(),
        )
        .expect_err("unknown object");
        assert!(
            problems[0].starts_with("IMPORT_OBJECT_DELIVERY=DeliveryEventsTopic: no such message"),
            "{problems:?}"
        );

        let problems = resolve(
            &context(&[("IMPORT_OBJECT_DELIVERY", "ShippingPrice")]),
            pool(),
        )
        .expect_err("not a topic message");
        assert!(problems[0].contains("exactly one oneof"), "{problems:?}");

        let problems = resolve(
            &context(&[(
                "IGNORE_EVENTS_DELIVERY",
                r#"["ShippingPriceEstimatedEvent"]"#,
            )]),
            pool(),
        )
        .expect_err("typo in the ignore list");
        assert!(
            problems[0]
                .starts_with("IGNORE_EVENTS_DELIVERY: ShippingPriceEstimatedEvent is not an event"),
            "{problems:?}"
        );
    }
}
