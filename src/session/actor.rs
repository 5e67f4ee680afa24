//! The session actor: one task per session, the only one that touches the
//! session's [`Room`] and [`SessionLogic`]. It waits on its inbox, its
//! players' streams and its timers, and for each wake-up calls the room
//! (plumbing) and the logic (rules).
//!
//! The actor polls its players' inbound streams itself (a `SelectAll`, which
//! polls only the streams that woke it) instead of running one reader task
//! per player that forwards into an inbox. A relayed message therefore costs
//! no task hop on the way in: the connection task wakes the actor directly,
//! and the logic runs inline. On the way out, each recipient's queue wakes
//! that player's response stream, which writes the event's bytes, encoded
//! once for all recipients.
//!
//! A panic in a hook, or anywhere in the loop (the plumbing, or a player's
//! stream as the actor polls it), is caught: the session ends with
//! [`EndReason::InternalError`], which its players receive, a call waiting
//! on the hook gets INTERNAL, and every other session goes on. Only a panic
//! while the session ends is not caught; the registry still forgets the
//! session then.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::stream::{SelectAll, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::field::Empty;
use tracing::{debug, error, info_span, warn};

use super::handle::{Command, EndRequest, JoinRejected, JoinRequest, Joined, ResumeRequest};
use super::logic::SessionLogic;
use super::room::{Due, Room};
use super::tick::{Input, Inputs, Sent, Tick, TickRate, TickSettings};
use super::{Departure, EndReason, Inbound, InboundError, InboundStream, PlayerId, PlayerMessage, SessionId};
use crate::error::Error;

/// What one inbound stream yields: the player, its seat's generation, and a
/// message or `None` for a clean half-close.
type InboundItem = (PlayerId, u64, Option<Result<Inbound, InboundError>>);

