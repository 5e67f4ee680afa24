//! The session layer: finding sessions, running them, and the rules they run.
//!
//! # Layout
//!
//! One job per file:
//! - `directory.rs`: the seam the API finds, creates, lists, watches, joins,
//!   messages and ends sessions through ([`Directory`]), and its types.
//! - `registry.rs`: the in-process [`Directory`] ([`Registry`]): a map of
//!   running sessions, their summaries, and the watch events.
//! - `handle.rs`: a running session's cloneable address and the commands its
//!   bounded inbox carries.
//! - `actor.rs`: the task that runs one session: it waits on the inbox, the
//!   players' streams and the room's timers, and calls the room and the
//!   logic. A panic in a hook or in the loop ends that session alone, with
//!   [`EndReason::InternalError`].
//! - `room.rs`: the plumbing every session shares ([`Room`]): seats, the
//!   sequence, fan-out to the players' queues, departures, and the
//!   half-close protocol.
//! - `outbound.rs`: one player's outbound queue and the policy for a player
//!   who falls behind.
//! - `replay.rs`: the session's latest history with each event's audience,
//!   for a resume without a gap.
//! - `rate.rs`: what one player may send (a token bucket on messages and
//!   one on bytes), the flood that removes it, and the coalescing of the
//!   error replies it causes.
//! - `logic.rs`: the rules of a session ([`SessionLogic`]): the hooks the
//!   actor calls with the room.
//! - `mode.rs`: the named kinds of session ([`Mode`], [`Modes`]): each makes
//!   a session's logic from the session's config.
//! - `relay.rs`: the built-in `relay` mode: forward each message, in the
//!   session's order.
//! - `tests.rs`: the actor, room and relay on paused time, without a network.
//!
//! This file holds the vocabulary they share. Nothing here knows about
//! protobuf, gRPC or OpenTelemetry: the API layer turns protobuf into these
//! types and back.

mod actor;
mod directory;
mod handle;
mod logic;
mod mode;
mod outbound;
mod rate;
mod registry;
mod relay;
mod replay;
mod room;
#[cfg(test)]
mod tests;
mod tick;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;

use crate::error::Error;

pub use directory::{
    Caller, CreateParams, Created, Directory, JoinTarget, SessionFilter, Watch, WatchError, WatchEvent, WatchEventKind,
    WatchEvents, WatchListing,
};
pub use handle::{JoinRequest, Joined, ResumeRequest};
pub use logic::SessionLogic;
pub use mode::{Mode, Modes, ModesBuilder};
pub use outbound::{Delivery, Direct, OutboundRx, Resumed, State, StateKind, Welcome};
pub use rate::RateLimits;
pub use registry::{CreationLimits, Registry, RegistryConfig};
pub use relay::Relay;
pub use replay::{REPLAY_BYTES, REPLAY_EVENTS, ReplayLimits};
pub use room::{Audience, Room};
pub use tick::{Input, Recipients, Tick, TickPool, TickRate, TickSettings};

/// A session's id. Shared, never copied, by every message that names it.
pub type SessionId = Arc<str>;
/// A player's id. Shared, never copied, by every message that names it.
pub type PlayerId = Arc<str>;

/// What players are told when their session ends because the server shuts
/// down.
pub const SHUTDOWN_MESSAGE: &str = "server shutting down";

/// A player as other players see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerInfo {
    /// Stable id, unique within the session.
    pub id: PlayerId,
    /// Human-readable name; may be empty.
    pub display_name: String,
    /// Small key/value data given at join.
    pub metadata: BTreeMap<String, String>,
}

/// A join as the API layer validated it; the id may still be empty, in which
/// case the session assigns one.
#[derive(Debug, Clone)]
pub struct NewPlayer {
    /// Requested id; empty lets the server assign one.
    pub id: String,
    /// Human-readable name; may be empty.
    pub display_name: String,
    /// Small key/value data given at join.
    pub metadata: BTreeMap<String, String>,
    /// What the caller proved about the seat of this id, if it holds one.
    pub proof: SeatProof,
}

