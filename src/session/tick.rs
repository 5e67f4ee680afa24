//! Server-authoritative sessions: the fixed-rate tick, the inputs handed to
//! it, what a tick may send, and the pool of threads ticks run on.
//!
//! A logic that asks for a tick ([`SessionLogic::init`]) gets
//! [`SessionLogic::on_tick`] called at that rate with a [`Tick`]: its
//! number, the players' inputs since the last one (in arrival order, with
//! their senders), and an outbox for what it sends. The tick sees no
//! [`Room`](super::Room): it runs on a [`TickPool`] thread, off the async
//! I/O workers, so that a heavy simulation cannot stall other sessions'
//! I/O, and the actor applies what it sent once it returns. Relay sessions
//! have no tick and never touch the pool.
//!
//! **No players, no ticks.** A session ticks while it has players: its
//! clock stands still while it is empty (before the first join, or after
//! the last player left, until its idle timeout ends it), and the first tick
//! after a player comes is a full period later. Tick numbers go on from
//! where they stopped. A matchmaker that creates sessions ahead of their
//! players therefore costs no CPU until they come.
//!
//! **Missed ticks.** Ticks keep their rate from the first player's join. A
//! tick that runs past its period is an *overrun*: counted, and logged (an
//! event on a `session.tick` span, so traces show it too) at most once per
//! 10 s per session, with the number since the last line. The boundaries
//! it ran past are skipped, not made up in a burst, and the next tick comes
//! at the next boundary. Tick numbers count ticks run, with no gaps.
//!
//! **The watchdog.** A tick that has not returned within the watchdog limit
//! ends its session with [`EndReason::InternalError`](super::EndReason):
//! the thread it runs on is counted as lost and replaced, and whatever the
//! tick does after that is thrown away. Rust cannot stop a thread, so a
//! runaway tick keeps its thread (and its CPU) until it returns; real
//! isolation of untrusted logic needs a process or WASM.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use foldhash::HashMap;
use tokio::sync::oneshot;
use tracing::warn;

use super::PlayerId;
use super::logic::SessionLogic;
use super::outbound::StateKind;

/// A session's tick rate, in ticks a second: 1 to [`TickRate::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickRate(u32);

impl TickRate {
    /// The highest rate a session may ask for.
    pub const MAX: u32 = 128;
    /// The rate of a logic that does not choose: 20 Hz.
    pub const DEFAULT: TickRate = TickRate(20);

    /// `hz` ticks a second, or an error saying the range.
    pub fn hz(hz: u32) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&hz) {
            Ok(TickRate(hz))
        } else {
            Err(format!("tick rate {hz} Hz: must be 1 to {} Hz", Self::MAX))
        }
    }

    /// Ticks a second.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The time between two ticks.
    pub fn period(self) -> Duration {
        Duration::from_secs(1) / self.0
    }
}

impl Default for TickRate {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One player input, as the tick gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The player who sent it.
    pub from: PlayerId,
    /// The client's sequence number for it (the state it gets back says the
    /// last one processed, for client-side prediction).
    pub sequence: u64,
    /// Opaque to the server.
    pub payload: Bytes,
}

/// Who gets what a tick sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// Every player.
    All,
    /// These players; any who holds no seat is skipped.
    Only(Vec<PlayerId>),
}

/// One thing a tick sent, applied by the actor after the tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sent {
    /// A full state, a delta on the last one, or a message.
    State { payload: Bytes, kind: StateKind, to: Recipients },
    /// New labels for the session.
    Labels(BTreeMap<String, String>),
    /// End the session, with this message to the players.
    End(String),
}

/// One tick, as [`SessionLogic::on_tick`] sees it.
#[derive(Debug)]
pub struct Tick {
    number: u64,
    inputs: Vec<Input>,
    players: Vec<PlayerId>,
    needs_full_state: Vec<PlayerId>,
    sent: Vec<Sent>,
}

impl Tick {
    pub(super) fn new(
        number: u64,
        inputs: Vec<Input>,
        players: Vec<PlayerId>,
        needs_full_state: Vec<PlayerId>,
    ) -> Self {
        Tick { number, inputs, players, needs_full_state, sent: Vec::new() }
    }

    /// The tick's number: 1 for the first, then one more each tick.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The inputs since the last tick, in the order they arrived (at most
    /// `--max-inputs-per-tick` per player: past it, a player's oldest go).
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The players seated as the tick began.
    pub fn players(&self) -> &[PlayerId] {
        &self.players
    }

    /// The players who need a full state before a delta means anything to
    /// them: those who joined since the last full state they got, and those
    /// whose queued deltas were dropped because they fell behind. Deltas to
    /// them are not sent until they get a full state.
    pub fn needs_full_state(&self) -> &[PlayerId] {
        &self.needs_full_state
    }

