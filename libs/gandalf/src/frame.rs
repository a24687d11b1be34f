//! Envelopes as encoded bytes, so that routing forwards what it received instead of
//! cloning and re-encoding a message for every target.
//!
//! A [`Frame`] is one encoded `Envelope` in shared [`Bytes`]: a fan-out to n targets is n
//! reference counts on one buffer. [`FrameCodec`] writes frames as they are and reads
//! each received message as far as routing needs ([`Received`]) beside its [`Frame`] to
//! pass on: a plain event, the bulk of the traffic, is read as its header, topic and
//! reference only; its other strings are checked to be UTF-8 but not copied. The services serve `Connect` with [`FrameServer`] (tonic's generated server
//! would re-encode every message) and open the member stream with [`connect_cluster`];
//! on the wire nothing changes, so connectors keep using the generated client.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::{
    Request, Response, Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Body, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService},
};

use crate::wire::{Envelope, Header};

/// One encoded envelope; cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Encodes `envelope` once.
    pub fn encode(envelope: &Envelope) -> Self {
        Self(Bytes::from(envelope.encode_to_vec()))
    }

    /// Its encoded size in bytes (what queues count).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy in a buffer of its own, for keeping: a received frame shares the buffer
    /// it was read into, which a long-kept slice would hold on to whole.
    pub fn detached(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// Decodes it again (tests, and the rare reader of a queued frame).
    pub fn decode(&self) -> Result<Envelope, prost::DecodeError> {
        Envelope::decode(self.0.clone())
    }
}

impl From<&Envelope> for Frame {
    fn from(envelope: &Envelope) -> Self {
        Self::encode(envelope)
    }
}

/// A message as received: read as far as routing needs, and as it came to pass on.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: Inbound,
    pub frame: Frame,
}

/// Why a received message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
    #[error("the event's {0} is not UTF-8")]
    NotUtf8(&'static str),
}

/// An envelope read whole, `None` when it does not decode (see
/// [`crate::protocol::await_validation`]).
impl From<Received> for Option<Envelope> {
    fn from(received: Received) -> Self {
        received.into_envelope().ok().map(|(envelope, _)| envelope)
    }
}

/// What was read of a received message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// An event with a header: its header, topic and reference (its `event` and
    /// `payload` were checked to be UTF-8; [`Received::into_envelope`] reads them).
    Event {
        header: Header,
        topic: String,
        reference_uuid: String,
    },
    /// Any other message, decoded whole.
    Whole(Envelope),
}

impl Inbound {
    /// The header of a plain event of `tenant` (well-formed, answering no command): all
    /// that routing it takes. `None` for anything else.
    pub fn plain_event(&self, tenant: &str) -> Option<&Header> {
        match self {
            Inbound::Event {
                header,
                reference_uuid,
                ..
            } if reference_uuid.is_empty()
                && header.tenant == tenant
                && !header.uuid.trim().is_empty() =>
            {
                Some(header)
            }
            _ => None,
        }
    }
}

impl Received {
    /// Reads a received message (what [`FrameDecoder`] does).
    pub fn read(bytes: Bytes) -> Result<Self, Unreadable> {
        let head = head::EnvelopeHead::decode(bytes.clone())?;
        let message = match head {
            head::EnvelopeHead {
                header: Some(header),
                body: Some(head::Kind::Event(event)),
            } => {
                for (field, text) in [("event", &event.event), ("payload", &event.payload)] {
                    if std::str::from_utf8(text).is_err() {
                        return Err(Unreadable::NotUtf8(field));
                    }
                }
                Inbound::Event {
                    header,
                    topic: event.topic,
                    reference_uuid: event.reference_uuid,
                }
            }
            _ => Inbound::Whole(Envelope::decode(bytes.clone())?),
        };
        Ok(Self {
            message,
            frame: Frame(bytes),
        })
    }

    /// A heartbeat (streams watch for them).
    pub fn is_heartbeat(&self) -> bool {
        matches!(
            &self.message,
            Inbound::Whole(Envelope {
                body: Some(crate::wire::envelope::Body::Heartbeat(_)),
                ..
            })
        )
    }

