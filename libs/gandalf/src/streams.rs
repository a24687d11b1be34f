//! The settings every Gandalf stream end shares, the aggregator's and the cluster's alike:
//! the outgoing queue, heartbeats, HTTP/2 keepalive and the largest message. Both
//! services have the same keys for them (`queue_messages`, `queue_bytes`,
//! `stall_timeout_ms`, `heartbeat_interval_ms`, `keepalive_interval_ms`,
//! `max_message_bytes`), read into one [`Settings`].

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

use crate::{heartbeat, outbox::Limits};

/// How a service's streams are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Each connection's outgoing queue.
    pub queue: Limits,
    /// Interval of the heartbeats sent, and of the silence rule.
    pub heartbeat: Duration,
    /// HTTP/2 keepalive PING interval, and how long a PING may go unanswered.
    pub keepalive: Duration,
    /// Largest envelope accepted or sent, encoded.
    pub max_message_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            queue: Limits::default(),
            heartbeat: heartbeat::DEFAULT_INTERVAL,
            keepalive: Duration::from_secs(20),
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Settings {
    /// From the services' config keys of the same names.
    pub fn from_keys(
        queue_messages: usize,
        queue_bytes: usize,
        stall_timeout_ms: u64,
        heartbeat_interval_ms: u64,
        keepalive_interval_ms: u64,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            queue: Limits::from_keys(queue_messages, queue_bytes, stall_timeout_ms),
            heartbeat: Duration::from_millis(heartbeat_interval_ms),
            keepalive: Duration::from_millis(keepalive_interval_ms),
            max_message_bytes,
        }
    }

    /// What is wrong with them, one line per key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.queue.problems();
        if self.max_message_bytes < 1024 {
            problems.push("max_message_bytes: must be at least 1024".into());
        }
        if self.queue.bytes < self.max_message_bytes {
            problems.push(format!(
                "queue_bytes: {} cannot hold one message of max_message_bytes ({})",
                self.queue.bytes, self.max_message_bytes
            ));
        }
        if self.heartbeat.is_zero() {
            problems.push("heartbeat_interval_ms: must be at least 1".into());
        }
        if self.keepalive < Duration::from_secs(1) {
            problems.push("keepalive_interval_ms: must be at least 1000".into());
        }
        problems
    }

    /// A gRPC server with the keepalive set.
    pub fn server(&self) -> Server {
        Server::builder()
            .http2_keepalive_interval(Some(self.keepalive))
            .http2_keepalive_timeout(Some(self.keepalive))
    }

    /// `endpoint` with the keepalive set (kept up while idle too).
    pub fn endpoint(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::Notify,
    };
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::frame::{self, Frame, FrameServer, Received};

    /// Sends one frame, then nothing: the stream stays open and idle.
    struct OneThenIdle;

    type Frames = Pin<Box<dyn tokio_stream::Stream<Item = Result<Frame, Status>> + Send>>;

    #[tonic::async_trait]
    impl frame::Connect for OneThenIdle {
        const SERVICE: &'static str = "gandalf.v1.Cluster";
        const PATH: &'static str = "/gandalf.v1.Cluster/Connect";
        type Stream = Frames;

        async fn connect(
            &self,
            request: Request<Streaming<Received>>,
        ) -> Result<Response<Frames>, Status> {
            use tokio_stream::StreamExt;
            let mut inbound = request.into_inner();
            tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
            let first = Frame::encode(&crate::protocol::event("acme", "t", "E", "", ""));
            Ok(Response::new(Box::pin(
                tokio_stream::iter([Ok(first)]).chain(tokio_stream::pending()),
            )))
        }
    }

    /// One direction of a proxy that, once `frozen`, reads on and forwards nothing (a
    /// path gone half-open); `closed` is notified when its source closes. Its write side
    /// stays open for good: a dead path carries no FIN either.
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<AtomicBool>,
        closed: Arc<Notify>,
    ) {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) if !frozen.load(Ordering::SeqCst) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
            }
        }
        closed.notify_one();
        let _still_open = to;
        std::future::pending::<()>().await;
    }

    #[tokio::test]
    async fn keepalive_ends_a_half_open_stream_on_both_sides() {
        let settings = Settings {
            keepalive: Duration::from_secs(1),
            ..Settings::default()
        };
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server_addr = server.local_addr().expect("addr");
        tokio::spawn(
            settings
                .server()
                .add_service(FrameServer::new(OneThenIdle, 1024 * 1024))
                .serve_with_incoming(TcpListenerStream::new(server)),
        );
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy_addr = proxy.local_addr().expect("addr");
        let frozen = Arc::new(AtomicBool::new(false));
        let (server_closed, client_closed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        {
            let (frozen, server_closed, client_closed) =
                (frozen.clone(), server_closed.clone(), client_closed.clone());
            tokio::spawn(async move {
                let (client, _) = proxy.accept().await.expect("accept");
                let upstream = TcpStream::connect(server_addr).await.expect("connect");
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = upstream.into_split();
                tokio::spawn(pipe(
                    client_read,
                    server_write,
                    frozen.clone(),
                    client_closed,
                ));
                pipe(server_read, client_write, frozen, server_closed).await;
            });
        }

        let channel = settings
            .endpoint(Endpoint::from_shared(format!("http://{proxy_addr}")).expect("url"))
            .connect()
            .await
            .expect("connect");
        let request = Request::new(tokio_stream::pending::<Frame>());
        let mut inbound = frame::connect_cluster(channel, request, 1024 * 1024)
            .await
            .expect("open")
            .into_inner();
        assert!(inbound.message().await.expect("first").is_some());

        // Neither side sends anything on its own now; only keepalive can notice the path
        // went dead (1 s of PING interval, 1 s to answer).
        frozen.store(true, Ordering::SeqCst);
        let ended = tokio::time::timeout(Duration::from_secs(6), inbound.message()).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "the client's stream ends with an error: {ended:?}"
        );
        tokio::time::timeout(Duration::from_secs(6), server_closed.notified())
            .await
            .expect("the server closes its side of the dead connection");
    }

    #[test]
    fn every_bad_key_is_named() {
        assert!(Settings::default().problems().is_empty());
        let bad = Settings::from_keys(0, 1 << 20, 0, 0, 10, 2 << 20);
        let text = bad.problems().join("\n");
        for key in [
            "queue_messages",
            "stall_timeout_ms",
            "queue_bytes",
            "heartbeat_interval_ms",
            "keepalive_interval_ms",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
    }
}
