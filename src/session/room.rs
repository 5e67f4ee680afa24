//! The room: the plumbing every session shares, whatever its rules. It owns
//! the seats (live, or held for a resume after a drop), each player's
//! outbound queue, the session's sequence, the replay buffer, the departures
//! waiting to be carried out, and the half-close protocol.
//!
//! A [`SessionLogic`](super::SessionLogic) sends through it
//! ([`Room::relay`], [`Room::send`], [`Room::send_error`]); the session's
//! actor seats and frees players through it. Only the actor touches a room,
//! so nothing in it is locked; a delivery is an atomic length check and a
//! push onto the player's queue (which takes that queue's uncontended lock).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use foldhash::HashMap;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tracing::field::Empty;
use tracing::{debug, info, info_span, warn};

use super::handle::{JoinRejected, JoinRequest, Joined};
use super::outbound::{
    self, Budget, Delivery, Direct, Outbox, Outcome, Policy, Resumed, State, StateKind, Swept, Welcome,
};
use super::rate::{ErrorReplies, PlayerRate, Verdict};
use super::replay::{ReplayBuffer, ShrinkEpoch};
use super::tick::{Recipients, TickRate};
use super::{
    Departure, EndReason, Ending, Event, NewPlayer, PlayerId, PlayerInfo, PresenceKind, SeatProof, SeatStatus,
    SessionConfig, SessionId, SessionInfo, SharedEvent,
};
use crate::error::Error;
use crate::metrics::SessionMetrics;
use crate::telemetry::SpanLink;

/// What a room reports to the directory that lists it (on this node, the
/// [`Registry`](super::Registry)): its players and its end. Called on joins,
/// departures and the end, never per message.
pub(super) trait Listing: Send + Sync + 'static {
    /// Whether the server drains (and takes no joins).
    fn is_draining(&self) -> bool;
    /// The session's players changed.
    fn player_count_changed(&self, id: &SessionId, player_count: u32);
    /// The session's logic replaced its labels.
    fn labels_changed(&self, id: &SessionId, labels: Arc<BTreeMap<String, String>>);
    /// The session was locked to new joins, or unlocked.
    fn locked_changed(&self, id: &SessionId, locked: bool);
    /// The epoch the listed sessions' replay buffers share, to empty them
    /// all when the server is past its budget for queued bytes.
    fn replay_shrink(&self) -> ShrinkEpoch;
    /// The session ended: list it as ended for the retention period (again
    /// is harmless).
    fn remove(&self, id: &SessionId, ending: Ending);
}

