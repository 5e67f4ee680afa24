//! Relay load: every player of every session relays to everyone else at a
//! fixed rate, and every player counts what it receives.
//!
//! ```sh
//! GAME_SESSION_LOG=warn target/release/game-session --listen 127.0.0.1:50051 &
//! cargo run --release --example relay_load -- \
//!   --addr http://127.0.0.1:50051 --server-pid $! --sessions 100 --players 8 --rate 20 --seconds 10
//! ```
//!
//! The run:
//!
//! 1. opens `--connections` HTTP/2 connections and creates `--sessions`
//!    relay sessions of `--players` seats;
//! 2. joins every player (one Play stream each, round robin over the
//!    connections) and starts a task per player that reads its stream;
//! 3. every player sends `--rate` relays a second to everyone else, each on
//!    its own fixed schedule (the players' schedules are spread over one
//!    period, so they do not all fire at once), for `--warmup` plus
//!    `--seconds`;
//! 4. the measured window is the last `--seconds`: `--window-start-cmd` runs
//!    when it opens and `--window-end-cmd` when it closes, and the sends,
//!    deliveries and CPU time in between are reported;
//! 5. waits until every relay was sent and delivered (or `--drain` passed),
//!    then every player leaves (half-closes its request stream).
//!
//! Each payload starts with its send time, so the receivers also report the
//! relay's latency through the server.
//!
//! To count the server's instructions in the window only, run it under
//! callgrind and let the hooks zero the counters and dump them:
//!
//! ```sh
//! GAME_SESSION_LOG=warn valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
//!   target/release/game-session --listen 127.0.0.1:50051 &
//! PID=$!; sleep 10
//! cargo run --release --example relay_load -- --server-pid $PID --sessions 10 --rate 10 \
//!   --window-start-cmd "callgrind_control -z $PID" --window-end-cmd "callgrind_control -d $PID"
//! # /tmp/cg.$PID.1 holds the window; divide its total by the window's deliveries.
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use futures_util::stream::{self, StreamExt};
use game_session::BoxError;
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::session_service_client::SessionServiceClient;
use game_session::pb::{self, client_message, server_message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Relay load on the session server.
#[derive(Debug, Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The server's process id: its CPU time in the window is reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sessions.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Players per session (every seat is taken).
    #[arg(long, default_value_t = 8)]
    players: u32,
    /// Relays a second sent by each player.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Bytes of each relay's payload (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Sending before the measured window, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// HTTP/2 connections the players are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long to wait, after the last send, for the last deliveries.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// A shell command run as the measured window opens.
    #[arg(long)]
    window_start_cmd: Option<String>,
    /// A shell command run as the measured window closes.
    #[arg(long)]
    window_end_cmd: Option<String>,
}

/// Counters shared by every player's tasks.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    /// Relayed messages received, all players together.
    delivered: AtomicU64,
    /// Any other message received (presence events, errors...).
    other: AtomicU64,
    /// Sum and maximum of the relays' latencies, in microseconds.
    latency_sum_us: AtomicU64,
    latency_max_us: AtomicU64,
}

/// A point in time of the run, for differences over the window.
struct Snapshot {
    at: Instant,
    sent: u64,
    delivered: u64,
    client_cpu: CpuTime,
    server_cpu: Option<CpuTime>,
}

