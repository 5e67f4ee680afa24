//! The relay scenario: S sessions × P players, each sending a B-byte payload
//! at R Hz to everyone else on an open-loop schedule, spread over C HTTP/2
//! connections, with a warm-up and a measured window.
//!
//! Every payload carries its send time, its sender and the sender's counter,
//! so each receiver measures latency (an HDR histogram) and checks that no
//! message is duplicated or out of order. The schedule is open-loop: a send
//! that is due while the previous one is still going out goes late, never
//! skipped, and how late is reported.
//!
//! `--find-max` keeps S and P and raises R: it doubles R until a step breaks
//! the largest p99 bound (or loses a message), then bisects between the last
//! good and the first bad rate of each bound, and reports the last good step
//! For each bound it reports the step with the most deliveries among those
//! that held it. A step holds a bound when its p99 is within it, nothing was
//! lost, duplicated or reordered, and the client sent what was offered (at
//! least 98%: a client that cannot keep up sends late, and its rate is not
//! the one offered). A step that breaks a bound it could still move runs
//! twice and the better run counts, since on a shared machine one stall can
//! push a p99 up on its own; the report marks those steps.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Args;
use futures_util::{StreamExt, stream};
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::{self, client_message, server_message};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{ClientCpu, Failure, Measured, Run, Server, Target};

/// The relay scenario's settings.
#[derive(Debug, Args)]
pub struct Relay {
    /// Sessions (S).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Players per session (P); every seat is taken.
    #[arg(long, default_value_t = 8)]
    players: u32,
    /// Relays a second each player sends (R); with --find-max, the first step.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Payload bytes (B); at least 16 (send time, sender, counter).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// HTTP/2 connections the players are spread over (C).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Sending before the measured window.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After the last send, how long to wait for the last deliveries.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Search for the highest rate whose p99 stays within each --p99-bound,
    /// with no message lost.
    #[arg(long)]
    find_max: bool,
    /// A p99 latency bound for --find-max; repeat for more.
    #[arg(long = "p99-bound", default_values = ["5ms", "50ms"], value_parser = humantime::parse_duration)]
    p99_bounds: Vec<Duration>,
    /// --find-max: bisection steps between a bound's last good and first bad
    /// rate.
    #[arg(long, default_value_t = 3)]
    refine: u32,
    /// A shell command run as the window opens, e.g. `callgrind_control -z PID`
    /// to count the server's instructions in the window only.
    #[arg(long)]
    window_start_cmd: Option<String>,
    /// A shell command run as the window closes, e.g. `callgrind_control -d PID`.
    #[arg(long)]
    window_end_cmd: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// The header at the start of every payload.
const HEADER: usize = 16;

/// What one receiver saw of the messages sent inside the window.
struct Seen {
    latency_us: Histogram<u64>,
    delivered: u64,
    duplicates: u64,
    order_violations: u64,
    /// 1 if the stream ended with an error.
    stream_errors: u64,
}

/// One run of the workload at one rate.
struct Step {
    rate: f64,
    connect_seconds: f64,
    offered_per_second: f64,
    achieved_per_second: f64,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    order_violations: u64,
    /// Latency quantiles in ms: p50, p90, p99, p99.9, max.
    latency_ms: [f64; 5],
    late_sends: u64,
    max_lateness_ms: f64,
    /// Streams that ended with an error (e.g. a slow player removed).
    stream_errors: u64,
    /// The p99 of a first run that this step, its retry, replaced.
    retried_p99_ms: Option<f64>,
    server_cpu_seconds: Option<f64>,
    server_peak_rss: Option<u64>,
    client_cpu_seconds: f64,
    /// The window as measured, between the CPU readings.
    window_seconds: f64,
}

impl Step {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Every message arrived, once and in order, within `bound` at p99, and
    /// the client kept up with the offered rate.
    fn holds(&self, bound: Duration) -> bool {
        self.lost() == 0
            && self.duplicates == 0
            && self.order_violations == 0
            && self.stream_errors == 0
            && self.achieved_per_second >= 0.98 * self.offered_per_second
            && self.latency_ms[2] <= bound.as_secs_f64() * 1000.0
    }

    fn server_cores(&self) -> Option<f64> {
        self.server_cpu_seconds.map(|s| s / self.window_seconds)
    }

    fn client_cores(&self) -> f64 {
        self.client_cpu_seconds / self.window_seconds
    }