    /// The whole envelope, and the frame it came in: an event is decoded from its frame
    /// now.
    pub fn into_envelope(self) -> Result<(Envelope, Frame), prost::DecodeError> {
        let envelope = match self.message {
            Inbound::Whole(envelope) => envelope,
            Inbound::Event { .. } => self.frame.decode()?,
        };
        Ok((envelope, self.frame))
    }
}

/// The envelope as routing reads it first: the header, the body's kind and, of an
/// event, what routing looks at. Prost skips what a message here does not declare, so
/// the bodies of other kinds are walked over, not copied (they are decoded whole after).
mod head {
    use bytes::Bytes;

    use crate::wire::Header;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnvelopeHead {
        #[prost(message, optional, tag = "1")]
        pub header: Option<Header>,
        #[prost(oneof = "Kind", tags = "10, 11, 12, 13, 14, 15, 16")]
        pub body: Option<Kind>,
    }

    /// The tags of `gandalf.v1.Envelope.body`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "10")]
        Command(Skipped),
        #[prost(message, tag = "11")]
        Event(EventHead),
        #[prost(message, tag = "12")]
        Config(Skipped),
        #[prost(message, tag = "13")]
        Configuration(Skipped),
        #[prost(message, tag = "14")]
        ConfigurationDatabase(Skipped),
        #[prost(message, tag = "15")]
        Secret(Skipped),
        #[prost(message, tag = "16")]
        Heartbeat(Skipped),
    }

    /// A body read past.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Skipped {}

    /// `gandalf.v1.Event`, its `event` and `payload` as slices of the received bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventHead {
        #[prost(string, tag = "1")]
        pub topic: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub event: Bytes,
        #[prost(string, tag = "3")]
        pub reference_uuid: String,
        #[prost(bytes = "bytes", tag = "4")]
        pub payload: Bytes,
    }
}

/// Writes [`Frame`]s as they are; reads [`Received`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

impl Codec for FrameCodec {
    type Encode = Frame;
    type Decode = Received;
    type Encoder = FrameEncoder;
    type Decoder = FrameDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        FrameDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FrameDecoder;

impl Decoder for FrameDecoder {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Received::read(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable envelope: {e}")))
    }
}

/// The `Connect` method of a Gandalf service, served on frames.
#[tonic::async_trait]
pub trait Connect: Send + Sync + 'static {
    /// The gRPC service name (`gandalf.v1.Aggregator`, `gandalf.v1.Cluster`).
    const SERVICE: &'static str;
    /// The method's path (`/gandalf.v1.Aggregator/Connect`).
    const PATH: &'static str;
    /// What the stream sends back (the services: an outbox's `ResponseStream`).
    type Stream: tokio_stream::Stream<Item = Result<Frame, Status>> + Send + 'static;

    async fn connect(
        &self,
        request: Request<Streaming<Received>>,
    ) -> Result<Response<Self::Stream>, Status>;
}

/// A tonic service serving [`Connect`] with [`FrameCodec`].
pub struct FrameServer<T> {
    inner: Arc<T>,
    max_decoding: usize,
    max_encoding: usize,
}

impl<T> FrameServer<T> {
    /// Messages up to `max_message_bytes` each way.
    pub fn new(inner: T, max_message_bytes: usize) -> Self {
        Self {
            inner: Arc::new(inner),
            max_decoding: max_message_bytes,
            max_encoding: max_message_bytes,
        }
    }
}

impl<T> Clone for FrameServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_decoding: self.max_decoding,
            max_encoding: self.max_encoding,
        }
    }
}

impl<T: Connect> NamedService for FrameServer<T> {
    const NAME: &'static str = T::SERVICE;
}

struct ConnectMethod<T>(Arc<T>);

impl<T: Connect> StreamingService<Received> for ConnectMethod<T> {
    type Response = Frame;
    type ResponseStream = T::Stream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<T::Stream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Received>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.connect(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for FrameServer<T>
where
    T: Connect,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != T::PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("no such method").into_http()) },
            );
        }
        let (inner, max_decoding, max_encoding) =
            (self.inner.clone(), self.max_decoding, self.max_encoding);
        Box::pin(async move {
            let mut grpc = Grpc::new(FrameCodec)
                .max_decoding_message_size(max_decoding)
                .max_encoding_message_size(max_encoding);
            Ok(grpc.streaming(ConnectMethod(inner), request).await)
        })
    }
}

