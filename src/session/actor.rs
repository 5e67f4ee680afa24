//! The session actor: one task per session that alone owns the session's
//! players, its sequence counter and its state.
//!
//! The actor polls its players' inbound streams itself (a `SelectAll`, which
//! polls only the streams that woke it) instead of running one reader task
//! per player that forwards into an inbox. A relayed message therefore costs
//! no task hop on the way in: the connection task wakes the actor directly.
//! On the way out, each recipient's queue wakes that player's response
//! stream, which writes the event's bytes, encoded once for all recipients.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, SelectAll, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, info_span, warn};

use super::handle::{Command, JoinRequest, Joined};
use super::outbound::{self, Delivery, OutboundTx, Private, Welcome};
use super::{
    Departure, EndReason, Event, InboundError, InboundStream, Input, PlayerId, PlayerInfo, PresenceKind, RelayInput,
    SessionConfig, SessionInfo, SessionManager, SharedEvent,
};
use crate::error::Error;
use crate::metrics::SessionMetrics;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A player holding a seat.
struct Player {
    info: Arc<PlayerInfo>,
    /// Tells this seat's inbound stream apart from an earlier seat of the same
    /// player id.
    slot: u64,
    /// The player's outbound queue.
    out: OutboundTx,
    /// Dropped with the player: ends its inbound stream in `inbound`.
    _kick: oneshot::Sender<()>,
    /// Droppable messages dropped since the last notice to the player.
    dropped: u64,
    /// The sequence of the last of them.
    last_dropped: u64,
    /// Since when the player's queue has been at least half full.
    behind_since: Option<Instant>,
    /// The player's stream got its end (a half-close is being confirmed):
    /// nothing more is sent to it.
    ended: bool,
    /// The `player.join` span, for a link from `player.leave`.
    joined: SpanContext,
}

/// What one inbound stream yields: the player, its seat, and a message or
/// `None` for a clean half-close.
type InboundItem = (PlayerId, u64, Option<Result<Input, InboundError>>);

/// A player's inbound stream, tagged with its seat. Ends when the stream
/// does, or as soon as the player's seat is freed (its `kick` sender dropped).
struct PlayerInbound {
    id: PlayerId,
    slot: u64,
    stream: InboundStream,
    kicked: oneshot::Receiver<()>,
    done: bool,
}