    fn to_json(&self) -> Value {
        json!({
            "rate_hz": self.rate,
            "offered_deliveries_per_second": self.offered_per_second,
            "achieved_deliveries_per_second": self.achieved_per_second,
            "lost": self.lost(),
            "duplicates": self.duplicates,
            "order_violations": self.order_violations,
            "latency_p99_ms": self.latency_ms[2],
            "stream_errors": self.stream_errors,
            "retried_after_p99_ms": self.retried_p99_ms,
            "server_cores": self.server_cores(),
            "client_cores": self.client_cores(),
        })
    }

    /// The step's figures in a report.
    fn measured(&self) -> Measured {
        let mut m = Measured::default();
        m.add("connect_seconds", "connect (s)", Some(self.connect_seconds), 2);
        m.add("offered_deliveries_per_second", "deliveries offered /s", Some(self.offered_per_second), 0);
        // Deliveries of the messages sent in the window, per second of it
        // (some arrive just after it closes).
        m.add("achieved_deliveries_per_second", "deliveries achieved /s", Some(self.achieved_per_second), 0);
        m.add("expected_deliveries", "deliveries expected", Some(self.expected as f64), 0);
        m.add("delivered", "delivered", Some(self.delivered as f64), 0);
        m.add("lost", "lost", Some(self.lost() as f64), 0);
        m.add("duplicates", "duplicates", Some(self.duplicates as f64), 0);
        m.add("order_violations", "order violations", Some(self.order_violations as f64), 0);
        m.add("stream_errors", "streams ended with an error", Some(self.stream_errors as f64), 0);
        for (key, q) in ["p50", "p90", "p99", "p99_9", "max"].iter().zip(self.latency_ms) {
            m.add(format!("latency_{key}_ms"), format!("latency {} (ms)", key.replace('_', ".")), Some(q), 3);
        }
        m.add("late_sends", "sends >1 ms late", Some(self.late_sends as f64), 0);
        m.add("max_send_lateness_ms", "max send lateness (ms)", Some(self.max_lateness_ms), 1);
        m.add("server_cpu_seconds", "server CPU (s)", self.server_cpu_seconds, 2);
        let per_100k = self.server_cpu_seconds.map(|s| s * 100_000.0 / self.delivered.max(1) as f64);
        m.add("server_cpu_seconds_per_100k_deliveries", "server CPU-s per 100k deliveries", per_100k, 3);
        m.add("server_peak_rss_mib", "server peak RSS (MiB)", self.server_peak_rss.map(super::mib), 1);
        m.add("client_cpu_seconds", "client CPU (s)", Some(self.client_cpu_seconds), 2);
        m.add("client_cores", "client cores used", Some(self.client_cores()), 2);
        let client = ClientCpu { cores: self.client_cores(), threads: super::client_threads() };
        m.add("client_threads", "client threads", Some(client.threads as f64), 0);
        if client.may_have_been_the_limit() {
            m.notes.push(client.note());
        }
        m.client = Some(client);
        m
    }
}

impl Run for Relay {
    fn workload(&self) -> Value {
        json!({
            "scenario": if self.find_max { "relay --find-max" } else { "relay" },
            "sessions": self.sessions, "players": self.players, "rate_hz": self.rate,
            "payload_bytes": self.payload, "connections": self.connections,
            "warmup_seconds": self.warmup.as_secs_f64(), "window_seconds": self.duration.as_secs_f64(),
            "p99_bounds_ms": self.p99_bounds.iter().map(|b| b.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
        })
    }

    fn describe(&self) -> String {
        let rate = if self.find_max { format!("from {} Hz up", self.rate) } else { format!("{} Hz", self.rate) };
        format!(
            "relay{}: {} sessions x {} players, {rate}, {} B, {} connections; {} s window after {} s warm-up",
            if self.find_max { " --find-max" } else { "" },
            self.sessions,
            self.players,
            self.payload,
            self.connections.max(1),
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64()
        )
    }

    async fn run(&self, server: &Server) -> Result<Measured, Failure> {
        if self.payload < HEADER {
            return Err(format!("--payload must be at least {HEADER} bytes").into());
        }
        if !(0.001..=10_000.0).contains(&self.rate) || self.players < 2 || self.sessions == 0 {
            return Err("--rate must be 0.001 to 10000 Hz, --players at least 2 and --sessions at least 1".into());
        }
        if self.find_max { self.find_max(server).await } else { Ok(self.step(server, self.rate).await?.measured()) }
    }

    /// `--find-max` measures capacity, and raises each player's rate past
    /// the server's default per-player limits (200 messages/s, 1 MiB/s),
    /// which would then drop messages on purpose: they are turned off.
    fn server_args(&self) -> Vec<String> {
        let over_default = self.find_max || self.rate > 200.0 || self.rate * self.payload as f64 > f64::from(1 << 20);
        if !over_default {
            return Vec::new();
        }
        ["--player-message-rate", "0", "--player-byte-rate", "0"].map(str::to_owned).to_vec()
    }
}

impl Relay {
    /// Doubles the rate until the largest bound breaks, then bisects each
    /// bound's interval; reports each bound's last good step.
    async fn find_max(&self, server: &Server) -> Result<Measured, Failure> {
        let mut bounds = self.p99_bounds.clone();
        bounds.sort();
        bounds.dedup();
        let mut search =
            Search { good: vec![None; bounds.len()], bad: vec![None; bounds.len()], bounds, steps: Vec::new() };
        let mut rate = self.rate;
        // Doubling stops at the rate limit, past what any client can send.
        while rate <= 10_000.0 && search.bad.iter().any(Option::is_none) {
            let step = self.confirmed_step(server, rate, &search).await?;
            search.record(server.name, step);
            rate *= 2.0;
        }
        for i in 0..search.bounds.len() {
            for _ in 0..self.refine {
                let (Some(low), Some(high)) = (search.good[i], search.bad[i]) else { break };
                if high <= low {
                    break;
                }
                let step = self.confirmed_step(server, (low + high) / 2.0, &search).await?;
                search.record(server.name, step);
            }
        }
        let Search { bounds, steps, .. } = search;

        let mut m = Measured::default();
        for bound in &bounds {
            let ms = bound.as_secs_f64() * 1000.0;
            // The fastest step that held the bound (a later, faster one may
            // have held it by luck after a slower one failed: take the best).
            let best = steps
                .iter()
                .filter(|s| s.holds(*bound))
                .max_by(|a, b| a.achieved_per_second.total_cmp(&b.achieved_per_second));
            m.add(format!("max_rate_hz_p99_le_{ms}ms"), format!("p99 <= {ms} ms: rate (Hz)"), best.map(|s| s.rate), 1);
            m.add(
                format!("max_deliveries_per_second_p99_le_{ms}ms"),
                format!("p99 <= {ms} ms: deliveries /s"),
                best.map(|s| s.achieved_per_second),
                0,
            );
            m.add(
                format!("p99_ms_at_max_p99_le_{ms}ms"),
                format!("p99 <= {ms} ms: p99 (ms)"),
                best.map(|s| s.latency_ms[2]),
                3,
            );
            m.add(
                format!("server_cores_at_max_p99_le_{ms}ms"),
                format!("p99 <= {ms} ms: server cores"),
                best.and_then(Step::server_cores),
                2,
            );
            m.add(
                format!("client_cores_at_max_p99_le_{ms}ms"),
                format!("p99 <= {ms} ms: client cores"),
                best.map(Step::client_cores),
                2,
            );
            if best.is_none() {
                m.notes.push(format!("no step held p99 <= {ms} ms: start lower (--rate)"));
            }
            let client = best.map(|s| ClientCpu { cores: s.client_cores(), threads: super::client_threads() });
            if let Some(client) = client.filter(ClientCpu::may_have_been_the_limit) {
                m.notes.push(format!("at the p99 <= {ms} ms maximum, {}", client.note()));
            }
        }
        m.details.insert("steps".into(), Value::Array(steps.iter().map(Step::to_json).collect()));
        Ok(m)
    }

