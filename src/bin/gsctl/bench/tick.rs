//! The authoritative scenario: S sessions of a ticking mode (by default the
//! `arena` example, so `--server-bin target/release/examples/arena`) × P
//! players; each player sends a B-byte `input` at R Hz, and the server's
//! tick sends every player a state each tick, naming the last input of
//! theirs it includes.
//!
//! Measured over the window: the states that arrived against those the
//! tick rate (`--tick-hz`) promises, and the ticks that never came (a tick
//! that overran skips the boundaries it ran past), from the tick numbers
//! one player per session saw; input-to-state latency (from an input's
//! send to the first state that includes it: up to one tick period of that
//! is the wait for the tick, by design); and the server's and the client's
//! CPU.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::{StreamExt, stream};
use game_session::pb::{self, client_message, server_message};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Streaming;

use super::{ClientCpu, Failure, Measured, Run, Server, Target};

/// The authoritative scenario's settings.
#[derive(Debug, Args)]
pub struct TickBench {
    /// Sessions (S).
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Players per session (P).
    #[arg(long, default_value_t = 4)]
    players: u32,
    /// Inputs a second each player sends (R).
    #[arg(long, default_value_t = 30.0)]
    rate: f64,
    /// Bytes per input (B): a velocity (two f32) and padding.
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// The ticking mode to create sessions of.
    #[arg(long, default_value = "arena")]
    mode: String,
    /// The sessions' config (the arena's: its match length in seconds).
    #[arg(long, default_value = "3600")]
    config: String,
    /// The mode's tick rate, for the states and ticks expected.
    #[arg(long, default_value_t = 30)]
    tick_hz: u32,
    /// HTTP/2 connections the players are spread over. A server that falls
    /// behind on a connection with many streams of small messages closes
    /// it (h2's bound on buffered small DATA frames: half its 1 MiB
    /// connection window, at about 230 bytes an input), so the load spreads
    /// over many (real players have one each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Sending before the measured window.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    pub target: Target,
}

/// The server's own tick figures over the window: differences of two
/// scrapes of `/metrics`.
struct TickFigures {
    overruns: f64,
    /// The upper bound of the histogram bucket holding the 99th percentile.
    p99_ms: Option<f64>,
}

