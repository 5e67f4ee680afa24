//! The in-process [`Directory`]: a map of the sessions running on this
//! node, with a handle and a summary each; the session's state itself lives
//! only in its actor. It also publishes the watch events, and drains and
//! ends every session at shutdown.
//!
//! The map is behind a std `Mutex`: it is held for map operations only, never
//! across an `.await`, and never per relayed message (actors report to it on
//! join, leave and end).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span};

use super::actor::Actor;
use super::directory::{
    Caller, CreateParams, Created, Directory, JoinTarget, SessionFilter, Watch, WatchError, WatchEvent, WatchEventKind,
};
use super::handle::{JoinRequest, Joined, ResumeRequest, SessionHandle};
use super::rate::Bucket;
use super::replay::ShrinkEpoch;
use super::room::{Listing, Room};
use super::{EndReason, Ending, InboundStream, Modes, NewPlayer, PlayerId, SessionConfig, SessionId, SessionInfo};
use crate::error::Error;

/// Registry-wide settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Seats of a session whose creator did not choose.
    pub default_max_players: u32,
    /// Most seats a session may have.
    pub max_players_limit: u32,
    /// Events a watcher may fall behind by before its stream is ended.
    pub watch_buffer: usize,
    /// What each caller may create by join-or-create.
    pub creation: CreationLimits,
    /// How long GetSession still shows a session after it ended (with its
    /// end reason and result); zero keeps none.
    pub ended_retention: Duration,
    /// What every session runs with.
    pub session: SessionConfig,
}

/// What one caller (see [`Caller`]) may create by join-or-create; a
/// CreateSession from a backend is held to `max_sessions` only. A limit of 0
/// is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationLimits {
    /// Sessions a caller created that may be running at once.
    pub live_per_caller: u32,
    /// Sessions a second a caller may create, on average.
    pub per_second: u64,
    /// Sessions a caller may create at once above that rate.
    pub burst: u64,
}

impl CreationLimits {
    /// No limit at all.
    pub const OFF: CreationLimits = CreationLimits { live_per_caller: 0, per_second: 0, burst: 0 };
}

/// The registry of this node's sessions. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    modes: Modes,
    state: Mutex<State>,
    /// Watch events; every watcher subscribes.
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Set once the server starts draining: no new sessions or joins.
    draining: AtomicBool,
    /// Shared by the sessions' replay buffers (see `replay.rs`).
    replay_shrink: ShrinkEpoch,
    /// The session actors, so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Fired when the server stops; ends the watch streams.
    closing: CancellationToken,
    /// The number of sessions, for waiting until none is left.
    count: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    sessions: BTreeMap<SessionId, Entry>,
    by_idempotency_key: HashMap<String, SessionId>,
    revision: u64,
    /// The callers that created sessions by join-or-create, while they have
    /// one running or their creation bucket is not yet full again.
    creators: HashMap<Caller, Creator>,
    /// `creators`' size at which the next insert first drops the callers
    /// with nothing left to remember.
    creators_sweep_at: usize,
    /// Sessions that ended, kept for GetSession.
    ended: Ended,
}

/// Ended sessions' last summaries (with their end and result), kept for
/// the retention period, at most as many as `max_sessions`.
#[derive(Default)]
struct Ended {
    by_id: HashMap<SessionId, SessionInfo>,
    /// When each ended, oldest first.
    order: VecDeque<(Instant, SessionId)>,
}