    /// Runs a step. One that breaks a bound it could still move (the rate
    /// is below the lowest rate known to break it) runs once more, and the
    /// better of the two counts, so that one stall of a shared machine (a
    /// p99 over a few seconds is a few dozen milliseconds of them) does not
    /// end the search early.
    async fn confirmed_step(&self, server: &Server, rate: f64, search: &Search) -> Result<Step, Failure> {
        let first = self.step(server, rate).await?;
        let movable = |s: &Step| {
            search.bounds.iter().zip(&search.bad).any(|(bound, bad)| !s.holds(*bound) && bad.is_none_or(|b| rate < b))
        };
        if !movable(&first) {
            return Ok(first);
        }
        let mut second = self.step(server, rate).await?;
        let held = |s: &Step| search.bounds.iter().filter(|b| s.holds(**b)).count();
        if (held(&second), -second.latency_ms[2]) > (held(&first), -first.latency_ms[2]) {
            second.retried_p99_ms = Some(first.latency_ms[2]);
            Ok(second)
        } else {
            let mut first = first;
            first.retried_p99_ms = Some(second.latency_ms[2]);
            Ok(first)
        }
    }

    /// Runs the workload once at `rate` and measures it.
    async fn step(&self, server: &Server, rate: f64) -> Result<Step, Failure> {
        let channels = server.connect(self.connections).await?;

        // Sessions and players.
        let sessions = super::create_sessions(server, &channels, self.sessions, self.players, &HashMap::new()).await?;
        let players = self.players as usize;
        let connecting = Instant::now();
        let joins = sessions
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.clone(), players))
            .enumerate()
            .map(|(n, session)| join(server, channels[n % channels.len()].clone(), session, n));
        let joined: Vec<(mpsc::Sender<pb::ClientMessage>, Streaming<pb::ServerMessage>)> =
            stream::iter(joins).buffered(256).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
        let connect_time = connecting.elapsed();

