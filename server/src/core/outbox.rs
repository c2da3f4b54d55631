//! A connection's bounded outbox: everything the server sends to one socket
//! goes through it, in order.
//!
//! It is a short `std::sync::Mutex` around a `VecDeque` plus an
//! `AtomicWaker` rather than a tokio channel because an idle connection
//! should cost almost nothing: an empty `VecDeque` allocates nothing, while
//! a channel allocates a block of slots up front. Only the connection's own
//! task waits on it, so one waker slot is enough, and registering is an
//! atomic swap: the connection loop polls the outbox on every pass, and a
//! `Notify` waiter list cost two lock round trips each time (4% of the
//! server's CPU samples under relay load). Pushing never waits, so any task (the
//! connection's own, or the peer's relaying to it) may push while holding a
//! registry lock.
//!
//! The bound is in messages and in bytes. A push past either bound marks the
//! outbox overflowed: the receiver is not keeping up, and its connection task
//! closes it (PROTOCOL.md, Promises, 3) instead of dropping messages.
//!
//! It holds typed [`Outgoing`] values, not encoded frames: each front door
//! encodes what it takes out its own way.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use std::task::{Context, Poll};

use super::error::ServerError;
use super::outgoing::Outgoing;

/// The bounds of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the receiver is closing")]
    /// The receiver is closing or gone; the item is not needed.
    Closed,
    /// This push went past a bound; the receiver will be closed as slow.
    #[error("the receiver's outbox is full")]
    Overflow,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    // Wakes the connection task: new items, or an overflow.
    wake: AtomicWaker,
    limits: OutboxLimits,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    overflowed: bool,
    // A Close was queued: later pushes are refused.
    closing: bool,
    // When the oldest relayed message queued arrived at the server, for
    // the outbox wait the front door measures once it has written it.
    oldest_relayed: Option<Instant>,
}

