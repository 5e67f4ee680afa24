//! `gsctl bench`: the relay workload. S sessions × P players, each sending a
//! B-byte payload at R Hz to everyone else on an open-loop schedule, spread
//! over C HTTP/2 connections, with a warm-up and a measured window.
//!
//! Every payload carries its send time, its sender and the sender's counter,
//! so each receiver measures latency (an HDR histogram) and checks that no
//! message is duplicated or out of order. The schedule is open-loop: a send
//! that is due while the previous one is still going out goes late, never
//! skipped, and how late is reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Args;
use futures_util::{StreamExt, stream};
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::session_service_client::SessionServiceClient;
use game_session::pb::{self, client_message, server_message};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// The relay workload's settings.
#[derive(Debug, Args)]
pub struct Bench {
    /// Sessions (S).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Players per session (P); every seat is taken.
    #[arg(long, default_value_t = 8)]
    players: u32,
    /// Relays a second each player sends (R).
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
    /// The server's process id (same machine): its CPU time and RSS over the
    /// window are reported, from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A shell command run as the window opens, e.g. `callgrind_control -z PID`
    /// to count the server's instructions in the window only.
    #[arg(long)]
    window_start_cmd: Option<String>,
    /// A shell command run as the window closes, e.g. `callgrind_control -d PID`.
    #[arg(long)]
    window_end_cmd: Option<String>,
}

/// The header at the start of every payload.
const HEADER: usize = 16;

/// What one receiver saw of the messages sent inside the window.
struct Seen {
    latency_us: Histogram<u64>,
    delivered: u64,
    duplicates: u64,
    order_violations: u64,
}

