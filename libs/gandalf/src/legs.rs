//! The legs of a command, as a router sees them.
//!
//! A command crosses several hops (connector -> aggregator -> cluster member ->
//! aggregator -> connector) and each hop that forwards it opens a [`Leg`]: it remembers
//! where it sent the command, and only an event referencing the command that comes from
//! one of those connections answers it. The answer then travels back the way the command
//! came, one leg at a time, so it reaches the origin exactly once and nobody else can
//! answer in the target's place. The same uuid may pass one router twice (a command that
//! comes back through the cluster to a connector of the same aggregator): each pass is
//! its own leg.
//!
//! Every leg has one budget, the command's `timeout_ms`; a hop hands the next one what is
//! left minus a reserve for the answer's way back ([`Budget::onward_ms`]), so the legs
//! end in order, the outermost last, and no hop keeps trying after its origin gave up.
//!
//! [`Legs`] also bounds the commands in flight: per origin connection and in all.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    protocol,
    wire::{Envelope, Header, envelope::Body},
};

/// A command's time budget at one hop.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    /// The budget of a command arriving now: its `timeout_ms` (0: the default of
    /// 1000 ms), capped by `max_ms`.
    pub fn of(header: &Header, max_ms: u32) -> Self {
        Self::from_ms(protocol::timeout_ms(header, max_ms))
    }

    pub fn from_ms(ms: u32) -> Self {
        Self {
            deadline: Instant::now() + Duration::from_millis(u64::from(ms)),
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn is_spent(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The `timeout_ms` to give the next hop: what is left, less a reserve (a tenth,
    /// between 1 and 50 ms) for its answer to come back before this hop's deadline.
    pub fn onward_ms(&self) -> u32 {
        let left = self.remaining().as_millis() as u64;
        let reserve = (left / 10).clamp(1, 50);
        u32::try_from(left.saturating_sub(reserve).max(1)).unwrap_or(u32::MAX)
    }
}

/// Why a command could not open a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The origin connection has this many commands in flight already.
    Connection(usize),
    /// The router has this many commands in flight already.
    Total(usize),
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(n) => {
                write!(f, "this connection has {n} commands in flight (the limit)")
            }
            Self::Total(n) => write!(f, "{n} commands are in flight here (the limit)"),
        }
    }
}

/// What became of an event offered as an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// A leg took it: it came from where that leg sent the command.
    Taken,
    /// Legs of that command are open here, but it did not come from where any of them
    /// sent it: not an answer (dropped by the caller).
    Unsolicited,
    /// No leg of that command is open here.
    NoLeg,
}

struct Waiter {
    id: u64,
    sent_to: Vec<u64>,
    tx: mpsc::Sender<(u64, Envelope)>,
}

#[derive(Default)]
struct State {
    /// Command uuid -> its open legs.
    waiters: HashMap<String, Vec<Waiter>>,
    /// Origin connection -> legs open for it (only origins with a limit are counted).
    per_origin: HashMap<u64, usize>,
    total: usize,
}

/// The open legs of one router.
pub struct Legs {
    per_connection: usize,
    total: usize,
    next: AtomicU64,
    state: Mutex<State>,
}

/// One open leg; closing it (drop) frees its place.
pub struct Leg {
    legs: Arc<Legs>,
    uuid: String,
    id: u64,
    /// The origin counted against the per-connection limit.
    counted_origin: Option<u64>,
    answers: mpsc::Receiver<(u64, Envelope)>,
}

