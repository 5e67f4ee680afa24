//! Each player's outbound queue, and the policy for a player who falls
//! behind reading it. The session's room pushes, the player's response
//! stream pops.
//!
//! The queue is a `VecDeque` behind a mutex, an [`AtomicWaker`] for the
//! stream, and one shared atomic length, which the room checks against the
//! capacity before it pushes (the policy needs the length). There is one
//! producer (the room, on the session's actor) and one consumer (the
//! stream), so the mutex is uncontended but for the nanoseconds both touch
//! it at once; the critical sections are a push or a pop. A tokio channel
//! costs about three times as many instructions per item here (its block
//! list, its waker and its cooperative budget), and its *bounded* flavour
//! also takes a semaphore mutex on every receive. See BENCHMARKS.md,
//! section 5.
//!
//! The policy ([`Outbox::offer`]), with a capacity in messages and one in
//! bytes ([`Delivery::weight`]):
//! - below half of both, everything is queued;
//! - from half of either on, the player is *behind*: droppable messages are
//!   dropped and counted, and the player gets a `MessagesDropped` notice when
//!   its queue has room again;
//! - a non-droppable message that does not fit, or a player behind for
//!   longer than the grace period, disconnects the player with
//!   RESOURCE_EXHAUSTED, and what was queued for it is freed at once;
//! - while the server is past its budget for all queued bytes, a player
//!   holding more than its share of the budget (the budget split evenly over
//!   every queue), or behind, is removed at its next non-droppable message
//!   rather than after the grace period, and droppable messages are dropped
//!   for it and for a player whose queue is a quarter full: the players
//!   holding memory go first. Past the budget, someone always holds more
//!   than its share, so the total comes back under it; it overshoots by at
//!   most one message per queue (each player under its share may take one
//!   more).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Departure, ITEM_OVERHEAD, PlayerInfo, SessionConfig, SharedEvent, player_weight};
use crate::error::Error;

/// One item of a player's outbound queue. Two words, so the queue's slots
/// stay small.
#[derive(Debug)]
pub enum Delivery {
    /// A history event shared by all its recipients (encoded once).
    Event(Arc<SharedEvent>),
    /// A message for this player alone.
    Direct(Box<Direct>),
    /// The last item: the stream ends with OK (`None`) or with the error.
    End(Option<Box<Error>>),
    /// The last item: the stream ends with OK, and says so on `ack` once it
    /// takes this item (a stream dropped before then drops `ack` instead).
    EndAcked(oneshot::Sender<()>),
}

impl Delivery {
    /// What the item holds, in bytes, for the queue's byte bound: an event's
    /// payload and texts (shared with its other recipients, but each queue
    /// is charged what it keeps alive), a direct message's, plus
    /// [`ITEM_OVERHEAD`]. The stream's end weighs nothing, so that it always
    /// fits.
    pub fn weight(&self) -> usize {
        match self {
            Delivery::Event(event) => event.weight(),
            Delivery::Direct(direct) => {
                ITEM_OVERHEAD
                    + match &**direct {
                        Direct::Welcome(welcome) => {
                            player_weight(&welcome.player)
                                + welcome.players.iter().map(|p| player_weight(p)).sum::<usize>()
                        }
                        Direct::Resumed(resumed) => player_weight(&resumed.player),
                        // Error texts are short and bounded; not worth
                        // formatting to measure.
                        Direct::Error { .. } => 256,
                        Direct::State(state) => state.payload.len(),
                        Direct::Pong { .. } | Direct::Dropped { .. } => 0,
                    }
            }
            Delivery::End(_) | Delivery::EndAcked(_) => 0,
        }
    }
}

/// A message for one player alone; none of these carry a sequence number
/// except the welcome, which reports the session's.
#[derive(Debug)]
pub enum Direct {
    /// The answer to the join.
    Welcome(Welcome),
    /// The answer to a resume; the replayed events follow it.
    Resumed(Resumed),
    /// The answer to a ping.
    Pong { client_time: i64, server_time_unix_micros: i64 },
    /// A non-fatal error about one of the player's messages, and how many
    /// more were refused without a reply since the last one (see
    /// [`Room::send_error`](super::Room::send_error)).
    Error { error: Error, unanswered: u64 },
    /// `count` droppable messages were dropped, the last with `last_sequence`.
    Dropped { count: u64, last_sequence: u64 },
    /// A tick's full state or delta.
    State(State),
}

