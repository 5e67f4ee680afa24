//! The directory: the one way the API finds, creates, lists, watches,
//! joins, messages and ends sessions. Today the in-process
//! [`Registry`](super::Registry) implements it. A directory for many nodes
//! (Redis-backed) implements it too, inside this crate (a join hands back
//! the player's outbound queue, which only the session layer makes); the
//! API above this seam does not change.
//!
//! Every method is async, since a directory may have to ask another node.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::handle::{Joined, ResumeRequest};
use super::{EndReason, InboundStream, NewPlayer, PlayerId, SessionInfo};
use crate::error::Error;

/// Where sessions are found. Cheap to clone.
pub trait Directory: Clone + Send + Sync + 'static {
    /// Creates a session, or with an idempotency key already used by an equal
    /// request, returns that request's session.
    fn create(
        &self,
        params: CreateParams,
        idempotency_key: Option<String>,
    ) -> impl Future<Output = Result<Created, Error>> + Send;

    /// A running session's summary, with its players.
    fn get(&self, id: &str) -> impl Future<Output = Result<SessionInfo, Error>> + Send;

    /// A running session's mode.
    fn mode_of(&self, id: &str) -> impl Future<Output = Result<Arc<str>, Error>> + Send;

    /// Up to `limit` sessions passing `filter` with ids after `after`, in id
    /// order, and whether more may follow.
    fn list(
        &self,
        filter: &SessionFilter,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<SessionInfo>, bool), Error>> + Send;

    /// The sessions passing `filter` now, and every later change that
    /// concerns them.
    fn watch(&self, filter: SessionFilter) -> impl Future<Output = Result<Watch, Error>> + Send;

    /// Seats a player in a session, or by join-or-create in an open session
    /// of a mode (creating one if none has a free seat, within `caller`'s
    /// creation limits). `inbound` is the player's stream of messages, which
    /// the session reads from then on.
    fn join(
        &self,
        target: JoinTarget,
        player: NewPlayer,
        caller: Caller,
        inbound: InboundStream,
    ) -> impl Future<Output = Result<Joined, Error>> + Send;

    /// Resumes a player's seat in session `id` on a new stream (see
    /// [`ResumeRequest`]): its queue starts with the `resumed` answer and
    /// the events it missed.
    fn resume(&self, id: &str, request: ResumeRequest) -> impl Future<Output = Result<Joined, Error>> + Send;

    /// Hands a backend payload for `targets` (empty: every player) to the
    /// session's logic; returns the sequence number it got.
    fn send(&self, id: &str, payload: Bytes, targets: Vec<PlayerId>)
    -> impl Future<Output = Result<u64, Error>> + Send;

    /// Hands a backend's signal to the session's logic; returns its answer.
    fn signal(&self, id: &str, payload: Bytes) -> impl Future<Output = Result<Bytes, Error>> + Send;

    /// Removes (kicks) `player` from a session, telling it `reason`.
    fn remove_player(
        &self,
        id: &str,
        player: PlayerId,
        reason: String,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Locks a session to new joins (`true`) or unlocks it; returns the
    /// session after the change.
    fn lock(&self, id: &str, locked: bool) -> impl Future<Output = Result<SessionInfo, Error>> + Send;

    /// Ends a session; every player receives `message`. Returns the sequence
    /// number of the `session_ended` event.
    fn end(&self, id: &str, reason: EndReason, message: String) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// A CreateSession request, validated. Two requests with one idempotency key
/// must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    pub mode: String,
    /// 0: the server's default.
    pub max_players: u32,
    pub labels: BTreeMap<String, String>,
    /// The mode's config, opaque here; the mode makes the session's logic
    /// from it.
    pub config: Bytes,
    pub open_to_join_or_create: bool,
    /// The seat hold; `None`: the server's.
    pub seat_hold: Option<std::time::Duration>,
    /// Whether to keep a replay buffer; `None`: the server's setting.
    pub replay: Option<bool>,
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

/// Who asks for a join: what the limits on sessions made by join-or-create
/// are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The subject (`sub`) of a player token, with auth on: one account,
    /// whichever connections it uses.
    Subject(String),
    /// The connection the call came on (its peer address), with auth off.
    Connection(Option<SocketAddr>),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Subject(sub) => write!(f, "player {sub:?}"),
            Caller::Connection(Some(peer)) => write!(f, "the connection from {peer}"),
            Caller::Connection(None) => f.write_str("this connection"),
        }
    }
}

/// A filter over sessions; every given part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub mode: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub has_open_seats: bool,
    /// Only locked (`Some(true)`) or unlocked (`Some(false)`) sessions.
    pub locked: Option<bool>,
}

impl SessionFilter {
    /// Whether `session` passes.
    pub fn matches(&self, session: &SessionInfo) -> bool {
        self.mode.as_deref().is_none_or(|mode| mode == &*session.mode)
            && self.labels.iter().all(|(k, v)| session.labels.get(k) == Some(v))
            && (!self.has_open_seats || (session.player_count < session.max_players && !session.locked))
            && self.locked.is_none_or(|locked| locked == session.locked)
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
    /// The directory's revision of this change.
    pub revision: u64,
    pub kind: WatchEventKind,
    /// The session after the change (for `Ended`, its last state).
    pub session: SessionInfo,
    /// The session before the change (`None` for `Created`), so that a
    /// watcher also sees a session leave its filter.
    pub before: Option<SessionInfo>,
    /// When the change happened, in microseconds since the Unix epoch.
    pub at_unix_micros: i64,
}

impl WatchEvent {
    /// Whether a watcher with `filter` gets this event: the session matched
    /// before or after the change.
    pub fn concerns(&self, filter: &SessionFilter) -> bool {
        filter.matches(&self.session) || self.before.as_ref().is_some_and(|b| filter.matches(b))
    }
}

/// Why a watch ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchError {
    /// The watcher fell this many events behind; it must watch again.
    Lagged(u64),
    /// The server is shutting down.
    Closing,
}

/// The changes after a watch's listing that concern its filter, in revision
/// order. Ends with an error when the watcher lags or the server stops.
pub type WatchEvents = Pin<Box<dyn Stream<Item = Result<Arc<WatchEvent>, WatchError>> + Send>>;

/// A watch's initial listing: the matching sessions as of its revision, made
/// as the watcher reads them (a watcher that never reads holds a pointer per
/// session, not a copy).
pub type WatchListing = Pin<Box<dyn Stream<Item = SessionInfo> + Send>>;

/// A new watch: the matching sessions at `revision`, then `events`.
pub struct Watch {
    pub initial: WatchListing,
    pub revision: u64,
    pub events: WatchEvents,
}