impl Legs {
    /// At most `per_connection` legs for one limited origin and `total` in all.
    pub fn new(per_connection: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_connection: per_connection.max(1),
            total: total.max(1),
            next: AtomicU64::new(1),
            state: Mutex::default(),
        })
    }

    /// Opens a leg for command `uuid` from `origin`; `limited` counts it against the
    /// origin's own limit (connectors), else only against the total.
    pub fn open(self: &Arc<Self>, uuid: &str, origin: u64, limited: bool) -> Result<Leg, Busy> {
        let mut state = self.lock();
        if state.total >= self.total {
            return Err(Busy::Total(self.total));
        }
        if limited {
            let count = state.per_origin.entry(origin).or_default();
            if *count >= self.per_connection {
                return Err(Busy::Connection(self.per_connection));
            }
            *count += 1;
        }
        state.total += 1;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // Answers per leg are few (one per connection tried); beyond that they are noise.
        let (tx, answers) = mpsc::channel(8);
        state
            .waiters
            .entry(uuid.to_owned())
            .or_default()
            .push(Waiter {
                id,
                sent_to: Vec::new(),
                tx,
            });
        Ok(Leg {
            legs: self.clone(),
            uuid: uuid.to_owned(),
            id,
            counted_origin: limited.then_some(origin),
            answers,
        })
    }

    /// Offers an event referencing command `reference`, received from connection `from`,
    /// to the legs of that command.
    pub fn offer(&self, reference: &str, from: u64, envelope: &Envelope) -> Offer {
        let state = self.lock();
        let Some(waiters) = state.waiters.get(reference) else {
            return Offer::NoLeg;
        };
        let mut taken = false;
        for waiter in waiters.iter().filter(|w| w.sent_to.contains(&from)) {
            taken |= waiter.tx.try_send((from, envelope.clone())).is_ok();
        }
        if taken {
            Offer::Taken
        } else {
            Offer::Unsolicited
        }
    }

    /// Legs open now.
    pub fn in_flight(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a leg shares its budget among the connections it tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// The first that takes the command gets what is left (less the reserve for the
    /// answer's way back); only a refusal, or a connection that is gone, moves on. For
    /// hops that answer UNDELIVERABLE themselves when they cannot deliver.
    WholeBudget,
    /// Each gets an equal share of what is left, so a silent one is passed over in time
    /// for the next. For the connections of one connector.
    EqualShares,
}

/// What became of a leg's try-next sequence.
#[derive(Debug)]
pub struct Tries {
    /// The answer and the connection it came from.
    pub answer: Option<(u64, Envelope)>,
    /// The last refusal's detail (an error event from a connection tried).
    pub refusal: Option<String>,
    /// How many connections took the command.
    pub tried: usize,
}

impl Leg {
    /// Sends the command to `targets` in turn within `budget` until one answers:
    /// `send(target, timeout_ms)` queues it with the `timeout_ms` to stamp and says
    /// whether it was queued; `via(target)` is the connection an answer comes from. An
    /// error event moves on to the next; silence does too under [`Pacing::EqualShares`]
    /// and ends the sequence under [`Pacing::WholeBudget`].
    pub async fn try_in_turn<T>(
        &mut self,
        targets: &[T],
        via: impl Fn(&T) -> u64,
        budget: Budget,
        pacing: Pacing,
        mut send: impl FnMut(&T, u32) -> bool,
    ) -> Tries {
        let mut tries = Tries {
            answer: None,
            refusal: None,
            tried: 0,
        };
        for (i, target) in targets.iter().enumerate() {
            if budget.is_spent() {
                break;
            }
            let (until, timeout_ms) = match pacing {
                Pacing::WholeBudget => (budget.deadline(), budget.onward_ms()),
                Pacing::EqualShares => {
                    let left = u32::try_from(targets.len() - i).unwrap_or(u32::MAX);
                    let share = budget.remaining() / left;
                    let ms = u32::try_from(share.as_millis()).unwrap_or(u32::MAX).max(1);
                    (Instant::now() + share, ms)
                }
            };
            self.sending_to(via(target));
            if !send(target, timeout_ms) {
                continue;
            }
            tries.tried += 1;
            match self.answer(until).await {
                Some((
                    _,
                    Envelope {
                        body: Some(Body::Event(event)),
                        ..
                    },
                )) if event.topic == protocol::ERROR_TOPIC => {
                    tracing::debug!(command = %self.uuid, detail = %event.payload, "refused; trying the next");
                    tries.refusal = Some(event.payload);
                }
                Some(answer) => {
                    tries.answer = Some(answer);
                    break;
                }
                None if pacing == Pacing::EqualShares => {
                    tracing::debug!(command = %self.uuid, "no answer in its share; trying the next");
                }
                None => break,
            }
        }
        tries
    }