/// A player's inbound stream, tagged with its seat. Ends when the stream
/// does, or as soon as the player's seat is freed (its `kick` sender dropped).
struct PlayerInbound {
    id: PlayerId,
    generation: u64,
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
            Poll::Ready(Some(item)) => Poll::Ready(Some((this.id.clone(), this.generation, Some(item)))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some((this.id.clone(), this.generation, None)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    Due(Due),
    Tick,
    Inbound(InboundItem),
}

/// A ticking session's schedule, and the inputs waiting for its next tick.
struct Ticker {
    interval: tokio::time::Interval,
    period: std::time::Duration,
    /// The last tick's number.
    number: u64,
    inputs: Inputs,
    settings: TickSettings,
    metrics: crate::metrics::TickMetrics,
    /// The session has no players: the clock stands still until one joins.
    idle: bool,
    /// Overruns since the last one logged, and when that was.
    overruns_unlogged: u64,
    overrun_logged_at: Option<tokio::time::Instant>,
}

/// A session logs at most one tick overrun this often; the line says how
/// many there were since the last.
const OVERRUN_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Ticker {
    fn new(rate: TickRate, settings: TickSettings, mode: &str) -> Self {
        let period = rate.period();
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A tick that overran skips the boundaries it ran past (see tick.rs).
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Ticker {
            interval,
            period,
            number: 0,
            inputs: Inputs::default(),
            settings,
            metrics: crate::metrics::TickMetrics::new(mode),
            idle: true,
            overruns_unlogged: 0,
            overrun_logged_at: None,
        }
    }

    /// Stops the clock while the session has no players, and restarts it a
    /// full period after the first one comes (see tick.rs).
    fn seated(&mut self, players: usize) {
        let idle = players == 0;
        if self.idle && !idle {
            self.interval.reset();
        }
        self.idle = idle;
    }
}

/// Waits for the next tick, or forever without a ticker or players.
async fn next_tick(ticker: Option<&mut Ticker>) {
    match ticker {
        Some(ticker) if !ticker.idle => {
            ticker.interval.tick().await;
        }
        _ => std::future::pending().await,
    }
}

/// What players and callers are told when a session fails.
const FAILED: &str = "the session failed on the server";

/// One session. Built by the registry, which spawns [`Actor::run`].
pub(super) struct Actor {
    room: Room,
    /// `None` only while a tick has it on the pool, or after a runaway tick
    /// kept it.
    logic: Option<Box<dyn SessionLogic>>,
    /// A session whose logic has a tick.
    ticker: Option<Ticker>,
    inbox: mpsc::Receiver<Command>,
    inbound: SelectAll<PlayerInbound>,
    /// A panic was caught: the logic is not called again.
    failed: bool,
}

impl Actor {
    /// The actor of a session whose logic's `init` asked for `tick_rate`.
    pub(super) fn new(
        room: Room,
        logic: Box<dyn SessionLogic>,
        inbox: mpsc::Receiver<Command>,
        tick_rate: Option<TickRate>,
    ) -> Self {
        let ticker = tick_rate.map(|rate| Ticker::new(rate, room.tick_settings().clone(), room.mode()));
        Actor { room, logic: Some(logic), ticker, inbox, inbound: SelectAll::new(), failed: false }
    }

    /// Runs the session until it ends.
    pub(super) async fn run(mut self) {
        // Should even the end panic, the registry still forgets the session
        // (after a normal end the room has done so, and this does nothing).
        let _deregister = self.room.deregister_on_drop();
        let end = loop {
            // A session whose players keep it busy would otherwise never give
            // its worker thread back (its streams are always ready), starving
            // the other sessions and connections on that worker. Each wake-up
            // takes a unit of tokio's per-task budget (128 per turn on the
            // worker): after a full batch the actor yields, and an actor that
            // waits between wake-ups never does.
            tokio::task::consume_budget().await;
            // Polling the players' streams runs their code (decoding), so it
            // is guarded too.
            let wake = match AssertUnwindSafe(self.next_wake()).catch_unwind().await {
                Ok(wake) => wake,
                Err(panic) => break self.failed(panic, "polling", None),
            };
            if let Wake::Tick = wake {
                // The tick's own panics come back from it; this catches the
                // plumbing's.
                match AssertUnwindSafe(self.tick()).catch_unwind().await {
                    Ok(Some(end)) => break end,
                    Ok(None) => continue,
                    Err(panic) => break self.failed(panic, "plumbing", None),
                }
            }
            // Hooks catch their own panics (to answer whoever waits on them);
            // this catches the plumbing's.
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.step(wake))) {
                Ok(Some(end)) => break end,
                Ok(None) => {}
                Err(panic) => break self.failed(panic, "plumbing", None),
            }
        };
        self.end(end);
    }