    /// Sends `payload` to `to` as a message (an event of the game, not
    /// state), tagged like a state with the tick and each player's last
    /// input processed; never dropped.
    pub fn send(&mut self, payload: Bytes, to: Recipients) {
        self.sent.push(Sent::State { payload, kind: StateKind::Message, to });
    }

    /// Sends the full state to `to`. It replaces whatever state or delta
    /// still waits in a recipient's queue.
    pub fn state(&mut self, payload: Bytes, to: Recipients) {
        self.sent.push(Sent::State { payload, kind: StateKind::Full, to });
    }

    /// Sends a delta on the last state to `to` (skipping those who need a
    /// full state). Deltas are never dropped silently: a player who falls
    /// behind has its queued deltas dropped and shows in
    /// [`Tick::needs_full_state`] until it gets a full state.
    pub fn delta(&mut self, payload: Bytes, to: Recipients) {
        self.sent.push(Sent::State { payload, kind: StateKind::Delta, to });
    }

    /// Replaces the session's labels (shown in ListSessions and
    /// WatchSessions at once), e.g. `phase: playing`.
    pub fn set_labels(&mut self, labels: BTreeMap<String, String>) {
        self.sent.push(Sent::Labels(labels));
    }

    /// Ends the session after this tick, telling the players `message`.
    pub fn end(&mut self, message: impl Into<String>) {
        self.sent.push(Sent::End(message.into()));
    }

    /// What the tick sent, in order.
    pub(super) fn into_sent(self) -> Vec<Sent> {
        self.sent
    }
}

/// The inputs waiting for a session's next tick, and the last one of each
/// player a tick has processed.
#[derive(Debug, Default)]
pub(super) struct Inputs {
    waiting: Vec<Input>,
    per_player: HashMap<PlayerId, usize>,
    processed: HashMap<PlayerId, u64>,
}

impl Inputs {
    /// Queues `input`; past `max` waiting from its sender, drops that
    /// sender's oldest. Returns whether one was dropped.
    pub(super) fn push(&mut self, input: Input, max: usize) -> bool {
        let count = self.per_player.entry(input.from.clone()).or_insert(0);
        let dropped = *count >= max;
        if dropped {
            if let Some(at) = self.waiting.iter().position(|waiting| waiting.from == input.from) {
                self.waiting.remove(at);
            }
        } else {
            *count += 1;
        }
        self.waiting.push(input);
        dropped
    }

    /// Everything waiting, for a tick; each sender's last input counts as
    /// processed.
    pub(super) fn take(&mut self) -> Vec<Input> {
        self.per_player.clear();
        for input in &self.waiting {
            self.processed.insert(input.from.clone(), input.sequence);
        }
        std::mem::take(&mut self.waiting)
    }

    /// The last input sequence a tick processed from `player` (0: none).
    pub(super) fn processed(&self, player: &PlayerId) -> u64 {
        self.processed.get(player).copied().unwrap_or(0)
    }

    /// Forgets a player who lost its seat, and its waiting inputs.
    pub(super) fn forget(&mut self, player: &PlayerId) {
        self.waiting.retain(|input| &input.from != player);
        self.per_player.remove(player);
        self.processed.remove(player);
    }
}

/// What a tick gives back: the logic (to be called again), and what it
/// sent, or the panic it raised.
pub(super) type TickDone = (Box<dyn SessionLogic>, std::thread::Result<Tick>);

/// A job on the pool.
type Job = Box<dyn FnOnce() + Send>;

/// A job, and what its thread and its session share about it.
type Queued = (Job, Arc<Progress>);

/// Where a tick on the pool is, shared by its thread and its session.
#[derive(Default)]
struct Progress {
    /// When a thread took it up: the watchdog counts from then, not from
    /// the wait for a free thread. Set by the thread; read by the session
    /// only when the watchdog's first deadline passes, so that a tick costs
    /// the session one wake-up (its result), not two.
    started: OnceLock<std::time::Instant>,
    /// Set by a session that gave up on the tick, so that its thread exits
    /// after it.
    lost: AtomicBool,
}

/// The threads ticks run on, shared by every session of a server; threads
/// exit once the pool is dropped and their current tick returns. Cheap to
/// clone.
#[derive(Clone)]
pub struct TickPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    jobs: mpsc::Sender<Queued>,
    /// Shared by the threads: whichever is free takes the next job.
    queue: Arc<Mutex<mpsc::Receiver<Queued>>>,
}