/// What a join proves about the seat it names. A seat that the join proves
/// its own, live or held, is taken over (its old stream, if any, ends with
/// ABORTED) instead of refused with ALREADY_EXISTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeatProof {
    /// Nothing: a seat of the id, live or held, refuses the join.
    #[default]
    None,
    /// A verified token whose subject is the id: any seat of the id is the
    /// caller's.
    Subject,
    /// A resume token for the seat of this generation: the seat is the
    /// caller's if its generation is still this one.
    Generation(u64),
}

/// One validated message from a joined player's stream.
#[derive(Debug)]
pub enum Inbound {
    /// A message for the session's logic.
    Message(PlayerMessage),
    /// Answer with a pong echoing `client_time`.
    Ping { client_time: i64, rtt_micros: i64 },
    /// Leave the session on purpose.
    Leave,
    /// A malformed message: answer with a non-fatal error, change nothing.
    Invalid(Error),
}

impl Inbound {
    /// What the message counts against its sender's byte limit: a relay's
    /// payload and target ids. The other kinds are small and bounded, and
    /// the message limit covers them.
    pub fn bytes(&self) -> usize {
        match self {
            Inbound::Message(PlayerMessage::Relay(relay)) => {
                relay.payload.len() + relay.targets.iter().map(|t| t.len()).sum::<usize>()
            }
            Inbound::Message(PlayerMessage::Input(input)) => input.payload.len(),
            Inbound::Ping { .. } | Inbound::Leave | Inbound::Invalid(_) => 0,
        }
    }
}

/// A player's message for the session's logic
/// ([`SessionLogic::on_message`]). Which kinds a mode takes is up to the
/// mode; `relay` takes relays.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlayerMessage {
    /// Forward a payload to other players.
    Relay(RelayMessage),
    /// An input for the session's tick. A session with a tick queues it
    /// for the next tick (it reaches no hook); one without refuses it.
    Input(InputMessage),
}

/// An input message from a player (see [`Input`] for the tick's view).
#[derive(Debug)]
pub struct InputMessage {
    /// The client's sequence number for it.
    pub sequence: u64,
    /// Opaque to the server.
    pub payload: Bytes,
}

/// A relay message from a player.
#[derive(Debug)]
pub struct RelayMessage {
    /// The opaque payload, shared by all its recipients.
    pub payload: Bytes,
    /// Who gets it; empty means every other player.
    pub targets: Vec<PlayerId>,
    /// Whether a newer message replaces it (may be dropped for slow players).
    pub droppable: bool,
}

/// Why a player's inbound stream failed.
#[derive(Debug)]
pub enum InboundError {
    /// The connection broke: a reset, a transport error, a keepalive timeout.
    /// The player is disconnected (not a leave).
    Transport(String),
    /// The client broke the protocol (e.g. a frame over the size limit). The
    /// player's stream ends with this error.
    Protocol(Error),
}

/// A joined player's inbound messages, already decoded and validated by the
/// API layer. The session actor polls it directly: no reader task per player.
/// It ends (`None`) on a clean half-close, which is a leave.
pub type InboundStream = Pin<Box<dyn Stream<Item = Result<Inbound, InboundError>> + Send>>;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A backend service called EndSession.
    EndedByBackend,
    /// It stayed empty longer than the idle timeout.
    Idle,
    /// The server shut down.
    ServerShutdown,
    /// The session failed: its logic or its actor panicked, or a tick ran
    /// past the watchdog. Only this session ended; the details are in the
    /// server's log.
    InternalError,
    /// Its logic ended it (e.g. the match is over).
    Completed,
}

impl EndReason {
    /// The reason as a metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::EndedByBackend => "ended_by_backend",
            EndReason::Idle => "idle",
            EndReason::ServerShutdown => "server_shutdown",
            EndReason::InternalError => "internal_error",
            EndReason::Completed => "completed",
        }
    }
}

