//! The arena's rules, in plain Rust on the public API: players run around a
//! 20 × 10 field at 30 Hz; one of them is "it", and tagging another player
//! (touching them) passes it on. When the match's time is up, the player who
//! was "it" for the shortest time wins.
//!
//! The server is the authority: a client sends only the velocity it wants
//! (an `input` of two little-endian `f32`s, x and y, in units a second). The
//! tick clamps it to the speed limit and moves the player, so that a client
//! that sends a huge velocity, or NaN, cannot teleport. Everyone gets the
//! full state every tick (a snapshot, small at these sizes), with the last
//! input of theirs that it includes.
//!
//! Labels: `phase` is `lobby` until the arena is full, or until 3 seconds
//! after its second player came in, then `playing`, then `over`. The result (SessionEnd.result, and GetSession for a while after
//! the end) is JSON: the winner and each player's time as "it".

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use game_session::error::Error;
use game_session::session::{
    EndReason, Mode, NewPlayer, PlayerId, PlayerMessage, Recipients, Room, SessionLogic, Tick, TickRate,
};
use serde::Serialize;
use serde_json::json;

/// Ticks a second.
pub const HZ: u32 = 30;
/// The field's size, in units.
pub const WIDTH: f32 = 20.0;
pub const HEIGHT: f32 = 10.0;
/// The fastest a player may move, in units a second.
pub const MAX_SPEED: f32 = 5.0;
/// Players are circles of this radius; two that overlap touch.
pub const RADIUS: f32 = 0.5;
/// After a tag, the new "it" cannot tag back for this long.
const TAG_IMMUNITY: Duration = Duration::from_secs(1);
/// How long the lobby waits for more players once two are in.
const LOBBY_WAIT: Duration = Duration::from_secs(3);

/// The `arena` mode. Its config is the match's length in seconds, as text
/// (empty: 60).
pub struct Arena;

impl Mode for Arena {
    fn create(&self, config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        let seconds = match std::str::from_utf8(config).map(str::trim) {
            Ok("") => 60,
            Ok(text) => text.parse::<u64>().map_err(|_| format!("the match's length in seconds, not {text:?}"))?,
            Err(_) => return Err("the match's length in seconds, as text".into()),
        };
        if !(1..=3600).contains(&seconds) {
            return Err("a match lasts 1 to 3600 seconds".into());
        }
        Ok(Box::new(Match { length_ticks: seconds * u64::from(HZ), ..Match::default() }))
    }
}

/// One player on the field.
#[derive(Debug, Default, Clone)]
struct Runner {
    x: f32,
    y: f32,
    /// The velocity asked for by the last input, clamped.
    vx: f32,
    vy: f32,
    /// Ticks spent as "it".
    it_ticks: u64,
}

/// One match.
#[derive(Debug, Default)]
pub struct Match {
    length_ticks: u64,
    /// The arena's seats: full, the match starts at once.
    seats: usize,
    /// The tick at which a lobby of two or more players starts the match.
    lobby_ends_at: Option<u64>,
    /// The tick the match started at (two players in), if it has.
    started_at: Option<u64>,
    runners: BTreeMap<PlayerId, Runner>,
    it: Option<PlayerId>,
    /// The tick until which the current "it" cannot tag.
    immune_until: u64,
    /// Inputs refused (malformed: wrong length, not finite).
    refused_inputs: u64,
}

