//! The session registry: creates, gets, lists, watches, joins and ends
//! sessions. It holds a handle and a summary per session; the session's state
//! itself lives only in its actor.
//!
//! The map is behind a std `Mutex`: it is held for map operations only, never
//! across an `.await`, and never per relayed message (actors report to it on
//! join, leave and end).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span};

use super::actor::Actor;
use super::handle::{JoinRequest, Joined};
use super::{EndReason, InboundStream, Modes, NewPlayer, SessionConfig, SessionHandle, SessionId, SessionInfo};
use crate::error::Error;

/// Registry-wide settings.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Seats of a session whose creator did not choose.
    pub default_max_players: u32,
    /// Most seats a session may have.
    pub max_players_limit: u32,
    /// Events a watcher may fall behind by before its stream is ended.
    pub watch_buffer: usize,
    /// What every session runs with.
    pub session: SessionConfig,
}

/// A CreateSession request, validated. Two requests with one idempotency key
/// must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    pub mode: String,
    /// 0: the server's default.
    pub max_players: u32,
    pub labels: BTreeMap<String, String>,
    pub config: Bytes,
    pub open_to_join_or_create: bool,
}

/// CreateSession's result.
#[derive(Debug, Clone)]
pub struct Created {
    pub session: SessionInfo,
    /// False when an earlier call with the same idempotency key created it.
    pub created: bool,
}

/// Which session a join asks for.
#[derive(Debug, Clone)]
pub enum JoinTarget {
    /// This session.
    Session(String),
    /// Join-or-create by mode.
    Mode(String),
}

/// A filter over sessions; every given part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub mode: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub has_open_seats: bool,
}

impl SessionFilter {
    /// Whether `session` passes.
    pub fn matches(&self, session: &SessionInfo) -> bool {
        self.mode.as_deref().is_none_or(|mode| mode == &*session.mode)
            && self.labels.iter().all(|(k, v)| session.labels.get(k) == Some(v))
            && (!self.has_open_seats || session.player_count < session.max_players)
    }
}

/// What a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    Created,
    Updated,
    Ended,
}

/// A change to a session, as watchers see it.
#[derive(Debug)]
pub struct WatchEvent {
    /// The registry's revision of this change.
    pub revision: u64,
    pub kind: WatchEventKind,
    /// The session after the change (for `Ended`, its last state).
    pub session: SessionInfo,
    /// The session before the change (`None` for `Created`), so that a
    /// watcher also sees a session leave its filter.
    pub before: Option<SessionInfo>,
}

impl WatchEvent {
    /// Whether a watcher with `filter` gets this event: the session matched
    /// before or after the change.
    pub fn concerns(&self, filter: &SessionFilter) -> bool {
        filter.matches(&self.session) || self.before.as_ref().is_some_and(|b| filter.matches(b))
    }
}

/// A new watch: the matching sessions at `revision`, then `events`.
#[derive(Debug)]
pub struct Watch {
    pub initial: Vec<SessionInfo>,
    pub revision: u64,
    /// Every later change; filter with [`WatchEvent::concerns`]. Lagging
    /// behind by more than the watch buffer yields `RecvError::Lagged`.
    pub events: broadcast::Receiver<Arc<WatchEvent>>,
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: ManagerConfig,
    modes: Modes,
    state: Mutex<State>,
    /// Watch events; every watcher subscribes.
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Set once the server starts draining: no new sessions or joins.
    draining: AtomicBool,
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
}

struct Entry {
    handle: SessionHandle,
    /// The summary; `sequence` is read from `sequence` when handed out.
    info: SessionInfo,
    /// The session's sequence number, stored by its actor.
    sequence: Arc<AtomicU64>,
    /// The key and request that created it, if any.
    idempotency: Option<(String, CreateParams)>,
    /// Seats promised to join-or-create joins on their way to the actor, so
    /// that a burst of them spreads over sessions instead of all picking the
    /// same one.
    reserved: u32,
}

impl Entry {
    fn info(&self) -> SessionInfo {
        SessionInfo { sequence: self.sequence.load(Ordering::Relaxed), ..self.info.clone() }
    }
}