/// What a tick sent a player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// The full state: replaces the player's.
    Full,
    /// A change on the last state the player got.
    Delta,
    /// A message (not state), e.g. an event of the game.
    Message,
}

/// A tick's full state, delta or message for one player. Its payload counts in the
/// server's byte accounting (`state` kind) for as long as it is queued.
#[derive(Debug)]
pub struct State {
    /// The tick that sent it.
    pub tick: u64,
    pub payload: Bytes,
    /// A full state, a delta on the last one, or a message.
    pub kind: StateKind,
    /// The last input sequence from this player that the tick processed.
    pub last_input_sequence: u64,
    /// Deltas dropped for this player since its last state (it fell
    /// behind); only on a full state.
    pub deltas_dropped: u64,
}

impl State {
    pub(super) fn new(
        tick: u64,
        payload: Bytes,
        kind: StateKind,
        last_input_sequence: u64,
        deltas_dropped: u64,
    ) -> Self {
        crate::metrics::EVENT_BYTES[crate::metrics::STATE_BYTES].fetch_add(payload.len(), Ordering::Relaxed);
        State { tick, payload, kind, last_input_sequence, deltas_dropped }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        crate::metrics::EVENT_BYTES[crate::metrics::STATE_BYTES].fetch_sub(self.payload.len(), Ordering::Relaxed);
    }
}

/// The answer to a join.
#[derive(Debug)]
pub struct Welcome {
    pub session_id: Arc<str>,
    pub mode: Arc<str>,
    pub player: Arc<PlayerInfo>,
    pub players: Vec<Arc<PlayerInfo>>,
    pub sequence: u64,
    pub max_players: u32,
    /// What the player may send, as far as the session enforces it (the
    /// edge adds its own size limits).
    pub rates: super::RateLimits,
    /// The session's tick rate, if it has a tick.
    pub tick_rate: Option<super::TickRate>,
    /// Inputs a tick takes from one player (0 without a tick).
    pub max_inputs_per_tick: usize,
    /// The seat's generation, for its resume token; `None` in a session
    /// that holds no seats (no token).
    pub resume_generation: Option<u64>,
}

/// The answer to a resume.
#[derive(Debug)]
pub struct Resumed {
    pub session_id: Arc<str>,
    pub player: Arc<PlayerInfo>,
    /// The sequence the resume asked to start after.
    pub last_sequence: u64,
    /// Events replayed after this.
    pub replayed: u64,
    /// The resume's own sequence (the others' RECONNECTED).
    pub sequence: u64,
    /// The seat's new generation, for its next resume token.
    pub resume_generation: u64,
}

/// What both ends share.
#[derive(Debug, Default)]
struct Shared {
    items: Mutex<VecDeque<Delivery>>,
    /// Items pushed and not yet popped, readable without the lock.
    queued: AtomicUsize,
    /// Their weight in bytes ([`Delivery::weight`]), likewise.
    bytes: AtomicUsize,
    /// Woken on every push and when the actor's end is dropped.
    waker: AtomicWaker,
    /// The actor dropped its end: once empty, the stream ends.
    tx_closed: AtomicBool,
    /// The stream dropped its end: pushes fail.
    rx_closed: AtomicBool,
}

impl Shared {
    fn items(&self) -> MutexGuard<'_, VecDeque<Delivery>> {
        // A panic while holding the lock leaves a consistent queue (a push
        // or a pop either happened or not), so a poisoned lock is still good.
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pop(&self) -> Option<Delivery> {
        let mut items = self.items();
        let item = items.pop_front();
        // A queue that a burst grew gives the memory back once drained.
        if items.is_empty() && items.capacity() > SHRINK_ABOVE {
            items.shrink_to(SHRINK_TO);
        }
        item
    }
}

/// A drained queue with room for more than this many items shrinks...
const SHRINK_ABOVE: usize = 64;
/// ...to room for this many (a queue starts with none, and grows as needed).
const SHRINK_TO: usize = 16;

/// The actor's end of a player's queue. Dropping it ends the stream once the
/// queued items are taken.
#[derive(Debug)]
pub(super) struct OutboundTx {
    shared: Arc<Shared>,
}

