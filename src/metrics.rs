//! Prometheus metrics: their names and meanings, the handles the session
//! layer updates, and the `/metrics` endpoint.
//!
//! The recorder is process-wide, so the binary installs it ([`install`]) and
//! the library only records; without a recorder (the in-process tests)
//! recording does nothing. The hot path uses handles cached per session and
//! updates them once per fan-out, not once per recipient. A new metric is a
//! name here, a line in [`describe`], and its update where it happens.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::SharedString;
use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

/// Sessions running now, by `mode`.
pub const SESSIONS_ACTIVE: &str = "game_session_sessions_active";
/// Sessions created, by `mode`.
pub const SESSIONS_CREATED: &str = "game_session_sessions_created_total";
/// Sessions ended, by `mode` and `reason` (`ended_by_backend`, `idle`,
/// `server_shutdown`, `internal_error`: a panic was caught and the players
/// told, or `aborted`: its task died even so).
pub const SESSIONS_ENDED: &str = "game_session_sessions_ended_total";
/// Players in a session now, by `mode`.
pub const PLAYERS_CONNECTED: &str = "game_session_players_connected";
/// Players joined, by `mode`.
pub const PLAYER_JOINS: &str = "game_session_player_joins_total";
/// Players gone, by `mode` and `reason`: `left`, `disconnected`,
/// `slow_player` (the outbound queue policy removed it), `flooding` (it
/// stayed over its rate limits for the flood grace), `removed` (it broke
/// the protocol), `kicked`, `hold_expired` (its stream dropped and it did
/// not resume within the seat hold), `drained` (its seat was held when the
/// server began to drain), `session_ended`.
pub const PLAYER_DEPARTURES: &str = "game_session_player_departures_total";
/// Seats held now for a resume (their player's stream dropped), by `mode`.
pub const SEATS_HELD: &str = "game_session_seats_held";
/// Seats that moved to a new stream of their player, by `mode` and `via`
/// (`resume`, `join`: a join with the seat's resume token or, with auth
/// on, its player's token).
pub const SEAT_TAKEOVERS: &str = "game_session_seat_takeovers_total";
/// Resume attempts, by `result`: `ok`, `invalid_token`, `session_not_found`,
/// `no_seat` (left, kicked or its hold ran out), `superseded` (an older
/// token), `gap` (the missed messages are no longer all buffered),
/// `rate_limited` (reconnecting faster than the player's message rate),
/// `invalid`, `draining`, `busy` or `other`.
pub const RESUMES: &str = "game_session_resumes_total";
/// Messages replayed to resumed players, by `mode`.
pub const MESSAGES_REPLAYED: &str = "game_session_messages_replayed_total";
/// Events held by all sessions' replay buffers.
pub const REPLAY_BUFFER_MESSAGES: &str = "game_session_replay_buffer_messages";
/// Bytes of the events held by all sessions' replay buffers (weighed as
/// [`QUEUED_BYTES`] weighs them; shared with the queues that hold them too).
pub const REPLAY_BUFFER_BYTES: &str = "game_session_replay_buffer_bytes";
/// WatchSessions streams open.
pub const WATCHERS: &str = "game_session_watchers";
/// Bytes held by the history events queued for players, by `kind` (relay,
/// backend, presence, ended): payloads and texts plus 64 bytes an event,
/// each event counted once however many queues share it.
pub const QUEUED_BYTES: &str = "game_session_queued_event_bytes";
/// Relay messages from players that passed validation, by `mode`.
pub const MESSAGES_RECEIVED: &str = "game_session_messages_received_total";
/// Messages (player relays and backend sends) queued for a recipient, by
/// `mode`: a relay to 7 players counts 7.
pub const MESSAGES_QUEUED: &str = "game_session_messages_queued_total";
/// Player messages (relays, pings, invalid ones) dropped because their
/// sender went over its rate limits, by `mode`.
pub const MESSAGES_RATE_LIMITED: &str = "game_session_messages_rate_limited_total";
/// How long ticks took (the hand-off to the tick pool included), by `mode`.
pub const TICK_DURATION: &str = "game_session_tick_duration_seconds";
/// Ticks that ran past their period, by `mode`.
pub const TICK_OVERRUNS: &str = "game_session_tick_overruns_total";
/// Inputs dropped past `--max-inputs-per-tick` (a player's oldest), by `mode`.
pub const INPUTS_DROPPED: &str = "game_session_inputs_dropped_total";
/// Tick threads given up on (a tick past the watchdog) and replaced.
pub const TICK_THREADS_LOST: &str = "game_session_tick_threads_lost_total";
/// Droppable relays and backend messages dropped for a player that was
/// behind, by `mode`.
pub const MESSAGES_DROPPED: &str = "game_session_messages_dropped_total";
/// Unary RPC handling time, by `method` (e.g. `CreateSession`) and `code`
/// (the gRPC status code, e.g. `OK`, `NOT_FOUND`).
pub const RPC_DURATION: &str = "game_session_rpc_duration_seconds";