impl Snapshot {
    fn take(totals: &Totals, server_pid: Option<u32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            sent: totals.sent.load(Ordering::Relaxed),
            delivered: totals.delivered.load(Ordering::Relaxed),
            client_cpu: own_cpu_time(),
            server_cpu: server_pid.and_then(process_cpu_time),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.payload < 8 {
        return Err("--payload must be at least 8 bytes (the send time)".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    let players = args.players.max(1) as usize;
    let total_players = args.sessions * players;

    // Connect, create the sessions, and join every player.
    let channels = connect(&args.addr, args.connections.max(1)).await?;
    let sessions = create_sessions(&channels, args.sessions, args.players).await?;
    let epoch = Instant::now();
    let totals = Arc::new(Totals::default());
    let joining = Instant::now();
    let seats = sessions.iter().flat_map(|session| std::iter::repeat_n(session, players));
    let joins = seats.enumerate().map(|(n, session)| {
        join(channels[n % channels.len()].clone(), session.clone(), format!("p{n}"), totals.clone(), epoch)
    });
    let joined: Vec<(mpsc::Sender<pb::ClientMessage>, JoinHandle<()>)> =
        stream::iter(joins).buffered(256).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    let join_time = joining.elapsed();
    // Let the presence events of the joins go by.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Start every player's schedule, spread over one period.
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let stop = window_start + Duration::from_secs_f64(args.seconds);
    let mut senders = Vec::with_capacity(total_players);
    let mut readers = Vec::with_capacity(total_players);
    for (n, (tx, reader)) in joined.into_iter().enumerate() {
        let first = start + period.mul_f64(n as f64 / total_players as f64);
        let schedule = Schedule { first, period, stop };
        senders.push(tokio::spawn(send(tx, schedule, args.payload, totals.clone(), epoch)));
        readers.push(reader);
    }
    let begin = Snapshot::take(&totals, args.server_pid);

    // The measured window.
    tokio::time::sleep_until(window_start).await;
    // Snapshots on both sides of each hook: a hook (e.g. callgrind_control)
    // takes effect at some point while it runs.
    let opening = Snapshot::take(&totals, args.server_pid);
    let start_cmd = run_hook(args.window_start_cmd.as_deref()).await?;
    let opened = Snapshot::take(&totals, args.server_pid);
    tokio::time::sleep_until(stop).await;
    let closed = Snapshot::take(&totals, args.server_pid);
    let end_cmd = run_hook(args.window_end_cmd.as_deref()).await?;
    let after_end_cmd = Snapshot::take(&totals, args.server_pid);

    // Wait for the last sends (a relay due before the end may go out late)
    // and deliveries, then leave. The request streams stay open until then: a
    // player that half-closes is no longer sent to, and the count would be
    // off.
    let mut requests = Vec::with_capacity(total_players);
    for sender in senders {
        requests.push(sender.await?);
    }
    let expected = |sent: u64| sent * (players as u64 - 1);
    let drain_deadline = Instant::now() + args.drain;
    while totals.delivered.load(Ordering::Relaxed) < expected(totals.sent.load(Ordering::Relaxed))
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = Snapshot::take(&totals, args.server_pid);
    drop(requests);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures_util::future::join_all(readers)).await;

    // Report.
    let sent = end.sent;
    let delivered = end.delivered;
    let window = closed.at - opened.at;
    let window_delivered = closed.delivered - opened.delivered;
    println!(
        "load:                 {} sessions x {} players, {} Hz each, {} B payloads, {} connections",
        args.sessions,
        players,
        args.rate,
        args.payload,
        channels.len()
    );
    println!("joined:               {total_players} players in {:.2} s", join_time.as_secs_f64());
    println!(
        "sent:                 {sent} ({:.0}/s over {:.2} s)",
        sent as f64 / (closed.at - begin.at).as_secs_f64(),
        (closed.at - begin.at).as_secs_f64()
    );
    println!("delivered:            {delivered} (expected {}, missing {})", expected(sent), expected(sent) - delivered);
    println!("other messages:       {}", totals.other.load(Ordering::Relaxed));
    println!(
        "window:               {:.3} s: {} sent, {} delivered, {:.0} deliveries/s",
        window.as_secs_f64(),
        closed.sent - opened.sent,
        window_delivered,
        window_delivered as f64 / window.as_secs_f64()
    );
    if let (Some(a), Some(b)) = (opened.server_cpu, closed.server_cpu) {
        let cpu = b.since(&a);
        println!(
            "server CPU in window: {} ({:.1}% of a core), {:.0} ns per delivery",
            cpu,
            100.0 * cpu.total().as_secs_f64() / window.as_secs_f64(),
            cpu.total().as_nanos() as f64 / window_delivered.max(1) as f64
        );
    }
    let client_cpu = closed.client_cpu.since(&opened.client_cpu);
    println!(
        "client CPU in window: {} ({:.1}% of a core); whole run {:.3} s",
        client_cpu,
        100.0 * client_cpu.total().as_secs_f64() / window.as_secs_f64(),
        end.client_cpu.total().as_secs_f64()
    );
    println!(
        "latency:              mean {:.0} us, max {} us",
        totals.latency_sum_us.load(Ordering::Relaxed) as f64 / delivered.max(1) as f64,
        totals.latency_max_us.load(Ordering::Relaxed)
    );
    if start_cmd.is_some() || end_cmd.is_some() {
        // Where exactly within a hook's run it took effect is unknown: the
        // deliveries between the hooks, and those including the hooks' runs.
        println!(
            "hooks:                start {:.3} s, end {:.3} s; deliveries between them {}, including them {}",
            start_cmd.unwrap_or_default().as_secs_f64(),
            end_cmd.unwrap_or_default().as_secs_f64(),
            window_delivered,
            after_end_cmd.delivered - opening.delivered
        );
    }
    if delivered != expected(sent) {
        return Err(format!("{} relays were not delivered", expected(sent) - delivered).into());
    }
    Ok(())
}

/// Opens `count` HTTP/2 connections.
async fn connect(addr: &str, count: usize) -> Result<Vec<Channel>, BoxError> {
    let endpoint = Endpoint::from_shared(addr.to_owned())?.tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        // `connect` (not `connect_lazy`) makes one connection per channel.
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

/// Creates `count` relay sessions of `max_players` seats; returns their ids.
async fn create_sessions(channels: &[Channel], count: usize, max_players: u32) -> Result<Vec<String>, BoxError> {
    let calls = (0..count).map(|i| {
        let mut client = SessionServiceClient::new(channels[i % channels.len()].clone());
        async move {
            let request = pb::CreateSessionRequest { mode: "relay".into(), max_players, ..Default::default() };
            let response = client.create_session(request).await?.into_inner();
            Ok::<_, BoxError>(response.session.ok_or("CreateSession returned no session")?.session_id)
        }
    });
    stream::iter(calls).buffered(64).collect::<Vec<_>>().await.into_iter().collect()
}

/// Joins `session` as `player` and waits for the welcome. Returns the sender
/// of the player's request stream and the task reading its responses.
async fn join(
    channel: Channel,
    session: String,
    player: String,
    totals: Arc<Totals>,
    epoch: Instant,
) -> Result<(mpsc::Sender<pb::ClientMessage>, JoinHandle<()>), BoxError> {
    let (tx, rx) = mpsc::channel(64);
    let join = pb::Join {
        target: Some(pb::join::Target::SessionId(session)),
        player_id: player,
        display_name: String::new(),
        metadata: Default::default(),
    };
    tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) }).await?;
    let mut responses = PlayerServiceClient::new(channel).play(ReceiverStream::new(rx)).await?.into_inner();
    match responses.message().await?.and_then(|m| m.kind) {
        Some(server_message::Kind::Welcome(_)) => {}
        other => return Err(format!("expected a welcome, got {other:?}").into()),
    }
    Ok((tx, tokio::spawn(read(responses, totals, epoch))))
}