/// The response stream's end of a player's queue. Dropping it (the client
/// went away) makes the actor's next push fail, which disconnects the player.
#[derive(Debug)]
pub struct OutboundRx {
    shared: Arc<Shared>,
}

/// A new queue.
pub(super) fn channel() -> (OutboundTx, OutboundRx) {
    let shared = Arc::new(Shared::default());
    (OutboundTx { shared: shared.clone() }, OutboundRx { shared })
}

/// The receiving side is gone.
#[derive(Debug)]
pub(super) struct Closed;

impl OutboundTx {
    /// Items queued and not yet taken by the player's stream.
    pub(super) fn len(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Their weight in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Queues an item; the caller has applied the capacity policy.
    pub(super) fn push(&self, delivery: Delivery) -> Result<(), Closed> {
        {
            let mut items = self.shared.items();
            // Checked under the lock that the stream's drop takes: an item is
            // either refused here or freed by that drop, never left behind.
            if self.shared.rx_closed.load(Ordering::Relaxed) {
                return Err(Closed);
            }
            // Counted before it is queued, so the count is never below the
            // queue's length and the stream's decrement never precedes it.
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
            self.shared.bytes.fetch_add(delivery.weight(), Ordering::Relaxed);
            items.push_back(delivery);
        }
        self.shared.waker.wake();
        Ok(())
    }
}

impl OutboundTx {
    /// Drops the queued deliveries `superseded` picks (states a newer one
    /// replaces); returns how many went.
    pub(super) fn remove_where(&self, superseded: impl Fn(&Delivery) -> bool) -> usize {
        let removed: VecDeque<Delivery> = {
            let mut items = self.shared.items();
            if !items.iter().any(&superseded) {
                return 0;
            }
            let (removed, kept): (VecDeque<Delivery>, VecDeque<Delivery>) =
                std::mem::take(&mut *items).into_iter().partition(|item| superseded(item));
            *items = kept;
            self.shared.queued.fetch_sub(removed.len(), Ordering::Relaxed);
            self.shared.bytes.fetch_sub(removed.iter().map(Delivery::weight).sum(), Ordering::Relaxed);
            removed
        };
        // Freed outside the lock.
        removed.len()
    }

    /// Drops everything queued and queues `delivery` alone: for a player
    /// removed from its session, whose queue must not hold memory for as
    /// long as its connection lingers.
    pub(super) fn replace_all(&self, delivery: Delivery) -> Result<(), Closed> {
        let dropped = {
            let mut items = self.shared.items();
            if self.shared.rx_closed.load(Ordering::Relaxed) {
                return Err(Closed);
            }
            // As in `push`: counted before it is queued, and the dropped
            // items uncounted only once they are out of the queue.
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
            self.shared.bytes.fetch_add(delivery.weight(), Ordering::Relaxed);
            let dropped = std::mem::take(&mut *items);
            self.shared.queued.fetch_sub(dropped.len(), Ordering::Relaxed);
            self.shared.bytes.fetch_sub(dropped.iter().map(Delivery::weight).sum(), Ordering::Relaxed);
            items.push_back(delivery);
            dropped
        };
        self.shared.waker.wake();
        // Freed outside the lock.
        drop(dropped);
        Ok(())
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        self.shared.tx_closed.store(true, Ordering::Release);
        self.shared.waker.wake();
    }
}

impl OutboundRx {
    /// The next item, or `None` once the actor dropped its end and every
    /// item was taken.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if let Some(item) = self.take() {
            return Poll::Ready(Some(item));
        }
        // Register, then look again: a push in between has either been seen
        // now or will wake the registered waker.
        self.shared.waker.register(cx.waker());
        if let Some(item) = self.take() {
            return Poll::Ready(Some(item));
        }
        if self.shared.tx_closed.load(Ordering::Acquire) {
            // The actor's last push happened before it dropped its end.
            return Poll::Ready(self.take());
        }
        Poll::Pending
    }

    fn take(&self) -> Option<Delivery> {
        // Nothing counted is nothing queued (a push counts before it queues),
        // so the common empty check takes no lock. It cannot miss a push
        // that matters: every push is followed by a wake, and the waker's
        // state is one atomic that `register` and `wake` both change. A wake
        // ordered before our `register` happened after that push's count,
        // so the load after `register` sees it; a wake ordered after it
        // wakes us.
        if self.shared.queued.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let item = self.shared.pop();
        if let Some(item) = &item {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.bytes.fetch_sub(item.weight(), Ordering::Relaxed);
        }
        item
    }

    /// The next item, or `None` once the actor dropped its end.
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Items queued and not yet taken.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        // What is queued goes now, not when the actor drops its end: an
        // `EndAcked` among it tells the actor at once that the stream is gone.
        let dropped = {
            let mut items = self.shared.items();
            self.shared.rx_closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut *items)
        };
        self.shared.queued.fetch_sub(dropped.len(), Ordering::Relaxed);
        self.shared.bytes.fetch_sub(dropped.iter().map(Delivery::weight).sum(), Ordering::Relaxed);
    }
}