    /// Runs one tick: hands the waiting inputs to the logic's `on_tick` (on
    /// the pool, within the watchdog, or here without a pool), then sends
    /// what it sent.
    async fn tick(&mut self) -> Option<EndRequest> {
        let ticker = self.ticker.as_mut()?;
        ticker.number += 1;
        let number = ticker.number;
        let tick = Tick::new(number, ticker.inputs.take(), self.room.player_ids(), self.room.needing_full_state());
        let logic = self.logic.take()?;
        let started = tokio::time::Instant::now();
        let (logic, result) = match ticker.settings.pool.clone() {
            None => {
                let mut logic = logic;
                let mut tick = tick;
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    logic.on_tick(&mut tick);
                    tick
                }));
                (logic, result)
            }
            Some(pool) => {
                let mut running = pool.run(logic, tick);
                // Waiting for a free thread is not the tick's fault (an
                // overrun, if it is long); its run is.
                match running.within(ticker.settings.watchdog).await {
                    Some(Ok(done)) => done,
                    // The pool dropped the tick: only when the server stops.
                    Some(Err(_)) => {
                        self.failed = true;
                        return Some(EndRequest::unasked(
                            EndReason::ServerShutdown,
                            super::SHUTDOWN_MESSAGE.to_owned(),
                        ));
                    }
                    None => {
                        running.abandon();
                        let watchdog = ticker.settings.watchdog;
                        error!(
                            session.id = %self.room.id(),
                            session.mode = self.room.mode(),
                            tick = number,
                            ?watchdog,
                            "a tick ran past the watchdog; the session fails and ends, and its thread is replaced"
                        );
                        self.failed = true;
                        return Some(EndRequest::unasked(EndReason::InternalError, FAILED.to_owned()));
                    }
                }
            }
        };
        self.logic = Some(logic);
        let elapsed = started.elapsed();
        ticker.metrics.ran(elapsed);
        if elapsed > ticker.period {
            ticker.metrics.overran();
            ticker.overruns_unlogged += 1;
            // Logged at most once per OVERRUN_LOG_EVERY per session (the
            // metric counts every one): a server that overruns everywhere
            // must not add a log line per tick to its load. The line is an
            // event on a span of its own (a span per tick would cost more
            // than many ticks), so traces show it too.
            let now = tokio::time::Instant::now();
            if ticker.overrun_logged_at.is_none_or(|at| now.duration_since(at) >= OVERRUN_LOG_EVERY) {
                ticker.overrun_logged_at = Some(now);
                let overruns = std::mem::take(&mut ticker.overruns_unlogged);
                let span = info_span!("session.tick", session.id = %self.room.id(), session.mode = self.room.mode(), tick = number);
                span.in_scope(|| warn!(?elapsed, period = ?ticker.period, overruns, "tick overrun"));
            }
        }
        let tick = match result {
            Ok(tick) => tick,
            Err(panic) => return Some(self.failed(panic, "on_tick", None)),
        };
        let mut end = None;
        for sent in tick.into_sent() {
            match sent {
                Sent::State { payload, kind, to } => {
                    let inputs = &ticker.inputs;
                    self.room.send_state(number, &payload, kind, &to, |player| inputs.processed(player));
                }
                Sent::Labels(labels) => self.room.set_labels(labels),
                Sent::End(message) => end = Some(EndRequest::unasked(EndReason::Completed, message)),
            }
        }
        if end.is_some() {
            return end;
        }
        if let Err(end) = self.carry_out_departures() {
            return Some(end);
        }
        None
    }

    async fn next_wake(&mut self) -> Wake {
        if let Some(ticker) = &mut self.ticker {
            ticker.seated(self.room.player_count());
        }
        tokio::select! {
            biased;
            command = self.inbox.recv() => Wake::Command(command),
            // Half-close verdicts and timers before player traffic, so that a
            // busy session cannot starve them.
            due = self.room.due() => Wake::Due(due),
            // Ticks before player traffic too: a flood of inputs must not
            // delay the tick they are for.
            () = next_tick(self.ticker.as_mut()) => Wake::Tick,
            Some(item) = self.inbound.next() => Wake::Inbound(item),
        }
    }

    /// Handles one wake-up and the departures it caused. Returns how the
    /// session ends, if it does.
    fn step(&mut self, wake: Wake) -> Option<EndRequest> {
        let ended = match wake {
            Wake::Command(Some(command)) => self.command(command),
            // Every handle is gone: the registry itself was dropped.
            Wake::Command(None) => Some(EndRequest::unasked(EndReason::ServerShutdown, "the registry is gone".into())),
            Wake::Due(Due::HalfClose(id, generation, took_end)) => {
                self.room.confirm_close(id, generation, took_end);
                None
            }
            Wake::Due(Due::Sweep) => {
                self.room.sweep();
                None
            }
            Wake::Due(Due::Holds) => {
                self.room.expire_holds();
                None
            }
            Wake::Due(Due::ReplayAge) => {
                self.room.expire_replay();
                None
            }
            Wake::Due(Due::Idle) => {
                let message = format!("empty for {:?}", self.room.idle_timeout());
                Some(EndRequest::unasked(EndReason::Idle, message))
            }
            Wake::Inbound((id, generation, item)) => self.inbound(id, generation, item),
            Wake::Tick => None,
        };
        if ended.is_some() {
            return ended;
        }
        if let Err(end) = self.carry_out_departures() {
            return Some(end);
        }
        self.room
            .is_drained()
            .then(|| EndRequest::unasked(EndReason::ServerShutdown, super::SHUTDOWN_MESSAGE.to_owned()))
    }

    /// Carries out a command; an end is handed back for the run loop.
    fn command(&mut self, command: Command) -> Option<EndRequest> {
        match command {
            Command::Join { request, reply } => return self.join(request, reply),
            Command::Resume { request, reply } => return self.resume(*request, reply),
            Command::BackendMessage { payload, targets, reply } => {
                let result = self
                    .hook("on_backend_message", None, |logic, room| logic.on_backend_message(room, payload, targets));
                // The caller may have given up; the message was sent anyway.
                match result {
                    Ok(sent) => {
                        let _ = reply.send(sent);
                    }
                    Err(end) => {
                        let _ = reply.send(Err(Error::Internal(FAILED.to_owned())));
                        return Some(end);
                    }
                }
            }
            Command::Signal { payload, reply } => {
                match self.hook("on_signal", None, |logic, room| logic.on_signal(room, payload)) {
                    Ok(answer) => {
                        let _ = reply.send(answer);
                    }
                    Err(end) => {
                        let _ = reply.send(Err(Error::Internal(FAILED.to_owned())));
                        return Some(end);
                    }
                }
            }
            Command::Remove { player, reason, reply } => {
                let _ = reply.send(self.room.kick(player, reason));
            }
            Command::Drain => self.room.release_holds(),
            Command::Lock { locked, reply } => {
                self.room.set_locked(locked);
                let _ = reply.send(self.room.summary());
            }
            Command::Info { reply } => {
                let _ = reply.send(self.room.summary());
            }
            Command::End(end) => return Some(end),
        }
        None
    }

    fn join(
        &mut self,
        request: Box<JoinRequest>,
        reply: oneshot::Sender<Result<Joined, JoinRejected>>,
    ) -> Option<EndRequest> {
        // A join that was queued when the drain began.
        if self.room.is_draining() {
            let _ = reply.send(Err((Error::Draining, Some(request))));
            return None;
        }
        let request = match self.room.admit(request) {
            Ok(request) => request,
            Err(rejected) => {
                let _ = reply.send(Err(rejected));
                return None;
            }
        };
        let player = &request.player;
        // A player taking its own seat over was admitted by the logic before.
        let attempt = if self.room.is_seated(&player.id) {
            Ok(self.room.charge_takeover(&player.id))
        } else {
            self.hook("on_join_attempt", None, |logic, room| logic.on_join_attempt(room, player))
        };
        match attempt {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let _ = reply.send(Err((err, Some(request))));
                return None;
            }
            Err(end) => {
                let _ = reply.send(Err((Error::Internal(FAILED.to_owned()), None)));
                return Some(end);
            }
        }
        let JoinRequest { player, inbound, caller } = *request;
        let seated = self.room.seat(player, &caller);
        self.seated(seated, inbound, |joined| reply.send(Ok(joined)).is_ok())
    }

    fn resume(&mut self, request: ResumeRequest, reply: oneshot::Sender<Result<Joined, Error>>) -> Option<EndRequest> {
        if self.room.is_draining() {
            let _ = reply.send(Err(Error::Draining));
            return None;
        }
        let ResumeRequest { player, generation, last_sequence, inbound, caller } = request;
        match self.room.resume(&player, generation, last_sequence, &caller) {
            Ok(seated) => self.seated(seated, inbound, |joined| reply.send(Ok(joined)).is_ok()),
            Err(err) => {
                let _ = reply.send(Err(err));
                None
            }
        }
    }

    /// A stream took a seat: its messages are polled from now on, and the
    /// logic hears of it (`on_join`, or `on_reconnect` for a seat taken
    /// back).
    fn seated(
        &mut self,
        seated: super::room::Seated,
        inbound: super::InboundStream,
        answer: impl FnOnce(Joined) -> bool,
    ) -> Option<EndRequest> {
        let id = seated.info.id.clone();
        self.inbound.push(PlayerInbound {
            id: id.clone(),
            generation: seated.generation,
            stream: inbound,
            kicked: seated.kicked,
            done: false,
        });
        let info = seated.info;
        // The player holds its seat whatever `on_join` does: should it
        // panic, the player hears that the session failed, like the others.
        let joined = {
            let _span = seated.span.enter();
            if seated.took_over {
                self.hook("on_reconnect", Some(&id), |logic, room| logic.on_reconnect(room, &info))
            } else {
                self.hook("on_join", Some(&id), |logic, room| logic.on_join(room, &info))
            }
        };
        if !answer(seated.joined) {
            self.room.depart(id, Departure::Disconnected("the client went away while joining".into()));
        }
        joined.err()
    }

    fn inbound(
        &mut self,
        id: PlayerId,
        generation: u64,
        item: Option<Result<Inbound, InboundError>>,
    ) -> Option<EndRequest> {
        // Every message but a leave counts against the sender's rate
        // limits, whatever the mode; one over them is dropped here.
        let counted = matches!(item, Some(Ok(Inbound::Message(_) | Inbound::Ping { .. } | Inbound::Invalid(_))));
        let go_on = match &item {
            Some(Ok(inbound)) if counted => self.room.admit_message(&id, generation, inbound.bytes()),
            // A message from a seat already freed.
            _ => self.room.is_current(&id, generation),
        };
        if !go_on {
            return None;
        }
        match item {
            Some(Ok(Inbound::Message(PlayerMessage::Input(input)))) => {
                self.room.count_received();
                match &mut self.ticker {
                    Some(ticker) => {
                        let input = Input { from: id, sequence: input.sequence, payload: input.payload };
                        if ticker.inputs.push(input, ticker.settings.max_inputs_per_tick) {
                            ticker.metrics.input_dropped();
                        }
                    }
                    None => self.room.send_error(
                        &id,
                        Error::invalid("input", "this session's mode has no tick: send relay messages, not inputs"),
                    ),
                }
            }
            Some(Ok(Inbound::Message(message))) => {
                self.room.count_received();
                let from = &id;
                return self.hook("on_message", Some(from), |logic, room| logic.on_message(room, from, message)).err();
            }
            Some(Ok(Inbound::Ping { client_time, rtt_micros })) => self.room.pong(&id, client_time, rtt_micros),
            Some(Ok(Inbound::Invalid(err))) => {
                debug!(session.id = %self.room.id(), player.id = %id, error = %err, "rejected a player message");
                self.room.send_error(&id, err);
            }
            Some(Ok(Inbound::Leave)) => self.room.depart(id, Departure::Left),
            None => self.room.half_closed(id),
            Some(Err(InboundError::Transport(reason))) => self.room.depart(id, Departure::Disconnected(reason)),
            Some(Err(InboundError::Protocol(err))) => self.room.depart(id, Departure::Removed(err)),
        }
        None
    }

    /// Holds or frees the seats the last wake-up asked to, and tells the
    /// logic, in the `player.hold` or `player.leave` span: `on_disconnect`
    /// when a stream dropped (its seat held, or freed if the session holds
    /// no seats), then `on_leave` when the seat is freed.
    fn carry_out_departures(&mut self) -> Result<(), EndRequest> {
        while let Some((id, departure)) = self.room.next_departure() {
            if departure.holds_seat() && self.room.holds_seats() {
                // None: held already (a second report of the same drop).
                if let Some((player, span)) = self.room.hold(&id, &departure) {
                    let _span = span.enter();
                    self.hook("on_disconnect", Some(&id), |logic, room| {
                        logic.on_disconnect(room, &player, &departure)
                    })?;
                }
                continue;
            }
            let Some((player, span)) = self.room.free_seat(&id, &departure) else { continue };
            if let Some(ticker) = &mut self.ticker {
                ticker.inputs.forget(&id);
            }
            let _span = span.enter();
            // A leave, a kick or a hold that ran out had no drop to report
            // (an expired hold's was reported when it began).
            let dropped = !matches!(
                departure,
                Departure::Left | Departure::Expired | Departure::Drained | Departure::Removed(Error::Kicked(_))
            );
            if dropped {
                self.hook("on_disconnect", Some(&id), |logic, room| logic.on_disconnect(room, &player, &departure))?;
            }
            self.hook("on_leave", Some(&id), |logic, room| logic.on_leave(room, &player))?;
        }
        Ok(())
    }

    /// Calls a hook of the logic. A panic comes back as the end it causes
    /// (see [`Actor::failed`]); `player` is whom the hook was about, for the
    /// log.
    fn hook<R>(
        &mut self,
        name: &'static str,
        player: Option<&PlayerId>,
        call: impl FnOnce(&mut dyn SessionLogic, &mut Room) -> R,
    ) -> Result<R, EndRequest> {
        // Gone only after a runaway tick, which ended the session already.
        let Some(logic) = self.logic.as_deref_mut() else {
            return Err(EndRequest::unasked(EndReason::InternalError, FAILED.to_owned()));
        };
        let room = &mut self.room;
        std::panic::catch_unwind(AssertUnwindSafe(|| call(logic, room)))
            .map_err(|panic| self.failed(panic, name, player))
    }

    /// A panic was caught in `during` (a hook's name, "polling" or
    /// "plumbing"): the session ends with an internal error. What panicked
    /// goes to the log, never to the players.
    fn failed(&mut self, panic: Box<dyn Any + Send>, during: &'static str, player: Option<&PlayerId>) -> EndRequest {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        let player = player.map_or("", |id| &**id);
        error!(
            session.id = %self.room.id(),
            session.mode = self.room.mode(),
            player.id = player,
            during,
            panic = what,
            "the session failed and ends"
        );
        self.failed = true;
        EndRequest::unasked(EndReason::InternalError, FAILED.to_owned())
    }

    /// Ends the session: the logic hears of it (unless it is what failed),
    /// the players are told, and the commands still queued are answered.
    fn end(mut self, end: EndRequest) {
        let EndRequest { reason, message, reply, caller } = end;
        let session_id: SessionId = self.room.id().clone();
        // Linked to the EndSession call, when one asked.
        let span = info_span!("session.end", session.id = %session_id, trace_id = Empty, span_id = Empty);
        span.follows_from(&caller);
        crate::telemetry::record_ids(&span);
        let _span = span.entered();
        // Refuse new commands first, so that nothing is queued after the
        // drain below.
        self.inbox.close();
        let mut result = None;
        if !self.failed {
            // Too late to change the reason should it panic: the session is
            // ending anyway (the panic is logged).
            result = self.hook("on_end", None, |logic, room| logic.on_end(room, reason)).ok().flatten();
        }
        let sequence = self.room.end(reason, &message, result);
        self.inbound = SelectAll::new();
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Join { request, reply } => {
                    let _ = reply.send(Err((Error::SessionNotFound(session_id.to_string()), Some(request))));
                }
                Command::Resume { reply, .. } => {
                    let _ = reply.send(Err(Error::SessionNotFound(session_id.to_string())));
                }
                Command::BackendMessage { reply, .. } => {
                    let _ = reply.send(Err(Error::SessionNotFound(session_id.to_string())));
                }
                Command::Signal { reply, .. } => {
                    let _ = reply.send(Err(Error::SessionNotFound(session_id.to_string())));
                }
                Command::Remove { reply, .. } => {
                    let _ = reply.send(Err(Error::SessionNotFound(session_id.to_string())));
                }
                Command::End(EndRequest { reply: Some(reply), .. }) => {
                    let _ = reply.send(sequence);
                }
                Command::End(_) | Command::Info { .. } | Command::Lock { .. } | Command::Drain => {}
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(sequence);
        }
    }
}