/// What the connection task takes from its outbox at once.
#[derive(Debug, Default)]
pub struct Batch {
    pub items: VecDeque<Outgoing>,
    /// The outbox overflowed: close the connection as a slow consumer.
    pub overflowed: bool,
    /// When the oldest relayed message in it arrived at the server.
    pub oldest_relayed: Option<Instant>,
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: AtomicWaker::new(),
                limits,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every update is a single push or drain), so poisoning is ignored.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one item, within the bounds.
    pub fn push(&self, item: Outgoing) -> Result<(), PushError> {
        self.push_arrived(item, None)
    }

    /// Queues a relayed message that arrived at the server at `arrived`,
    /// within the bounds: its wait here is measured from then.
    pub fn push_relayed(&self, item: Outgoing, arrived: Instant) -> Result<(), PushError> {
        self.push_arrived(item, Some(arrived))
    }

    fn push_arrived(&self, item: Outgoing, arrived: Option<Instant>) -> Result<(), PushError> {
        let len = item.queued_bytes();
        let mut state = self.lock();
        if state.closing || state.overflowed {
            return Err(PushError::Closed);
        }
        let limits = self.shared.limits;
        if state.queue.len() >= limits.max_messages || state.bytes + len > limits.max_bytes {
            state.overflowed = true;
            drop(state);
            self.shared.wake.wake();
            return Err(PushError::Overflow);
        }
        state.bytes += len;
        state.queue.push_back(item);
        if state.oldest_relayed.is_none() {
            state.oldest_relayed = arrived;
        }
        drop(state);
        self.shared.wake.wake();
        Ok(())
    }

    /// Queues a close after everything already queued. Not bounded: it is
    /// the last item, and the bound must never stop a close.
    pub fn push_close(&self, reason: ServerError) {
        let mut state = self.lock();
        if state.closing {
            return;
        }
        state.closing = true;
        state.queue.push_back(Outgoing::Close(reason));
        drop(state);
        self.shared.wake.wake();
    }

    /// Whether a close was queued (or the outbox overflowed): the session is
    /// over and further input is ignored.
    /// Whether `other` is this same outbox (a clone of it).
    pub fn is(&self, other: &Outbox) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    pub fn is_closing(&self) -> bool {
        let state = self.lock();
        state.closing || state.overflowed
    }

    /// Waits until there is something to send or the outbox overflowed, then
    /// takes everything queued. `batch` must have been emptied. Only the
    /// connection task calls this.
    pub async fn next_batch(&self, batch: &mut Batch) {
        std::future::poll_fn(|cx| self.poll_next_batch(cx, batch)).await;
    }

    fn poll_next_batch(&self, cx: &mut Context<'_>, batch: &mut Batch) -> Poll<()> {
        // Register before looking, so a push after the look wakes us.
        self.shared.wake.register(cx.waker());
        if self.take(batch) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes everything queued into `batch` (which must have been emptied)
    /// without waiting; whether there was anything, or an overflow. For an
    /// outbox drained by requests (the polling flow) rather than a task.
    pub fn take(&self, batch: &mut Batch) -> bool {
        let mut state = self.lock();
        if state.overflowed || !state.queue.is_empty() {
            // Take the queue itself, allocation and all, leaving the
            // batch's empty one: no copy, and an idle outbox holds no
            // memory at all.
            std::mem::swap(&mut batch.items, &mut state.queue);
            state.bytes = 0;
            batch.overflowed = state.overflowed;
            batch.oldest_relayed = state.oldest_relayed.take();
            return true;
        }
        false
    }

    /// Resolves once the session is over (a close was queued, or the
    /// outbox overflowed), without taking anything: for a session held
    /// while its peer is away, whose queue waits for its return.
    pub async fn ended(&self) {
        std::future::poll_fn(|cx| {
            self.shared.wake.register(cx.waker());
            let state = self.lock();
            if state.closing || state.overflowed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Why the session is over, if it is: the queued close's reason, or
    /// `None` for an overflow (the caller knows its bounds) and while open.
    pub fn close_reason(&self) -> Option<ServerError> {
        let state = self.lock();
        if !state.closing {
            return None;
        }
        state.queue.iter().rev().find_map(|item| match item {
            Outgoing::Close(reason) => Some(reason.clone()),
            _ => None,
        })
    }

    /// Whether it overflowed.
    pub fn has_overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Resolves once the outbox has overflowed, for a task blocked writing to
    /// a peer that does not read.
    pub async fn overflowed(&self) {
        std::future::poll_fn(|cx| {
            self.shared.wake.register(cx.waker());
            if self.lock().overflowed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use protocol::RawValue;

    fn limits(max_messages: usize, max_bytes: usize) -> OutboxLimits {
        OutboxLimits {
            max_messages,
            max_bytes,
        }
    }

    /// A relayed payload of `text` (a JSON string literal's contents).
    fn msg(text: &str) -> Outgoing {
        let raw = RawValue::from_string(format!("\"{text}\"")).unwrap();
        Outgoing::device_msg(&raw)
    }

    #[test]
    fn keeps_order_and_drains_everything() {
        let outbox = Outbox::new(limits(10, 1000));
        outbox.push(msg("a")).unwrap();
        outbox.push(msg("b")).unwrap();
        outbox.push_close(ServerError::ShuttingDown);
        assert_eq!(outbox.push(msg("c")), Err(PushError::Closed));
        let mut batch = Batch::default();
        outbox.next_batch(&mut batch).now_or_never().unwrap();
        let items: Vec<Outgoing> = batch.items.drain(..).collect();
        assert_eq!(
            items,
            [
                msg("a"),
                msg("b"),
                Outgoing::Close(ServerError::ShuttingDown)
            ]
        );
        assert!(!batch.overflowed);
    }

    #[test]
    fn message_bound_is_exact() {
        let outbox = Outbox::new(limits(2, 1000));
        outbox.push(msg("1")).unwrap();
        outbox.push(msg("2")).unwrap();
        assert_eq!(outbox.push(msg("3")), Err(PushError::Overflow));
        assert_eq!(outbox.push(msg("4")), Err(PushError::Closed));
        let mut batch = Batch::default();
        outbox.next_batch(&mut batch).now_or_never().unwrap();
        assert!(batch.overflowed);
        outbox.overflowed().now_or_never().unwrap();
    }

    #[test]
    fn byte_bound_is_exact() {
        // Each payload below is 5 bytes of JSON: the quotes and 3 letters.
        let outbox = Outbox::new(limits(100, 10));
        outbox.push(msg("123")).unwrap();
        outbox.push(msg("456")).unwrap();
        assert_eq!(outbox.push(msg("")), Err(PushError::Overflow));

        // Draining frees the byte budget.
        let outbox = Outbox::new(limits(100, 10));
        outbox.push(msg("12345678")).unwrap();
        let mut batch = Batch::default();
        outbox.next_batch(&mut batch).now_or_never().unwrap();
        outbox.push(msg("12345678")).unwrap();
    }

    #[test]
    fn a_batch_knows_when_its_oldest_relayed_message_arrived() {
        let outbox = Outbox::new(limits(10, 1000));
        let start = Instant::now();
        let later = start + std::time::Duration::from_millis(5);
        outbox
            .push(Outgoing::ClientDisconnected { client_id: 1 })
            .unwrap();
        outbox.push_relayed(msg("a"), start).unwrap();
        outbox.push_relayed(msg("b"), later).unwrap();
        let mut batch = Batch::default();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch.oldest_relayed, Some(start));
        // The next batch starts over, and one without a relayed message
        // has no time.
        batch.items.clear();
        outbox
            .push(Outgoing::ClientDisconnected { client_id: 2 })
            .unwrap();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch.oldest_relayed, None);
        batch.items.clear();
        outbox.push_relayed(msg("c"), later).unwrap();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch.oldest_relayed, Some(later));
    }

    #[test]
    fn a_held_queue_says_it_ended_without_giving_anything_up() {
        let outbox = Outbox::new(limits(10, 1000));
        outbox.push(msg("a")).unwrap();
        assert!(outbox.ended().now_or_never().is_none());
        assert_eq!(outbox.close_reason(), None);
        outbox.push_close(ServerError::DeviceDisconnected);
        outbox.ended().now_or_never().unwrap();
        assert_eq!(outbox.close_reason(), Some(ServerError::DeviceDisconnected));
        let mut batch = Batch::default();
        assert!(outbox.take(&mut batch));
        assert_eq!(batch.items.len(), 2);
        let full = Outbox::new(limits(1, 1000));
        full.push(msg("a")).unwrap();
        assert_eq!(full.push(msg("b")), Err(PushError::Overflow));
        full.ended().now_or_never().unwrap();
        assert!(full.has_overflowed());
    }

    #[test]
    fn close_is_never_refused_by_the_bound() {
        let outbox = Outbox::new(limits(1, 1));
        outbox
            .push(Outgoing::ClientDisconnected { client_id: 1 })
            .unwrap();
        outbox.push_close(ServerError::ConnectTimeout);
        let mut batch = Batch::default();
        outbox.next_batch(&mut batch).now_or_never().unwrap();
        assert_eq!(batch.items.len(), 2);
    }
}