/// Why a player's stream or seat ended. Kept apart in code, presence events
/// and logs: a drop ([`Departure::holds_seat`]) holds the seat for a resume
/// in a session that holds seats; the others free it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// A leave message or a clean half-close.
    Left,
    /// The connection broke (reset, transport error, keepalive timeout).
    Disconnected(String),
    /// The server removed the player; its stream ends with this error.
    Removed(Error),
    /// Its seat was held after its stream dropped, and the hold ran out.
    Expired,
    /// Its seat was held, and the server began to drain (nobody can resume
    /// on it any more).
    Drained,
}

impl Departure {
    /// Whether the seat is held for a resume (in a session that holds
    /// seats): a stream that dropped without a leave, or one removed for
    /// falling behind, whose player may come back. A leave, a kick, a
    /// flood, a protocol error or an expired hold frees the seat.
    pub fn holds_seat(&self) -> bool {
        matches!(self, Departure::Disconnected(_) | Departure::Removed(Error::SlowPlayer(_)))
    }

    /// The few fixed words the other players are told in the presence
    /// event's `detail`. The departure's own text (a transport error, the
    /// decoder's words, how far behind a player fell) names internals and
    /// may carry what a client sent, so it goes to the log only; the removed
    /// player still gets the full error on its own stream.
    pub fn presence_detail(&self) -> &'static str {
        match self {
            Departure::Left => "",
            Departure::Disconnected(_) => "connection lost",
            Departure::Removed(Error::SlowPlayer(_)) => "too slow",
            Departure::Removed(Error::RateLimited(_)) => "sending too fast",
            Departure::Removed(Error::Protocol { .. }) => "protocol error",
            Departure::Removed(Error::Kicked(_)) => "removed by an operator",
            Departure::Removed(_) => "removed",
            Departure::Expired => "did not come back",
            Departure::Drained => "server shutting down",
        }
    }
}

/// What a presence event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Joined,
    Left,
    Disconnected,
    Removed,
    /// The player's seat moved to a new stream of the same player (a
    /// takeover or a resume).
    Reconnected,
    /// The player's stream dropped; its seat is held for a resume.
    Held,
}

/// A message that belongs to the session's history: it carries a sequence
/// number and is the same for every recipient.
#[derive(Debug)]
pub enum Event {
    /// A player's relay message; `targeted` when it went to the players the
    /// sender named, not to every other player.
    Relayed {
        sequence: u64,
        sender: PlayerId,
        payload: Bytes,
        server_time_unix_micros: i64,
        droppable: bool,
        targeted: bool,
    },
    /// A player joined or left.
    /// `detail` is one of [`Departure::presence_detail`]'s fixed phrases (a
    /// `&'static str`, so no departure's own text can slip in).
    Presence { sequence: u64, player: Arc<PlayerInfo>, kind: PresenceKind, detail: &'static str },
    /// A backend service's message; `targeted` as for a relay.
    Backend { sequence: u64, payload: Bytes, server_time_unix_micros: i64, targeted: bool },
    /// The session ended.
    Ended { sequence: u64, reason: EndReason, message: String },
}

/// An [`Event`] shared by all its recipients, with room for the API layer
/// to cache its encoding: a fan-out to P players encodes once. Its weight
/// counts in the server's byte accounting for as long as any queue holds it.
#[derive(Debug)]
pub struct SharedEvent {
    /// The event itself.
    pub event: Event,
    /// The event's wire encoding, filled by the first recipient's stream.
    encoded: OnceLock<Bytes>,
    /// What the event holds, in bytes (see [`Delivery::weight`]).
    weight: usize,
}

/// Bytes every queued item is counted as besides its payload and texts:
/// the item, its event and the encoding's framing, roughly.
pub const ITEM_OVERHEAD: usize = 64;

impl SharedEvent {
    /// Wraps an event for sharing.
    pub fn new(event: Event) -> Arc<Self> {
        let weight = ITEM_OVERHEAD
            + match &event {
                Event::Relayed { payload, .. } | Event::Backend { payload, .. } => payload.len(),
                Event::Presence { player, detail, .. } => detail.len() + player_weight(player),
                Event::Ended { message, .. } => message.len(),
            };
        crate::metrics::EVENT_BYTES[event_kind(&event)].fetch_add(weight, std::sync::atomic::Ordering::Relaxed);
        Arc::new(SharedEvent { event, encoded: OnceLock::new(), weight })
    }