impl TickFigures {
    fn new(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Self {
        let delta =
            |series: &str| after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0);
        let summed = |prefix: &str| {
            after.keys().filter(|series| series.starts_with(prefix)).map(|series| delta(series)).sum::<f64>()
        };
        let overruns = summed("game_session_tick_overruns_total{");
        // Cumulative buckets by bound, summed over modes.
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for series in after.keys().filter(|s| s.starts_with("game_session_tick_duration_seconds_bucket{")) {
            let Some(bound) = series.split("le=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap_or(f64::INFINITY) };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += delta(series),
                None => buckets.push((bound, delta(series))),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last().map_or(0.0, |(_, count)| *count);
        let p99_ms = (total > 0.0)
            .then(|| buckets.iter().find(|(_, count)| *count >= 0.99 * total).map(|(bound, _)| bound * 1000.0))
            .flatten();
        TickFigures { overruns, p99_ms }
    }
}

/// What one player saw in the window.
#[derive(Default)]
struct Seen {
    states: u64,
    /// The first and last tick numbers seen (counted for one player per
    /// session).
    ticks: Option<(u64, u64)>,
    latency_us: Option<Histogram<u64>>,
    stream_errors: u64,
    /// Inputs of the window not sent: the request stream was full.
    unsent: u64,
    /// The status the stream ended with, if it ended with an error.
    error: Option<String>,
}

impl Seen {
    fn failed(&mut self, status: tonic::Status) {
        self.stream_errors += 1;
        self.error = Some(format!("{:?}: {}", status.code(), status.message()));
    }
}

/// When the players send and what they count: set once every player is in.
#[derive(Clone, Copy)]
struct Schedule {
    /// The first sends (spread over one period from here).
    start: Instant,
    period: Duration,
    /// The measured window.
    window: (Instant, Instant),
}

/// One player of the scenario.
struct Player {
    payload_len: usize,
    /// Counts the ticks its session ran (one player per session does).
    counts_ticks: bool,
    /// Where in the period its sends fall, as a fraction.
    phase: f64,
    received: Arc<AtomicU64>,
    schedule: watch::Receiver<Option<Schedule>>,
}

impl Player {
    /// Reads (and drops) its states until the schedule is set, then sends
    /// inputs on it and measures the states that include them, until the
    /// window's end.
    async fn play(mut self, tx: mpsc::Sender<pb::ClientMessage>, mut responses: Streaming<pb::ServerMessage>) -> Seen {
        let mut seen = Seen { latency_us: Histogram::new(3).ok(), ..Seen::default() };
        let Schedule { start, period, window } = loop {
            if let Some(schedule) = *self.schedule.borrow_and_update() {
                break schedule;
            }
            tokio::select! {
                changed = self.schedule.changed() => if changed.is_err() { return seen },
                message = responses.message() => match message {
                    Ok(Some(_)) => {}
                    Ok(None) => return seen,
                    Err(status) => {
                        seen.failed(status);
                        return seen;
                    }
                },
            }
        };
        let mut sent: VecDeque<(u64, Instant)> = VecDeque::new();
        let (mut sequence, mut next_send, mut last_included) = (0u64, start + period.mul_f64(self.phase), 0u64);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_send), if next_send < window.1 => {
                    sequence += 1;
                    next_send += period;
                    let mut payload = Vec::with_capacity(self.payload_len);
                    let angle = sequence as f32 * 0.7;
                    payload.extend_from_slice(&(angle.cos() * 4.0).to_le_bytes());
                    payload.extend_from_slice(&(angle.sin() * 4.0).to_le_bytes());
                    payload.resize(self.payload_len, 0);
                    sent.push_back((sequence, Instant::now()));
                    if sent.len() > 256 {
                        sent.pop_front();
                    }
                    let input = pb::Input { sequence, payload: payload.into() };
                    // A server that stopped reading (HTTP/2 flow
                    // control) must not stop the player: the input is
                    // counted as not sent, and the schedule goes on.
                    match tx.try_send(pb::ClientMessage { kind: Some(client_message::Kind::Input(input)) }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            sent.pop_back();
                            if next_send > window.0 {
                                seen.unsent += 1;
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                // A player whose states stopped coming still stops.
                () = tokio::time::sleep_until(window.1) => break,
                message = responses.message() => {
                    let now = Instant::now();
                    let state = match message {
                        Ok(Some(pb::ServerMessage { kind: Some(server_message::Kind::State(state)) })) => state,
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(status) => {
                            seen.failed(status);
                            break;
                        }
                    };
                    if now >= window.1 {
                        break;
                    }
                    if now < window.0 {
                        last_included = state.last_input_sequence;
                        continue;
                    }
                    self.received.fetch_add(1, Ordering::Relaxed);
                    seen.states += 1;
                    if self.counts_ticks {
                        seen.ticks = Some(seen.ticks.map_or((state.tick, state.tick), |(lo, _)| (lo, state.tick)));
                    }
                    // The inputs this state newly includes: each one's
                    // latency runs from its send to now.
                    while let Some(&(seq, at)) = sent.front() && seq <= state.last_input_sequence {
                        sent.pop_front();
                        if seq > last_included && let Some(h) = seen.latency_us.as_mut() {
                            let _ = h.record(now.duration_since(at).as_micros() as u64);
                        }
                    }
                    last_included = last_included.max(state.last_input_sequence);
                }
            }
        }
        drop(tx);
        seen
    }
}

impl Run for TickBench {
    fn workload(&self) -> Value {
        json!({
            "scenario": "tick", "sessions": self.sessions, "players": self.players, "rate_hz": self.rate,
            "payload_bytes": self.payload, "mode": self.mode, "tick_hz": self.tick_hz,
            "connections": self.connections, "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.as_secs_f64(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "tick: {} sessions of {} x {} players, {} Hz ticks, {} B inputs at {} Hz, {} connections; {} s window after {} s warm-up",
            self.sessions,
            self.mode,
            self.players,
            self.tick_hz,
            self.payload,
            self.rate,
            self.connections,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64()
        )
    }

    async fn run(&self, server: &Server) -> Result<Measured, Failure> {
        if self.payload < 8 || !(0.1..=1000.0).contains(&self.rate) || self.players == 0 || self.sessions == 0 {
            return Err("--payload at least 8, --rate 0.1 to 1000 Hz, --players and --sessions at least 1".into());
        }
        let channels = server.connect(self.connections).await?;
        let sessions = super::create_sessions_of(
            server,
            &channels,
            &self.mode,
            self.config.as_bytes(),
            self.sessions,
            self.players,
            &HashMap::new(),
        )
        .await?;
        let players = self.players as usize;
        let total = self.sessions * players;
        // Each player reads its stream from its welcome on (states come as
        // soon as its session has players: unread, they would fill the
        // connection's HTTP/2 window and stall the joins behind them), and
        // starts sending when every player is in.
        let (schedule_tx, schedule) = watch::channel(None);
        let received = Arc::new(AtomicU64::new(0));
        let bar = super::progress(total as u64, "{prefix} [{bar:30}] {pos}/{len} joined {elapsed_precise}");
        bar.set_prefix(server.name.to_string());
        let joins =
            sessions.iter().flat_map(|s| std::iter::repeat_n(s.clone(), players)).enumerate().map(|(n, session)| {
                let joined = super::relay::join(server, channels[n % channels.len()].clone(), session, n);
                let player = Player {
                    payload_len: self.payload,
                    counts_ticks: n % players == 0,
                    phase: n as f64 / total as f64,
                    received: received.clone(),
                    schedule: schedule.clone(),
                };
                let bar = bar.clone();
                async move {
                    let (tx, responses) = joined.await?;
                    bar.inc(1);
                    Ok::<_, Failure>(tokio::spawn(player.play(tx, responses)))
                }
            });
        let tasks: Vec<_> =
            stream::iter(joins).buffered(256).collect::<Vec<_>>().await.into_iter().collect::<Result<_, Failure>>()?;
        bar.finish_and_clear();

        let epoch = Instant::now();
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let start = epoch + Duration::from_millis(200);
        let window = (start + self.warmup, start + self.warmup + self.duration);
        let _ = schedule_tx.send(Some(Schedule { start, period, window }));

        let bar = super::progress((window.1 - epoch).as_millis() as u64, "{prefix} [{bar:30}] {elapsed_precise} {msg}");
        bar.set_prefix(server.name.to_string());
        while Instant::now() < window.0 {
            bar.set_position(epoch.elapsed().as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let server_before = server.cpu_time();
        let metrics_before = server.scrape().await;
        let client_before = super::own_cpu_time();
        let opened = Instant::now();
        let mut peak_rss = None;
        while Instant::now() < window.1 {
            peak_rss = peak_rss.max(server.rss());
            bar.set_position(epoch.elapsed().as_millis() as u64);
            bar.set_message(format!("{} states", received.load(Ordering::Relaxed)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let server_cpu = server.cpu_time().zip(server_before).map(|(after, before)| after - before);
        let client_cpu = super::own_cpu_time() - client_before;
        let ticks_in_window =
            server.scrape().await.zip(metrics_before).map(|(after, before)| TickFigures::new(&before, &after));
        let measured = opened.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let seen: Vec<Seen> = futures_util::future::join_all(tasks).await.into_iter().filter_map(Result::ok).collect();
        super::end_sessions(server, &channels[0], sessions).await;

        let mut latency = Histogram::<u64>::new(3)?;
        let (mut states, mut ticks, mut stream_errors, mut unsent) = (0u64, 0u64, 0u64, 0u64);
        for s in &seen {
            if let Some(h) = &s.latency_us {
                latency.add(h)?;
            }
            states += s.states;
            stream_errors += s.stream_errors;
            unsent += s.unsent;
            ticks += s.ticks.map_or(0, |(lo, hi)| hi - lo + 1);
        }
        let seconds = self.duration.as_secs_f64();
        let expected_ticks = self.sessions as f64 * f64::from(self.tick_hz) * seconds;
        let q = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
        let mut m = Measured::default();
        let mut errors: Vec<&str> = seen.iter().filter_map(|s| s.error.as_deref()).collect();
        errors.sort_unstable();
        errors.dedup();
        if let Some(first) = errors.first() {
            m.notes.push(format!("{stream_errors} streams ended with an error ({} kinds), e.g. {first}", errors.len()));
        }
        m.add("ticks_per_second_expected", "ticks expected /s", Some(expected_ticks / seconds), 0);
        m.add("ticks_per_second", "ticks seen /s", Some(ticks as f64 / seconds), 0);
        m.add("ticks_missed", "ticks missed (of the window's)", Some((expected_ticks - ticks as f64).max(0.0)), 0);
        m.add("tick_overruns", "tick overruns (server)", ticks_in_window.as_ref().map(|t| t.overruns), 0);
        m.add("tick_p99_ms", "tick time p99, at most (server, ms)", ticks_in_window.as_ref().and_then(|t| t.p99_ms), 2);
        m.add("inputs_per_second", "inputs offered /s", Some(total as f64 * self.rate), 0);
        m.add("inputs_unsent", "inputs not sent (server not reading)", Some(unsent as f64), 0);
        m.add("states_per_second", "states delivered /s", Some(states as f64 / seconds), 0);
        m.add("stream_errors", "streams ended with an error", Some(stream_errors as f64), 0);
        for (key, quantile) in [("p50", 0.5), ("p99", 0.99)] {
            m.add(format!("input_to_state_{key}_ms"), format!("input to state {key} (ms)"), Some(q(quantile)), 2);
        }
        m.add("input_to_state_max_ms", "input to state max (ms)", Some(latency.max() as f64 / 1000.0), 2);
        m.add("server_cpu_seconds", "server CPU (s)", server_cpu.map(|d| d.as_secs_f64()), 2);
        m.add("server_cores", "server cores", server_cpu.map(|d| d.as_secs_f64() / measured), 2);
        // A session's tick, with its inputs and its players' states.
        let per_tick = server_cpu.map(|d| d.as_secs_f64() * 1e6 / ticks.max(1) as f64);
        m.add("server_cpu_us_per_tick", "server CPU-us per session tick", per_tick, 1);
        m.add("server_peak_rss_mib", "server peak RSS (MiB)", peak_rss.map(super::mib), 1);
        let client = ClientCpu { cores: client_cpu.as_secs_f64() / measured, threads: super::client_threads() };
        m.add("client_cores", "client cores used", Some(client.cores), 2);
        m.add("client_threads", "client threads", Some(client.threads as f64), 0);
        if client.may_have_been_the_limit() {
            m.notes.push(client.note());
        }
        m.client = Some(client);
        Ok(m)
    }
}
