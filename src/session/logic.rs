//! The rules of a session, apart from its plumbing: [`SessionLogic`] is
//! called by the session's actor with the session's [`Room`], and a [`Mode`]
//! makes one from a session's config. [`Modes`] is the registry of modes a
//! server runs, by name.
//!
//! The hooks run inline on the session's actor, one at a time, and never
//! across an `.await`: a hook that blocks stalls its session (and a worker
//! thread). Every hook may send at once through the room. A hook that
//! panics ends its session, and only it, with
//! [`EndReason::InternalError`](super::EndReason::InternalError).
//!
//! Server-authoritative modes add hooks here (a tick, inputs, signals) with
//! defaults, so that a mode that does not use them need not change.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::room::Room;
use super::{Departure, EndReason, NewPlayer, PlayerId, PlayerInfo, PlayerMessage};
use crate::error::Error;

/// The rules of one running session.
///
/// The order of the hooks for one player is: `on_join_attempt`, then (if it
/// let the player in) `on_join`, then any number of `on_message`, then
/// `on_leave` or `on_disconnect`. `on_end` comes last, once, before the
/// players are told that the session ended.
pub trait SessionLogic: Send + 'static {
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

    /// `player` left on purpose (a leave message or a clean half-close); the
    /// others have seen it leave.
    fn on_leave(&mut self, room: &mut Room, player: &Arc<PlayerInfo>) {
        let _ = (room, player);
    }

    /// `player` lost its seat without leaving: its connection broke, or the
    /// server removed it (`departure` says which); the others have been told.
    fn on_disconnect(&mut self, room: &mut Room, player: &Arc<PlayerInfo>, departure: &Departure) {
        let _ = (room, player, departure);
    }

    /// A message from the player `from`, who holds a seat.
    fn on_message(&mut self, room: &mut Room, from: &PlayerId, message: PlayerMessage);

    /// A backend service's message (SendToSession) for `targets` (empty:
    /// every player). Returns the sequence number the message got; an error
    /// goes back to the caller.
    fn on_backend_message(&mut self, room: &mut Room, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error>;

    /// The session is ending for `reason`; the players are told after this.
    fn on_end(&mut self, room: &mut Room, reason: EndReason) {
        let _ = (room, reason);
    }
}

/// A kind of session: makes the logic of each new session from the
/// session's opaque config.
pub trait Mode: Send + Sync + 'static {
    /// The logic of a new session with `config`. The error says what is wrong
    /// with the config; it is sent to the caller as INVALID_ARGUMENT on
    /// `config`, and no session is created.
    fn create(&self, config: &[u8]) -> Result<Box<dyn SessionLogic>, String>;
}

/// The modes a server runs, by name. Cheap to clone.
#[derive(Clone)]
pub struct Modes {
    by_name: Arc<BTreeMap<Arc<str>, Arc<dyn Mode>>>,
}

impl Modes {
    /// A builder with no modes; most callers want [`Modes::default`].
    pub fn builder() -> ModesBuilder {
        ModesBuilder { by_name: BTreeMap::new() }
    }

    /// The registered name and mode for `name`, or INVALID_ARGUMENT listing
    /// the available ones.
    pub fn get(&self, name: &str) -> Result<(Arc<str>, Arc<dyn Mode>), Error> {
        self.by_name
            .get_key_value(name)
            .map(|(name, mode)| (name.clone(), mode.clone()))
            .ok_or_else(|| Error::UnknownMode { mode: name.to_owned(), available: self.names().join(", ") })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(|name| &**name).collect()
    }
}

impl Default for Modes {
    /// The built-in modes: `relay`.
    fn default() -> Self {
        Modes::builder().register("relay", super::Relay).build()
    }
}

impl fmt::Debug for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Builds a [`Modes`].
pub struct ModesBuilder {
    by_name: BTreeMap<Arc<str>, Arc<dyn Mode>>,
}

impl ModesBuilder {
    /// Adds (or replaces) the mode called `name`.
    pub fn register(mut self, name: &str, mode: impl Mode) -> Self {
        self.by_name.insert(name.into(), Arc::new(mode));
        self
    }

    /// The finished registry.
    pub fn build(self) -> Modes {
        Modes { by_name: Arc::new(self.by_name) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Relay;

    /// Catches an unknown-mode error that does not list the available modes.
    #[test]
    fn unknown_mode_lists_available() {
        let modes = Modes::builder().register("relay", Relay).register("arena", Relay).build();
        let err = modes.get("chess").err();
        assert_eq!(err, Some(Error::UnknownMode { mode: "chess".into(), available: "arena, relay".into() }));
        assert_eq!(&*modes.get("relay").map(|(name, _)| name).unwrap_or_else(|_| "".into()), "relay");
    }
}