/// The outbound queue policy, from the session config.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// From this length on the player is behind and droppable messages drop.
    soft_limit: usize,
    /// The queue's capacity.
    capacity: usize,
    /// From this weight on the player is behind too.
    soft_bytes: usize,
    /// The queue's capacity in bytes.
    capacity_bytes: usize,
    /// How long a player may stay behind.
    grace: Duration,
}

impl Policy {
    pub(super) fn new(config: &SessionConfig) -> Self {
        Policy {
            soft_limit: config.outbound_queue / 2,
            capacity: config.outbound_queue,
            soft_bytes: config.outbound_queue_bytes / 2,
            capacity_bytes: config.outbound_queue_bytes,
            grace: config.slow_player_grace,
        }
    }
}

/// What became of one delivery.
#[derive(Debug)]
pub(super) enum Outcome {
    Queued,
    /// The player is behind, and the delivery was queued anyway.
    BehindQueued,
    /// The player is behind, and the (droppable) delivery was dropped and
    /// counted for its notice.
    BehindDropped,
    /// The player must go.
    Depart(Departure),
}

/// What a sweep found for one player (see [`Outbox::sweep`]).
#[derive(Debug)]
pub(super) enum Swept {
    /// Not behind, or caught up (and told of what it missed).
    Fine,
    /// Still behind; its grace ends at this instant.
    Behind(Instant),
    /// The player must go.
    Depart(Departure),
}

/// Outboxes alive in this process: the players that share the budget for
/// queued bytes.
static OUTBOXES: AtomicUsize = AtomicUsize::new(0);