/// Runs the workload against `addr` and prints its summary.
pub async fn run(addr: &str, bench: Bench, json_output: bool) -> Result<(), super::Failure> {
    if bench.payload < HEADER {
        return Err(format!("--payload must be at least {HEADER} bytes").into());
    }
    if !(bench.rate > 0.0 && bench.rate.is_finite()) || bench.players < 2 || bench.sessions == 0 {
        return Err("--rate must be positive, --players at least 2 and --sessions at least 1".into());
    }
    let endpoint = Endpoint::from_shared(addr.to_owned())?.tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..bench.connections.max(1) {
        channels.push(endpoint.connect().await?);
    }

    // Sessions and players.
    let creates = (0..bench.sessions).map(|i| {
        let mut client = SessionServiceClient::new(channels[i % channels.len()].clone());
        let request =
            pb::CreateSessionRequest { mode: "relay".into(), max_players: bench.players, ..Default::default() };
        async move {
            Ok::<_, super::Failure>(
                client.create_session(request).await?.into_inner().session.unwrap_or_default().session_id,
            )
        }
    });
    let sessions: Vec<String> =
        stream::iter(creates).buffered(64).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    let players = bench.players as usize;
    let connecting = Instant::now();
    let joins = sessions
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.clone(), players))
        .enumerate()
        .map(|(n, session)| join(channels[n % channels.len()].clone(), session, n));
    let joined: Vec<(mpsc::Sender<pb::ClientMessage>, Streaming<pb::ServerMessage>)> =
        stream::iter(joins).buffered(256).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    let connect_time = connecting.elapsed();

    // The schedule: every player's first send spread over one period.
    let epoch = Instant::now();
    let period = Duration::from_secs_f64(1.0 / bench.rate);
    let start = epoch + Duration::from_millis(200);
    let window_start = start + bench.warmup;
    let window_end = window_start + bench.duration;
    let micros = |at: Instant| at.duration_since(epoch).as_micros() as u64;
    let window = (micros(window_start), micros(window_end));
    let total = joined.len();
    let late = Arc::new(LateSends::default());
    let sent_in_window = Arc::new(AtomicU64::new(0));
    let delivered_so_far = Arc::new(AtomicU64::new(0));
    let histogram = Histogram::<u64>::new(3)?;
    let mut senders = Vec::new();
    let mut readers: Vec<JoinHandle<Seen>> = Vec::new();
    for (n, (tx, responses)) in joined.into_iter().enumerate() {
        let first = start + period.mul_f64(n as f64 / total as f64);
        let (late, sent_in_window) = (late.clone(), sent_in_window.clone());
        senders.push(tokio::spawn(send(
            tx,
            n as u32,
            first,
            period,
            window_end,
            bench.payload,
            epoch,
            window,
            late,
            sent_in_window,
        )));
        readers.push(tokio::spawn(read(responses, epoch, window, histogram.clone(), delivered_so_far.clone())));
    }

    // The window, with the server's CPU and peak RSS.
    tokio::time::sleep_until(window_start).await;
    run_hook(bench.window_start_cmd.as_deref()).await?;
    let server_before = bench.server_pid.and_then(process_cpu_time);
    let client_before = own_cpu_time();
    let mut peak_rss = 0;
    while Instant::now() < window_end {
        if let Some(rss) = bench.server_pid.and_then(process_rss) {
            peak_rss = peak_rss.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(100).min(window_end.saturating_duration_since(Instant::now()))).await;
    }
    let server_cpu =
        bench.server_pid.and_then(process_cpu_time).zip(server_before).map(|(after, before)| after - before);
    let client_cpu = own_cpu_time() - client_before;
    run_hook(bench.window_end_cmd.as_deref()).await?;

    // The last sends and deliveries, then leave.
    let mut open_streams = Vec::new();
    for sender in senders {
        open_streams.push(sender.await?);
    }
    // A player that half-closes is sent nothing more, so leave only once the
    // deliveries are in (or the drain time is up).
    let expected = sent_in_window.load(Ordering::Relaxed) * (players as u64 - 1);
    let deadline = Instant::now() + bench.drain;
    while delivered_so_far.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    drop(open_streams);
    for reader in readers {
        match tokio::time::timeout_at(deadline, reader).await {
            Ok(result) => seen.push(result?),
            Err(_) => break,
        }
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut delivered, mut duplicates, mut order_violations) = (0, 0, 0);
    for s in &seen {
        latency.add(&s.latency_us)?;
        delivered += s.delivered;
        duplicates += s.duplicates;
        order_violations += s.order_violations;
    }

    let seconds = bench.duration.as_secs_f64();
    let q = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
    let summary = json!({
        "workload": {
            "sessions": bench.sessions, "players": bench.players, "rate_hz": bench.rate,
            "payload_bytes": bench.payload, "connections": channels.len(),
            "warmup_seconds": bench.warmup.as_secs_f64(), "window_seconds": seconds,
        },
        "connect_seconds": connect_time.as_secs_f64(),
        "offered_deliveries_per_second": (bench.sessions * players * (players - 1)) as f64 * bench.rate,
        "achieved_deliveries_per_second": delivered as f64 / seconds,
        "expected_deliveries": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "duplicates": duplicates,
        "order_violations": order_violations,
        "latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": latency.max() as f64 / 1000.0 },
        "late_sends": late.count.load(Ordering::Relaxed),
        "max_send_lateness_ms": late.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        "server_cpu_seconds": server_cpu.map(|d| d.as_secs_f64()),
        "server_cpu_seconds_per_100k_deliveries": server_cpu.map(|d| d.as_secs_f64() * 100_000.0 / delivered.max(1) as f64),
        "server_peak_rss_bytes": bench.server_pid.map(|_| peak_rss),
        "client_cpu_seconds": client_cpu.as_secs_f64(),
        "client_cores_used": client_cpu.as_secs_f64() / seconds,
    });
    if json_output {
        println!("{summary}");
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &serde_json::Value) {
    let w = &s["workload"];
    println!(
        "workload     {} sessions x {} players, {} Hz, {} B, {} connections; window {} s after {} s warm-up",
        w["sessions"],
        w["players"],
        w["rate_hz"],
        w["payload_bytes"],
        w["connections"],
        w["window_seconds"],
        w["warmup_seconds"]
    );
    println!("connect      {:.2} s", s["connect_seconds"].as_f64().unwrap_or_default());
    println!(
        "deliveries   offered {:.0}/s, achieved {:.0}/s; lost {}, duplicates {}, order violations {}",
        s["offered_deliveries_per_second"].as_f64().unwrap_or_default(),
        s["achieved_deliveries_per_second"].as_f64().unwrap_or_default(),
        s["lost"],
        s["duplicates"],
        s["order_violations"]
    );
    let l = &s["latency_ms"];
    println!(
        "latency ms   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l["p50"], l["p90"], l["p99"], l["p99_9"], l["max"]
    );
    println!("late sends   {} (max {} ms late)", s["late_sends"], s["max_send_lateness_ms"]);
    if let Some(cpu) = s["server_cpu_seconds"].as_f64() {
        println!(
            "server       {cpu:.2} CPU-s ({:.3} per 100k deliveries), peak RSS {:.1} MiB",
            s["server_cpu_seconds_per_100k_deliveries"].as_f64().unwrap_or_default(),
            s["server_peak_rss_bytes"].as_f64().unwrap_or_default() / (1024.0 * 1024.0)
        );
    }
    let cores = s["client_cores_used"].as_f64().unwrap_or_default();
    println!("client       {:.2} CPU-s ({cores:.2} cores)", s["client_cpu_seconds"].as_f64().unwrap_or_default());
    if cores > 1.0 {
        println!("note         the client used more than one core: on 2 cores the client was the limit");
    }
}