/// Spans not exported: dropped at the export queue's bound, or in an export
/// that failed (the collector down or refusing).
pub const SPANS_DROPPED: &str = "game_session_trace_spans_dropped_total";

/// Credentials refused, by `api` (`play`, `session`) and `reason`
/// (`missing`, `malformed`, `algorithm`, `unknown_key`, `bad_signature`,
/// `expired`, `not_yet_valid`, `wrong_issuer`, `wrong_audience`,
/// `missing_claim`, `bad_subject`, `not_admin`, `no_player`, `impersonation`, `restricted`).
pub const AUTH_REJECTIONS: &str = "game_session_auth_rejections_total";
/// Play streams that ended before their player was seated, by `reason`:
/// `session_not_found`, `session_full`, `already_joined`, `invalid` (a
/// malformed join or first message), `timeout` (no join in time), `closed`
/// (the stream ended or broke before its join), `draining`, `busy` (the
/// session's inbox was full), `server_full` (join-or-create at the session
/// limit), `invalid_token`, `no_seat`, `superseded`, `gap` and
/// `rate_limited` (a join with a resume token, or one taking its own seat
/// over) or `other`. Refused credentials count in [`AUTH_REJECTIONS`] only.
pub const JOIN_FAILURES: &str = "game_session_join_failures_total";
/// JWKS reads on the refresh interval that failed (the last good keys stay).
pub const JWKS_REFRESH_FAILURES: &str = "game_session_auth_jwks_refresh_failures_total";
/// TLS handshakes that failed, by `reason` (`error`: e.g. no or a bad client
/// certificate, or not TLS at all; `timeout`).
pub const TLS_HANDSHAKE_FAILURES: &str = "game_session_tls_handshake_failures_total";
/// Certificate reloads after a change on disk, by `result` (`ok`, `error`).
pub const TLS_RELOADS: &str = "game_session_tls_reloads_total";

/// Connections open now on a gRPC address, by `listener` (`main`,
/// `backend`, `health`).
pub const CONNECTIONS_OPEN: &str = "game_session_connections_open";
/// Connections closed as soon as accepted, by `listener` and `reason`
/// (`limit`: `--max-connections` were open).
pub const CONNECTIONS_REFUSED: &str = "game_session_connections_refused_total";
/// Connections closed because no request came within
/// `--first-request-timeout`, by `listener`.
pub const CONNECTIONS_TIMED_OUT: &str = "game_session_connections_first_request_timeouts_total";
/// Failed accepts (out of file descriptors and the like), by `listener`;
/// each is followed by a pause that doubles up to a second.
pub const ACCEPT_ERRORS: &str = "game_session_accept_errors_total";

/// Histogram buckets of [`RPC_DURATION`], in seconds.
const RPC_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Histogram buckets of [`TICK_DURATION`], in seconds: around the periods
/// of 128 Hz (7.8 ms) down to 1 Hz.
const TICK_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0078, 0.01, 0.0167, 0.025, 0.0333, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the process-wide Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, crate::error::BoxError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(RPC_DURATION.into()), RPC_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TICK_DURATION.into()), TICK_BUCKETS)?
        .install_recorder()?;
    describe();
    metrics_process::Collector::default().describe();
    Ok(handle)
}