impl Drop for Outbox {
    fn drop(&mut self) {
        OUTBOXES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the server stands against its budget for all queued bytes (as
/// [`crate::metrics::queued_event_bytes`] counts them); read once per
/// fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    Within,
    /// Past it; `share` is the budget split evenly over every player's queue.
    Over {
        share: usize,
    },
}

impl Budget {
    /// Where the server stands now against `budget` bytes.
    pub(super) fn now(budget: usize) -> Self {
        if crate::metrics::queued_event_bytes() <= budget {
            return Budget::Within;
        }
        Budget::Over { share: budget / OUTBOXES.load(Ordering::Relaxed).max(1) }
    }
}

/// The room's end of one player's queue, with the player's standing under
/// the policy.
#[derive(Debug)]
pub(super) struct Outbox {
    tx: OutboundTx,
    /// Droppable messages dropped since the last notice to the player.
    dropped: u64,
    /// Droppable messages dropped since the seat was taken.
    dropped_total: u64,
    /// The sequence of the last of them.
    last_dropped: u64,
    /// Since when the player's queue has been at least half full.
    behind_since: Option<Instant>,
}

impl Outbox {
    /// Messages queued, not yet taken by the stream.
    pub(super) fn len(&self) -> usize {
        self.tx.len()
    }

    /// Their weight in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.tx.bytes()
    }

    /// Droppable messages dropped since the seat was taken.
    pub(super) fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// See [`OutboundTx::remove_where`].
    pub(super) fn remove_where(&self, superseded: impl Fn(&Delivery) -> bool) -> usize {
        self.tx.remove_where(superseded)
    }

    pub(super) fn new(tx: OutboundTx) -> Self {
        OUTBOXES.fetch_add(1, Ordering::Relaxed);
        Outbox { tx, dropped: 0, dropped_total: 0, last_dropped: 0, behind_since: None }
    }

    /// The outbox of a held seat: no stream takes from it, and a push fails.
    /// Its drop count carries over from the stream it replaces.
    pub(super) fn detached(previous: &Outbox) -> Self {
        let (tx, rx) = channel();
        drop(rx);
        let mut outbox = Outbox::new(tx);
        outbox.inherit(previous);
        outbox
    }

    /// Carries the seat's drop count over from the outbox this one replaces.
    pub(super) fn inherit(&mut self, previous: &Outbox) {
        self.dropped_total = previous.dropped_total;
    }

    /// Queues `delivery` as the policy says. `sequence` is the event's (0 for
    /// a direct message), for the dropped notice.
    /// `budget`: how the server stands against its budget for queued bytes.
    pub(super) fn offer(
        &mut self,
        delivery: Delivery,
        droppable: bool,
        sequence: u64,
        policy: &Policy,
        budget: Budget,
    ) -> Outcome {
        let (len, bytes) = (self.tx.len(), self.tx.bytes());
        let behind = len >= policy.soft_limit || bytes >= policy.soft_bytes;
        // A quarter of capacity: well past what a promptly reading player
        // holds between two reads.
        let backlogged = len >= policy.soft_limit / 2 || bytes >= policy.soft_bytes / 2;
        let must_shed = match budget {
            Budget::Within => false,
            // Two messages at least: one waiting while the player writes
            // another is what a prompt reader holds.
            Budget::Over { share } => behind || (len > 1 && bytes > share) || (droppable && backlogged),
        };
        if must_shed {
            if droppable {
                if sequence != 0 {
                    self.dropped += 1;
                    self.dropped_total += 1;
                    self.last_dropped = sequence;
                }
                self.behind_since.get_or_insert_with(Instant::now);
                return Outcome::BehindDropped;
            }
            return Outcome::Depart(Departure::Removed(Error::SlowPlayer(format!(
                "the server's budget for queued messages is used up, and this player held more than its share \
                 ({len} messages, {bytes} bytes waiting)"
            ))));
        }
        if !behind {
            self.behind_since = None;
            if let Err(departure) = self.flush_dropped_notice() {
                return Outcome::Depart(departure);
            }
            return match self.tx.push(delivery) {
                Ok(()) => Outcome::Queued,
                Err(Closed) => Outcome::Depart(gone()),
            };
        }
        let now = Instant::now();
        let since = *self.behind_since.get_or_insert(now);
        if now.duration_since(since) >= policy.grace {
            return Outcome::Depart(slow(policy, len));
        }
        if droppable {
            if sequence != 0 {
                self.dropped += 1;
                self.dropped_total += 1;
                self.last_dropped = sequence;
            }
            return Outcome::BehindDropped;
        }
        if len >= policy.capacity {
            return Outcome::Depart(Departure::Removed(Error::SlowPlayer(format!(
                "outbound queue overflowed: {} messages were waiting for this player",
                policy.capacity
            ))));
        }
        if bytes + delivery.weight() > policy.capacity_bytes {
            return Outcome::Depart(Departure::Removed(Error::SlowPlayer(format!(
                "outbound queue overflowed: {bytes} bytes were waiting for this player (at most {})",
                policy.capacity_bytes
            ))));
        }
        match self.tx.push(delivery) {
            Ok(()) => Outcome::BehindQueued,
            Err(Closed) => Outcome::Depart(gone()),
        }
    }

    /// Queues `delivery` past the policy: for the last items of a stream,
    /// which a player always gets.
    pub(super) fn push_last(&self, delivery: Delivery) -> Result<(), Closed> {
        self.tx.push(delivery)
    }

    /// Ends the stream with `error` at once: what was queued is freed now,
    /// not when (or if) the player reads it.
    pub(super) fn end_now(&self, error: Error) -> Result<(), Closed> {
        self.tx.replace_all(Delivery::End(Some(Box::new(error))))
    }

    /// Checks a player that was behind: caught up (send its dropped notice),
    /// still within its grace period, or past it.
    pub(super) fn sweep(&mut self, now: Instant, policy: &Policy) -> Swept {
        let Some(since) = self.behind_since else { return Swept::Fine };
        let len = self.tx.len();
        if len < policy.soft_limit && self.tx.bytes() < policy.soft_bytes {
            self.behind_since = None;
            match self.flush_dropped_notice() {
                Ok(()) => Swept::Fine,
                Err(departure) => Swept::Depart(departure),
            }
        } else if now.duration_since(since) >= policy.grace {
            Swept::Depart(slow(policy, len))
        } else {
            Swept::Behind(since + policy.grace)
        }
    }

    /// Tells the player how many droppable messages it missed, if any.
    fn flush_dropped_notice(&mut self) -> Result<(), Departure> {
        if self.dropped == 0 {
            return Ok(());
        }
        let notice = Direct::Dropped { count: self.dropped, last_sequence: self.last_dropped };
        self.dropped = 0;
        self.tx.push(Delivery::Direct(Box::new(notice))).map_err(|Closed| gone())
    }
}

fn slow(policy: &Policy, len: usize) -> Departure {
    Departure::Removed(Error::SlowPlayer(format!(
        "fell behind reading the stream for more than {:?} ({len} messages waiting)",
        policy.grace
    )))
}

/// The departure of a player whose response stream is gone.
pub(super) fn gone() -> Departure {
    Departure::Disconnected("the response stream was closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(n: i64) -> Delivery {
        Delivery::Direct(Box::new(Direct::Pong { client_time: n, server_time_unix_micros: 0 }))
    }

    fn number(delivery: Delivery) -> i64 {
        match delivery {
            Delivery::Direct(direct) => match *direct {
                Direct::Pong { client_time, .. } => client_time,
                other => panic!("expected a pong, got {other:?}"),
            },
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    /// Catches a lost wake-up or a reordering between the actor's thread and
    /// the stream's: every item arrives, in order, and the stream ends only
    /// after the last one, with the length back at zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_item_arrives_in_order_across_threads() {
        const ITEMS: i64 = 100_000;
        let (tx, mut rx) = channel();
        let producer = tokio::spawn(async move {
            for n in 0..ITEMS {
                tx.push(pong(n)).unwrap_or_else(|_| panic!("the stream is open"));
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut expected = 0;
        while let Some(delivery) = rx.recv().await {
            assert_eq!(number(delivery), expected);
            expected += 1;
        }
        assert_eq!(expected, ITEMS, "the stream ended before the last item");
        assert_eq!(rx.len(), 0);
        producer.await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Catches a queue that keeps items for a stream that is gone, or that
    /// lets the actor push into it: dropping the stream's end empties the
    /// queue, and the next push fails.
    #[test]
    fn dropping_the_stream_fails_the_next_push_and_frees_the_queue() {
        let (tx, rx) = channel();
        for n in 0..3 {
            assert!(tx.push(pong(n)).is_ok());
        }
        assert_eq!(tx.len(), 3);
        drop(rx);
        assert_eq!(tx.len(), 0, "the queued items are freed with the stream");
        assert!(tx.push(pong(3)).is_err());
    }

    /// Catches an acknowledged end that outlives its stream: the actor waits
    /// on the ack, so a stream dropped with it queued must drop it, which the
    /// actor sees at once instead of after the slow-player grace.
    #[tokio::test]
    async fn an_end_queued_for_a_dropped_stream_is_dropped_with_it() {
        let (tx, rx) = channel();
        let (ack, acked) = oneshot::channel();
        assert!(tx.push(Delivery::EndAcked(ack)).is_ok());
        drop(rx);
        assert!(acked.await.is_err(), "the ack's sender is dropped, not kept in the queue");
    }

    /// Catches a removed player's queue that keeps its messages (and their
    /// memory) until the player reads them: the end replaces them at once,
    /// and the length says so.
    #[tokio::test]
    async fn replacing_the_queue_frees_what_was_queued() {
        let (tx, mut rx) = channel();
        for n in 0..5 {
            assert!(tx.push(pong(n)).is_ok());
        }
        assert!(tx.replace_all(Delivery::End(None)).is_ok());
        assert_eq!((tx.len(), rx.len()), (1, 1));
        assert!(matches!(rx.recv().await, Some(Delivery::End(None))));
        assert_eq!(rx.len(), 0);
    }

    /// Catches a queue that holds on to a burst's memory after draining.
    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = channel();
        for n in 0..1000 {
            assert!(tx.push(pong(n)).is_ok());
        }
        for _ in 0..1000 {
            assert!(rx.recv().await.is_some());
        }
        assert!(rx.shared.items().capacity() <= SHRINK_TO);
    }
}
