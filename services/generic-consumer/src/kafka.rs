//! librdkafka clients from the context: the group consumer and the dead-letter producer.

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};

use crate::context::Context;

/// Headers a dead letter carries besides the original key and payload.
pub mod headers {
    /// Why the message could not be written.
    pub const ERROR: &str = "dlq.error";
    /// `decode` (the payload is not a valid contract message) or `sink` (the row was
    /// rejected as invalid by the sink).
    pub const STAGE: &str = "dlq.stage";
    pub const ORIGINAL_TOPIC: &str = "dlq.original.topic";
    pub const ORIGINAL_PARTITION: &str = "dlq.original.partition";
    pub const ORIGINAL_OFFSET: &str = "dlq.original.offset";
    pub const CONSUMER_GROUP: &str = "dlq.consumer.group";
}

/// Settings shared by the consumer and the producer: brokers and security.
fn base_config(context: &Context) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", context.kafka_bootstrap.join(","))
        .set(
            "client.id",
            format!("generic-consumer-{}", context.domain.to_ascii_lowercase()),
        );
    for property in &context.kafka_properties {
        config.set(property.property, &property.value);
    }
    config
}

/// The group consumer: offsets are committed by the service (never automatically), only
/// up to what the sink acknowledged; a new group starts where `KAFKA_OFFSET_RESET_<D>`
/// says (the earliest offset by default).
pub fn consumer_config(context: &Context) -> ClientConfig {
    let mut config = base_config(context);
    config
        .set("group.id", &context.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", context.offset_reset.as_str())
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            context.tuning.session_timeout.as_millis().to_string(),
        )
        // Lag per partition comes from librdkafka's statistics.
        .set("statistics.interval.ms", "10000")
        // Prefetch is bounded too: at most this much per partition waits in librdkafka.
        .set("queued.max.messages.kbytes", "16384");
    config
}

/// The dead-letter producer: idempotent, every replica acknowledges; it never creates
/// the dead-letter topic with the broker's defaults (a missing topic is an error the
/// operator sees, not a topic nobody configured).
pub fn producer_config(context: &Context) -> ClientConfig {
    let mut config = base_config(context);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("allow.auto.create.topics", "false")
        // How long a topic the broker does not know may take to appear before its
        // messages fail (with UNKNOWN_TOPIC_OR_PART, a permanent error).
        .set("topic.metadata.propagation.max.ms", "5000")
        .set("linger.ms", "5");
    config
}

/// Whether a failed dead letter cannot succeed by trying again: the topic is missing, the
/// instance may not write to it, or the message is too large for it. The instance stops
/// (exit 1, not ready) instead of retrying forever.
pub fn is_permanent(err: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        err.rdkafka_error_code(),
        Some(
            UnknownTopicOrPartition
                | UnknownTopic
                | UnknownTopicId
                | InvalidTopic
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidRecord
                | PolicyViolation
        )
    )
}

/// Checks that `topics` exist on the brokers (the metadata of each); `Err` names every
/// missing one, or says why the brokers could not be asked.
pub fn check_topics(context: &Context, topics: &[&str], timeout: Duration) -> Result<(), String> {
    let consumer: BaseConsumer = base_config(context)
        .create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let mut missing = Vec::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("cannot read the metadata of {topic}: {e}"))?;
        let known = metadata
            .topics()
            .iter()
            .any(|t| t.name() == *topic && t.error().is_none() && !t.partitions().is_empty());
        if !known {
            missing.push(*topic);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no such topic on {}: {}",
            context.kafka_bootstrap.join(","),
            missing.join(", ")
        ))
    }
}

/// The dead-letter topic of the domain.
pub fn dlq_topic(context: &Context, topic: &str) -> String {
    context
        .dlq_topic
        .clone()
        .unwrap_or_else(|| format!("{topic}.dlq"))
}

/// A message that could not be written, and why.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub stage: &'static str,
    pub error: &'a str,
}

/// Sends dead letters to the domain's dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    group: String,
}

impl DeadLetters {
    pub fn new(context: &Context, source_topic: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer_config(context).create()?,
            topic: dlq_topic(context, source_topic),
            source_topic: source_topic.to_owned(),
            group: context.group_id.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter and waits until the broker has it.
    pub async fn send(&self, letter: DeadLetter<'_>) -> Result<(), KafkaError> {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: headers::ERROR,
                value: Some(letter.error),
            })
            .insert(Header {
                key: headers::STAGE,
                value: Some(letter.stage),
            })
            .insert(Header {
                key: headers::ORIGINAL_TOPIC,
                value: Some(&self.source_topic),
            })
            .insert(Header {
                key: headers::ORIGINAL_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: headers::ORIGINAL_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: headers::CONSUMER_GROUP,
                value: Some(&self.group),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(err, _)| err)
    }
}