/// When a player sends: at `first`, then every `period`, until `stop`.
struct Schedule {
    first: tokio::time::Instant,
    period: Duration,
    stop: tokio::time::Instant,
}

/// Sends relays to everyone else on the schedule. A relay sent late does not
/// move the next one, so the number sent does not depend on the load.
/// Returns the request stream's sender, still open.
async fn send(
    tx: mpsc::Sender<pb::ClientMessage>,
    schedule: Schedule,
    payload_len: usize,
    totals: Arc<Totals>,
    epoch: Instant,
) -> mpsc::Sender<pb::ClientMessage> {
    let mut at = schedule.first;
    while at < schedule.stop {
        tokio::time::sleep_until(at).await;
        at += schedule.period;
        let mut payload = BytesMut::with_capacity(payload_len);
        payload.put_u64_le(epoch.elapsed().as_micros() as u64);
        payload.resize(payload_len, 0xa5);
        let relay = pb::Relay { payload: payload.freeze(), targets: Vec::new(), droppable: false };
        if tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Relay(relay)) }).await.is_err() {
            break;
        }
        totals.sent.fetch_add(1, Ordering::Relaxed);
    }
    tx
}

/// Reads a player's stream to its end, counting relays and their latency.
async fn read(mut responses: Streaming<pb::ServerMessage>, totals: Arc<Totals>, epoch: Instant) {
    while let Ok(Some(message)) = responses.message().await {
        match message.kind {
            Some(server_message::Kind::Relayed(relayed)) => {
                totals.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = sent_at(&relayed.payload) {
                    let latency = (epoch.elapsed().as_micros() as u64).saturating_sub(sent);
                    totals.latency_sum_us.fetch_add(latency, Ordering::Relaxed);
                    totals.latency_max_us.fetch_max(latency, Ordering::Relaxed);
                }
            }
            _ => {
                totals.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The send time at the start of a payload, in microseconds since the epoch.
fn sent_at(payload: &Bytes) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Runs `cmd` with `sh -c`, if given; returns how long it took.
async fn run_hook(cmd: Option<&str>) -> Result<Option<Duration>, BoxError> {
    let Some(cmd) = cmd else { return Ok(None) };
    let started = Instant::now();
    let status = tokio::process::Command::new("sh").arg("-c").arg(cmd).status().await?;
    if !status.success() {
        return Err(format!("`{cmd}` failed: {status}").into());
    }
    Ok(Some(started.elapsed()))
}

/// A process's CPU time.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    user: Duration,
    system: Duration,
}

impl CpuTime {
    fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The CPU time used since `earlier`.
    fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime { user: self.user.saturating_sub(earlier.user), system: self.system.saturating_sub(earlier.system) }
    }
}

impl std::fmt::Display for CpuTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (user, system) = (self.user.as_secs_f64(), self.system.as_secs_f64());
        write!(f, "{:.3} s (user {user:.3} s, system {system:.3} s)", user + system)
    }
}

/// This process's CPU time.
fn own_cpu_time() -> CpuTime {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    CpuTime { user: time(usage.ru_utime), system: time(usage.ru_stime) }
}

/// Another process's CPU time, from /proc/<pid>/stat.
fn process_cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th of them, in clock ticks.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / per_second);
    Some(CpuTime { user: time(user), system: time(system) })
}