fn describe() {
    describe_gauge!(SESSIONS_ACTIVE, "Sessions running now.");
    describe_counter!(SESSIONS_CREATED, "Sessions created.");
    describe_counter!(SESSIONS_ENDED, "Sessions ended, by reason.");
    describe_gauge!(PLAYERS_CONNECTED, "Players in a session now.");
    describe_counter!(PLAYER_JOINS, "Players joined.");
    describe_counter!(PLAYER_DEPARTURES, "Players gone, by reason.");
    describe_gauge!(WATCHERS, "WatchSessions streams open.");
    describe_gauge!(QUEUED_BYTES, Unit::Bytes, "Bytes held by the events queued for players, by kind.");
    describe_counter!(MESSAGES_RECEIVED, "Relay messages received from players.");
    describe_counter!(MESSAGES_QUEUED, "Messages queued for a recipient (a relay to 7 players counts 7).");
    describe_counter!(MESSAGES_RATE_LIMITED, "Player messages dropped for going over the sender's rate limits.");
    describe_counter!(MESSAGES_DROPPED, "Droppable relays dropped for a player that was behind.");
    describe_histogram!(RPC_DURATION, Unit::Seconds, "Unary RPC handling time, by method and gRPC status code.");
    describe_histogram!(TICK_DURATION, Unit::Seconds, "Tick time, the hand-off to the tick pool included.");
    describe_counter!(TICK_OVERRUNS, "Ticks that ran past their period.");
    describe_counter!(INPUTS_DROPPED, "Player inputs dropped past --max-inputs-per-tick (the player's oldest).");
    describe_counter!(TICK_THREADS_LOST, "Tick threads given up on (a tick past the watchdog) and replaced.");
    describe_counter!(AUTH_REJECTIONS, "Credentials refused, by API and reason.");
    describe_counter!(JOIN_FAILURES, "Play streams that failed to join, by reason.");
    describe_counter!(JWKS_REFRESH_FAILURES, "JWKS reads on the refresh interval that failed.");
    describe_counter!(TLS_HANDSHAKE_FAILURES, "TLS handshakes that failed, by reason.");
    describe_counter!(TLS_RELOADS, "TLS certificate reloads after a change on disk, by result.");
    describe_gauge!(CONNECTIONS_OPEN, "Connections open now on a gRPC address, by listener.");
    describe_counter!(CONNECTIONS_REFUSED, "Connections closed as soon as accepted, by listener and reason.");
    describe_counter!(CONNECTIONS_TIMED_OUT, "Connections closed for sending no request in time, by listener.");
    describe_counter!(ACCEPT_ERRORS, "Failed accepts (e.g. out of file descriptors), by listener.");
    describe_gauge!(SEATS_HELD, "Seats held now for a resume, by mode.");
    describe_counter!(SEAT_TAKEOVERS, "Seats that moved to a new stream of their player, by mode and via.");
    describe_counter!(RESUMES, "Resume attempts, by result.");
    describe_counter!(MESSAGES_REPLAYED, "Messages replayed to resumed players, by mode.");
    describe_gauge!(REPLAY_BUFFER_MESSAGES, "Events held by all sessions' replay buffers.");
    describe_gauge!(REPLAY_BUFFER_BYTES, Unit::Bytes, "Bytes of the events held by all replay buffers.");
    describe_counter!(SPANS_DROPPED, "Spans not exported: dropped at the queue's bound or in a failed export.");
}

/// Counts a refused credential.
pub(crate) fn auth_rejected(api: &'static str, reason: &'static str) {
    counter!(AUTH_REJECTIONS, "api" => api, "reason" => reason).increment(1);
}

/// Counts a resume attempt.
pub(crate) fn resumed(result: &'static str) {
    counter!(RESUMES, "result" => result).increment(1);
}

/// Counts a Play stream that failed to join.
pub(crate) fn join_failed(reason: &'static str) {
    counter!(JOIN_FAILURES, "reason" => reason).increment(1);
}

/// Counts a failed JWKS refresh.
pub(crate) fn jwks_refresh_failed() {
    counter!(JWKS_REFRESH_FAILURES).increment(1);
}

