//! Envelopes as encoded bytes, so that routing forwards what it received instead of
//! cloning and re-encoding a message for every target.
//!
//! A [`Frame`] is one encoded `Envelope` in shared [`Bytes`]: a fan-out to n targets is n
//! reference counts on one buffer. [`FrameCodec`] writes frames as they are and decodes
//! each received message both ways, the [`Envelope`] to route on and its [`Frame`] to
//! pass on. The services serve `Connect` with [`FrameServer`] (tonic's generated server
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

use crate::wire::Envelope;

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

/// A message as received: decoded to route on, and as it came to pass on.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope: Envelope,
    pub frame: Frame,
}

impl From<Received> for Envelope {
    fn from(received: Received) -> Self {
        received.envelope
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
        let envelope = Envelope::decode(bytes.clone())
            .map_err(|e| Status::internal(format!("undecodable envelope: {e}")))?;
        Ok(Some(Received {
            envelope,
            frame: Frame(bytes),
        }))
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
}