/// Who gets a message.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Every player.
    All,
    /// Every player but this one (a sender).
    AllBut(&'a PlayerId),
    /// These players; any who holds no seat (or whose stream has ended) is
    /// skipped.
    Only(&'a [PlayerId]),
}

/// A player holding a seat.
struct Seat {
    info: Arc<PlayerInfo>,
    /// This seat's generation: tells its inbound stream apart from an earlier
    /// seat of the same player id.
    generation: u64,
    /// The player's outbound queue and its standing under the policy.
    outbox: Outbox,
    /// Dropped with the seat, or when it is held: ends the player's inbound
    /// stream (see the actor's `PlayerInbound`).
    _kick: Option<oneshot::Sender<()>>,
    /// The player's stream got its end (a half-close is being confirmed):
    /// nothing more is sent to it.
    ended: bool,
    /// The `player.join` span, for a link from `player.leave`.
    joined: SpanLink,
    /// The player's standing under its rate limits.
    rate: PlayerRate,
    /// The error replies it may still get at once.
    errors: ErrorReplies,
    /// It has had no full state since it joined, or deltas were dropped for
    /// it: deltas are not sent to it until a full state is.
    needs_full: bool,
    /// Deltas dropped for it since its last full state.
    deltas_dropped: u64,
    /// When it took the seat, in microseconds since the Unix epoch.
    joined_unix_micros: i64,
    /// The round trip its client last reported; 0: none.
    rtt_micros: i64,
    /// The sequence of the seat's welcome: a resume cannot start before it.
    first_sequence: u64,
    /// The last history event sent (or, held, that would have been sent) to
    /// it: a resume from there on has missed nothing, whatever the replay
    /// buffer still holds.
    last_addressed: u64,
    /// The generation this seat's stream took over, if any: its token still
    /// takes the seat back while the seat is held and its stream never sent
    /// a message (its answer, with the new token, may have been lost with
    /// the connection).
    previous_generation: Option<u64>,
    /// The stream sent a message: it had its answer, and the previous
    /// generation's token is spent.
    confirmed: bool,
    /// Its stream dropped and the seat is held until then (and then, in
    /// microseconds since the Unix epoch): nothing is sent to it (`ended`
    /// is set), and a resume or a proven join takes it back.
    held_until: Option<(Instant, i64)>,
}

impl Seat {
    /// Whether a resume token of `generation` takes this seat back: the
    /// current one, or the one its stream took over while the seat is held
    /// and that stream never spoke (its new token may never have arrived).
    fn takes_token(&self, generation: u64) -> bool {
        generation == self.generation
            || (self.held_until.is_some() && !self.confirmed && self.previous_generation == Some(generation))
    }
}

/// A new seat, for the actor: the player, and what it polls for the
/// player's messages.
pub(super) struct Seated {
    pub info: Arc<PlayerInfo>,
    pub generation: u64,
    /// Fires when the seat is freed.
    pub kicked: oneshot::Receiver<()>,
    /// The answer to the join.
    pub joined: Joined,
    /// The `player.join` span, for the logic's `on_join` to run in.
    pub span: tracing::Span,
    /// It took its own seat over: the logic hears `on_reconnect`, not
    /// `on_join`.
    pub took_over: bool,
}

/// How a new stream opens on a seat.
enum Opening {
    /// A join: a welcome.
    Join,
    /// A resume from `last`: the `resumed` answer, then `replay`.
    Resume { last: u64, replay: Vec<Arc<SharedEvent>> },
}

/// Resolves to a half-closed player's seat and whether its response stream
/// took its end.
pub(super) type HalfClose = Pin<Box<dyn Future<Output = (PlayerId, u64, bool)> + Send>>;

/// One session's plumbing. Built and driven by the session's actor.
pub struct Room {
    /// The session's fixed description; `player_count` and `sequence` are
    /// kept current here.
    info: SessionInfo,
    config: SessionConfig,
    policy: Policy,
    /// The sequence number, published for ListSessions.
    shared_sequence: Arc<AtomicU64>,
    /// Told of every change to the players, and of the end.
    listing: Arc<dyn Listing>,
    seats: HashMap<PlayerId, Seat>,
    next_generation: u64,
    /// The tick rate the logic's `init` asked for (told in welcomes).
    tick_rate: Option<TickRate>,
    /// Seats to free after the current message, in order (see
    /// [`Room::next_departure`]).
    departures: VecDeque<(PlayerId, Departure)>,
    /// Players whose inbound stream ended cleanly, waiting to learn whether
    /// their response stream took its end (a leave) or was dropped first (a
    /// disconnect; see [`Room::half_closed`]).
    half_closes: FuturesUnordered<HalfClose>,
    /// Fires when the session has been empty for the idle timeout.
    idle_timer: Pin<Box<Sleep>>,
    idle_armed: bool,
    /// Fires when the earliest behind player's grace period runs out.
    sweep_timer: Pin<Box<Sleep>>,
    sweep_armed: bool,
    /// The latest history, for resumes.
    replay: ReplayBuffer,
    /// Fires when the replay buffer's oldest event is due to go.
    replay_timer: Pin<Box<Sleep>>,
    replay_armed: bool,
    /// Fires when the earliest held seat's hold runs out.
    hold_timer: Pin<Box<Sleep>>,
    hold_armed: bool,
    /// The server drains and the last player left: nobody can join any more,
    /// so the session is over.
    drained: bool,
    metrics: SessionMetrics,
    /// See [`Room::started`].
    listed: bool,
}

/// What the room has due (see [`Room::due`]).
pub(super) enum Due {
    /// A half-close's verdict: the player, its seat's generation, and
    /// whether its response stream took its end.
    HalfClose(PlayerId, u64, bool),
    /// Behind players are to be checked.
    Sweep,
    /// Held seats are to be checked for holds that ran out.
    Holds,
    /// The replay buffer's oldest event is due to go.
    ReplayAge,
    /// The session has been empty for the idle timeout.
    Idle,
}

impl Room {
    pub(super) fn new(
        info: SessionInfo,
        config: SessionConfig,
        shared_sequence: Arc<AtomicU64>,
        listing: Arc<dyn Listing>,
    ) -> Self {
        let idle_timer = Box::pin(tokio::time::sleep(config.idle_timeout));
        let sweep_timer = Box::pin(tokio::time::sleep(config.slow_player_grace));
        let metrics = SessionMetrics::started(&info.mode);
        Room {
            replay: ReplayBuffer::new(config.replay, config.queued_bytes_budget, listing.replay_shrink()),
            replay_timer: Box::pin(tokio::time::sleep(config.replay.age)),
            replay_armed: false,
            hold_timer: Box::pin(tokio::time::sleep(config.seat_hold)),
            hold_armed: false,
            policy: Policy::new(&config),
            info,
            config,
            shared_sequence,
            listing,
            seats: HashMap::default(),
            next_generation: 0,
            departures: VecDeque::new(),
            half_closes: FuturesUnordered::new(),
            idle_timer,
            idle_armed: true,
            sweep_timer,
            sweep_armed: false,
            drained: false,
            metrics,
            listed: false,
            tick_rate: None,
        }
    }

    /// The logic's `init` is done, asking for `tick_rate`: the registry
    /// lists the session from now on, and changes are reported to it
    /// (during `init`, the registry takes the room's state as the session's
    /// first summary).
    pub(super) fn started(&mut self, tick_rate: Option<TickRate>) {
        self.listed = true;
        self.tick_rate = tick_rate;
    }

    /// The session's labels.
    pub fn labels(&self) -> &Arc<BTreeMap<String, String>> {
        &self.info.labels
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.info.id
    }

    /// The session's mode.
    pub fn mode(&self) -> &str {
        &self.info.mode
    }

    /// How long the session may stay empty.
    pub(super) fn tick_settings(&self) -> &super::TickSettings {
        &self.config.ticks
    }

    pub(super) fn idle_timeout(&self) -> std::time::Duration {
        self.config.idle_timeout
    }

    /// Resolves when a half-close's verdict is in or a timer fires, in that
    /// order of priority; never, while nothing is pending.
    pub(super) async fn due(&mut self) -> Due {
        tokio::select! {
            biased;
            Some((id, generation, took_end)) = self.half_closes.next() => Due::HalfClose(id, generation, took_end),
            () = &mut self.sweep_timer, if self.sweep_armed => Due::Sweep,
            () = &mut self.hold_timer, if self.hold_armed => Due::Holds,
            () = &mut self.replay_timer, if self.replay_armed => Due::ReplayAge,
            () = &mut self.idle_timer, if self.idle_armed => Due::Idle,
            else => std::future::pending().await,
        }
    }

    /// The server drains and the last player left: the session is over.
    pub(super) fn is_drained(&self) -> bool {
        self.drained
    }

    /// Counts a message received from a player.
    pub(super) fn count_received(&self) {
        self.metrics.received.increment(1);
    }

    /// Whether the server drains (and takes no joins).
    pub(super) fn is_draining(&self) -> bool {
        self.listing.is_draining()
    }

    /// A guard that removes the session from its listing when dropped.
    pub(super) fn deregister_on_drop(&self) -> Deregister {
        Deregister { listing: self.listing.clone(), id: self.info.id.clone() }
    }

    /// Whether `player` holds a seat.
    pub fn is_seated(&self, player: &str) -> bool {
        self.seats.contains_key(player)
    }

    /// The players holding a seat, in no particular order.
    pub fn players(&self) -> impl Iterator<Item = &Arc<PlayerInfo>> {
        self.seats.values().map(|seat| &seat.info)
    }

    /// Relays a player's payload to `to`, as the session's next message.
    /// Returns its sequence number.
    pub fn relay(&mut self, from: &PlayerId, payload: Bytes, to: Audience<'_>, droppable: bool) -> u64 {
        let sequence = self.next_sequence();
        let event = SharedEvent::new(Event::Relayed {
            sequence,
            sender: from.clone(),
            payload,
            server_time_unix_micros: super::unix_micros(),
            droppable,
            targeted: matches!(to, Audience::Only(_)),
        });
        self.fan_out(&event, to, droppable, sequence);
        sequence
    }

    /// Sends a payload from the server (a backend message) to `to`, as the
    /// session's next message. Returns its sequence number.
    pub fn send(&mut self, payload: Bytes, to: Audience<'_>) -> u64 {
        let sequence = self.next_sequence();
        let event = SharedEvent::new(Event::Backend {
            sequence,
            payload,
            server_time_unix_micros: super::unix_micros(),
            targeted: matches!(to, Audience::Only(_)),
        });
        self.fan_out(&event, to, false, sequence);
        sequence
    }

    /// The seats the session has.
    pub fn max_players(&self) -> u32 {
        self.info.max_players
    }

    /// How many players are seated.
    pub fn player_count(&self) -> usize {
        self.seats.len()
    }

    /// The ids of the players seated now, in no particular order.
    pub fn player_ids(&self) -> Vec<PlayerId> {
        self.seats.keys().cloned().collect()
    }

    /// Replaces the session's labels; ListSessions and WatchSessions show
    /// them at once.
    pub fn set_labels(&mut self, labels: BTreeMap<String, String>) {
        self.info.labels = Arc::new(labels);
        if self.listed {
            self.listing.labels_changed(&self.info.id, self.info.labels.clone());
        }
    }

    /// Locks the session to new joins, or unlocks it.
    pub(super) fn set_locked(&mut self, locked: bool) {
        if self.info.locked != locked {
            self.info.locked = locked;
            self.listing.locked_changed(&self.info.id, locked);
        }
    }

    /// Removes (kicks) `player`, telling it `reason`; the others see it
    /// removed "by an operator". It leaves with the next departures.
    pub(super) fn kick(&mut self, player: PlayerId, reason: String) -> Result<(), Error> {
        // A held seat can be kicked; one whose leave is being confirmed is
        // as good as gone.
        if self.seats.get(&player).is_none_or(|seat| seat.ended && seat.held_until.is_none()) {
            return Err(Error::UnknownPlayer { field: "player_id".into(), player: player.to_string() });
        }
        self.depart(player, Departure::Removed(Error::Kicked(reason)));
        Ok(())
    }

    /// The players a delta would mean nothing to (see
    /// [`Tick::needs_full_state`](super::Tick::needs_full_state)).
    pub(super) fn needing_full_state(&self) -> Vec<PlayerId> {
        self.seats.iter().filter(|(_, seat)| seat.needs_full && !seat.ended).map(|(id, _)| id.clone()).collect()
    }

    /// Sends tick `tick`'s full state, delta or message to `to`, each
    /// player's with the last input sequence of its own that the tick
    /// processed. A full state replaces the states still queued for a
    /// player; a delta skips the players who need a full state, and one that
    /// finds a player behind drops it along with the player's queued deltas,
    /// so that the player needs a full state. A message is queued as any
    /// message that may not be dropped.
    pub(super) fn send_state(
        &mut self,
        tick: u64,
        payload: &Bytes,
        kind: StateKind,
        to: &Recipients,
        last_input: impl Fn(&PlayerId) -> u64,
    ) {
        let recipients = match to {
            Recipients::All => self.player_ids(),
            Recipients::Only(ids) => ids.clone(),
        };
        let of_kind = |delivery: &Delivery, kinds: &[StateKind]| matches!(delivery, Delivery::Direct(d) if matches!(&**d, Direct::State(state) if kinds.contains(&state.kind)));
        let budget = self.budget();
        let mut tally = Tally::default();
        for id in recipients {
            let Some(seat) = self.seats.get_mut(&id).filter(|seat| !seat.ended) else { continue };
            if kind == StateKind::Delta && seat.needs_full {
                continue;
            }
            let dropped = if kind == StateKind::Full {
                seat.outbox.remove_where(|d| of_kind(d, &[StateKind::Full, StateKind::Delta]));
                std::mem::take(&mut seat.deltas_dropped)
            } else {
                0
            };
            let state = State::new(tick, payload.clone(), kind, last_input(&id), dropped);
            let droppable = kind == StateKind::Delta;
            let delivery = Delivery::Direct(Box::new(Direct::State(state)));
            let outcome = seat.outbox.offer(delivery, droppable, 0, &self.policy, budget);
            match outcome {
                Outcome::BehindDropped => {
                    seat.needs_full = true;
                    seat.deltas_dropped += 1 + seat.outbox.remove_where(|d| of_kind(d, &[StateKind::Delta])) as u64;
                }
                Outcome::Queued | Outcome::BehindQueued if kind == StateKind::Full => seat.needs_full = false,
                _ => {}
            }
            tally.record(&id, outcome, &mut self.departures);
        }
        if tally.behind {
            self.arm_sweep(None);
        }
    }

    /// Tells `to` alone that one of its messages was refused; the player
    /// stays. Replies are coalesced: past a small burst, at most one a
    /// second, the next saying how many went unanswered. They are dropped
    /// rather than queued for a player that is behind, so that answers to
    /// its own mistakes never get a player removed as slow.
    pub fn send_error(&mut self, to: &PlayerId, error: Error) {
        let Some(seat) = self.seats.get_mut(to).filter(|seat| !seat.ended) else { return };
        let Some(unanswered) = seat.errors.admit(Instant::now()) else { return };
        self.send_direct(to, Direct::Error { error, unanswered }, true);
    }

    /// Charges a message of `bytes` bytes from `player`'s seat `generation`
    /// to the player's rate limits. Returns whether to handle it: not if the
    /// seat was freed since, nor if the message is over the limits. Such a
    /// message is dropped and counted; the player is told at most once a
    /// second (droppably), and one over its limits for longer than the
    /// flood grace is removed. Its recipients are untouched either way.
    pub(super) fn admit_message(&mut self, player: &PlayerId, generation: u64, bytes: usize) -> bool {
        let Some(seat) = self.seats.get_mut(player).filter(|seat| seat.generation == generation) else {
            return false;
        };
        seat.confirmed = true;
        match seat.rate.charge(&self.config.rates, Instant::now(), bytes as u64) {
            Verdict::Pass => return true,
            Verdict::Drop { notice } => {
                self.metrics.rate_limited.increment(1);
                if let Some(err) = notice {
                    debug!(session.id = %self.info.id, player.id = %player, reason = %err, "player rate-limited");
                    self.send_direct(player, Direct::Error { error: err, unanswered: 0 }, true);
                }
            }
            Verdict::Flood(err) => {
                self.metrics.rate_limited.increment(1);
                self.depart(player.clone(), Departure::Removed(err));
            }
        }
        false
    }

    /// Answers a ping. A pong is as droppable as it gets: a behind player
    /// skips it.
    pub(super) fn pong(&mut self, to: &PlayerId, client_time: i64, rtt_micros: i64) {
        if let Some(seat) = self.seats.get_mut(to)
            && rtt_micros > 0
        {
            seat.rtt_micros = rtt_micros;
        }
        self.send_direct(to, Direct::Pong { client_time, server_time_unix_micros: super::unix_micros() }, true);
    }

    /// Whether seat `generation` is `player`'s current seat (messages from a
    /// freed seat are ignored).
    pub(super) fn is_current(&self, player: &PlayerId, generation: u64) -> bool {
        self.seats.get(player).is_some_and(|seat| seat.generation == generation)
    }

    /// Checks that `request` can take a seat, and names the player if it
    /// asked the server to. The request comes back with the error if not.
    pub(super) fn admit(&self, mut request: Box<JoinRequest>) -> Result<Box<JoinRequest>, JoinRejected> {
        // A player taking its own seat back (live or held) needs no free
        // seat, and a lock keeps out only new players.
        match (self.seats.get(request.player.id.as_str()), request.player.proof) {
            (Some(_), SeatProof::Subject) => return Ok(request),
            (Some(seat), SeatProof::Generation(generation)) if seat.takes_token(generation) => return Ok(request),
            (Some(_), SeatProof::Generation(_)) => return Err((Error::ResumeSuperseded, Some(request))),
            (None, SeatProof::Generation(_)) => {
                let err = Error::NoSeat { session: self.info.id.to_string(), player: request.player.id.clone() };
                return Err((err, Some(request)));
            }
            (_, SeatProof::Subject | SeatProof::None) => {}
        }
        if self.info.locked {
            return Err((Error::SessionLocked(self.info.id.to_string()), Some(request)));
        }
        if self.seats.len() >= self.info.max_players as usize {
            return Err((Error::SessionFull(self.info.id.to_string()), Some(request)));
        }
        if request.player.id.is_empty() {
            request.player.id = super::new_id().to_string();
        }
        if self.seats.contains_key(request.player.id.as_str()) {
            let err =
                Error::PlayerAlreadyJoined { session: self.info.id.to_string(), player: request.player.id.clone() };
            return Err((err, Some(request)));
        }
        Ok(request)
    }

    /// Seats an admitted player: the others see it join, and its queue starts
    /// with the welcome. A player that holds a seat already (admitted to
    /// take it back) gets it on its new stream: an old stream still open
    /// ends with ABORTED, and the others see it reconnect. `caller` is the
    /// span of the call that asked, for a link.
    pub(super) fn seat(&mut self, player: NewPlayer, caller: &tracing::Span) -> Seated {
        let info =
            Arc::new(PlayerInfo { id: player.id.into(), display_name: player.display_name, metadata: player.metadata });
        self.open(info, Opening::Join, caller)
    }

    /// Resumes `player`'s seat of `generation` on a new stream, replaying
    /// what it was sent after `last`: as [`Room::seat`] does for a join
    /// that takes its seat back, but the queue starts with the `resumed`
    /// answer and the replay. Refused if the seat is gone
    /// ([`Error::NoSeat`]), has a newer generation
    /// ([`Error::ResumeSuperseded`]), or the replay would have a gap
    /// ([`Error::ReplayGap`]; the seat stays as it was).
    pub(super) fn resume(
        &mut self,
        player: &PlayerId,
        generation: u64,
        last: u64,
        caller: &tracing::Span,
    ) -> Result<Seated, Error> {
        let Some(seat) = self.seats.get(player) else {
            return Err(Error::NoSeat { session: self.info.id.to_string(), player: player.to_string() });
        };
        if !seat.takes_token(generation) {
            return Err(Error::ResumeSuperseded);
        }
        if last > self.info.sequence || last < seat.first_sequence {
            let (first, now) = (seat.first_sequence, self.info.sequence);
            let reason = format!("{last} is outside this seat's messages ({first} to {now})");
            return Err(Error::invalid("resume.last_sequence", reason));
        }
        // Nothing was sent to it since: nothing to replay, whatever the
        // buffer has let go (or if it keeps nothing).
        let replay = if last >= seat.last_addressed {
            Vec::new()
        } else {
            self.replay.since(last, player).map_err(|gap| Error::ReplayGap { last, floor: gap.floor })?
        };
        let info = seat.info.clone();
        self.charge_takeover(player)?;
        Ok(self.open(info, Opening::Resume { last, replay }, caller))
    }

    /// Charges a takeover of `player`'s seat (a resume, or a join that
    /// proves the seat its own) to the player's message rate, as one
    /// message: a client reconnecting in a loop is refused
    /// (RESOURCE_EXHAUSTED) past it, so that its presence events cost the
    /// others no more than its relays could.
    pub(super) fn charge_takeover(&mut self, player: &str) -> Result<(), Error> {
        let Some(seat) = self.seats.get_mut(player) else { return Ok(()) };
        match seat.rate.charge(&self.config.rates, Instant::now(), 0) {
            Verdict::Pass => Ok(()),
            Verdict::Drop { .. } | Verdict::Flood(_) => {
                self.metrics.rate_limited.increment(1);
                Err(Error::RateLimited(
                    "reconnecting faster than the player's message rate allows; retry shortly".into(),
                ))
            }
        }
    }

    /// Opens a new stream on `info`'s seat, taking it over if it has one.
    fn open(&mut self, info: Arc<PlayerInfo>, opening: Opening, caller: &tracing::Span) -> Seated {
        let session_id = self.info.id.clone();
        let id = info.id.clone();
        // Its own short span, linked to the Play call that asked for it.
        let span = match opening {
            Opening::Join => {
                info_span!("player.join", session.id = %session_id, player.id = %id, trace_id = Empty, span_id = Empty)
            }
            Opening::Resume { .. } => {
                info_span!("player.resume", session.id = %session_id, player.id = %id, trace_id = Empty, span_id = Empty)
            }
        };
        span.follows_from(caller);
        crate::telemetry::record_ids(&span);
        let joined = SpanLink::to(&span);
        let entered = span.enter();
        let sequence = self.next_sequence();
        // The old stream of a seat taken over ends now, with what was queued
        // for it; the new one starts afresh.
        let old = self.seats.remove(&id);
        if let Some(old) = &old {
            if old.held_until.is_some() {
                self.metrics.holding(false);
            } else if !old.ended {
                let _ = old.outbox.end_now(Error::TakenOver);
            }
        }
        let took_over = old.is_some();

        // Tell everyone else first, so the joiner does not see its own join:
        // the welcome's sequence stands for it (and the replay keeps it from
        // the player too).
        let kind = if took_over { PresenceKind::Reconnected } else { PresenceKind::Joined };
        let event = SharedEvent::new(Event::Presence { sequence, player: info.clone(), kind, detail: "" });
        self.fan_out(&event, Audience::AllBut(&id), false, sequence);

        let (tx, outbound) = outbound::channel();
        let mut outbox = Outbox::new(tx);
        if let Some(old) = &old {
            outbox.inherit(&old.outbox);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let resumed = matches!(opening, Opening::Resume { .. });
        // A fresh queue cannot be closed yet; a failure shows at the next push.
        let first_sequence = match opening {
            Opening::Join => {
                let welcome = Welcome {
                    session_id: session_id.clone(),
                    mode: self.info.mode.clone(),
                    player: info.clone(),
                    players: self.roster(),
                    sequence,
                    max_players: self.info.max_players,
                    rates: self.config.rates,
                    tick_rate: self.tick_rate,
                    max_inputs_per_tick: if self.tick_rate.is_some() {
                        self.config.ticks.max_inputs_per_tick
                    } else {
                        0
                    },
                    resume_generation: (!self.config.seat_hold.is_zero()).then_some(generation),
                };
                let _ = outbox.push_last(Delivery::Direct(Box::new(Direct::Welcome(welcome))));
                sequence
            }
            Opening::Resume { last, replay } => {
                let answer = Resumed {
                    session_id: session_id.clone(),
                    player: info.clone(),
                    last_sequence: last,
                    replayed: replay.len() as u64,
                    sequence,
                    resume_generation: generation,
                };
                let _ = outbox.push_last(Delivery::Direct(Box::new(Direct::Resumed(answer))));
                self.metrics.replayed.increment(replay.len() as u64);
                // Past the queue's policy: the events are the buffer's own,
                // shared, and bounded by it (see `replay.rs`).
                for event in replay {
                    let _ = outbox.push_last(Delivery::Event(event));
                }
                old.as_ref().map_or(sequence, |old| old.first_sequence)
            }
        };
        let (kick, kicked) = oneshot::channel();
        let now = Instant::now();
        // A seat taken back keeps its standing: a player cannot reset its
        // rate limits by reconnecting.
        let (rate, errors, joined_unix_micros, last_addressed, previous_generation) = match old {
            Some(old) => (old.rate, old.errors, old.joined_unix_micros, old.last_addressed, Some(old.generation)),
            None => (PlayerRate::new(&self.config.rates, now), ErrorReplies::new(now), super::unix_micros(), 0, None),
        };
        let seat = Seat {
            info: info.clone(),
            generation,
            outbox,
            _kick: Some(kick),
            ended: false,
            joined,
            rate,
            errors,
            needs_full: true,
            deltas_dropped: 0,
            joined_unix_micros,
            rtt_micros: 0,
            first_sequence,
            last_addressed,
            previous_generation,
            confirmed: false,
            held_until: None,
        };
        self.seats.insert(id.clone(), seat);
        self.idle_armed = false;
        if took_over {
            self.metrics.took_over(if resumed { "resume" } else { "join" });
            if resumed {
                info!(session.sequence = sequence, "player resumed: its seat is back on a new stream");
            } else {
                info!(session.sequence = sequence, "player reconnected: a new stream took its seat over");
            }
        } else {
            self.players_changed();
            self.metrics.joined();
            info!(session.sequence = sequence, "player joined");
        }
        drop(entered);
        Seated { info, generation, kicked, joined: Joined { session_id, player_id: id, outbound }, span, took_over }
    }

    /// Whether a stream that drops now holds its seat: the session holds
    /// seats, and the server is not draining (nobody could come back).
    pub(super) fn holds_seats(&self) -> bool {
        !self.config.seat_hold.is_zero() && !self.listing.is_draining()
    }

    /// Holds `player`'s seat after its stream dropped for `departure`: the
    /// stream's queue is freed (a removed player first gets its status),
    /// the others see it HELD, and the seat waits for a resume until the
    /// seat hold runs out. Returns the player and the `player.hold` span
    /// (for the logic's hook to run in), or `None` if it held no seat or
    /// its seat is held already.
    pub(super) fn hold(
        &mut self,
        player: &PlayerId,
        departure: &Departure,
    ) -> Option<(Arc<PlayerInfo>, tracing::Span)> {
        let hold = self.config.seat_hold;
        let seat = self.seats.get_mut(player).filter(|seat| seat.held_until.is_none())?;
        let span = info_span!("player.hold", session.id = %self.info.id, player.id = %player, trace_id = Empty, span_id = Empty);
        seat.joined.add_to(&span);
        crate::telemetry::record_ids(&span);
        let entered = span.enter();
        if let Departure::Removed(err) = departure
            && !seat.ended
        {
            let _ = seat.outbox.end_now(err.clone());
        }
        seat.outbox = Outbox::detached(&seat.outbox);
        seat._kick = None;
        seat.ended = true;
        seat.rtt_micros = 0;
        let until = Instant::now() + hold;
        seat.held_until = Some((until, super::unix_micros() + hold.as_micros() as i64));
        let info = seat.info.clone();
        self.metrics.holding(true);
        let sequence = self.next_sequence();
        info!(session.sequence = sequence, reason = ?departure, ?hold, "player's stream dropped: its seat is held");
        let detail = departure.presence_detail();
        let event =
            SharedEvent::new(Event::Presence { sequence, player: info.clone(), kind: PresenceKind::Held, detail });
        self.fan_out(&event, Audience::AllBut(player), false, sequence);
        self.arm_holds(until);
        drop(entered);
        Some((info, span))
    }

    fn arm_holds(&mut self, until: Instant) {
        if !self.hold_armed || until < self.hold_timer.deadline() {
            self.hold_timer.as_mut().reset(until);
            self.hold_armed = true;
        }
    }

    /// Frees the held seats whose hold ran out (with the next departures),
    /// and re-arms for the next.
    pub(super) fn expire_holds(&mut self) {
        self.hold_armed = false;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (id, seat) in &self.seats {
            match seat.held_until {
                Some((until, _)) if until <= now => self.departures.push_back((id.clone(), Departure::Expired)),
                Some((until, _)) => next = Some(next.map_or(until, |n| n.min(until))),
                None => {}
            }
        }
        if let Some(next) = next {
            self.arm_holds(next);
        }
    }

    /// Frees every held seat with the next departures, as if its hold ran
    /// out: the server drains, and nobody can resume here any more.
    pub(super) fn release_holds(&mut self) {
        for (id, seat) in &self.seats {
            if seat.held_until.is_some() {
                self.departures.push_back((id.clone(), Departure::Drained));
            }
        }
    }

    /// Lets the replay buffer's aged events go, and re-arms for the next.
    pub(super) fn expire_replay(&mut self) {
        self.replay_armed = false;
        if let Some(next) = self.replay.expire(Instant::now()) {
            self.replay_timer.as_mut().reset(next);
            self.replay_armed = true;
        }
    }

    /// Where the server stands against its budget for queued bytes. Past
    /// it, this session's replay buffer goes first, before any player is
    /// shed, and every other session's goes at its next fan-out or timer.
    fn budget(&mut self) -> Budget {
        let budget = Budget::now(self.config.queued_bytes_budget);
        if budget == Budget::Within {
            return budget;
        }
        if self.replay.shrink_all() {
            return Budget::now(self.config.queued_bytes_budget);
        }
        budget
    }

    /// Frees `player`'s seat after the current message, for `departure`.
    pub(super) fn depart(&mut self, player: PlayerId, departure: Departure) {
        self.departures.push_back((player, departure));
    }

    /// The next seat to free, in the order they were asked for; freeing one
    /// may ask for more (a presence event that finds a queue closed).
    pub(super) fn next_departure(&mut self) -> Option<(PlayerId, Departure)> {
        self.departures.pop_front()
    }

    /// Frees `player`'s seat and tells the others. Returns the player and
    /// the `player.leave` span (for the logic's hook to run in), or `None` if
    /// it held no seat.
    pub(super) fn free_seat(
        &mut self,
        player: &PlayerId,
        departure: &Departure,
    ) -> Option<(Arc<PlayerInfo>, tracing::Span)> {
        let seat = self.seats.remove(player)?;
        if seat.held_until.is_some() {
            self.metrics.holding(false);
        }
        let span = info_span!(
            "player.leave",
            session.id = %self.info.id,
            player.id = %player,
            trace_id = Empty,
            span_id = Empty
        );
        seat.joined.add_to(&span);
        crate::telemetry::record_ids(&span);
        let entered = span.enter();
        let kind = match departure {
            // Dropping the seat drops its queue's sender: the stream ends
            // with OK once it has sent what is queued.
            Departure::Left | Departure::Expired | Departure::Drained => PresenceKind::Left,
            Departure::Disconnected(_) => PresenceKind::Disconnected,
            // A removed player gets its status at once, and what was queued
            // for it is freed now, whatever its connection does afterwards.
            Departure::Removed(err) => {
                if !seat.ended {
                    let _ = seat.outbox.end_now(err.clone());
                }
                PresenceKind::Removed
            }
        };
        // The others get fixed words; the full text is in the log line below.
        let detail = departure.presence_detail();
        let reason = match departure {
            Departure::Left => "left",
            Departure::Disconnected(_) => "disconnected",
            Departure::Removed(Error::SlowPlayer(_)) => "slow_player",
            Departure::Removed(Error::RateLimited(_)) => "flooding",
            Departure::Removed(Error::Kicked(_)) => "kicked",
            Departure::Removed(_) => "removed",
            Departure::Expired => "hold_expired",
            Departure::Drained => "drained",
        };
        self.metrics.departed(reason, 1);
        let sequence = self.next_sequence();
        match departure {
            Departure::Left => info!(session.sequence = sequence, "player left"),
            Departure::Expired => info!(session.sequence = sequence, "player left: its seat's hold ran out"),
            Departure::Drained => info!(session.sequence = sequence, "player left: the server drains, its hold ended"),
            Departure::Disconnected(reason) => {
                info!(session.sequence = sequence, reason = %reason, "player disconnected")
            }
            Departure::Removed(err) => warn!(session.sequence = sequence, reason = %err, "player removed"),
        }
        let event = SharedEvent::new(Event::Presence { sequence, player: seat.info.clone(), kind, detail });
        self.fan_out(&event, Audience::All, false, sequence);
        self.players_changed();
        let info = seat.info.clone();
        // Only now does the player's stream end: a client that sees it end
        // and then asks the registry finds itself gone.
        drop(seat);
        if self.seats.is_empty() {
            self.idle_timer.as_mut().reset(Instant::now() + self.config.idle_timeout);
            self.idle_armed = true;
            // While the server drains nobody can join, so an empty session is
            // over.
            self.drained = self.listing.is_draining();
        }
        drop(entered);
        Some((info, span))
    }

    /// The inbound stream ended without an error. That is a clean half-close
    /// (a leave), unless the connection went down: hyper reports a
    /// connection it shut down with NO_ERROR, as on a keepalive timeout, as a
    /// clean end of the request body too. The response stream tells the two
    /// apart: a live client takes its end, a dead one's is dropped first. The
    /// seat is held until then, so the presence event says which it was.
    pub(super) fn half_closed(&mut self, player: PlayerId) {
        let Some(seat) = self.seats.get_mut(&player) else { return };
        let (ack, took_end) = oneshot::channel();
        if seat.outbox.push_last(Delivery::EndAcked(ack)).is_err() {
            self.depart(player, outbound::gone());
            return;
        }
        seat.ended = true;
        let generation = seat.generation;
        // A client that half-closed but stopped reading would hold its seat
        // forever: after the grace period it counts as a disconnect.
        let grace = self.config.slow_player_grace;
        self.half_closes.push(Box::pin(async move {
            let took_end = matches!(tokio::time::timeout(grace, took_end).await, Ok(Ok(())));
            (player, generation, took_end)
        }));
    }

    /// The verdict on a half-close: a leave if the response stream took its
    /// end, else a disconnect.
    pub(super) fn confirm_close(&mut self, player: PlayerId, generation: u64, took_end: bool) {
        if self.is_current(&player, generation) {
            let departure = if took_end {
                Departure::Left
            } else {
                Departure::Disconnected("the connection closed before the stream's end was sent".into())
            };
            self.depart(player, departure);
        }
    }

    /// Delivers a shared event to its audience under the queue policy.
    fn fan_out(&mut self, event: &Arc<SharedEvent>, to: Audience<'_>, droppable: bool, sequence: u64) {
        let mut tally = Tally::default();
        let budget = self.budget();
        if budget == Budget::Within {
            let now = Instant::now();
            self.replay.record(sequence, event, to, now);
            if !self.replay_armed && self.replay.len() > 0 {
                self.replay_timer.as_mut().reset(now + self.config.replay.age);
                self.replay_armed = true;
            }
        } else {
            // Past the budget, nothing new is kept for a replay.
            self.replay.skip(sequence);
        }
        match to {
            Audience::All | Audience::AllBut(_) => {
                // By generation rather than id: one integer compare per seat.
                let except = match to {
                    Audience::AllBut(id) => self.seats.get(id).map(|seat| seat.generation),
                    _ => None,
                };
                for (id, seat) in &mut self.seats {
                    if Some(seat.generation) == except {
                        continue;
                    }
                    seat.last_addressed = sequence;
                    if seat.ended {
                        continue;
                    }
                    let delivery = Delivery::Event(event.clone());
                    let outcome = seat.outbox.offer(delivery, droppable, sequence, &self.policy, budget);
                    tally.record(id, outcome, &mut self.departures);
                }
            }
            Audience::Only(targets) => {
                for target in targets {
                    let Some(seat) = self.seats.get_mut(target) else { continue };
                    seat.last_addressed = sequence;
                    if seat.ended {
                        continue;
                    }
                    let delivery = Delivery::Event(event.clone());
                    let outcome = seat.outbox.offer(delivery, droppable, sequence, &self.policy, budget);
                    tally.record(target, outcome, &mut self.departures);
                }
            }
        }
        // Messages are counted once per fan-out; presence and the end are
        // not messages.
        if matches!(event.event, Event::Relayed { .. } | Event::Backend { .. }) {
            self.metrics.queued.increment(tally.queued);
            if tally.dropped > 0 {
                self.metrics.dropped.increment(tally.dropped);
            }
        }
        if tally.behind {
            self.arm_sweep(None);
        }
    }

    fn send_direct(&mut self, to: &PlayerId, message: Direct, droppable: bool) {
        let mut tally = Tally::default();
        let budget = self.budget();
        if let Some(seat) = self.seats.get_mut(to).filter(|seat| !seat.ended) {
            let outcome = seat.outbox.offer(Delivery::Direct(Box::new(message)), droppable, 0, &self.policy, budget);
            tally.record(to, outcome, &mut self.departures);
        }
        if tally.behind {
            self.arm_sweep(None);
        }
    }

    /// Arms the sweep for a quarter grace period from now, or for
    /// `grace_ends` if that is sooner: while a player is behind, the sweep
    /// runs at least that often, so that a player who caught up hears of its
    /// dropped messages soon even when nothing else is sent to it.
    ///
    /// An armed sweep is left alone: it is due within a quarter grace period,
    /// before any newly behind player's grace can end, and it re-arms itself
    /// for the earliest grace end it finds.
    fn arm_sweep(&mut self, grace_ends: Option<Instant>) {
        if !self.sweep_armed {
            let soon = Instant::now() + self.config.slow_player_grace / 4;
            self.sweep_timer.as_mut().reset(grace_ends.map_or(soon, |end| end.min(soon)));
            self.sweep_armed = true;
        }
    }

    /// Checks every behind player: caught up (send its dropped notice) or
    /// past its grace period (disconnect it).
    pub(super) fn sweep(&mut self) {
        self.sweep_armed = false;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        // Players whose stream got its end are left to the half-close.
        for (id, seat) in self.seats.iter_mut().filter(|(_, seat)| !seat.ended) {
            match seat.outbox.sweep(now, &self.policy) {
                Swept::Fine => {}
                Swept::Behind(until) => next = Some(next.map_or(until, |n| n.min(until))),
                Swept::Depart(departure) => self.departures.push_back((id.clone(), departure)),
            }
        }
        if next.is_some() {
            self.arm_sweep(next);
        }
    }

    /// Ends the session: every player gets the `session_ended` event with
    /// `reason` and `message`, then the end of its stream; its listing
    /// forgets the session. Returns the event's sequence number.
    pub(super) fn end(&mut self, reason: EndReason, message: &str, result: Option<Bytes>) -> u64 {
        let sequence = self.next_sequence();
        let event = SharedEvent::new(Event::Ended { sequence, reason, message: message.to_owned() });
        for seat in self.seats.values().filter(|seat| !seat.ended) {
            // The last two items go in regardless of the queue's bound: a
            // player is always told that its session ended.
            let _ = seat.outbox.push_last(Delivery::Event(event.clone()));
            let _ = seat.outbox.push_last(Delivery::End(None));
        }
        let players = self.seats.len();
        self.metrics.departed("session_ended", players as u64);
        self.metrics.ended(reason.as_str());
        self.seats.clear();
        let ending = Ending { reason, message: message.to_owned(), result, ended_unix_micros: super::unix_micros() };
        self.listing.remove(&self.info.id, ending);
        info!(session.end_reason = ?reason, session.sequence = sequence, players, message = %message, "session ended");
        sequence
    }

    /// The session's summary with its players.
    pub(super) fn summary(&self) -> SessionInfo {
        let mut info = self.info.clone();
        info.players = self.roster();
        let mut seats: Vec<SeatStatus> = self
            .seats
            .iter()
            .map(|(id, seat)| SeatStatus {
                player: id.clone(),
                joined_unix_micros: seat.joined_unix_micros,
                rtt_micros: seat.rtt_micros,
                queued_messages: seat.outbox.len(),
                queued_bytes: seat.outbox.bytes(),
                dropped: seat.outbox.dropped_total(),
                held_until_unix_micros: seat.held_until.map(|(_, unix)| unix),
            })
            .collect();
        seats.sort_by(|a, b| a.player.cmp(&b.player));
        info.seats = seats;
        info
    }

    /// The players holding a seat, by id.
    fn roster(&self) -> Vec<Arc<PlayerInfo>> {
        let mut players: Vec<_> = self.seats.values().map(|seat| seat.info.clone()).collect();
        players.sort_by(|a, b| a.id.cmp(&b.id));
        players
    }

    fn next_sequence(&mut self) -> u64 {
        self.info.sequence += 1;
        self.shared_sequence.store(self.info.sequence, Ordering::Relaxed);
        self.info.sequence
    }

    fn players_changed(&mut self) {
        self.info.player_count = self.seats.len() as u32;
        self.listing.player_count_changed(&self.info.id, self.info.player_count);
    }
}

/// What became of one fan-out's deliveries.
#[derive(Debug, Default)]
struct Tally {
    queued: u64,
    dropped: u64,
    /// A recipient is behind, so the sweep must run.
    behind: bool,
}

impl Tally {
    /// Counts a delivery, and notes the departure it asks for.
    fn record(&mut self, id: &PlayerId, outcome: Outcome, departures: &mut VecDeque<(PlayerId, Departure)>) {
        match outcome {
            Outcome::Queued => self.queued += 1,
            Outcome::BehindQueued => {
                self.queued += 1;
                self.behind = true;
            }
            Outcome::BehindDropped => {
                self.dropped += 1;
                self.behind = true;
            }
            Outcome::Depart(departure) => departures.push_back((id.clone(), departure)),
        }
    }
}

/// Removes a session from its listing when dropped.
pub(super) struct Deregister {
    listing: Arc<dyn Listing>,
    id: SessionId,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let ending = Ending {
            reason: EndReason::InternalError,
            message: "the session failed on the server".to_owned(),
            result: None,
            ended_unix_micros: super::unix_micros(),
        };
        self.listing.remove(&self.id, ending);
    }
}