impl SessionManager {
    /// An empty registry running `modes`.
    pub fn new(config: ManagerConfig, modes: Modes) -> Self {
        let (events, _) = broadcast::channel(config.watch_buffer.max(1));
        SessionManager {
            inner: Arc::new(Inner {
                config,
                modes,
                state: Mutex::new(State::default()),
                events,
                draining: AtomicBool::new(false),
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

    /// Creates a session, or with an idempotency key already used by an equal
    /// request, returns that request's session.
    pub fn create(&self, params: CreateParams, idempotency_key: Option<String>) -> Result<Created, Error> {
        self.create_session(params, idempotency_key).map(|(created, _)| created)
    }

    fn create_session(
        &self,
        mut params: CreateParams,
        idempotency_key: Option<String>,
    ) -> Result<(Created, SessionHandle), Error> {
        let (mode, logic) = self.inner.modes.get(&params.mode)?;
        logic.validate_config(&params.config).map_err(|reason| Error::invalid("config", reason))?;
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
                    Ok((Created { session: entry.info(), created: false }, entry.handle.clone()))
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

        let id = super::new_id();
        let _span = info_span!("session.create", session.id = %id, session.mode = %mode).entered();
        let sequence = Arc::new(AtomicU64::new(0));
        let info = SessionInfo {
            id: id.clone(),
            mode,
            max_players: params.max_players,
            player_count: 0,
            labels: Arc::new(params.labels.clone()),
            open_to_join_or_create: params.open_to_join_or_create,
            created_unix_micros: super::unix_micros(),
            sequence: 0,
            players: Vec::new(),
        };
        let (tx, inbox) = mpsc::channel(limits.session.inbox);
        let handle = SessionHandle::new(id.clone(), tx);
        let actor = Actor::new(info.clone(), limits.session.clone(), inbox, sequence.clone(), self.clone());
        self.inner.tasks.spawn(actor.run());

        if let Some(key) = &idempotency_key {
            state.by_idempotency_key.insert(key.clone(), id.clone());
        }
        state.sessions.insert(
            id.clone(),
            Entry {
                handle: handle.clone(),
                info: info.clone(),
                sequence,
                idempotency: idempotency_key.map(|k| (k, params)),
                reserved: 0,
            },
        );
        self.publish(&mut state, WatchEventKind::Created, info.clone(), None);
        self.inner.count.send_replace(state.sessions.len());
        info!(session.max_players = info.max_players, "session created");
        Ok((Created { session: info, created: true }, handle))
    }

    /// The handle of a running session.
    pub fn get(&self, id: &str) -> Result<SessionHandle, Error> {
        self.state()
            .sessions
            .get(id)
            .map(|entry| entry.handle.clone())
            .ok_or_else(|| Error::SessionNotFound(id.to_owned()))
    }

    /// The mode of a running session.
    pub fn mode_of(&self, id: &str) -> Result<Arc<str>, Error> {
        self.state()
            .sessions
            .get(id)
            .map(|entry| entry.info.mode.clone())
            .ok_or_else(|| Error::SessionNotFound(id.to_owned()))
    }

    /// Up to `limit` matching sessions with ids after `after`, in id order,
    /// and whether more may follow.
    pub fn list(&self, filter: &SessionFilter, after: Option<&str>, limit: usize) -> (Vec<SessionInfo>, bool) {
        let state = self.state();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = state
            .sessions
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, entry)| entry.info())
            .filter(|info| filter.matches(info));
        let page: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Starts a watch: the matching sessions now, and every later change.
    pub fn watch(&self, filter: &SessionFilter) -> Watch {
        // Subscribing under the lock makes the listing and the event stream
        // meet exactly at `revision`: events are published under it too.
        let state = self.state();
        let events = self.inner.events.subscribe();
        let initial = state.sessions.values().map(Entry::info).filter(|info| filter.matches(info)).collect();
        Watch { initial, revision: state.revision, events }
    }

    /// Seats a player in a session, or by join-or-create in an open session of
    /// a mode (creating one if none has a free seat).
    pub async fn join(&self, target: JoinTarget, player: NewPlayer, inbound: InboundStream) -> Result<Joined, Error> {
        if self.is_draining() {
            return Err(Error::Draining);
        }
        let mut request = Box::new(JoinRequest { player, inbound, caller: super::caller() });
        let mode = match target {
            JoinTarget::Session(id) => return self.get(&id)?.join(*request).await.map_err(|(err, _)| err),
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
                    };
                    let handle = self.create_session(params, None)?.1;
                    self.reserve(handle.id());
                    handle
                }
            };
            // Released however the join ends, even if this call is dropped.
            let reservation = Reservation { manager: self, id: handle.id() };
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
                e.info.open_to_join_or_create
                    && &*e.info.mode == mode
                    && e.info.player_count + e.reserved < e.info.max_players
                    && !e.handle.is_closed()
            })
            .max_by_key(|e| e.info.player_count + e.reserved)?;
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

    /// Stops taking new sessions and joins.
    /// Sessions that are empty now end at once (nobody can join them any
    /// more); the others end when their last player leaves.
    pub fn start_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let empty: Vec<SessionHandle> =
            self.state().sessions.values().filter(|e| e.info.player_count == 0).map(|e| e.handle.clone()).collect();
        for handle in empty {
            tokio::spawn(
                async move { handle.end_now(EndReason::ServerShutdown, crate::SHUTDOWN_MESSAGE.to_owned()).await },
            );
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

    /// Fired when the server stops; long-lived streams (watches) end on it.
    pub fn closing(&self) -> CancellationToken {
        self.inner.closing.clone()
    }

    /// Called by an actor when its players changed.
    pub(super) fn player_count_changed(&self, id: &SessionId, player_count: u32) {
        let mut state = self.state();
        let Some(entry) = state.sessions.get_mut(id) else { return };
        let before = entry.info();
        entry.info.player_count = player_count;
        let after = entry.info();
        self.publish(&mut state, WatchEventKind::Updated, after, Some(before));
    }

    /// Called by an actor as it ends: forgets the session.
    pub(super) fn remove(&self, id: &SessionId) {
        let mut state = self.state();
        let Some(entry) = state.sessions.remove(id) else { return };
        if let Some((key, _)) = &entry.idempotency {
            state.by_idempotency_key.remove(key);
        }
        let last = entry.info();
        self.publish(&mut state, WatchEventKind::Ended, last.clone(), Some(last));
        self.inner.count.send_replace(state.sessions.len());
    }

    fn publish(&self, state: &mut State, kind: WatchEventKind, session: SessionInfo, before: Option<SessionInfo>) {
        state.revision += 1;
        // No watcher is fine.
        let _ = self.inner.events.send(Arc::new(WatchEvent { revision: state.revision, kind, session, before }));
    }
}

/// A seat reserved by join-or-create; released on drop.
struct Reservation<'a> {
    manager: &'a SessionManager,
    id: &'a SessionId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.manager.unreserve(self.id);
    }
}