    /// Records that the command goes to connection `to` (before sending it there, so
    /// that a quick answer finds the leg ready).
    pub fn sending_to(&self, to: u64) {
        let mut state = self.legs.lock();
        if let Some(waiter) = state
            .waiters
            .get_mut(&self.uuid)
            .and_then(|all| all.iter_mut().find(|w| w.id == self.id))
        {
            waiter.sent_to.push(to);
        }
    }

    /// The next answer, from a connection this leg sent to, before `until`.
    pub async fn answer(&mut self, until: Instant) -> Option<(u64, Envelope)> {
        tokio::time::timeout_at(until.into(), self.answers.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        let mut state = self.legs.lock();
        if let Some(all) = state.waiters.get_mut(&self.uuid) {
            all.retain(|w| w.id != self.id);
            if all.is_empty() {
                state.waiters.remove(&self.uuid);
            }
        }
        if let Some(origin) = self.counted_origin
            && let Some(count) = state.per_origin.get_mut(&origin)
        {
            *count -= 1;
            if *count == 0 {
                state.per_origin.remove(&origin);
            }
        }
        state.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack() -> Envelope {
        protocol::event("acme", "SYNC", protocol::ON_GOING, "u", "")
    }

    #[tokio::test]
    async fn only_an_answer_from_where_the_leg_sent_the_command_is_taken() {
        let legs = Legs::new(10, 10);
        let mut leg = legs.open("u", 1, true).expect("room");
        leg.sending_to(7);
        assert_eq!(legs.offer("u", 8, &ack()), Offer::Unsolicited);
        assert_eq!(legs.offer("other", 7, &ack()), Offer::NoLeg);
        assert_eq!(legs.offer("u", 7, &ack()), Offer::Taken);
        let soon = Instant::now() + Duration::from_millis(100);
        let (from, _) = leg.answer(soon).await.expect("answered");
        assert_eq!(from, 7);
        assert!(leg.answer(soon).await.is_none(), "the stranger's was not");
        drop(leg);
        assert_eq!(legs.offer("u", 7, &ack()), Offer::NoLeg);
        assert_eq!(legs.in_flight(), 0);
    }

    #[tokio::test]
    async fn two_legs_of_one_uuid_each_get_their_own_answer() {
        let legs = Legs::new(10, 10);
        let mut outward = legs.open("u", 1, true).expect("room");
        outward.sending_to(100);
        let mut inward = legs.open("u", 100, false).expect("room");
        inward.sending_to(2);
        assert_eq!(legs.offer("u", 2, &ack()), Offer::Taken);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(inward.answer(soon).await.map(|(f, _)| f), Some(2));
        assert!(outward.answer(soon).await.is_none());
        assert_eq!(legs.offer("u", 100, &ack()), Offer::Taken);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(outward.answer(soon).await.map(|(f, _)| f), Some(100));
    }

    #[test]
    fn commands_in_flight_are_bounded_per_connection_and_in_all() {
        let legs = Legs::new(2, 3);
        let a = legs.open("a", 1, true).expect("room");
        let _b = legs.open("b", 1, true).expect("room");
        assert_eq!(legs.open("c", 1, true).err(), Some(Busy::Connection(2)));
        let _d = legs.open("d", 2, true).expect("another origin");
        assert_eq!(legs.open("e", 3, false).err(), Some(Busy::Total(3)));
        drop(a);
        assert!(legs.open("c", 1, true).is_ok(), "a place was freed");
    }

    #[test]
    fn the_onward_budget_keeps_a_reserve_for_the_answer() {
        let budget = Budget::from_ms(1000);
        let onward = budget.onward_ms();
        assert!((940..=950).contains(&onward), "{onward}");
        let tiny = Budget::from_ms(3);
        assert!(tiny.onward_ms() >= 1);
        assert!(Budget::from_ms(0).is_spent());
    }
}
