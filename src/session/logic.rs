//! The rules of a session, apart from its plumbing: [`SessionLogic`] is
//! called by the session's actor with the session's [`Room`]. A
//! [`Mode`](super::Mode) makes one from each session's config.
//!
//! The hooks run inline on the session's actor, one at a time, and never
//! across an `.await`: a hook that blocks stalls its session (and a worker
//! thread). Every hook may send at once through the room. A hook that
//! panics ends its session, and only it, with
//! [`EndReason::InternalError`](super::EndReason::InternalError).
//!
//! A server-authoritative logic asks for a tick in [`SessionLogic::init`]:
//! its players' `input` messages then wait for [`SessionLogic::on_tick`],
//! which runs at that rate on the tick pool (see [`super::tick`]). Every
//! hook but `on_message` and `on_backend_message` has a default, so that a
//! mode implements only what it uses.

use std::sync::Arc;

use bytes::Bytes;

use super::room::Room;
use super::tick::{Tick, TickRate};
use super::{Departure, EndReason, NewPlayer, PlayerId, PlayerInfo, PlayerMessage};
use crate::error::Error;

/// The rules of one running session.
///
/// `init` comes first, once, before anyone joins. The order of the hooks for
/// one player is: `on_join_attempt`, then (if it let the player in)
/// `on_join`, then any number of `on_message` (and its inputs in ticks),
/// `on_disconnect` (its stream dropped: the seat is held for a resume) and
/// `on_reconnect` (a new stream of the player took its seat back: a resume,
/// or a takeover of a live seat), then `on_leave` when the seat is freed (a
/// leave, a kick, or a hold that ran out; in a session that holds no seats,
/// a drop is `on_disconnect` then `on_leave` at once), unless the session
/// ends first: the players still seated then get no hook of their own. `on_end` comes
/// last, once, before the players are told that the session ended; it is
/// skipped when the session ends because a hook panicked. Seats that sends
/// in `on_end` find gone are not freed one by one: every seat ends with the
/// session.
pub trait SessionLogic: Send + 'static {
    /// Starts the session: may set its labels through the room, and returns
    /// its tick rate, or `None` (the default) for a logic without a tick,
    /// which gets no `on_tick` and whose players' `input` messages are
    /// refused.
    fn init(&mut self, room: &mut Room) -> Option<TickRate> {
        let _ = room;
        None
    }

    /// One tick (see [`Tick`]): the inputs since the last one, and an outbox
    /// for states, deltas, messages, labels and the end. Runs on the tick
    /// pool, not the session's actor; keep it within the tick's period.
    fn on_tick(&mut self, tick: &mut Tick) {
        let _ = tick;
    }

    /// Whether `player` may take a seat. The room has already checked that a
    /// seat is free and the id is not taken. An error refuses the join with
    /// that error's status.
    fn on_join_attempt(&mut self, room: &Room, player: &NewPlayer) -> Result<(), Error> {
        let _ = (room, player);
        Ok(())
    }

    /// `player` took a seat: the others have seen it join and it has its
    /// welcome.
    fn on_join(&mut self, room: &mut Room, player: &Arc<PlayerInfo>) {
        let _ = (room, player);
    }

    /// `player`'s seat moved to a new stream of the same player: a resume, a
    /// join with the seat's resume token, or (auth on) a join whose token's
    /// subject holds the seat; held or live before. The others have seen it
    /// reconnect; the new stream has its welcome (or its replay), and an old
    /// one still open has ended. `on_join_attempt` is not asked again.
    fn on_reconnect(&mut self, room: &mut Room, player: &Arc<PlayerInfo>) {
        let _ = (room, player);
    }

    /// `player`'s seat is freed: it left on purpose (a leave message or a
    /// clean half-close), was kicked, or did not come back within its seat
    /// hold; the others have been told. Its last hook.
    fn on_leave(&mut self, room: &mut Room, player: &Arc<PlayerInfo>) {
        let _ = (room, player);
    }

    /// `player`'s stream ended without a leave: its connection broke, or the
    /// server shed it (`departure` says which); the others have been told.
    /// Its seat is held for a resume (`on_reconnect` or `on_leave` follows),
    /// unless the session holds no seats or the cause frees it (flooding, a
    /// protocol error), when `on_leave` follows at once.
    fn on_disconnect(&mut self, room: &mut Room, player: &Arc<PlayerInfo>, departure: &Departure) {
        let _ = (room, player, departure);
    }

    /// A message from the player `from`, who holds a seat.
    fn on_message(&mut self, room: &mut Room, from: &PlayerId, message: PlayerMessage);

    /// A backend service's message (SendToSession) for `targets` (empty:
    /// every player). Returns the sequence number the message got; an error
    /// goes back to the caller.
    fn on_backend_message(&mut self, room: &mut Room, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error>;

    /// A backend service's signal (SignalSession): returns the answer the
    /// caller gets, or an error with its status. By default the mode takes
    /// no signals (FAILED_PRECONDITION).
    fn on_signal(&mut self, room: &mut Room, payload: Bytes) -> Result<Bytes, Error> {
        let _ = (room, payload);
        Err(Error::precondition("payload", "this session's mode takes no signals"))
    }

    /// The session is ending for `reason`; the players are told after this.
    /// Returns the session's result, if it has one (e.g. the match's
    /// outcome): GetSession shows it for `--ended-session-retention`, and
    /// the ENDED watch event carries it.
    fn on_end(&mut self, room: &mut Room, reason: EndReason) -> Option<Bytes> {
        let _ = (room, reason);
        None
    }
}