impl Ended {
    /// Keeps `last` (an ended session's summary), dropping what is older
    /// than `retention` and, past `cap`, the oldest.
    fn retain(&mut self, now: Instant, retention: Duration, cap: usize, last: SessionInfo) {
        self.expire(now, retention);
        if retention.is_zero() || cap == 0 {
            return;
        }
        while self.order.len() >= cap {
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
        self.order.push_back((now, last.id.clone()));
        self.by_id.insert(last.id.clone(), last);
    }

    /// Drops what ended more than `retention` ago.
    fn expire(&mut self, now: Instant, retention: Duration) {
        while let Some((ended, id)) = self.order.front()
            && now.saturating_duration_since(*ended) >= retention
        {
            self.by_id.remove(id);
            self.order.pop_front();
        }
    }

    fn get(&self, id: &str) -> Option<SessionInfo> {
        self.by_id.get(id).cloned()
    }
}

/// What the registry remembers of one caller that created sessions.
struct Creator {
    /// Its sessions still running.
    live: u32,
    /// Its creation rate.
    bucket: Bucket,
}

impl Creator {
    /// Whether forgetting the caller changes nothing.
    fn is_idle(&self, now: Instant) -> bool {
        self.live == 0 && self.bucket.is_full(now)
    }
}

/// Fewest remembered creators before a sweep.
const CREATORS_SWEEP_MIN: usize = 1024;

struct Entry {
    handle: SessionHandle,
    /// The summary as of the last change the actor reported; see
    /// [`Entry::current`] for one with the current sequence. Shared with the
    /// watchers' listings, and replaced (copied on write) on a change, so
    /// that a listing costs a pointer per session, not a copy.
    summary: Arc<SessionInfo>,
    /// The session's sequence number, stored by its actor.
    sequence: Arc<AtomicU64>,
    /// The key and request that created it, if any.
    idempotency: Option<(String, CreateParams)>,
    /// The caller whose join-or-create made it, if one did.
    creator: Option<Caller>,
    /// Seats promised to join-or-create joins on their way to the actor, so
    /// that a burst of them spreads over sessions instead of all picking the
    /// same one.
    reserved: u32,
}

impl Entry {
    /// The summary with the session's current sequence number.
    fn current(&self) -> SessionInfo {
        with_sequence(&self.summary, &self.sequence)
    }
}

impl Registry {
    /// An empty registry running `modes`.
    pub fn new(config: RegistryConfig, modes: Modes) -> Self {
        let (events, _) = broadcast::channel(config.watch_buffer.max(1));
        Registry {
            inner: Arc::new(Inner {
                config,
                modes,
                state: Mutex::new(State::default()),
                events,
                draining: AtomicBool::new(false),
                replay_shrink: ShrinkEpoch::default(),
                tasks: TaskTracker::new(),
                closing: CancellationToken::new(),
                count: watch::Sender::new(0),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed
        // (each critical section is a few map operations), so keep serving.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a session (see [`Directory::create`]), and returns its handle
    /// too.
    /// `creator` is the caller of a join-or-create, held to
    /// [`CreationLimits`].
    fn create_session(
        &self,
        mut params: CreateParams,
        idempotency_key: Option<String>,
        creator: Option<&Caller>,
    ) -> Result<(Created, SessionHandle), Error> {
        let (mode_name, mode) = self.inner.modes.get(&params.mode)?;
        // Made first, so that a bad config fails before anything else; an
        // idempotent repeat drops it unused.
        let logic = mode.create(&params.config).map_err(|reason| Error::invalid("config", reason))?;
        let limits = &self.inner.config;
        if params.max_players == 0 {
            params.max_players = limits.default_max_players;
        }
        if params.max_players > limits.max_players_limit {
            return Err(Error::invalid(
                "max_players",
                format!("{} exceeds the limit of {}", params.max_players, limits.max_players_limit),
            ));
        }

        let mut state = self.state();
        if let Some(key) = &idempotency_key
            && let Some(id) = state.by_idempotency_key.get(key)
            && let Some(entry) = state.sessions.get(id)
        {
            return match &entry.idempotency {
                Some((_, earlier)) if *earlier == params => {
                    Ok((Created { session: entry.current(), created: false }, entry.handle.clone()))
                }
                _ => Err(Error::IdempotencyConflict(id.to_string())),
            };
        }
        if self.is_draining() {
            return Err(Error::Draining);
        }
        if state.sessions.len() >= limits.max_sessions {
            return Err(Error::TooManySessions(limits.max_sessions));
        }
        if let Some(caller) = creator {
            admit_creation(&mut state, caller, &limits.creation)?;
        }

        let id = super::new_id();
        let _span = info_span!("session.create", session.id = %id, session.mode = %mode_name).entered();
        let sequence = Arc::new(AtomicU64::new(0));
        let info = SessionInfo {
            id: id.clone(),
            mode: mode_name,
            max_players: params.max_players,
            player_count: 0,
            labels: Arc::new(params.labels.clone()),
            open_to_join_or_create: params.open_to_join_or_create,
            locked: false,
            created_unix_micros: super::unix_micros(),
            sequence: 0,
            players: Vec::new(),
            seats: Vec::new(),
            end: None,
        };
        let (tx, inbox) = mpsc::channel(limits.session.inbox);
        let handle = SessionHandle::new(id.clone(), tx);
        let mut config = limits.session.clone();
        if let Some(hold) = params.seat_hold {
            config.seat_hold = hold;
        }
        if params.replay == Some(false) {
            config.replay.messages = 0;
        }
        let mut room = Room::new(info.clone(), config, sequence.clone(), Arc::new(self.clone()));
        let mut logic = logic;
        // The logic's start, on the caller's task: its labels are in the
        // answer. A panic refuses the session.
        let tick_rate = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logic.init(&mut room))) {
            Ok(rate) => rate,
            Err(_) => {
                tracing::error!("the mode's init panicked; the session is not created");
                return Err(Error::Internal("the session's mode failed to start it".into()));
            }
        };
        let info = SessionInfo { labels: room.labels().clone(), ..info };
        room.started(tick_rate);
        self.inner.tasks.spawn(Actor::new(room, logic, inbox, tick_rate).run());

        if let Some(key) = &idempotency_key {
            state.by_idempotency_key.insert(key.clone(), id.clone());
        }
        state.sessions.insert(
            id.clone(),
            Entry {
                handle: handle.clone(),
                summary: Arc::new(info.clone()),
                sequence,
                idempotency: idempotency_key.map(|k| (k, params)),
                creator: creator.cloned(),
                reserved: 0,
            },
        );
        self.publish(&mut state, WatchEventKind::Created, info.clone(), None);
        self.inner.count.send_replace(state.sessions.len());
        info!(session.max_players = info.max_players, "session created");
        Ok((Created { session: info, created: true }, handle))
    }

    /// An ended session's last summary, while it is kept.
    fn ended(&self, id: &str) -> Result<SessionInfo, Error> {
        let mut state = self.state();
        state.ended.expire(Instant::now(), self.inner.config.ended_retention);
        state.ended.get(id).ok_or_else(|| Error::SessionNotFound(id.to_owned()))
    }

    /// The handle of a running session.
    pub(super) fn handle(&self, id: &str) -> Result<SessionHandle, Error> {
        self.state()
            .sessions
            .get(id)
            .map(|entry| entry.handle.clone())
            .ok_or_else(|| Error::SessionNotFound(id.to_owned()))
    }

    /// Seats a player in a session, or by join-or-create in an open session of
    /// a mode (creating one if none has a free seat).
    async fn join_session(&self, target: JoinTarget, request: JoinRequest, caller: Caller) -> Result<Joined, Error> {
        if self.is_draining() {
            return Err(Error::Draining);
        }
        let mut request = Box::new(request);
        let mode = match target {
            JoinTarget::Session(id) => return self.handle(&id)?.join(*request).await.map_err(|(err, _)| err),
            JoinTarget::Mode(mode) => mode,
        };
        self.inner.modes.get(&mode)?;
        // Seats are reserved in the registry while a join travels to the
        // actor, but joins by id do not reserve, so a chosen session may
        // still turn out full (or just ended): try again, and on the last
        // attempt start a new session rather than fail.
        const ATTEMPTS: usize = 4;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let found = if attempt < ATTEMPTS { self.reserve_open_seat(&mode) } else { None };
            let handle = match found {
                Some(handle) => handle,
                None => {
                    let params = CreateParams {
                        mode: mode.clone(),
                        max_players: 0,
                        labels: BTreeMap::new(),
                        config: Bytes::new(),
                        open_to_join_or_create: true,
                        seat_hold: None,
                        replay: None,
                    };
                    let handle = self.create_session(params, None, Some(&caller))?.1;
                    self.reserve(handle.id());
                    handle
                }
            };
            // Released however the join ends, even if this call is dropped.
            let reservation = Reservation { registry: self, id: handle.id() };
            let result = handle.join(*request).await;
            drop(reservation);
            match result {
                Ok(joined) => return Ok(joined),
                Err((Error::SessionFull(_) | Error::SessionNotFound(_), Some(back))) if attempt < ATTEMPTS => {
                    request = back;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// Reserves a seat in the open session of `mode` with a free seat that
    /// has the most players (seated or reserved), so that sessions fill
    /// before new ones start. Skips sessions whose actor is gone.
    fn reserve_open_seat(&self, mode: &str) -> Option<SessionHandle> {
        let mut state = self.state();
        let entry = state
            .sessions
            .values_mut()
            .filter(|e| {
                e.summary.open_to_join_or_create
                    && !e.summary.locked
                    && &*e.summary.mode == mode
                    && e.summary.player_count + e.reserved < e.summary.max_players
                    && !e.handle.is_closed()
            })
            .max_by_key(|e| e.summary.player_count + e.reserved)?;
        entry.reserved += 1;
        Some(entry.handle.clone())
    }

    fn reserve(&self, id: &SessionId) {
        if let Some(entry) = self.state().sessions.get_mut(id) {
            entry.reserved += 1;
        }
    }

    fn unreserve(&self, id: &SessionId) {
        if let Some(entry) = self.state().sessions.get_mut(id) {
            entry.reserved = entry.reserved.saturating_sub(1);
        }
    }

    /// Stops taking new sessions, joins and resumes.
    /// Sessions that are empty now end at once (nobody can join them any
    /// more); the others free their held seats (nobody can resume here any
    /// more), and end when their last player leaves.
    pub fn start_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let (empty, seated): (Vec<_>, Vec<_>) =
            self.state().sessions.values().map(|e| (e.summary.player_count == 0, e.handle.clone())).partition(|e| e.0);
        for (_, handle) in empty {
            tokio::spawn(
                async move { handle.end_now(EndReason::ServerShutdown, super::SHUTDOWN_MESSAGE.to_owned()).await },
            );
        }
        for (_, handle) in seated {
            tokio::spawn(async move { handle.drain_now().await });
        }
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The number of running sessions.
    pub fn len(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// Whether no session runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no session is left.
    pub async fn wait_empty(&self) {
        let mut count = self.inner.count.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Ends every session with `reason`, and waits for their actors to
    /// finish (each flushes its players' final messages into their queues).
    pub async fn end_all(&self, reason: EndReason, message: &str) {
        let handles: Vec<SessionHandle> = self.state().sessions.values().map(|e| e.handle.clone()).collect();
        for handle in handles {
            handle.end_now(reason, message.to_owned()).await;
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.closing.cancel();
    }

    /// Applies a change of a live session's summary, and tells watchers.
    fn update(&self, id: &SessionId, change: impl FnOnce(&mut SessionInfo)) {
        let mut state = self.state();
        let Some(entry) = state.sessions.get_mut(id) else { return };
        let before = entry.current();
        change(Arc::make_mut(&mut entry.summary));
        let after = entry.current();
        self.publish(&mut state, WatchEventKind::Updated, after, Some(before));
    }

    fn publish(&self, state: &mut State, kind: WatchEventKind, session: SessionInfo, before: Option<SessionInfo>) {
        state.revision += 1;
        // No watcher is fine.
        let _ = self.inner.events.send(Arc::new(WatchEvent {
            revision: state.revision,
            kind,
            session,
            before,
            at_unix_micros: super::unix_micros(),
        }));
    }
}

impl Listing for Registry {
    fn is_draining(&self) -> bool {
        Registry::is_draining(self)
    }

    fn replay_shrink(&self) -> ShrinkEpoch {
        self.inner.replay_shrink.clone()
    }

    fn player_count_changed(&self, id: &SessionId, player_count: u32) {
        self.update(id, |summary| summary.player_count = player_count);
    }

    fn labels_changed(&self, id: &SessionId, labels: Arc<BTreeMap<String, String>>) {
        self.update(id, |summary| summary.labels = labels);
    }

    fn locked_changed(&self, id: &SessionId, locked: bool) {
        self.update(id, |summary| summary.locked = locked);
    }

    fn remove(&self, id: &SessionId, ending: Ending) {
        let mut state = self.state();
        let Some(entry) = state.sessions.remove(id) else { return };
        if let Some((key, _)) = &entry.idempotency {
            state.by_idempotency_key.remove(key);
        }
        if let Some(caller) = &entry.creator
            && let Some(creator) = state.creators.get_mut(caller)
        {
            creator.live = creator.live.saturating_sub(1);
            if creator.is_idle(Instant::now()) {
                state.creators.remove(caller);
            }
        }
        let last = SessionInfo { end: Some(Arc::new(ending)), ..entry.current() };
        self.publish(&mut state, WatchEventKind::Ended, last.clone(), Some(last.clone()));
        self.inner.count.send_replace(state.sessions.len());
        state.ended.retain(Instant::now(), self.inner.config.ended_retention, self.inner.config.max_sessions, last);
    }
}

impl Directory for Registry {
    async fn create(&self, params: CreateParams, idempotency_key: Option<String>) -> Result<Created, Error> {
        self.create_session(params, idempotency_key, None).map(|(created, _)| created)
    }

    async fn get(&self, id: &str) -> Result<SessionInfo, Error> {
        let handle = self.handle(id);
        match handle {
            Ok(handle) => match handle.info().await {
                // It ended on the way: its ended summary, if kept.
                Err(Error::SessionNotFound(_)) => self.ended(id),
                answer => answer,
            },
            Err(_) => self.ended(id),
        }
    }

    async fn mode_of(&self, id: &str) -> Result<Arc<str>, Error> {
        self.state()
            .sessions
            .get(id)
            .map(|entry| entry.summary.mode.clone())
            .ok_or_else(|| Error::SessionNotFound(id.to_owned()))
    }

    async fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<SessionInfo>, bool), Error> {
        let state = self.state();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = state
            .sessions
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, entry)| entry.current())
            .filter(|info| filter.matches(info));
        let page: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        Ok((page, more))
    }

    async fn watch(&self, filter: SessionFilter) -> Result<Watch, Error> {
        // Subscribing under the lock makes the listing and the event stream
        // meet exactly at `revision`: events are published under it too. The
        // listing holds a pointer per matching session, and makes each
        // summary only as the watcher reads it.
        let state = self.state();
        let events = self.inner.events.subscribe();
        let listed: Vec<(Arc<SessionInfo>, Arc<AtomicU64>)> = state
            .sessions
            .values()
            .filter(|entry| filter.matches(&entry.summary))
            .map(|entry| (entry.summary.clone(), entry.sequence.clone()))
            .collect();
        let initial = Box::pin(stream::iter(listed).map(|(summary, sequence)| with_sequence(&summary, &sequence)));
        let revision = state.revision;
        drop(state);
        let closing = self.inner.closing.clone();
        let events = stream::unfold(Some((events, filter, closing)), |watching| async move {
            let (mut events, filter, closing) = watching?;
            loop {
                let received = tokio::select! {
                    () = closing.cancelled() => return Some((Err(WatchError::Closing), None)),
                    received = events.recv() => received,
                };
                match received {
                    Ok(event) if event.concerns(&filter) => return Some((Ok(event), Some((events, filter, closing)))),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => return Some((Err(WatchError::Lagged(missed)), None)),
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(Watch { initial, revision, events: Box::pin(events) })
    }

    async fn join(
        &self,
        target: JoinTarget,
        player: NewPlayer,
        caller: Caller,
        inbound: InboundStream,
    ) -> Result<Joined, Error> {
        self.join_session(target, JoinRequest { player, inbound, caller: tracing::Span::current() }, caller).await
    }

    async fn resume(&self, id: &str, request: ResumeRequest) -> Result<Joined, Error> {
        if self.is_draining() {
            return Err(Error::Draining);
        }
        self.handle(id)?.resume(request).await
    }

    async fn send(&self, id: &str, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error> {
        self.handle(id)?.send(payload, targets).await
    }

    async fn signal(&self, id: &str, payload: Bytes) -> Result<Bytes, Error> {
        self.handle(id)?.signal(payload).await
    }

    async fn remove_player(&self, id: &str, player: PlayerId, reason: String) -> Result<(), Error> {
        self.handle(id)?.remove_player(player, reason).await
    }

    async fn lock(&self, id: &str, locked: bool) -> Result<SessionInfo, Error> {
        self.handle(id)?.lock(locked).await
    }

    async fn end(&self, id: &str, reason: EndReason, message: String) -> Result<u64, Error> {
        self.handle(id)?.end(reason, message).await
    }
}

/// Counts a session `caller` creates by join-or-create against its
/// [`CreationLimits`], or says which limit it would go over.
fn admit_creation(state: &mut State, caller: &Caller, limits: &CreationLimits) -> Result<(), Error> {
    let now = Instant::now();
    if !state.creators.contains_key(caller) && state.creators.len() >= state.creators_sweep_at {
        state.creators.retain(|_, creator| !creator.is_idle(now));
        state.creators_sweep_at = (2 * state.creators.len()).max(CREATORS_SWEEP_MIN);
    }
    let creator = state
        .creators
        .entry(caller.clone())
        .or_insert_with(|| Creator { live: 0, bucket: Bucket::new(limits.per_second, limits.burst, now) });
    if limits.live_per_caller > 0 && creator.live >= limits.live_per_caller {
        return Err(Error::CreationLimited(format!(
            "join-or-create would start a new session, but {caller} already has {} running that it started \
             (--max-sessions-per-caller); join one of them by id, or leave them to end",
            creator.live
        )));
    }
    if let Err(wait) = creator.bucket.take(now, 1) {
        return Err(Error::CreationLimited(format!(
            "join-or-create would start a new session, but {caller} starts sessions faster than {} a second \
             (burst {}, --session-create-rate); retry in {} ms",
            limits.per_second,
            limits.burst,
            wait.as_micros().div_ceil(1000).max(1)
        )));
    }
    creator.live += 1;
    Ok(())
}

/// `summary` with the session's current sequence number.
fn with_sequence(summary: &SessionInfo, sequence: &AtomicU64) -> SessionInfo {
    SessionInfo { sequence: sequence.load(Ordering::Relaxed), ..summary.clone() }
}

/// A seat reserved by join-or-create; released on drop.
struct Reservation<'a> {
    registry: &'a Registry,
    id: &'a SessionId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.registry.unreserve(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ended(id: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            mode: "relay".into(),
            max_players: 2,
            player_count: 0,
            labels: Arc::default(),
            open_to_join_or_create: false,
            locked: false,
            created_unix_micros: 0,
            sequence: 1,
            players: Vec::new(),
            seats: Vec::new(),
            end: None,
        }
    }

    /// Catches ended sessions kept without bound: past the retention period
    /// they go, and past the cap the oldest go first.
    #[tokio::test(start_paused = true)]
    async fn ended_sessions_are_kept_for_the_retention_period_and_no_more_than_the_cap() {
        let (retention, cap) = (Duration::from_secs(300), 2);
        let mut kept = Ended::default();
        for id in ["a", "b", "c"] {
            kept.retain(Instant::now(), retention, cap, ended(id));
            tokio::time::advance(Duration::from_secs(100)).await;
        }
        assert_eq!(["a", "b", "c"].map(|id| kept.get(id).is_some()), [false, true, true], "the oldest went at the cap");
        // b ended at 100 s, c at 200 s; it is 300 s now.
        kept.expire(Instant::now(), retention);
        assert!(kept.get("b").is_some());
        tokio::time::advance(Duration::from_secs(100)).await;
        kept.expire(Instant::now(), retention);
        assert_eq!(["b", "c"].map(|id| kept.get(id).is_some()), [false, true]);
        // A retention of zero keeps nothing.
        kept.retain(Instant::now(), Duration::ZERO, cap, ended("d"));
        assert!(kept.get("d").is_none() && kept.get("c").is_none());
        assert!(kept.by_id.is_empty() && kept.order.is_empty());
    }

    /// Catches a map of callers that only grows: one entry per connection
    /// or token that ever created a session would pin memory for good.
    #[tokio::test(start_paused = true)]
    async fn callers_with_nothing_left_to_count_are_forgotten() {
        let limits = CreationLimits { live_per_caller: 4, per_second: 1, burst: 1 };
        let mut state = State::default();
        let caller = |n: usize| Caller::Connection(Some(([127, 0, 0, 1], n as u16).into()));
        for n in 0..CREATORS_SWEEP_MIN {
            admit_creation(&mut state, &caller(n), &limits).unwrap_or_else(|e| panic!("{e}"));
        }
        // Every session but the first caller's has ended; their buckets
        // fill again within the second.
        for creator in state.creators.values_mut().skip(1) {
            creator.live = 0;
        }
        let busy = state.creators.iter().find(|(_, c)| c.live == 1).map(|(k, _)| k.clone());
        tokio::time::advance(Duration::from_secs(1)).await;
        admit_creation(&mut state, &caller(CREATORS_SWEEP_MIN), &limits).unwrap_or_else(|e| panic!("{e}"));
        let mut left: Vec<_> = state.creators.keys().cloned().collect();
        left.sort_by_key(|c| c.to_string());
        let mut want = vec![busy.unwrap_or_else(|| panic!("a caller with a session")), caller(CREATORS_SWEEP_MIN)];
        want.sort_by_key(|c| c.to_string());
        assert_eq!(left, want);
        assert_eq!(state.creators_sweep_at, CREATORS_SWEEP_MIN);
    }
}