        // The schedule: every player's first send spread over one period.
        let epoch = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = epoch + Duration::from_millis(200);
        let window_start = start + self.warmup;
        let window_end = window_start + self.duration;
        let micros = |at: Instant| at.duration_since(epoch).as_micros() as u64;
        let window = (micros(window_start), micros(window_end));
        let total = joined.len();
        let late = Arc::new(LateSends::default());
        let sent_in_window = Arc::new(AtomicU64::new(0));
        let delivered_so_far = Arc::new(AtomicU64::new(0));
        let histogram = Histogram::<u64>::new(3)?;
        // Join sets: should the step fail half-way, dropping them stops
        // every task.
        let mut senders = JoinSet::new();
        let mut readers = JoinSet::new();
        let stop_reading = CancellationToken::new();
        for (n, (tx, responses)) in joined.into_iter().enumerate() {
            let first = start + period.mul_f64(n as f64 / total as f64);
            let schedule = Schedule { first, period, stop: window_end, epoch, window };
            senders.spawn(send(tx, n as u32, schedule, self.payload, late.clone(), sent_in_window.clone()));
            let reading =
                Reading { epoch, window, delivered_so_far: delivered_so_far.clone(), stop: stop_reading.clone() };
            readers.spawn(read(responses, histogram.clone(), reading));
        }

        // The warm-up and the window, with the server's CPU and peak RSS.
        let bar =
            super::progress((window_end - epoch).as_millis() as u64, "{prefix} [{bar:30}] {elapsed_precise} {msg}");
        bar.set_prefix(format!("{} {rate} Hz", server.name));
        let tick = |bar: &indicatif::ProgressBar| {
            bar.set_position(epoch.elapsed().as_millis() as u64);
            bar.set_message(format!("{} delivered", delivered_so_far.load(Ordering::Relaxed)));
        };
        while Instant::now() < window_start {
            tick(&bar);
            tokio::time::sleep(Duration::from_millis(100).min(window_start.saturating_duration_since(Instant::now())))
                .await;
        }
        run_hook(self.window_start_cmd.as_deref()).await?;
        let server_before = server.cpu_time();
        let client_before = super::own_cpu_time();
        let opened = Instant::now();
        let mut peak_rss = None;
        while Instant::now() < window_end {
            peak_rss = peak_rss.max(server.rss());
            tick(&bar);
            tokio::time::sleep(Duration::from_millis(100).min(window_end.saturating_duration_since(Instant::now())))
                .await;
        }
        let server_cpu = server.cpu_time().zip(server_before).map(|(after, before)| after - before);
        let client_cpu = super::own_cpu_time() - client_before;
        // The CPU readings' own window: the hook or a busy client may have
        // moved its edges off the nominal ones.
        let measured_window = opened.elapsed();
        run_hook(self.window_end_cmd.as_deref()).await?;
        bar.finish_and_clear();

        // The last sends and deliveries, then leave.
        let open_streams = senders.join_all().await;
        // A player that half-closes is sent nothing more, so leave only once
        // the deliveries are in (or the drain time is up).
        let expected = sent_in_window.load(Ordering::Relaxed) * (players as u64 - 1);
        let deadline = Instant::now() + self.drain;
        while delivered_so_far.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(open_streams);
        // Each reader ends with its stream; those whose stream has not ended
        // a few seconds after the leave stop reading, and report what they saw.
        let mut seen = Vec::with_capacity(readers.len());
        let leave_deadline = Instant::now() + Duration::from_secs(5);
        while !readers.is_empty() {
            match tokio::time::timeout_at(leave_deadline, readers.join_next()).await {
                Ok(Some(result)) => seen.push(result?),
                Ok(None) => break,
                Err(_) => stop_reading.cancel(),
            }
        }
        super::end_sessions(server, &channels[0], sessions).await;