/// Opens `gandalf.v1.Cluster/Connect` on `channel`, sending `request`'s frames.
pub async fn connect_cluster<S>(
    channel: tonic::transport::Channel,
    request: Request<S>,
    max_message_bytes: usize,
) -> Result<Response<Streaming<Received>>, Status>
where
    S: tokio_stream::Stream<Item = Frame> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the member is not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static("/gandalf.v1.Cluster/Connect");
    grpc.streaming(request, path, FrameCodec).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;

    #[test]
    fn a_frame_is_the_envelope_s_encoding_and_decodes_back() {
        let envelope = protocol::event("acme", "t", "E", "", "payload");
        let frame = Frame::encode(&envelope);
        assert_eq!(frame.len(), envelope.encoded_len());
        assert_eq!(frame.decode().expect("decodes"), envelope);
        let shared = frame.clone();
        assert_eq!(
            shared.0.as_ptr(),
            frame.0.as_ptr(),
            "a clone shares the bytes"
        );
    }

    fn read(envelope: &Envelope) -> Received {
        Received::read(Bytes::from(envelope.encode_to_vec())).expect("reads")
    }

    #[test]
    fn a_plain_event_is_read_as_its_header_and_passed_on_whole() {
        let envelope = protocol::event("acme", "orders", "CREATED", "", "{\"id\":1}");
        let received = read(&envelope);
        let Inbound::Event {
            header,
            topic,
            reference_uuid,
        } = &received.message
        else {
            panic!("read as {:?}", received.message);
        };
        assert_eq!(Some(header), envelope.header.as_ref());
        assert_eq!((topic.as_str(), reference_uuid.as_str()), ("orders", ""));
        assert_eq!(
            received.message.plain_event("acme"),
            envelope.header.as_ref()
        );
        assert_eq!(received.frame.decode().expect("decodes"), envelope);
    }

    #[test]
    fn only_a_well_formed_unanswering_event_of_the_tenant_is_plain() {
        let answer = protocol::event("acme", "t", protocol::ON_GOING, "cmd-1", "");
        let mut blank = protocol::event("acme", "t", "E", "", "");
        blank.header.as_mut().expect("header").uuid = " ".into();
        for (envelope, tenant) in [
            (protocol::event("acme", "t", "E", "", ""), "other"),
            (answer, "acme"),
            (blank, "acme"),
            (
                crate::heartbeat::heartbeat("acme", "connector", "c1"),
                "acme",
            ),
        ] {
            let received = read(&envelope);
            assert_eq!(received.message.plain_event(tenant), None);
            let (whole, _) = received.into_envelope().expect("decodes");
            assert_eq!(whole, envelope, "comes back whole");
        }
    }

    #[test]
    fn other_kinds_are_decoded_whole_and_heartbeats_are_told() {
        let heartbeat = crate::heartbeat::heartbeat("acme", "connector", "c1");
        let received = read(&heartbeat);
        assert!(received.is_heartbeat());
        assert_eq!(received.message, Inbound::Whole(heartbeat));
        assert!(!read(&protocol::event("acme", "t", "E", "", "")).is_heartbeat());
    }

    #[test]
    fn an_event_whose_payload_is_not_utf8_is_refused_though_it_is_not_copied() {
        // What a hostile sender could write: every connector's generated client would
        // fail on it, so it must not be passed on.
        let bad = head::EnvelopeHead {
            header: protocol::event("acme", "t", "E", "", "").header,
            body: Some(head::Kind::Event(head::EventHead {
                topic: "t".into(),
                event: Bytes::from_static(b"E"),
                reference_uuid: String::new(),
                payload: Bytes::from_static(&[0xff, 0xfe]),
            })),
        };
        let error = Received::read(Bytes::from(bad.encode_to_vec())).expect_err("refused");
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[test]
    fn a_detached_frame_has_a_buffer_of_its_own() {
        let frame = Frame::encode(&protocol::event("acme", "t", "E", "", "p"));
        let kept = frame.detached();
        assert_eq!(kept, frame);
        assert_ne!(kept.0.as_ptr(), frame.0.as_ptr());
    }
}