impl Match {
    fn phase(&self) -> &'static str {
        match self.started_at {
            None => "lobby",
            Some(_) => "playing",
        }
    }

    /// Where a new player starts: spread along the field's middle line.
    fn spawn_point(&self) -> (f32, f32) {
        let n = self.runners.len() as f32;
        (2.0 + (n * 3.7) % (WIDTH - 4.0), HEIGHT / 2.0)
    }

    /// Applies one input: the velocity asked for, clamped to the speed limit.
    fn steer(&mut self, from: &PlayerId, payload: &[u8]) {
        let Some(runner) = self.runners.get_mut(from) else { return };
        let velocity = (payload.len() == 8).then(|| {
            let x = f32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            let y = f32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
            (x, y)
        });
        match velocity {
            Some((x, y)) if x.is_finite() && y.is_finite() => {
                let speed = (x * x + y * y).sqrt();
                let scale = if speed > MAX_SPEED { MAX_SPEED / speed } else { 1.0 };
                (runner.vx, runner.vy) = (x * scale, y * scale);
            }
            _ => self.refused_inputs += 1,
        }
    }

    /// Moves everyone one tick, keeps them on the field, pushes apart those
    /// who overlap, and passes "it" on a touch.
    fn step(&mut self, tick: u64) {
        let dt = 1.0 / HZ as f32;
        for runner in self.runners.values_mut() {
            runner.x = (runner.x + runner.vx * dt).clamp(RADIUS, WIDTH - RADIUS);
            runner.y = (runner.y + runner.vy * dt).clamp(RADIUS, HEIGHT - RADIUS);
        }
        let ids: Vec<PlayerId> = self.runners.keys().cloned().collect();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                let (pa, pb) = (self.runners[a].clone(), self.runners[b].clone());
                let (dx, dy) = (pb.x - pa.x, pb.y - pa.y);
                let distance = (dx * dx + dy * dy).sqrt();
                if distance >= 2.0 * RADIUS {
                    continue;
                }
                // Push both apart along the line between them.
                let overlap = 2.0 * RADIUS - distance;
                let (nx, ny) = if distance > 1e-6 { (dx / distance, dy / distance) } else { (1.0, 0.0) };
                if let Some(r) = self.runners.get_mut(a) {
                    r.x = (r.x - nx * overlap / 2.0).clamp(RADIUS, WIDTH - RADIUS);
                    r.y = (r.y - ny * overlap / 2.0).clamp(RADIUS, HEIGHT - RADIUS);
                }
                if let Some(r) = self.runners.get_mut(b) {
                    r.x = (r.x + nx * overlap / 2.0).clamp(RADIUS, WIDTH - RADIUS);
                    r.y = (r.y + ny * overlap / 2.0).clamp(RADIUS, HEIGHT - RADIUS);
                }
                // A touch by "it" passes it on.
                if tick >= self.immune_until && self.started_at.is_some() {
                    let tagged = match &self.it {
                        Some(it) if it == a => Some(b.clone()),
                        Some(it) if it == b => Some(a.clone()),
                        _ => None,
                    };
                    if let Some(tagged) = tagged {
                        self.it = Some(tagged);
                        self.immune_until = tick + TAG_IMMUNITY.as_millis() as u64 * u64::from(HZ) / 1000;
                    }
                }
            }
        }
        if let Some(runner) = self.it.as_ref().and_then(|it| self.runners.get_mut(it)) {
            runner.it_ticks += 1;
        }
    }

    /// The state every player gets: the phase, who is "it", the time left,
    /// and each player's position and time as "it". JSON, written straight
    /// from these structs (no value tree: this runs every tick).
    fn snapshot(&self, tick: u64) -> Bytes {
        let left = self.started_at.map_or(self.length_ticks, |at| (at + self.length_ticks).saturating_sub(tick));
        let state = State {
            phase: self.phase(),
            it: self.it.as_deref(),
            left_ms: ms(left),
            players: self
                .runners
                .iter()
                .map(|(id, r)| Position { id, x: round(r.x), y: round(r.y), it_ms: ms(r.it_ticks) })
                .collect(),
        };
        // Serializing these types cannot fail (no maps with non-string keys).
        Bytes::from(serde_json::to_vec(&state).unwrap_or_default())
    }

    /// The match's result: the winner (least time as "it") and every time.
    fn result(&self) -> Bytes {
        let winner = self.runners.iter().min_by_key(|(_, r)| r.it_ticks).map(|(id, _)| id.to_string());
        let times: BTreeMap<String, u64> =
            self.runners.iter().map(|(id, r)| (id.to_string(), ms(r.it_ticks))).collect();
        Bytes::from(json!({ "winner": winner, "it_ms": times }).to_string())
    }
}

