//! A connection's outgoing queue: bounded in messages and in bytes, filled without ever
//! waiting, drained by the connection's gRPC stream.
//!
//! Routing pushes into many outboxes from the read loop of one connection, so a push
//! never waits: when the queue is full the message is refused (the caller counts it). A
//! queue that stays full — every push refused for [`Limits::stall`] — belongs to a peer
//! that stopped reading: the outbox is then *stalled*, its queue freed, every later push
//! refused, and [`Outbox::stalled`] tells the connection's owner to close it.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{frame::Frame, wire::Envelope};

/// How much one outbox holds, and how long it may stay full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages queued at most.
    pub messages: usize,
    /// Encoded bytes queued at most (a single larger message is taken into an empty queue).
    pub bytes: usize,
    /// A queue full for this long is a stalled peer: the connection is closed.
    pub stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            messages: 1024,
            bytes: 16 * 1024 * 1024,
            stall: Duration::from_secs(2),
        }
    }
}

impl Limits {
    /// From the services' config keys `queue_messages`, `queue_bytes`, `stall_timeout_ms`.
    pub fn from_keys(messages: usize, bytes: usize, stall_timeout_ms: u64) -> Self {
        Self {
            messages,
            bytes,
            stall: Duration::from_millis(stall_timeout_ms),
        }
    }

    /// What is wrong with them, one line per key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.messages == 0 {
            problems.push("queue_messages: must be at least 1".into());
        }
        if self.bytes < 64 * 1024 {
            problems.push(format!(
                "queue_bytes: {} is below the smallest useful queue of 65536 bytes",
                self.bytes
            ));
        }
        if self.stall.is_zero() {
            problems.push("stall_timeout_ms: must be at least 1".into());
        }
        problems
    }
}

/// Why a push did not queue the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full; the peer may catch up.
    Full,
    /// The queue has stayed full beyond the stall limit: this push stalled the outbox
    /// (the first refusal of this kind; later pushes see [`Refused::Closed`]).
    Stalled,
    /// The connection is closed or stalled.
    Closed,
}

struct State {
    queue: VecDeque<Frame>,
    /// Mirrors the stalled token under the lock: read on every push and pop without
    /// touching the token's own synchronisation.
    stalled: bool,
    bytes: usize,
    waker: Option<Waker>,
    /// When the first of an unbroken run of refused pushes came.
    full_since: Option<Instant>,
    /// Every [`Outbox`] handle is gone: the stream ends once the queue is empty.
    finished: bool,
    /// What a response stream ends with after the queue: [`Outbox::close_with`].
    ending: Option<Status>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken each time the stream takes a message out: room for a waiting push.
    room: tokio::sync::Notify,
    /// Pushes waiting for room: the stream wakes them only when there are some.
    waiting: AtomicUsize,
    limits: Limits,
    senders: AtomicUsize,
    stalled: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pushing side; clones share the queue.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The draining side: the messages, in order. Ends when every [`Outbox`] is dropped and
/// the queue is empty, or at once when the outbox stalled.
pub struct OutboxStream {
    shared: Arc<Shared>,
}

/// An outbox and its stream.
pub fn outbox(limits: Limits) -> (Outbox, OutboxStream) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            stalled: false,
            bytes: 0,
            waker: None,
            full_since: None,
            finished: false,
            ending: None,
        }),
        room: tokio::sync::Notify::new(),
        waiting: AtomicUsize::new(0),
        limits,
        senders: AtomicUsize::new(1),
        stalled: CancellationToken::new(),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxStream { shared },
    )
}

impl Outbox {
    /// Encodes `envelope` and queues it without waiting.
    pub fn push(&self, envelope: Envelope) -> Result<(), Refused> {
        self.push_frame(Frame::encode(&envelope))
    }

    /// Queues an encoded envelope without waiting (a fan-out shares one frame).
    pub fn push_frame(&self, frame: Frame) -> Result<(), Refused> {
        self.try_push(frame).map_err(|(refused, _)| refused)
    }