/// Joins `session` as player `n` and waits for the welcome.
async fn join(
    channel: Channel,
    session: String,
    n: usize,
) -> Result<(mpsc::Sender<pb::ClientMessage>, Streaming<pb::ServerMessage>), super::Failure> {
    let (tx, rx) = mpsc::channel(64);
    let join = pb::Join {
        target: Some(pb::join::Target::SessionId(session)),
        player_id: format!("bench-{n}"),
        ..Default::default()
    };
    tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) }).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_secs(24 * 3600));
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

/// Sends on the schedule until `stop`; returns the still-open request stream.
#[allow(clippy::too_many_arguments)]
async fn send(
    tx: mpsc::Sender<pb::ClientMessage>,
    sender: u32,
    first: Instant,
    period: Duration,
    stop: Instant,
    payload_len: usize,
    epoch: Instant,
    window: (u64, u64),
    late: Arc<LateSends>,
    sent_in_window: Arc<AtomicU64>,
) -> mpsc::Sender<pb::ClientMessage> {
    let mut at = first;
    let mut counter = 0u32;
    while at < stop {
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        let lateness = now.saturating_duration_since(at).as_micros() as u64;
        if lateness > 1000 {
            late.count.fetch_add(1, Ordering::Relaxed);
            late.max_us.fetch_max(lateness, Ordering::Relaxed);
        }
        // Latency counts from the actual send; how late sends went out is
        // reported on its own (tokio's timer has millisecond resolution).
        let sent_at = now.duration_since(epoch).as_micros() as u64;
        at += period;
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
        if (window.0..window.1).contains(&sent_at) {
            sent_in_window.fetch_add(1, Ordering::Relaxed);
        }
    }
    tx
}

/// Reads a player's stream to its end; measures what was sent in the window.
async fn read(
    mut responses: Streaming<pb::ServerMessage>,
    epoch: Instant,
    window: (u64, u64),
    latency_us: Histogram<u64>,
    delivered_so_far: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen { latency_us, delivered: 0, duplicates: 0, order_violations: 0 };
    let mut last_counter: HashMap<u32, u32> = HashMap::new();
    let mut last_sequence = 0;
    while let Ok(Some(message)) = responses.message().await {
        let Some(server_message::Kind::Relayed(relayed)) = message.kind else { continue };
        if relayed.sequence <= last_sequence {
            seen.order_violations += 1;
        }
        last_sequence = relayed.sequence;
        let Some((sent_at, sender, counter)) = header(relayed.payload) else { continue };
        match last_counter.insert(sender, counter) {
            Some(previous) if previous == counter => seen.duplicates += 1,
            Some(previous) if previous > counter => seen.order_violations += 1,
            _ => {}
        }
        if (window.0..window.1).contains(&sent_at) {
            seen.delivered += 1;
            delivered_so_far.fetch_add(1, Ordering::Relaxed);
            let now = epoch.elapsed().as_micros() as u64;
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
async fn run_hook(cmd: Option<&str>) -> Result<(), super::Failure> {
    let Some(cmd) = cmd else { return Ok(()) };
    let status = tokio::process::Command::new("sh").arg("-c").arg(cmd).status().await?;
    if !status.success() {
        return Err(format!("`{cmd}` failed: {status}").into());
    }
    Ok(())
}

/// This process's CPU time (user + system).
fn own_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Another process's CPU time (user + system), from /proc/<pid>/stat.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses), utime and stime are the 12th
    // and 13th fields, in clock ticks.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Another process's resident memory, from /proc/<pid>/status.
fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