/// The state, as JSON.
#[derive(Serialize)]
struct State<'a> {
    phase: &'static str,
    it: Option<&'a str>,
    left_ms: u64,
    players: Vec<Position<'a>>,
}

/// One player in the state.
#[derive(Serialize)]
struct Position<'a> {
    id: &'a str,
    x: f32,
    y: f32,
    it_ms: u64,
}

fn ms(ticks: u64) -> u64 {
    ticks * 1000 / u64::from(HZ)
}

/// A coordinate to two decimals, as JSON shows it.
fn round(v: f32) -> f32 {
    (v * 100.0).round() / 100.0
}

fn phase(phase: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("phase".to_owned(), phase.to_owned())])
}

impl SessionLogic for Match {
    fn init(&mut self, room: &mut Room) -> Option<TickRate> {
        self.seats = room.max_players() as usize;
        room.set_labels(phase("lobby"));
        TickRate::hz(HZ).ok()
    }

    fn on_join_attempt(&mut self, _room: &Room, _player: &NewPlayer) -> Result<(), Error> {
        if self.started_at.is_some() {
            return Err(Error::precondition("join", "the match has started; join another arena"));
        }
        Ok(())
    }

    fn on_join(&mut self, _room: &mut Room, player: &std::sync::Arc<game_session::session::PlayerInfo>) {
        let (x, y) = self.spawn_point();
        self.runners.insert(player.id.clone(), Runner { x, y, ..Runner::default() });
    }

    /// A runner stays while its player's seat is held after a drop (it may
    /// resume), and goes when the seat is freed.
    fn on_leave(&mut self, _room: &mut Room, player: &std::sync::Arc<game_session::session::PlayerInfo>) {
        self.runners.remove(&player.id);
        if self.it.as_ref() == Some(&player.id) {
            self.it = self.runners.keys().next().cloned();
        }
    }

    fn on_tick(&mut self, tick: &mut Tick) {
        let number = tick.number();
        for input in tick.inputs() {
            self.steer(&input.from, &input.payload);
        }
        if self.runners.len() < 2 {
            self.lobby_ends_at = None;
        } else if self.lobby_ends_at.is_none() {
            self.lobby_ends_at = Some(number + LOBBY_WAIT.as_secs() * u64::from(HZ));
        }
        let full = self.runners.len() >= self.seats;
        if self.started_at.is_none() && (full || self.lobby_ends_at.is_some_and(|at| number >= at)) {
            self.started_at = Some(number);
            self.it = self.runners.keys().next().cloned();
            tick.set_labels(phase("playing"));
        }
        self.step(number);
        tick.state(self.snapshot(number), Recipients::All);
        if let Some(at) = self.started_at
            && number >= at + self.length_ticks
        {
            tick.set_labels(phase("over"));
            tick.end("time is up");
        }
    }

    /// Relay messages are chat here: passed on to everyone else.
    fn on_message(&mut self, room: &mut Room, from: &PlayerId, message: PlayerMessage) {
        if let PlayerMessage::Relay(chat) = message {
            room.relay(from, chat.payload, game_session::session::Audience::AllBut(from), false);
        }
    }

    fn on_backend_message(&mut self, room: &mut Room, payload: Bytes, _targets: Vec<PlayerId>) -> Result<u64, Error> {
        Ok(room.send(payload, game_session::session::Audience::All))
    }

    /// `status` answers with the phase and the players; `end` ends the
    /// match now (at the next tick's end check it is over).
    fn on_signal(&mut self, _room: &mut Room, payload: Bytes) -> Result<Bytes, Error> {
        match &payload[..] {
            b"status" => Ok(Bytes::from(
                json!({ "phase": self.phase(), "players": self.runners.len(), "refused_inputs": self.refused_inputs })
                    .to_string(),
            )),
            b"end" => {
                self.length_ticks = 0;
                self.started_at.get_or_insert(0);
                Ok(Bytes::from_static(b"ending"))
            }
            _ => Err(Error::invalid("payload", "signals: status, end")),
        }
    }

    fn on_end(&mut self, _room: &mut Room, _reason: EndReason) -> Option<Bytes> {
        Some(self.result())
    }
}
