//! A session's replay buffer: its latest history events, each with its
//! audience, so that a player who resumes after a dropped connection gets
//! exactly the events it was sent, or would have been sent, after the last
//! one it received (see [`Room::resume`](super::Room)).
//!
//! Bounds, each a written policy:
//! - in events and in bytes (the events' weight, [`SharedEvent::weight`],
//!   and their audiences' ids): the oldest go first;
//! - in age: an event older than the bound goes, whether or not anything is
//!   recorded after it (the room's replay timer sees to idle sessions);
//! - process-wide: all buffers together hold at most half the server's
//!   budget for queued bytes ([`REPLAY_BYTES`]); a buffer that would go past
//!   it drops its own oldest events, so that players' queues always keep
//!   the other half. And while the server is past its budget, a session
//!   empties its buffer before any of its players is shed (see
//!   [`Room`](super::Room)'s fan-out), and tells every other buffer to empty
//!   itself at its next record or timer: replay is the first to shrink.
//!
//! The events are the very ones queued for the players (shared, not
//! copied), and count in the server's byte accounting for as long as the
//! buffer or a queue holds them.
//!
//! The buffer covers every event after its *floor*: the sequence of the
//! last event it let go (or did not keep). A resume from a sequence below
//! the floor has a gap the buffer cannot fill.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::room::Audience;
use super::{PlayerId, SharedEvent};

/// Bytes of events held by every replay buffer in the process, as their
/// weights count (an event shared with a queue counts here too).
pub static REPLAY_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Events held by every replay buffer in the process.
pub static REPLAY_EVENTS: AtomicUsize = AtomicUsize::new(0);
/// Moved on by a session that finds the server past its budget for queued
/// bytes: every buffer sharing it (a registry's) empties itself at its next
/// record or timer, not only the one whose session found it.
pub(super) type ShrinkEpoch = Arc<AtomicU64>;

/// A replay buffer's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Most events kept; 0 turns the buffer off.
    pub messages: usize,
    /// Most bytes of events kept.
    pub bytes: usize,
    /// How long an event is kept.
    pub age: Duration,
}

/// Who an event went to, as kept for a replay.
#[derive(Debug)]
enum Recipients {
    All,
    AllBut(PlayerId),
    Only(Box<[PlayerId]>),
}

impl Recipients {
    fn of(audience: Audience<'_>) -> Self {
        match audience {
            Audience::All => Recipients::All,
            Audience::AllBut(id) => Recipients::AllBut(id.clone()),
            Audience::Only(ids) => Recipients::Only(ids.into()),
        }
    }

    /// What the audience itself holds, in bytes: the ids a targeted event
    /// names are the client's own copies, not the seats'.
    fn weight(&self) -> usize {
        let id = |id: &PlayerId| std::mem::size_of::<PlayerId>() + id.len();
        match self {
            Recipients::All => 0,
            Recipients::AllBut(player) => id(player),
            Recipients::Only(ids) => ids.iter().map(id).sum(),
        }
    }

    fn includes(&self, player: &str) -> bool {
        match self {
            Recipients::All => true,
            Recipients::AllBut(id) => &**id != player,
            Recipients::Only(ids) => ids.iter().any(|id| &**id == player),
        }
    }
}

#[derive(Debug)]
struct Entry {
    sequence: u64,
    event: Arc<SharedEvent>,
    to: Recipients,
    at: Instant,
    /// The event's weight and its audience's, as the bounds count it.
    weight: usize,
}

/// The messages after a resume's sequence are no longer all buffered.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Gap {
    /// The oldest sequence a resume could start after.
    pub floor: u64,
}

/// One session's replay buffer.
#[derive(Debug)]
pub(super) struct ReplayBuffer {
    entries: VecDeque<Entry>,
    bytes: usize,
    floor: u64,
    limits: ReplayLimits,
    /// All buffers' share of the server's budget for queued bytes.
    process_cap: usize,
    /// Shared with the other buffers of the registry.
    shrink: ShrinkEpoch,
    /// The value of `shrink` this buffer last acted on.
    epoch: u64,
}