    /// Queues `envelope`, waiting for room while the queue is full — but never beyond the
    /// stall limit: a queue full that long stalls the outbox as [`Outbox::push`] does. For
    /// the one link every producer shares (an aggregator's stream to its member), where
    /// waiting slows the producers instead of losing their messages.
    pub async fn push_wait(&self, frame: Frame) -> Result<(), Refused> {
        /// Counts this push among the waiting while it lives.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.shared.waiting);
        let mut frame = frame;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(frame) {
                Ok(()) => return Ok(()),
                Err((Refused::Full, Some(back))) => frame = back,
                Err((refused, _)) => return Err(refused),
            }
            // Woken by room, or after the stall limit to let the next try stall it.
            let _ = tokio::time::timeout(self.shared.limits.stall, room).await;
        }
    }

    /// [`Outbox::push_frame`] that hands the frame back when the queue is full (for a
    /// later [`Outbox::push_wait`]).
    pub fn try_push(&self, frame: Frame) -> Result<(), (Refused, Option<Frame>)> {
        let size = frame.len();
        let limits = &self.shared.limits;
        let mut state = self.shared.lock();
        if state.finished || state.stalled {
            return Err((Refused::Closed, None));
        }
        let fits = state.queue.len() < limits.messages
            && (state.bytes + size <= limits.bytes || state.queue.is_empty());
        if !fits {
            let now = Instant::now();
            let since = *state.full_since.get_or_insert(now);
            if now.duration_since(since) < limits.stall {
                return Err((Refused::Full, Some(frame)));
            }
            // Cancelled under the lock: no push can slip in between the two.
            state.stalled = true;
            self.shared.stalled.cancel();
            state.queue = VecDeque::new();
            state.bytes = 0;
            let waker = state.waker.take();
            drop(state);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Err((Refused::Stalled, None));
        }
        state.full_since = None;
        state.bytes += size;
        state.queue.push_back(frame);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Messages and bytes queued now.
    pub fn queued(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.queue.len(), state.bytes)
    }

    /// Whether the outbox stalled.
    pub fn is_stalled(&self) -> bool {
        self.shared.stalled.is_cancelled()
    }

    /// Resolves once the outbox stalls: the connection's owner closes it then.
    pub async fn stalled(&self) {
        self.shared.stalled.cancelled().await;
    }

    /// Refuses every later push and ends the stream once what is queued went out.
    pub fn close(&self) {
        self.finish(None);
    }

    /// [`Outbox::close`], and a response stream ends with `status` after the queue.
    pub fn close_with(&self, status: Status) {
        self.finish(Some(status));
    }

    fn finish(&self, ending: Option<Status>) {
        let waker = {
            let mut state = self.shared.lock();
            if !state.finished && ending.is_some() {
                state.ending = ending;
            }
            state.finished = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close();
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (messages, bytes) = self.queued();
        f.debug_struct("Outbox")
            .field("messages", &messages)
            .field("bytes", &bytes)
            .field("stalled", &self.is_stalled())
            .finish()
    }
}

impl OutboxStream {
    /// As a tonic response stream: a stalled outbox ends it with RESOURCE_EXHAUSTED, which
    /// the peer reads once it reads again.
    pub fn responses(self) -> ResponseStream {
        ResponseStream {
            inner: self,
            done: false,
        }
    }
}