    /// What the event holds, in bytes.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// The cached encoding, made by `encode` on first use.
    pub fn encoded(&self, encode: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }
}

impl Drop for SharedEvent {
    fn drop(&mut self) {
        crate::metrics::EVENT_BYTES[event_kind(&self.event)]
            .fetch_sub(self.weight, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An event's kind, as an index of the byte accounting
/// ([`crate::metrics::EVENT_KINDS`]).
fn event_kind(event: &Event) -> usize {
    match event {
        Event::Relayed { .. } => 0,
        Event::Backend { .. } => 1,
        Event::Presence { .. } => 2,
        Event::Ended { .. } => 3,
    }
}

/// What a player's description holds, in bytes.
pub(super) fn player_weight(player: &PlayerInfo) -> usize {
    player.id.len() + player.display_name.len() + player.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// How a session ended; its summary keeps it for the retention period
/// (GetSession) and the ENDED watch event carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub reason: EndReason,
    /// What the players were told.
    pub message: String,
    /// What the logic's `on_end` returned (e.g. the match's outcome).
    pub result: Option<Bytes>,
    pub ended_unix_micros: i64,
}

/// A summary of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub mode: Arc<str>,
    pub max_players: u32,
    pub player_count: u32,
    pub labels: Arc<BTreeMap<String, String>>,
    pub open_to_join_or_create: bool,
    /// Locked to new joins (its players stay).
    pub locked: bool,
    pub created_unix_micros: i64,
    pub sequence: u64,
    /// Filled only by [`Directory::get`].
    pub players: Vec<Arc<PlayerInfo>>,
    /// Each seat as an operator sees it, by player id; filled only by
    /// [`Directory::get`].
    pub seats: Vec<SeatStatus>,
    /// Set once the session has ended.
    pub end: Option<Arc<Ending>>,
}

/// One seat as an operator sees it (GetSession).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatStatus {
    pub player: PlayerId,
    /// When the player took the seat, in microseconds since the Unix epoch.
    pub joined_unix_micros: i64,
    /// The round trip its client last reported in a ping; 0: none.
    pub rtt_micros: i64,
    /// Messages queued for it, and their weight in bytes.
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// Droppable messages dropped for it since it joined.
    pub dropped: u64,
    /// For a held seat, when its hold runs out, in microseconds since the
    /// Unix epoch.
    pub held_until_unix_micros: Option<i64>,
}

/// Limits and timings every session runs with.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Capacity of each player's outbound queue, in messages.
    pub outbound_queue: usize,
    /// Capacity of each player's outbound queue, in bytes (see
    /// [`Delivery::weight`]).
    pub outbound_queue_bytes: usize,
    /// The server's budget for all queued events' bytes; past it, players
    /// who are behind go first (see `outbound.rs`).
    pub queued_bytes_budget: usize,
    /// How long a player may stay behind before it is disconnected.
    pub slow_player_grace: Duration,
    /// Capacity of the session's command inbox.
    pub inbox: usize,
    /// How long the session may stay empty.
    pub idle_timeout: Duration,
    /// What each player may send.
    pub rates: RateLimits,
    /// How ticks run (sessions whose logic has a tick).
    pub ticks: TickSettings,
    /// How long a seat is held after its stream drops without a leave, for
    /// a resume; zero: seats are not held.
    pub seat_hold: Duration,
    /// The replay buffer's bounds (see `replay.rs`).
    pub replay: ReplayLimits,
}

/// The wall clock in microseconds since the Unix epoch.
pub fn unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A fresh random id (32 hex digits), for sessions and unnamed players.
pub fn new_id() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string().into()
}