/// Counts a failed TLS handshake.
pub(crate) fn tls_handshake_failed(reason: &'static str) {
    counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// Counts a certificate reload.
pub(crate) fn tls_reloaded(ok: bool) {
    counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// The kinds of [`QUEUED_BYTES`], in the order of [`EVENT_BYTES`].
pub(crate) const EVENT_KINDS: [&str; 5] = ["relay", "backend", "presence", "ended", "state"];

/// The index of `state` in [`EVENT_KINDS`]: a tick's states and deltas,
/// counted once per recipient.
pub(crate) const STATE_BYTES: usize = 4;

/// Bytes held by live events, by kind (see [`EVENT_KINDS`]): kept in plain
/// atomics, one add when an event is made and one when its last queue lets
/// go of it, and copied into the gauge at each scrape.
pub(crate) static EVENT_BYTES: [std::sync::atomic::AtomicUsize; 5] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 5];

/// The connections open now on `listener`.
pub(crate) fn connections_open(listener: &'static str) -> Gauge {
    gauge!(CONNECTIONS_OPEN, "listener" => listener)
}

/// Counts a connection refused for `reason`.
pub(crate) fn connection_refused(listener: &'static str, reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason).increment(1);
}

/// Counts a connection closed for sending no request in time.
pub(crate) fn connection_timed_out(listener: &'static str) {
    counter!(CONNECTIONS_TIMED_OUT, "listener" => listener).increment(1);
}

/// Counts a failed accept.
pub(crate) fn accept_failed(listener: &'static str) {
    counter!(ACCEPT_ERRORS, "listener" => listener).increment(1);
}

/// Bytes held by all live events (every kind).
pub(crate) fn queued_event_bytes() -> usize {
    EVENT_BYTES.iter().map(|bytes| bytes.load(std::sync::atomic::Ordering::Relaxed)).sum()
}

/// Scrapes served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;

/// Serves `GET /metrics` (the Prometheus text format, with fresh process
/// metrics) on `listener` until the process exits.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    // The recorder buffers histogram samples until a render or an upkeep:
    // with nobody scraping, upkeep keeps that bounded.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    let state = Arc::new((handle, metrics_process::Collector::default()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::connections::ACCEPT_BACKOFF_MIN;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = crate::connections::ACCEPT_BACKOFF_MIN;
                stream
            }
            // E.g. out of file descriptors: back off instead of spinning, as
            // the gRPC addresses do (counted, and logged once a second).
            Err(err) => {
                crate::connections::accept_failed("metrics", &err, backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(crate::connections::ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&request, &state.0, &state.1)) }
            });
            // A scraper that opens a connection and sends nothing is dropped.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                debug!(error = %err, "metrics endpoint: connection ended");
            }
        });
    }
}