        let mut latency = Histogram::<u64>::new(3)?;
        let (mut delivered, mut duplicates, mut order_violations, mut stream_errors) = (0, 0, 0, 0);
        for s in &seen {
            latency.add(&s.latency_us)?;
            delivered += s.delivered;
            duplicates += s.duplicates;
            order_violations += s.order_violations;
            stream_errors += s.stream_errors;
        }
        let q = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
        // Deliveries are counted by their send time in the nominal window.
        let seconds = self.duration.as_secs_f64();
        Ok(Step {
            rate,
            connect_seconds: connect_time.as_secs_f64(),
            offered_per_second: (self.sessions * players * (players - 1)) as f64 * rate,
            achieved_per_second: delivered as f64 / seconds,
            expected,
            delivered,
            duplicates,
            order_violations,
            stream_errors,
            retried_p99_ms: None,
            latency_ms: [q(0.5), q(0.9), q(0.99), q(0.999), latency.max() as f64 / 1000.0],
            late_sends: late.count.load(Ordering::Relaxed),
            max_lateness_ms: late.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
            server_cpu_seconds: server_cpu.map(|d| d.as_secs_f64()),
            server_peak_rss: peak_rss,
            client_cpu_seconds: client_cpu.as_secs_f64(),
            window_seconds: measured_window.as_secs_f64(),
        })
    }
}

/// The state of `--find-max`.
struct Search {
    /// The p99 bounds, ascending.
    bounds: Vec<Duration>,
    /// Per bound: the highest rate that held it so far.
    good: Vec<Option<f64>>,
    /// Per bound: the lowest rate that broke it so far.
    bad: Vec<Option<f64>>,
    steps: Vec<Step>,
}

impl Search {
    fn record(&mut self, server: &str, step: Step) {
        for (i, bound) in self.bounds.iter().enumerate() {
            if step.holds(*bound) {
                self.good[i] = Some(self.good[i].map_or(step.rate, |g| g.max(step.rate)));
            } else {
                self.bad[i] = Some(self.bad[i].map_or(step.rate, |b| b.min(step.rate)));
            }
        }
        eprintln!(
            "{server}: {:>8.1} Hz  {:>9.0} deliveries/s  p99 {:>8.3} ms  lost {}  server {} cores  client {:.2} cores",
            step.rate,
            step.achieved_per_second,
            step.latency_ms[2],
            step.lost(),
            step.server_cores().map_or("-".into(), |c| format!("{c:.2}")),
            step.client_cores()
        );
        self.steps.push(step);
    }
}

/// When a player sends, and which sends count.
#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    period: Duration,
    /// No sends from here on.
    stop: Instant,
    /// Send times are microseconds since this instant.
    epoch: Instant,
    /// The measured window, in microseconds since `epoch`.
    window: (u64, u64),
}

/// Joins `session` as player `n` (with a token of its own when the server
/// checks) and waits for the welcome.
pub(super) async fn join(
    server: &Server,
    channel: Channel,
    session: String,
    n: usize,
) -> Result<(mpsc::Sender<pb::ClientMessage>, Streaming<pb::ServerMessage>), Failure> {
    let (tx, rx) = mpsc::channel(64);
    let player_id = format!("bench-{n}");
    let token = server.credentials.player_token(&player_id)?;
    let join = pb::Join { target: Some(pb::join::Target::SessionId(session)), player_id, ..Default::default() };
    tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) }).await?;
    let request = super::play_request(token, ReceiverStream::new(rx));
    let mut responses = PlayerServiceClient::new(channel).play(request).await?.into_inner();
    match responses.message().await?.and_then(|m| m.kind) {
        Some(server_message::Kind::Welcome(_)) => Ok((tx, responses)),
        other => Err(format!("expected a welcome, got {other:?}").into()),
    }
}

/// Sends that went out late.
#[derive(Default)]
struct LateSends {
    /// Sends more than a millisecond late.
    count: AtomicU64,
    max_us: AtomicU64,
}