impl ReplayBuffer {
    /// An empty buffer with `limits`, in a server whose budget for queued
    /// bytes is `budget`.
    pub(super) fn new(limits: ReplayLimits, budget: usize, shrink: ShrinkEpoch) -> Self {
        let epoch = shrink.load(Ordering::Relaxed);
        ReplayBuffer { entries: VecDeque::new(), bytes: 0, floor: 0, limits, process_cap: budget / 2, shrink, epoch }
    }

    /// The server is past its budget for queued bytes: empties this buffer,
    /// and tells every other buffer sharing its epoch to empty itself.
    /// Returns whether this one held anything.
    pub(super) fn shrink_all(&mut self) -> bool {
        if REPLAY_EVENTS.load(Ordering::Relaxed) > 0 {
            self.epoch = self.shrink.fetch_add(1, Ordering::Relaxed) + 1;
        }
        self.shrink()
    }

    /// Events kept, and their bytes.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps `event` (sequence `sequence`, sent to `to`) at `now`, letting
    /// the oldest go past the bounds.
    pub(super) fn record(&mut self, sequence: u64, event: &Arc<SharedEvent>, to: Audience<'_>, now: Instant) {
        if self.limits.messages == 0 {
            self.floor = sequence;
            return;
        }
        let to = Recipients::of(to);
        let weight = event.weight() + to.weight();
        self.expire(now);
        self.heed_shrink();
        while !self.entries.is_empty()
            && (self.entries.len() >= self.limits.messages
                || self.bytes + weight > self.limits.bytes
                || REPLAY_BYTES.load(Ordering::Relaxed) + weight > self.process_cap)
        {
            self.pop();
        }
        if weight > self.limits.bytes || REPLAY_BYTES.load(Ordering::Relaxed) + weight > self.process_cap {
            // Too big to keep even alone: the buffer covers what follows.
            self.floor = sequence;
            return;
        }
        self.bytes += weight;
        REPLAY_BYTES.fetch_add(weight, Ordering::Relaxed);
        REPLAY_EVENTS.fetch_add(1, Ordering::Relaxed);
        self.entries.push_back(Entry { sequence, event: event.clone(), to, at: now, weight });
    }

    /// Lets go of the events older than the age bound; returns when the
    /// oldest left will be, if any.
    pub(super) fn expire(&mut self, now: Instant) -> Option<Instant> {
        self.heed_shrink();
        while let Some(front) = self.entries.front() {
            let until = front.at + self.limits.age;
            if until > now {
                return Some(until);
            }
            self.pop();
        }
        None
    }