impl Stream for PlayerInbound {
    type Item = InboundItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InboundItem>> {
        let this = &mut *self;
        if this.done || Pin::new(&mut this.kicked).poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        match this.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some((this.id.clone(), this.slot, Some(item)))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some((this.id.clone(), this.slot, None)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Resolves to a half-closed player's seat and whether its response stream
/// took its end.
type CloseVerdict = Pin<Box<dyn Future<Output = (PlayerId, u64, bool)> + Send>>;

/// One session. Built by the manager, which spawns [`Actor::run`].
pub(super) struct Actor {
    /// The session's fixed description; `player_count` and `sequence` are
    /// kept current here.
    info: SessionInfo,
    config: SessionConfig,
    inbox: mpsc::Receiver<Command>,
    /// The sequence number, published for ListSessions.
    shared_sequence: Arc<AtomicU64>,
    manager: SessionManager,
    players: HashMap<PlayerId, Player>,
    inbound: SelectAll<PlayerInbound>,
    next_slot: u64,
    /// Seats freed while handling the current message, processed after it.
    departures: Vec<(PlayerId, Departure)>,
    /// Fires when the session has been empty for the idle timeout.
    idle_timer: Pin<Box<Sleep>>,
    idle_armed: bool,
    /// Fires when the earliest behind player's grace period runs out.
    sweep_timer: Pin<Box<Sleep>>,
    sweep_armed: bool,
    /// Players whose inbound stream ended cleanly, waiting to learn whether
    /// their response stream took its end (a leave) or was dropped first (a
    /// disconnect; see `on_input`).
    closing: FuturesUnordered<CloseVerdict>,
    /// The server drains and the last player left: end after this message.
    drained: bool,
    metrics: SessionMetrics,
}

impl Actor {
    pub(super) fn new(
        info: SessionInfo,
        config: SessionConfig,
        inbox: mpsc::Receiver<Command>,
        shared_sequence: Arc<AtomicU64>,
        manager: SessionManager,
    ) -> Self {
        let idle_timer = Box::pin(tokio::time::sleep(config.idle_timeout));
        let sweep_timer = Box::pin(tokio::time::sleep(config.slow_player_grace));
        let metrics = SessionMetrics::started(&info.mode);
        Actor {
            info,
            config,
            inbox,
            shared_sequence,
            manager,
            players: HashMap::new(),
            inbound: SelectAll::new(),
            next_slot: 0,
            departures: Vec::new(),
            idle_timer,
            idle_armed: true,
            sweep_timer,
            sweep_armed: false,
            closing: FuturesUnordered::new(),
            drained: false,
            metrics,
        }
    }

    /// Runs the session until it ends.
    pub(super) async fn run(mut self) {
        // Should the actor panic, the registry still forgets the session
        // (after a normal end, `finish` has done so and this does nothing).
        let _deregister = Deregister { manager: self.manager.clone(), id: self.info.id.clone() };
        let (reason, message, reply, caller) = loop {
            tokio::select! {
                biased;
                command = self.inbox.recv() => match command {
                    Some(command) => if let Some(end) = self.handle(command) {
                        break end;
                    },
                    // Every handle is gone: the registry itself was dropped.
                    None => break (EndReason::ServerShutdown, "the registry is gone".to_owned(), None, no_caller()),
                },
                // Confirmations and timers before player traffic, so that a
                // busy session cannot starve them.
                Some((id, slot, took_end)) = self.closing.next() => self.confirm_close(id, slot, took_end),
                () = &mut self.sweep_timer, if self.sweep_armed => self.sweep(),
                () = &mut self.idle_timer, if self.idle_armed => {
                    break (EndReason::Idle, format!("empty for {:?}", self.config.idle_timeout), None, no_caller());
                }
                Some((id, slot, item)) = self.inbound.next() => self.on_input(id, slot, item),
            }
            self.process_departures();
            if self.drained {
                break (EndReason::ServerShutdown, crate::SHUTDOWN_MESSAGE.to_owned(), None, no_caller());
            }
        };
        self.finish(reason, message, reply, caller);
    }

    /// Carries out a command; an `End` is handed back for the run loop.
    fn handle(&mut self, command: Command) -> Option<Ending> {
        match command {
            Command::Join { request, reply } => self.join(request, reply),
            Command::Send { payload, targets, reply } => {
                let result = self.check_targets(&targets, "player_ids").map(|()| {
                    let sequence = self.next_sequence();
                    let event = SharedEvent::new(Event::Backend {
                        sequence,
                        payload,
                        server_time_unix_micros: super::unix_micros(),
                    });
                    self.fan_out(&event, &targets, None, false, sequence);
                    sequence
                });
                // The caller may have given up; the message was sent anyway.
                let _ = reply.send(result);
            }
            Command::Info { reply } => {
                let mut info = self.info.clone();
                info.players = self.roster();
                let _ = reply.send(info);
            }
            Command::End { reason, message, reply, caller } => return Some((reason, message, reply, caller)),
        }
        None
    }

    fn join(&mut self, request: Box<JoinRequest>, reply: oneshot::Sender<Result<Joined, super::handle::JoinRejected>>) {
        let session_id = self.info.id.clone();
        // A join that was queued when the drain began.
        if self.manager.is_draining() {
            let _ = reply.send(Err((Error::Draining, Some(request))));
            return;
        }
        if self.players.len() >= self.info.max_players as usize {
            let _ = reply.send(Err((Error::SessionFull(session_id.to_string()), Some(request))));
            return;
        }
        let JoinRequest { player, inbound, caller } = *request;
        let id: PlayerId = if player.id.is_empty() { super::new_id() } else { player.id.into() };
        if self.players.contains_key(&id) {
            let err = Error::PlayerAlreadyJoined { session: session_id.to_string(), player: id.to_string() };
            let request = JoinRequest { player: super::NewPlayer { id: id.to_string(), ..player }, inbound, caller };
            let _ = reply.send(Err((err, Some(Box::new(request)))));
            return;
        }
        // Its own short span, linked to the Play call that asked for it.
        let span =
            info_span!("player.join", session.id = %session_id, player.id = %id, trace_id = Empty, span_id = Empty);
        span.add_link(caller);
        crate::telemetry::record_ids(&span);
        let joined = span.context().span().span_context().clone();
        let _span = span.entered();
        let info =
            Arc::new(PlayerInfo { id: id.clone(), display_name: player.display_name, metadata: player.metadata });
        let sequence = self.next_sequence();

        // Tell everyone else first, so the joiner does not see its own join:
        // the welcome's sequence stands for it.
        let event = SharedEvent::new(Event::Presence {
            sequence,
            player: info.clone(),
            kind: PresenceKind::Joined,
            detail: String::new(),
        });
        self.fan_out(&event, &[], None, false, sequence);

        let (out, outbound) = outbound::channel();
        let players = self.roster();
        let welcome = Welcome {
            session_id: session_id.clone(),
            mode: self.info.mode.clone(),
            player: info.clone(),
            players,
            sequence,
        };
        // A fresh queue cannot be closed yet; a failure shows at the next push.
        let _ = out.push(Delivery::Private(Box::new(Private::Welcome(welcome))));
        let (kick, kicked) = oneshot::channel();
        let slot = self.next_slot;
        self.next_slot += 1;
        self.inbound.push(PlayerInbound { id: id.clone(), slot, stream: inbound, kicked, done: false });
        self.players.insert(
            id.clone(),
            Player {
                info,
                slot,
                out,
                _kick: kick,
                dropped: 0,
                last_dropped: 0,
                behind_since: None,
                ended: false,
                joined,
            },
        );
        self.idle_armed = false;
        self.players_changed();
        self.metrics.joined();
        info!(session.sequence = sequence, "player joined");

        let joined = Joined { session_id, player_id: id.clone(), outbound };
        if reply.send(Ok(joined)).is_err() {
            self.departures.push((id, Departure::Disconnected("the client went away while joining".into())));
        }
    }

    /// The players holding a seat, by id.
    fn roster(&self) -> Vec<Arc<PlayerInfo>> {
        let mut players: Vec<_> = self.players.values().map(|p| p.info.clone()).collect();
        players.sort_by(|a, b| a.id.cmp(&b.id));
        players
    }

    fn on_input(&mut self, id: PlayerId, slot: u64, item: Option<Result<Input, InboundError>>) {
        match self.players.get(&id) {
            Some(player) if player.slot == slot => {}
            // A message from a seat already freed.
            _ => return,
        }
        match item {
            Some(Ok(Input::Relay(relay))) => {
                self.metrics.received.increment(1);
                self.relay(&id, slot, relay);
            }
            Some(Ok(Input::Ping { client_time })) => {
                let pong = Private::Pong { client_time, server_time_unix_micros: super::unix_micros() };
                // A pong is as droppable as it gets: a behind player skips it.
                self.send_private(&id, pong, true);
            }
            Some(Ok(Input::Invalid(err))) => {
                debug!(session.id = %self.info.id, player.id = %id, error = %err, "rejected a player message");
                self.send_private(&id, Private::Error(err), false);
            }
            Some(Ok(Input::Leave)) => self.departures.push((id, Departure::Left)),
            None => self.half_closed(id),
            Some(Err(InboundError::Transport(reason))) => self.departures.push((id, Departure::Disconnected(reason))),
            Some(Err(InboundError::Protocol(err))) => self.departures.push((id, Departure::Removed(err))),
        }
    }

    /// The inbound stream ended without an error. That is a clean half-close
    /// (a leave), unless the connection went down: hyper reports a
    /// connection it shut down with NO_ERROR, as on a keepalive timeout, as a
    /// clean end of the request body too. The response stream tells the two
    /// apart: a live client takes its end, a dead one's is dropped first. The
    /// seat is held until then, so the presence event says which it was.
    fn half_closed(&mut self, id: PlayerId) {
        let Some(player) = self.players.get_mut(&id) else { return };
        let (ack, took_end) = oneshot::channel();
        if player.out.push(Delivery::EndAcked(ack)).is_err() {
            self.departures.push((id, gone()));
            return;
        }
        player.ended = true;
        let slot = player.slot;
        // A client that half-closed but stopped reading would hold its seat
        // forever: after the grace period it counts as a disconnect.
        let grace = self.config.slow_player_grace;
        self.closing.push(Box::pin(async move {
            let took_end = matches!(tokio::time::timeout(grace, took_end).await, Ok(Ok(())));
            (id, slot, took_end)
        }));
    }

    fn confirm_close(&mut self, id: PlayerId, slot: u64, took_end: bool) {
        if self.players.get(&id).is_some_and(|p| p.slot == slot) {
            let departure = if took_end {
                Departure::Left
            } else {
                Departure::Disconnected("the connection closed before the stream's end was sent".into())
            };
            self.departures.push((id, departure));
        }
    }

    fn relay(&mut self, from: &PlayerId, from_slot: u64, relay: RelayInput) {
        if let Err(err) = self.check_targets(&relay.targets, "relay.targets") {
            self.send_private(from, Private::Error(err), false);
            return;
        }
        let sequence = self.next_sequence();
        let event = SharedEvent::new(Event::Relayed {
            sequence,
            sender: from.clone(),
            payload: relay.payload,
            server_time_unix_micros: super::unix_micros(),
            droppable: relay.droppable,
        });
        self.fan_out(&event, &relay.targets, Some(from_slot), relay.droppable, sequence);
    }

    /// Every target must hold a seat; the error names the first that does not.
    fn check_targets(&self, targets: &[PlayerId], field: &str) -> Result<(), Error> {
        match targets.iter().enumerate().find(|(_, t)| !self.players.contains_key(*t)) {
            Some((i, t)) => Err(Error::UnknownPlayer { field: format!("{field}[{i}]"), player: t.to_string() }),
            None => Ok(()),
        }
    }

    /// Delivers a shared event to `targets`, or with none to every player but
    /// the one in seat `except`. Takes no lock: each delivery is an atomic
    /// length check and a push onto the player's queue.
    fn fan_out(
        &mut self,
        event: &Arc<SharedEvent>,
        targets: &[PlayerId],
        except: Option<u64>,
        droppable: bool,
        sequence: u64,
    ) {
        let policy = Policy::new(&self.config);
        let mut tally = Tally::default();
        if targets.is_empty() {
            for (id, player) in &mut self.players {
                if Some(player.slot) == except || player.ended {
                    continue;
                }
                let outcome = deliver(player, Delivery::Event(event.clone()), droppable, sequence, &policy);
                tally.record(id, outcome, &mut self.departures);
            }
        } else {
            for target in targets {
                let Some(player) = self.players.get_mut(target).filter(|p| !p.ended) else { continue };
                let outcome = deliver(player, Delivery::Event(event.clone()), droppable, sequence, &policy);
                tally.record(target, outcome, &mut self.departures);
            }
        }
        // Messages are counted once per fan-out; presence and the end are
        // not messages.
        if matches!(event.event, Event::Relayed { .. } | Event::Backend { .. }) {
            self.metrics.delivered.increment(tally.queued);
            if tally.dropped > 0 {
                self.metrics.dropped.increment(tally.dropped);
            }
        }
        if tally.behind {
            self.arm_sweep(None);
        }
    }

    fn send_private(&mut self, id: &PlayerId, message: Private, droppable: bool) {
        let policy = Policy::new(&self.config);
        let mut tally = Tally::default();
        if let Some(player) = self.players.get_mut(id).filter(|p| !p.ended) {
            let outcome = deliver(player, Delivery::Private(Box::new(message)), droppable, 0, &policy);
            tally.record(id, outcome, &mut self.departures);
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
    fn sweep(&mut self) {
        self.sweep_armed = false;
        let now = Instant::now();
        let policy = Policy::new(&self.config);
        let mut next: Option<Instant> = None;
        // Players whose stream got its end are left to `closing`.
        for (id, player) in self.players.iter_mut().filter(|(_, p)| !p.ended) {
            let Some(since) = player.behind_since else { continue };
            if player.out.len() < policy.soft_limit {
                player.behind_since = None;
                if let Err(departure) = flush_dropped_notice(player) {
                    self.departures.push((id.clone(), departure));
                }
            } else if now.duration_since(since) >= policy.grace {
                self.departures.push((id.clone(), slow(&policy, player.out.len())));
            } else {
                let at = since + policy.grace;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if next.is_some() {
            self.arm_sweep(next);
        }
    }

    fn process_departures(&mut self) {
        while !self.departures.is_empty() {
            for (id, departure) in std::mem::take(&mut self.departures) {
                self.remove_player(id, departure);
            }
        }
    }

    fn remove_player(&mut self, id: PlayerId, departure: Departure) {
        let Some(player) = self.players.remove(&id) else { return };
        let span =
            info_span!("player.leave", session.id = %self.info.id, player.id = %id, trace_id = Empty, span_id = Empty);
        span.add_link(player.joined.clone());
        crate::telemetry::record_ids(&span);
        let _span = span.entered();
        let (kind, detail) = match &departure {
            // Dropping the player drops its queue's sender: its stream ends
            // with OK once it has sent what is queued.
            Departure::Left => (PresenceKind::Left, String::new()),
            Departure::Disconnected(reason) => (PresenceKind::Disconnected, reason.clone()),
            Departure::Removed(err) => {
                if !player.ended {
                    let _ = player.out.push(Delivery::End(Some(Box::new(err.clone()))));
                }
                (PresenceKind::Removed, err.to_string())
            }
        };
        let reason = match &departure {
            Departure::Left => "left",
            Departure::Disconnected(_) => "disconnected",
            Departure::Removed(Error::SlowPlayer(_)) => "slow_player",
            Departure::Removed(_) => "removed",
        };
        self.metrics.departed(reason, 1);
        let sequence = self.next_sequence();
        match &departure {
            Departure::Left => info!(session.sequence = sequence, "player left"),
            Departure::Disconnected(reason) => {
                info!(session.sequence = sequence, reason = %reason, "player disconnected")
            }
            Departure::Removed(err) => warn!(session.sequence = sequence, reason = %err, "player removed"),
        }
        let event = SharedEvent::new(Event::Presence { sequence, player: player.info.clone(), kind, detail });
        self.fan_out(&event, &[], None, false, sequence);
        self.players_changed();
        // Only now does the player's stream end: a client that sees it end
        // and then asks the registry finds itself gone.
        drop(player);
        if self.players.is_empty() {
            self.idle_timer.as_mut().reset(Instant::now() + self.config.idle_timeout);
            self.idle_armed = true;
            // While the server drains nobody can join, so an empty session is
            // over.
            self.drained = self.manager.is_draining();
        }
    }

    fn finish(mut self, reason: EndReason, message: String, reply: Option<oneshot::Sender<u64>>, caller: SpanContext) {
        let session_id = self.info.id.clone();
        // Linked to the EndSession call, when one asked.
        let span = info_span!("session.end", session.id = %session_id, trace_id = Empty, span_id = Empty);
        span.add_link(caller);
        crate::telemetry::record_ids(&span);
        let _span = span.entered();
        // Refuse new commands first, so that nothing is queued after the
        // drain below.
        self.inbox.close();
        let sequence = self.next_sequence();
        let event = SharedEvent::new(Event::Ended { sequence, reason, message: message.clone() });
        for player in self.players.values().filter(|p| !p.ended) {
            // The last two items go in regardless of the queue's bound: a
            // player is always told that its session ended.
            let _ = player.out.push(Delivery::Event(event.clone()));
            let _ = player.out.push(Delivery::End(None));
        }
        let players = self.players.len();
        self.metrics.departed("session_ended", players as u64);
        self.metrics.ended(match reason {
            EndReason::EndedByBackend => "ended_by_backend",
            EndReason::Idle => "idle",
            EndReason::ServerShutdown => "server_shutdown",
        });
        self.players.clear();
        self.inbound = SelectAll::new();
        self.manager.remove(&session_id);
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Join { request, reply } => {
                    let _ = reply.send(Err((Error::SessionNotFound(session_id.to_string()), Some(request))));
                }
                Command::Send { reply, .. } => {
                    let _ = reply.send(Err(Error::SessionNotFound(session_id.to_string())));
                }
                Command::End { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(sequence);
                    }
                }
                Command::Info { .. } => {}
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(sequence);
        }
        info!(session.end_reason = ?reason, session.sequence = sequence, players, message = %message, "session ended");
    }

    fn next_sequence(&mut self) -> u64 {
        self.info.sequence += 1;
        self.shared_sequence.store(self.info.sequence, Ordering::Relaxed);
        self.info.sequence
    }

    fn players_changed(&mut self) {
        self.info.player_count = self.players.len() as u32;
        self.manager.player_count_changed(&self.info.id, self.info.player_count);
    }
}

/// Removes a session from the registry when dropped.
struct Deregister {
    manager: SessionManager,
    id: super::SessionId,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.manager.remove(&self.id);
    }
}

/// The outbound queue policy, from the session config.
struct Policy {
    /// From this length on the player is behind and droppable messages drop.
    soft_limit: usize,
    /// The queue's capacity.
    capacity: usize,
    /// How long a player may stay behind.
    grace: Duration,
}

impl Policy {
    fn new(config: &SessionConfig) -> Self {
        Policy {
            soft_limit: config.outbound_queue / 2,
            capacity: config.outbound_queue,
            grace: config.slow_player_grace,
        }
    }
}

/// What became of one delivery.
#[derive(Debug)]
enum Outcome {
    Queued,
    /// The player is behind, and the delivery was queued anyway.
    BehindQueued,
    /// The player is behind, and the (droppable) delivery was dropped and
    /// counted for its notice.
    BehindDropped,
    /// The player must go.
    Depart(Departure),
}

/// Applies the queue policy to one delivery (see `outbound.rs`).
fn deliver(player: &mut Player, delivery: Delivery, droppable: bool, sequence: u64, policy: &Policy) -> Outcome {
    let len = player.out.len();
    if len < policy.soft_limit {
        player.behind_since = None;
        if let Err(departure) = flush_dropped_notice(player) {
            return Outcome::Depart(departure);
        }
        return match player.out.push(delivery) {
            Ok(()) => Outcome::Queued,
            Err(_) => Outcome::Depart(gone()),
        };
    }
    let now = Instant::now();
    let since = *player.behind_since.get_or_insert(now);
    if now.duration_since(since) >= policy.grace {
        return Outcome::Depart(slow(policy, len));
    }
    if droppable {
        if sequence != 0 {
            player.dropped += 1;
            player.last_dropped = sequence;
        }
        return Outcome::BehindDropped;
    }
    if len >= policy.capacity {
        return Outcome::Depart(Departure::Removed(Error::SlowPlayer(format!(
            "outbound queue overflowed: {} messages were waiting for this player",
            policy.capacity
        ))));
    }
    match player.out.push(delivery) {
        Ok(()) => Outcome::BehindQueued,
        Err(_) => Outcome::Depart(gone()),
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
    fn record(&mut self, id: &PlayerId, outcome: Outcome, departures: &mut Vec<(PlayerId, Departure)>) {
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
            Outcome::Depart(departure) => departures.push((id.clone(), departure)),
        }
    }
}

/// Tells the player how many droppable messages it missed, if any.
fn flush_dropped_notice(player: &mut Player) -> Result<(), Departure> {
    if player.dropped == 0 {
        return Ok(());
    }
    let notice = Private::Dropped { count: player.dropped, last_sequence: player.last_dropped };
    player.dropped = 0;
    player.out.push(Delivery::Private(Box::new(notice))).map_err(|_| gone())
}

fn slow(policy: &Policy, len: usize) -> Departure {
    Departure::Removed(Error::SlowPlayer(format!(
        "fell behind reading the stream for more than {:?} ({len} messages waiting)",
        policy.grace
    )))
}

fn gone() -> Departure {
    Departure::Disconnected("the response stream was closed".into())
}

/// Why a session ends, what its players are told, who waits for the answer,
/// and the span of the call that asked (for a link).
type Ending = (EndReason, String, Option<oneshot::Sender<u64>>, SpanContext);

/// No call asked (idle, shutdown): no link.
fn no_caller() -> SpanContext {
    SpanContext::empty_context()
}
