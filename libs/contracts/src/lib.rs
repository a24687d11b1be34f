//! The product's protobuf contracts, from `proto/`: generated Rust types and gRPC
//! stubs, and the embedded descriptor set for services that reflect over contracts at
//! run time (`prost-reflect`).
//!
//! - [`gandalf::v1`]: the Gandalf envelope, its bodies and the `Aggregator` / `Cluster`
//!   streaming services.
//! - [`contracts::delivery`], [`contracts::payments`]: the domains' topic messages, for
//!   Rust producers and for measuring a consumer against the generated decoder.
//!
//! Every `.proto` file under `proto/` is compiled by `build.rs`; none needs `protoc`.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// Generated code of package `gandalf.v1`.
pub mod gandalf {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("gandalf.v1");
    }
}

/// Generated code of the data contracts (packages `contracts.<domain>`).
pub mod contracts {
    /// Package `contracts.delivery`.
    pub mod delivery {
        #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("contracts.delivery");
    }
    /// Package `contracts.payments`.
    pub mod payments {
        #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("contracts.payments");
    }
}

/// The `FileDescriptorSet` of every contract, as protobuf bytes.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Every contract's descriptors, decoded once.
pub fn descriptor_pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("embedded descriptor set is invalid: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};

    use super::*;
    use crate::gandalf::v1::{Command, Envelope, Header, envelope::Body};

    fn pool() -> &'static DescriptorPool {
        descriptor_pool().expect("embedded descriptors decode")
    }

    /// Connectors of other teams are written against these names: they must not move.
    #[test]
    fn the_gandalf_wire_contract_keeps_its_fixed_names() {
        let envelope = pool()
            .get_message_by_name("gandalf.v1.Envelope")
            .expect("Envelope");
        let oneof = envelope
            .oneofs()
            .find(|o| o.name() == "body")
            .expect("oneof body");
        let bodies: Vec<String> = oneof.fields().map(|f| f.name().to_owned()).collect();
        assert_eq!(
            bodies,
            [
                "command",
                "event",
                "config",
                "configuration",
                "configuration_database",
                "secret",
                "heartbeat"
            ]
        );
        let fields = |name: &str| -> Vec<String> {
            pool()
                .get_message_by_name(&format!("gandalf.v1.{name}"))
                .unwrap_or_else(|| panic!("{name}"))
                .fields()
                .map(|f| f.name().to_owned())
                .collect()
        };
        assert_eq!(
            fields("Header"),
            [
                "uuid",
                "tenant",
                "timeout_ms",
                "timestamp_ms",
                "major",
                "minor"
            ]
        );
        assert_eq!(
            fields("Command"),
            ["target", "command", "context", "payload"]
        );
        assert_eq!(
            fields("Event"),
            ["topic", "event", "reference_uuid", "payload"]
        );
        assert_eq!(
            fields("Config"),
            ["target", "command", "context", "payload"]
        );
        assert_eq!(
            fields("Configuration"),
            [
                "target_logical_name",
                "target_address",
                "command",
                "context",
                "payload"
            ]
        );
        assert_eq!(
            fields("ConfigurationDatabase"),
            ["command", "context", "payload"]
        );
        assert_eq!(
            fields("Secret"),
            [
                "target_logical_name",
                "target_address",
                "command",
                "context",
                "payload"
            ]
        );
        assert_eq!(
            fields("Heartbeat"),
            ["component_type", "logical_name", "bind_address"]
        );

        for service in ["gandalf.v1.Aggregator", "gandalf.v1.Cluster"] {
            let service = pool().get_service_by_name(service).expect("service");
            let methods: Vec<_> = service.methods().collect();
            assert_eq!(methods.len(), 1);
            assert_eq!(methods[0].name(), "Connect");
            assert!(methods[0].is_client_streaming() && methods[0].is_server_streaming());
            assert_eq!(methods[0].input().full_name(), "gandalf.v1.Envelope");
            assert_eq!(methods[0].output().full_name(), "gandalf.v1.Envelope");
        }
    }

    #[test]
    fn generated_types_and_reflection_agree_on_the_bytes() {
        let envelope = Envelope {
            header: Some(Header {
                uuid: "7f1c".into(),
                tenant: "acme".into(),
                timeout_ms: 250,
                ..Header::default()
            }),
            body: Some(Body::Command(Command {
                target: "billing".into(),
                command: "SYNC".into(),
                context: [("connector_type".to_owned(), "erp".to_owned())].into(),
                payload: r#"{"full":true}"#.into(),
            })),
        };
        let bytes = envelope.encode_to_vec();
        let descriptor = pool()
            .get_message_by_name("gandalf.v1.Envelope")
            .expect("Envelope");
        let dynamic = DynamicMessage::decode(descriptor, bytes.as_slice()).expect("decodes");
        let Some(Value::Message(command)) =
            dynamic.get_field_by_name("command").map(|v| v.into_owned())
        else {
            panic!("command body expected: {dynamic:?}");
        };
        assert_eq!(
            command.get_field_by_name("target").map(|v| v.into_owned()),
            Some(Value::String("billing".into()))
        );
        assert_eq!(
            Envelope::decode(bytes.as_slice()).expect("decodes"),
            envelope
        );
    }
}