/// Sends on the schedule until it stops; returns the still-open request
/// stream.
async fn send(
    tx: mpsc::Sender<pb::ClientMessage>,
    sender: u32,
    schedule: Schedule,
    payload_len: usize,
    late: Arc<LateSends>,
    sent_in_window: Arc<AtomicU64>,
) -> mpsc::Sender<pb::ClientMessage> {
    let mut at = schedule.first;
    let mut counter = 0u32;
    while at < schedule.stop {
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        if now >= schedule.stop {
            // Too late for the window: what is left of the schedule would
            // only prolong an overloaded step.
            break;
        }
        let lateness = now.saturating_duration_since(at).as_micros() as u64;
        if lateness > 1000 {
            late.count.fetch_add(1, Ordering::Relaxed);
            late.max_us.fetch_max(lateness, Ordering::Relaxed);
        }
        // Latency counts from the actual send; how late sends went out is
        // reported on its own (tokio's timer has millisecond resolution).
        let sent_at = now.duration_since(schedule.epoch).as_micros() as u64;
        at += schedule.period;
        counter += 1;
        let mut payload = BytesMut::with_capacity(payload_len);
        payload.put_u64_le(sent_at);
        payload.put_u32_le(sender);
        payload.put_u32_le(counter);
        payload.resize(payload_len, 0xa5);
        let relay = pb::Relay { payload: payload.freeze(), targets: Vec::new(), droppable: false };
        if tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Relay(relay)) }).await.is_err() {
            break;
        }
        if (schedule.window.0..schedule.window.1).contains(&sent_at) {
            sent_in_window.fetch_add(1, Ordering::Relaxed);
        }
    }
    tx
}

/// What a reader needs besides its stream.
struct Reading {
    /// Send times are microseconds since this instant.
    epoch: Instant,
    /// The measured window, in microseconds since `epoch`.
    window: (u64, u64),
    /// Deliveries in the window so far, over every reader.
    delivered_so_far: Arc<AtomicU64>,
    /// Stop reading a stream that has not ended.
    stop: CancellationToken,
}

/// Reads a player's stream to its end (or until told to stop); measures what
/// was sent in the window.
async fn read(mut responses: Streaming<pb::ServerMessage>, latency_us: Histogram<u64>, reading: Reading) -> Seen {
    let mut seen = Seen { latency_us, delivered: 0, duplicates: 0, order_violations: 0, stream_errors: 0 };
    let mut last_counter: HashMap<u32, u32> = HashMap::new();
    let mut last_sequence = 0;
    loop {
        let message = tokio::select! {
            biased;
            () = reading.stop.cancelled() => break,
            message = responses.message() => match message {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    seen.stream_errors = 1;
                    break;
                }
            },
        };
        let Some(server_message::Kind::Relayed(relayed)) = message.kind else { continue };
        // The session's sequence orders every message; a repeat of the last
        // one is a duplicate, anything lower is out of order.
        if relayed.sequence == last_sequence {
            seen.duplicates += 1;
            continue;
        }
        if relayed.sequence < last_sequence {
            seen.order_violations += 1;
            continue;
        }
        last_sequence = relayed.sequence;
        let Some((sent_at, sender, counter)) = header(relayed.payload) else { continue };
        // And each sender's counter orders its own messages.
        match last_counter.insert(sender, counter) {
            Some(previous) if previous == counter => seen.duplicates += 1,
            Some(previous) if previous > counter => seen.order_violations += 1,
            _ => {}
        }
        if (reading.window.0..reading.window.1).contains(&sent_at) {
            seen.delivered += 1;
            reading.delivered_so_far.fetch_add(1, Ordering::Relaxed);
            let now = reading.epoch.elapsed().as_micros() as u64;
            let _ = seen.latency_us.record(now.saturating_sub(sent_at).max(1));
        }
    }
    seen
}

fn header(mut payload: Bytes) -> Option<(u64, u32, u32)> {
    if payload.len() < HEADER {
        return None;
    }
    Some((payload.get_u64_le(), payload.get_u32_le(), payload.get_u32_le()))
}

/// Runs `cmd` with `sh -c`, if given.
async fn run_hook(cmd: Option<&str>) -> Result<(), Failure> {
    let Some(cmd) = cmd else { return Ok(()) };
    let status = tokio::process::Command::new("sh").arg("-c").arg(cmd).status().await?;
    if !status.success() {
        return Err(format!("`{cmd}` failed: {status}").into());
    }
    Ok(())
}