    /// Empties the buffer if another session found the server past its
    /// budget since this one last looked.
    fn heed_shrink(&mut self) {
        let epoch = self.shrink.load(Ordering::Relaxed);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.shrink();
        }
    }

    /// Lets go of every event (the server is past its memory budget).
    /// Returns whether there were any.
    pub(super) fn shrink(&mut self) -> bool {
        let had = !self.entries.is_empty();
        while self.pop() {}
        had
    }

    /// Keeps nothing up to `sequence` (the server is past its budget): the
    /// buffer covers only what follows.
    pub(super) fn skip(&mut self, sequence: u64) {
        self.shrink();
        self.floor = sequence;
    }

    /// The events after `last` that `player` was (or would have been) sent,
    /// in order; a [`Gap`] if some of them are no longer buffered.
    pub(super) fn since(&self, last: u64, player: &str) -> Result<Vec<Arc<SharedEvent>>, Gap> {
        if last < self.floor {
            return Err(Gap { floor: self.floor });
        }
        let start = self.entries.partition_point(|entry| entry.sequence <= last);
        Ok(self.entries.range(start..).filter(|e| e.to.includes(player)).map(|e| e.event.clone()).collect())
    }

    fn pop(&mut self) -> bool {
        let Some(entry) = self.entries.pop_front() else { return false };
        self.floor = entry.sequence;
        let weight = entry.weight;
        self.bytes -= weight;
        REPLAY_BYTES.fetch_sub(weight, Ordering::Relaxed);
        REPLAY_EVENTS.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

impl Drop for ReplayBuffer {
    fn drop(&mut self) {
        REPLAY_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
        REPLAY_EVENTS.fetch_sub(self.entries.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Event;

    fn event(sequence: u64, bytes: usize) -> Arc<SharedEvent> {
        SharedEvent::new(Event::Backend {
            sequence,
            payload: vec![0; bytes].into(),
            server_time_unix_micros: 0,
            targeted: false,
        })
    }

    fn sequences(events: &[Arc<SharedEvent>]) -> Vec<u64> {
        events
            .iter()
            .map(|e| match e.event {
                Event::Backend { sequence, .. } => sequence,
                _ => unreachable!(),
            })
            .collect()
    }

    const LIMITS: ReplayLimits = ReplayLimits { messages: 4, bytes: 1 << 20, age: Duration::from_secs(30) };

    /// Catches a replay that gives a player what it was not sent, skips what
    /// it was, or repeats what it had: each audience filters, from the
    /// sequence after the one asked for.
    #[tokio::test(start_paused = true)]
    async fn a_replay_holds_exactly_what_the_player_was_sent_after_its_last() {
        let mut buffer = ReplayBuffer::new(LIMITS, 1 << 30, ShrinkEpoch::default());
        let (a, b): (PlayerId, PlayerId) = ("a".into(), "b".into());
        let now = Instant::now();
        buffer.record(1, &event(1, 1), Audience::All, now);
        buffer.record(2, &event(2, 1), Audience::AllBut(&a), now);
        buffer.record(3, &event(3, 1), Audience::Only(std::slice::from_ref(&b)), now);
        buffer.record(4, &event(4, 1), Audience::Only(&[a.clone(), b.clone()]), now);
        assert_eq!(sequences(&buffer.since(0, "a").unwrap()), [1, 4]);
        assert_eq!(sequences(&buffer.since(1, "b").unwrap()), [2, 3, 4]);
        assert_eq!(sequences(&buffer.since(4, "b").unwrap()), Vec::<u64>::new());
    }

    /// Catches a buffer that outgrows a bound, or that claims to cover a
    /// sequence it let go: past each bound the oldest goes, and a resume
    /// from before it is a gap.
    #[tokio::test(start_paused = true)]
    async fn past_its_bounds_the_oldest_go_and_a_resume_before_them_is_a_gap() {
        let mut buffer = ReplayBuffer::new(LIMITS, 1 << 30, ShrinkEpoch::default());
        for sequence in 1..=6 {
            buffer.record(sequence, &event(sequence, 1), Audience::All, Instant::now());
        }
        assert_eq!(buffer.len(), 4);
        assert_eq!(buffer.since(1, "a").map(|e| sequences(&e)), Err(Gap { floor: 2 }));
        assert_eq!(sequences(&buffer.since(2, "a").unwrap()), [3, 4, 5, 6]);

        let limits = ReplayLimits { bytes: 3 * (crate::session::ITEM_OVERHEAD + 100), ..LIMITS };
        let mut buffer = ReplayBuffer::new(limits, 1 << 30, ShrinkEpoch::default());
        for sequence in 1..=5 {
            buffer.record(sequence, &event(sequence, 100), Audience::All, Instant::now());
        }
        assert_eq!(sequences(&buffer.since(2, "a").unwrap()), [3, 4, 5]);

        tokio::time::advance(Duration::from_secs(20)).await;
        buffer.record(6, &event(6, 100), Audience::All, Instant::now());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(buffer.expire(Instant::now()), Some(Instant::now() + Duration::from_secs(19)));
        assert_eq!(sequences(&buffer.since(5, "a").unwrap()), [6]);
        assert_eq!(buffer.since(4, "a").map(|e| sequences(&e)), Err(Gap { floor: 5 }));
    }

    /// Catches a buffer that keeps anything when turned off, or that
    /// refuses a resume with nothing to replay.
    #[tokio::test(start_paused = true)]
    async fn a_buffer_turned_off_covers_only_the_present() {
        let mut buffer = ReplayBuffer::new(ReplayLimits { messages: 0, ..LIMITS }, 1 << 30, ShrinkEpoch::default());
        buffer.record(1, &event(1, 1), Audience::All, Instant::now());
        assert_eq!(buffer.len(), 0);
        assert_eq!(buffer.since(0, "a").map(|e| sequences(&e)), Err(Gap { floor: 1 }));
        assert_eq!(buffer.since(1, "a").map(|e| sequences(&e)), Ok(Vec::new()));
    }
}
