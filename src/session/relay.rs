//! The `relay` mode: every message gets the session's next sequence number
//! and goes to every other player, or to the players it names, in that
//! order. It keeps no state of its own; the room has the players.

use std::sync::Arc;

use bytes::Bytes;

use super::logic::SessionLogic;
use super::mode::Mode;
use super::room::{Audience, Room};
use super::{PlayerId, PlayerMessage};
use crate::error::Error;

/// The relay mode, and the logic of each relay session (it takes no config).
#[derive(Debug, Default, Clone, Copy)]
pub struct Relay;

impl Mode for Relay {
    fn create(&self, _config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        Ok(Box::new(Relay))
    }
}

impl SessionLogic for Relay {
    fn on_message(&mut self, room: &mut Room, from: &PlayerId, message: PlayerMessage) {
        let relay = match message {
            PlayerMessage::Relay(relay) => relay,
            // The actor refuses inputs to a session without a tick; should
            // one come this far, it is refused all the same.
            PlayerMessage::Input(_) => {
                room.send_error(from, Error::invalid("input", "relay sessions take relay messages, not inputs"));
                return;
            }
        };
        if let Err(err) = check_targets(room, &relay.targets, "relay.targets") {
            room.send_error(from, err);
            return;
        }
        let to = if relay.targets.is_empty() { Audience::AllBut(from) } else { Audience::Only(&relay.targets) };
        room.relay(from, relay.payload, to, relay.droppable);
    }

    fn on_backend_message(&mut self, room: &mut Room, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error> {
        check_targets(room, &targets, "player_ids")?;
        let to = if targets.is_empty() { Audience::All } else { Audience::Only(&targets) };
        Ok(room.send(payload, to))
    }
}

/// Every target must hold a seat; the error names the first that does not.
fn check_targets(room: &Room, targets: &[Arc<str>], field: &str) -> Result<(), Error> {
    match targets.iter().enumerate().find(|(_, t)| !room.is_seated(t)) {
        Some((i, t)) => Err(Error::UnknownPlayer { field: format!("{field}[{i}]"), player: t.to_string() }),
        None => Ok(()),
    }
}