fn respond<B>(
    request: &Request<B>,
    handle: &PrometheusHandle,
    process: &metrics_process::Collector,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            process.collect();
            for (kind, bytes) in EVENT_KINDS.iter().zip(&EVENT_BYTES) {
                gauge!(QUEUED_BYTES, "kind" => *kind).set(bytes.load(std::sync::atomic::Ordering::Relaxed) as f64);
            }
            let replay =
                |count: &std::sync::atomic::AtomicUsize| count.load(std::sync::atomic::Ordering::Relaxed) as f64;
            gauge!(REPLAY_BUFFER_MESSAGES).set(replay(&crate::session::REPLAY_EVENTS));
            gauge!(REPLAY_BUFFER_BYTES).set(replay(&crate::session::REPLAY_BYTES));
            (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: try GET /metrics\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// One session's metric handles, labelled with its mode, and what it has
/// added to the gauges, so that an actor that ends any way at all (even by a
/// panic) takes back exactly that.
#[derive(Debug)]
/// A ticking session's tick metrics.
pub(crate) struct TickMetrics {
    duration: metrics::Histogram,
    overruns: Counter,
    inputs_dropped: Counter,
}

impl TickMetrics {
    pub fn new(mode: &str) -> Self {
        let label = [("mode", SharedString::from(mode.to_owned()))];
        TickMetrics {
            duration: metrics::histogram!(TICK_DURATION, &label),
            overruns: counter!(TICK_OVERRUNS, &label),
            inputs_dropped: counter!(INPUTS_DROPPED, &label),
        }
    }

    /// A tick took `elapsed`.
    pub fn ran(&self, elapsed: std::time::Duration) {
        self.duration.record(elapsed.as_secs_f64());
    }

    pub fn overran(&self) {
        self.overruns.increment(1);
    }

    pub fn input_dropped(&self) {
        self.inputs_dropped.increment(1);
    }
}

/// A tick thread was given up on and replaced.
pub(crate) fn tick_thread_lost() {
    counter!(TICK_THREADS_LOST).increment(1);
}

pub(crate) struct SessionMetrics {
    mode: SharedString,
    pub received: Counter,
    pub queued: Counter,
    pub dropped: Counter,
    pub rate_limited: Counter,
    joins: Counter,
    players: Gauge,
    active: Gauge,
    pub replayed: Counter,
    held: Gauge,
    /// Players this session added to [`PLAYERS_CONNECTED`] and not yet took back.
    seated: u64,
    /// Seats it added to [`SEATS_HELD`] and not yet took back.
    holding: u64,
    /// The session ended through `ended` (not by a panic).
    finished: bool,
}

impl SessionMetrics {
    /// Handles for a new session of `mode`; counts it as created and active.
    pub fn started(mode: &str) -> Self {
        let mode = SharedString::from(mode.to_owned());
        let label = || [("mode", mode.clone())];
        counter!(SESSIONS_CREATED, &label()).increment(1);
        let active = gauge!(SESSIONS_ACTIVE, &label());
        active.increment(1.0);
        SessionMetrics {
            received: counter!(MESSAGES_RECEIVED, &label()),
            queued: counter!(MESSAGES_QUEUED, &label()),
            dropped: counter!(MESSAGES_DROPPED, &label()),
            rate_limited: counter!(MESSAGES_RATE_LIMITED, &label()),
            joins: counter!(PLAYER_JOINS, &label()),
            players: gauge!(PLAYERS_CONNECTED, &label()),
            replayed: counter!(MESSAGES_REPLAYED, &label()),
            held: gauge!(SEATS_HELD, &label()),
            active,
            mode,
            seated: 0,
            holding: 0,
            finished: false,
        }
    }

    /// A player took a seat.
    pub fn joined(&mut self) {
        self.joins.increment(1);
        self.players.increment(1.0);
        self.seated += 1;
    }

    /// A seat is held (`true`) or no longer (`false`).
    pub fn holding(&mut self, held: bool) {
        if held {
            self.held.increment(1.0);
            self.holding += 1;
        } else if self.holding > 0 {
            self.held.decrement(1.0);
            self.holding -= 1;
        }
    }

    /// A seat moved to a new stream of its player, `via` a resume or a join.
    pub fn took_over(&self, via: &'static str) {
        counter!(SEAT_TAKEOVERS, &[("mode", self.mode.clone()), ("via", SharedString::from(via))]).increment(1);
    }

    /// `count` players left their seats for `reason`.
    pub fn departed(&mut self, reason: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        self.players.decrement(count as f64);
        self.seated = self.seated.saturating_sub(count);
        counter!(PLAYER_DEPARTURES, &[("mode", self.mode.clone()), ("reason", SharedString::from(reason))])
            .increment(count);
    }

    /// The session ended for `reason`: it is no longer active.
    pub fn ended(&mut self, reason: &'static str) {
        counter!(SESSIONS_ENDED, &[("mode", self.mode.clone()), ("reason", SharedString::from(reason))]).increment(1);
        self.active.decrement(1.0);
        self.finished = true;
    }
}

impl Drop for SessionMetrics {
    /// An actor that did not end normally (a panic) still takes back what it
    /// added, and counts as ended for reason `aborted`.
    fn drop(&mut self) {
        self.held.decrement(self.holding as f64);
        if !self.finished {
            let seated = self.seated;
            self.departed("session_ended", seated);
            self.ended("aborted");
        }
    }
}

/// Records a unary RPC's duration with its outcome's gRPC code. A call
/// dropped before it finished (the client cancelled, or its deadline passed
/// and tonic answered for it) is recorded as `CANCELLED`.
pub(crate) async fn timed<T>(
    method: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let mut timer = RpcTimer { method, started: std::time::Instant::now(), code: None };
    let result = call.await;
    timer.code = Some(match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    });
    result
}

/// Records on drop, however the call ended.
struct RpcTimer {
    method: &'static str,
    started: std::time::Instant,
    code: Option<tonic::Code>,
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        let code = code_name(self.code.unwrap_or(tonic::Code::Cancelled));
        let labels = [("method", SharedString::from(self.method)), ("code", SharedString::from(code))];
        metrics::histogram!(RPC_DURATION, &labels).record(self.started.elapsed().as_secs_f64());
    }
}

/// A gRPC code's canonical name, as in the spec (`OK`, `NOT_FOUND`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