impl TickPool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        let pool = TickPool { inner: Arc::new(PoolInner { jobs: tx, queue: Arc::new(Mutex::new(rx)) }) };
        for _ in 0..threads.max(1) {
            pool.spawn_thread();
        }
        pool
    }

    fn spawn_thread(&self) {
        let queue = self.inner.queue.clone();
        let spawned = std::thread::Builder::new().name("game-session-tick".into()).spawn(move || {
            loop {
                // The lock is held only while waiting for the next job.
                let next = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                let Ok((job, progress)) = next else { return };
                let _ = progress.started.set(std::time::Instant::now());
                job();
                // The session stopped waiting for this tick and a new thread
                // took this one's place: this one goes.
                if progress.lost.load(Ordering::Acquire) {
                    return;
                }
            }
        });
        if let Err(err) = spawned {
            warn!(error = %err, "could not start a tick thread; ticks wait for the others");
        }
    }

    /// Runs `logic`'s tick on a pool thread; the result comes back on the
    /// returned channel (never, if the tick never returns).
    pub(super) fn run(&self, mut logic: Box<dyn SessionLogic>, mut tick: Tick) -> Running {
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(Progress::default());
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                logic.on_tick(&mut tick);
                tick
            }));
            let _ = tx.send((logic, result));
        });
        let sent = self.inner.jobs.send((job, progress.clone()));
        // The receivers live as long as the pool (this `self`).
        debug_assert!(sent.is_ok());
        Running { done: rx, progress, pool: self.clone() }
    }
}

/// A tick on its way through the pool.
pub(super) struct Running {
    pub done: oneshot::Receiver<TickDone>,
    progress: Arc<Progress>,
    pool: TickPool,
}

impl Running {
    /// Waits for the tick's result, up to `watchdog` from when a thread took
    /// it up; `None` past that.
    pub(super) async fn within(&mut self, watchdog: Duration) -> Option<Result<TickDone, oneshot::error::RecvError>> {
        let mut deadline = tokio::time::Instant::now() + watchdog;
        loop {
            if let Ok(done) = tokio::time::timeout_at(deadline, &mut self.done).await {
                return Some(done);
            }
            match self.progress.started.get() {
                Some(&started) if started.elapsed() >= watchdog => return None,
                Some(&started) => deadline = tokio::time::Instant::from_std(started + watchdog),
                // Still waiting for a free thread: not the tick's fault.
                None => deadline = tokio::time::Instant::now() + watchdog / 8,
            }
        }
    }

    /// Gives up on the tick (past the watchdog): its thread is replaced now
    /// and exits whenever the tick returns.
    pub(super) fn abandon(self) {
        self.progress.lost.store(true, Ordering::Release);
        self.pool.spawn_thread();
        crate::metrics::tick_thread_lost();
    }
}

/// How a server runs ticks.
#[derive(Clone)]
pub struct TickSettings {
    /// The pool; `None` runs each tick on its session's actor (no watchdog).
    pub pool: Option<TickPool>,
    /// How long a tick may run before its session is ended.
    pub watchdog: Duration,
    /// Inputs each player may have waiting for one tick.
    pub max_inputs_per_tick: usize,
}

impl std::fmt::Debug for TickSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickSettings")
            .field("pool", &self.pool.is_some())
            .field("watchdog", &self.watchdog)
            .field("max_inputs_per_tick", &self.max_inputs_per_tick)
            .finish()
    }
}

impl TickSettings {
    /// Ticks on the actor, a 1 s watchdog that then never fires, 8 inputs.
    pub fn inline() -> Self {
        TickSettings { pool: None, watchdog: Duration::from_secs(1), max_inputs_per_tick: 8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(from: &str, sequence: u64) -> Input {
        Input { from: from.into(), sequence, payload: Bytes::new() }
    }

    /// Catches inputs handed over out of arrival order, the excess policy
    /// dropping the wrong input (or another player's), and a processed
    /// sequence that is not the last one handed over.
    #[test]
    fn inputs_keep_arrival_order_and_drop_a_senders_oldest() {
        let mut inputs = Inputs::default();
        for (from, sequence) in [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4)] {
            let dropped = inputs.push(input(from, sequence), 3);
            assert_eq!(dropped, (from, sequence) == ("a", 4), "{from} {sequence}");
        }
        let taken: Vec<_> = inputs.take().into_iter().map(|i| (i.from.to_string(), i.sequence)).collect();
        let want = [("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4)];
        assert_eq!(taken, want.map(|(f, s)| (f.to_owned(), s)));
        assert_eq!((inputs.processed(&"a".into()), inputs.processed(&"b".into())), (4, 2));
        // The bound is per tick: after a take, three more fit.
        assert!(![5, 6, 7].into_iter().any(|s| inputs.push(input("a", s), 3)));
        inputs.forget(&"a".into());
        assert!(inputs.take().is_empty());
        assert_eq!(inputs.processed(&"a".into()), 0);
    }

    #[test]
    fn tick_rates_are_1_to_128_hz() {
        assert_eq!(TickRate::hz(0), Err("tick rate 0 Hz: must be 1 to 128 Hz".into()));
        assert!(TickRate::hz(129).is_err());
        assert_eq!(TickRate::hz(128).map(TickRate::period), Ok(Duration::from_nanos(7_812_500)));
        assert_eq!(TickRate::default().period(), Duration::from_millis(50));
    }
}