impl Stream for OutboxStream {
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let mut state = self.shared.lock();
        if state.stalled {
            return Poll::Ready(None);
        }
        if let Some(frame) = state.queue.pop_front() {
            state.bytes -= frame.len();
            drop(state);
            // Read after the pop (ordered by the lock with the waiter's own try): a push
            // that found the queue full is counted here and is woken.
            if self.shared.waiting.load(Ordering::SeqCst) > 0 {
                self.shared.room.notify_waiters();
            }
            return Poll::Ready(Some(frame));
        }
        if state.finished {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// [`OutboxStream`] as a server's response stream.
pub struct ResponseStream {
    inner: OutboxStream,
    done: bool,
}

impl Stream for ResponseStream {
    type Item = Result<Frame, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                self.done = true;
                if self.inner.shared.stalled.is_cancelled() {
                    return Poll::Ready(Some(Err(Status::resource_exhausted(
                        "closed: this stream stopped reading and its queue stayed full",
                    ))));
                }
                let ending = self.inner.shared.lock().ending.take();
                Poll::Ready(ending.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::protocol;

    fn event(payload: &str) -> Envelope {
        protocol::event("t", "orders", "CREATED", "", payload)
    }

    #[tokio::test]
    async fn messages_come_out_in_order_and_the_stream_ends_with_the_last_sender() {
        let (outbox, mut stream) = outbox(Limits::default());
        let second = outbox.clone();
        outbox.push(event("1")).expect("room");
        second.push(event("2")).expect("room");
        drop(outbox);
        drop(second);
        let payloads: Vec<String> = (&mut stream)
            .map(|f| match f.decode().expect("decodes").body {
                Some(crate::wire::envelope::Body::Event(e)) => e.payload,
                _ => String::new(),
            })
            .collect()
            .await;
        assert_eq!(payloads, ["1", "2"]);
    }

    #[tokio::test]
    async fn a_response_stream_closed_with_a_status_ends_with_it_after_the_queue() {
        let (outbox, stream) = outbox(Limits::default());
        outbox.push(event("1")).expect("room");
        outbox.close_with(Status::permission_denied("no"));
        assert_eq!(outbox.push(event("2")), Err(Refused::Closed));
        let items: Vec<_> = stream.responses().collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().map_err(Status::code).err(),
            Some(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn the_queue_is_bounded_in_messages_and_in_bytes() {
        let limits = Limits {
            messages: 3,
            bytes: 1000,
            stall: Duration::from_secs(60),
        };
        let (outbox, _stream) = outbox(limits);
        for _ in 0..3 {
            outbox.push(event("x")).expect("room");
        }
        assert_eq!(outbox.push(event("x")), Err(Refused::Full));

        let (outbox, _stream) = super::outbox(limits);
        let big = "b".repeat(600);
        outbox.push(event(&big)).expect("an empty queue takes it");
        assert_eq!(outbox.push(event(&big)), Err(Refused::Full));
        assert!(outbox.queued().1 > 600);
        // Larger than the whole limit: still taken into an empty queue, never split.
        let (outbox, _stream) = super::outbox(limits);
        outbox.push(event(&"h".repeat(5000))).expect("alone");
    }

    #[tokio::test]
    async fn a_queue_full_beyond_the_stall_limit_stalls_frees_and_ends_the_stream() {
        let limits = Limits {
            messages: 2,
            bytes: 1 << 20,
            stall: Duration::from_millis(100),
        };
        let (outbox, stream) = outbox(limits);
        outbox.push(event("1")).expect("room");
        outbox.push(event("2")).expect("room");
        assert_eq!(outbox.push(event("3")), Err(Refused::Full));
        assert!(!outbox.is_stalled());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(outbox.push(event("4")), Err(Refused::Stalled));
        assert!(outbox.is_stalled());
        assert_eq!(outbox.queued(), (0, 0), "the queue is freed");
        assert_eq!(outbox.push(event("5")), Err(Refused::Closed));
        tokio::time::timeout(Duration::from_secs(1), outbox.stalled())
            .await
            .expect("stalled resolves");
        let ended: Vec<_> = stream.responses().collect().await;
        assert_eq!(ended.len(), 1);
        assert_eq!(
            ended[0].as_ref().map_err(Status::code).err(),
            Some(tonic::Code::ResourceExhausted)
        );
    }

    #[tokio::test]
    async fn a_waiting_push_goes_in_when_the_reader_takes_one_and_stalls_when_it_never_does() {
        let limits = Limits {
            messages: 1,
            bytes: 1 << 20,
            stall: Duration::from_millis(200),
        };
        let (outbox, mut stream) = outbox(limits);
        outbox.push(event("1")).expect("room");
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let first = stream.next().await;
            (first, stream)
        });
        outbox
            .push_wait(Frame::encode(&event("2")))
            .await
            .expect("in once the reader took one");
        let (first, _stream) = reader.await.expect("reader");
        assert!(first.is_some());
        assert_eq!(outbox.queued().0, 1);
        // Nobody reads now: the wait ends at the stall limit, stalled.
        let started = Instant::now();
        assert_eq!(
            outbox.push_wait(Frame::encode(&event("3"))).await,
            Err(Refused::Stalled)
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_reader_that_catches_up_resets_the_stall_clock() {
        let limits = Limits {
            messages: 1,
            bytes: 1 << 20,
            stall: Duration::from_millis(100),
        };
        let (outbox, mut stream) = outbox(limits);
        outbox.push(event("1")).expect("room");
        assert_eq!(outbox.push(event("2")), Err(Refused::Full));
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.next().await.expect("the first");
        outbox.push(event("3")).expect("room again");
        assert_eq!(outbox.push(event("4")), Err(Refused::Full));
        assert!(!outbox.is_stalled());
    }
}
