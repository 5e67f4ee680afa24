//! The churn scenario: players join and leave at a fixed rate over a few
//! persistent HTTP/2 connections (new streams, never new TCP connections).
//!
//! A pool of sessions is created first, with twice the seats the expected
//! population needs. On an open-loop schedule of `--rate` joins a second,
//! player n opens a Play stream on connection n mod C, joins session n mod K,
//! stays `--lifetime`, sends Leave, half-closes, and reads its stream to its
//! end (within 10 s, or it counts as a failure). The server's RSS is read
//! every second, and its largest deviation over the second half of the run
//! from its level at the start of that half is reported against 10%.
//! Afterwards every pool session should report no players, and once the pool
//! is ended the registry (ListSessions, by the pool's label) should be empty;
//! both counts are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::{self, client_message, server_message};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::{Failure, Measured, Run, Server, Target};

/// The churn scenario's settings.
#[derive(Debug, Args)]
pub struct Churn {
    /// Joins a second (each player leaves again after --lifetime).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long players keep joining.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each player stays before it leaves.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// The persistent HTTP/2 connections the streams are opened on.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seats per pool session.
    #[arg(long, default_value_t = 8)]
    players_per_session: u32,
    #[command(flatten)]
    pub target: Target,
}

/// What the players saw.
#[derive(Default)]
struct Counters {
    joined: AtomicU64,
    left: AtomicU64,
    /// Joins refused and streams that did not end with OK after a leave.
    failed: AtomicU64,
    /// Players joined and not yet gone.
    population: AtomicU64,
    late_joins: AtomicU64,
}

impl Run for Churn {
    fn workload(&self) -> Value {
        json!({
            "scenario": "churn",
            "joins_per_second": self.rate,
            "duration_seconds": self.duration.as_secs_f64(),
            "lifetime_seconds": self.lifetime.as_secs_f64(),
            "connections": self.connections.max(1),
            "players_per_session": self.players_per_session,
        })
    }

    fn describe(&self) -> String {
        format!(
            "churn: {} joins and leaves /s for {} s, each player staying {} s; {} connections, {} seats per session",
            self.rate,
            self.duration.as_secs_f64(),
            self.lifetime.as_secs_f64(),
            self.connections.max(1),
            self.players_per_session
        )
    }

    async fn run(&self, server: &Server) -> Result<Measured, Failure> {
        if !(self.rate > 0.0 && self.rate.is_finite()) || self.duration.is_zero() || self.players_per_session == 0 {
            return Err("--rate, --duration and --players-per-session must be above zero".into());
        }
        let channels = server.connect(self.connections).await?;
        let label =
            ("gsctl-bench".to_owned(), format!("churn-{}-{}", std::process::id(), crate::render::unix_micros()));

        // The pool: twice the seats of the expected population.
        let population = self.rate * self.lifetime.as_secs_f64().max(0.001);
        let pool_size = ((2.0 * population / self.players_per_session as f64).ceil() as usize).max(1);
        let labels = [label.clone()].into();
        let pool = super::create_sessions(server, &channels, pool_size, self.players_per_session, &labels).await?;

        // The schedule, with the server's RSS every second.
        let counters = Arc::new(Counters::default());
        let join_latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
        let total = (self.rate * self.duration.as_secs_f64()).round() as u64;
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let start = Instant::now() + Duration::from_millis(100);
        let sampler = tokio::spawn(sample_rss(server.pid, start, self.duration, counters.clone()));
        let cpu_before = server.cpu_time();
        let mut players = Vec::with_capacity(total as usize);
        for n in 0..total {
            let at = start + period.mul_f64(n as f64);
            tokio::time::sleep_until(at).await;
            if at.elapsed() > Duration::from_millis(1) {
                counters.late_joins.fetch_add(1, Ordering::Relaxed);
            }
            let n = n as usize;
            let player_id = format!("churn-{n}");
            // Minted before the join is timed, as a client holds its token.
            let token = server.credentials.player_token(&player_id)?;
            players.push(tokio::spawn(player(
                channels[n % channels.len()].clone(),
                pool[n % pool.len()].clone(),
                (player_id, token),
                self.lifetime,
                counters.clone(),
                join_latency.clone(),
            )));
        }
        for player in players {
            player.await?;
        }
        let server_cpu = server.cpu_time().zip(cpu_before).map(|(after, before)| (after - before).as_secs_f64());
        let samples = sampler.await?;

        // The registry afterwards: no players left in the pool; then no pool.
        let mut sessions = server.credentials.sessions(channels[0].clone());
        let filter = pb::SessionFilter { labels: [label].into(), ..Default::default() };
        let players_left = list(&mut sessions, &filter).await?.map(|s| s.iter().map(|s| s.player_count as f64).sum());
        super::end_sessions(server, &channels[0], pool).await;
        let sessions_left = list(&mut sessions, &filter).await?.map(|s| s.len() as f64);

        // RSS over the second half, against its level at the start of it.
        let half = self.duration.as_secs_f64() / 2.0;
        let second_half: Vec<(f64, u64)> = samples.iter().copied().filter(|(t, _)| *t >= half).collect();
        let at_half = second_half.first().map(|(_, rss)| *rss as f64);
        let deviation = at_half.map(|base| {
            second_half.iter().map(|(_, rss)| (*rss as f64 - base).abs() / base * 100.0).fold(0.0, f64::max)
        });
        let end = second_half.last().map(|(_, rss)| *rss as f64);

        let joins = counters.joined.load(Ordering::Relaxed) as f64;
        let latency = join_latency.lock().map_err(|_| "a player panicked")?.clone();
        let mut m = Measured::default();
        m.add("joins", "joins", Some(joins), 0);
        m.add("leaves", "leaves (stream ended OK)", Some(counters.left.load(Ordering::Relaxed) as f64), 0);
        m.add("failures", "failed joins or leaves", Some(counters.failed.load(Ordering::Relaxed) as f64), 0);
        m.add("late_joins", "joins >1 ms late", Some(counters.late_joins.load(Ordering::Relaxed) as f64), 0);
        m.add("join_p50_ms", "join to welcome p50 (ms)", Some(latency.value_at_quantile(0.5) as f64 / 1000.0), 3);
        m.add("join_p99_ms", "join to welcome p99 (ms)", Some(latency.value_at_quantile(0.99) as f64 / 1000.0), 3);
        m.add("pool_sessions", "pool sessions", Some(pool_size as f64), 0);
        m.add("players_left_in_pool", "players left in the pool afterwards", players_left, 0);
        m.add("sessions_left_after_end", "pool sessions left after ending them", sessions_left, 0);
        m.add("server_cpu_seconds", "server CPU (s)", server_cpu, 2);
        m.add(
            "server_cpu_ms_per_join_and_leave",
            "server CPU per successful join + leave (ms)",
            server_cpu.map(|s| s * 1000.0 / joins.max(1.0)),
            3,
        );
        m.add("server_rss_at_half_mib", "server RSS at half time (MiB)", at_half.map(|b| b / (1024.0 * 1024.0)), 1);
        m.add("server_rss_at_end_mib", "server RSS at the end (MiB)", end.map(|b| b / (1024.0 * 1024.0)), 1);
        m.add("server_rss_second_half_max_deviation_pct", "server RSS, 2nd half: max deviation (%)", deviation, 1);
        if let Some(deviation) = deviation {
            m.notes.push(format!(
                "RSS over the second half stayed within {deviation:.1}% of its level at half time ({})",
                if deviation <= 10.0 { "within 10%" } else { "MORE THAN 10%" }
            ));
        }
        m.details.insert(
            "rss_samples".into(),
            json!(samples.iter().map(|(t, rss)| json!({"seconds": t, "rss_bytes": rss})).collect::<Vec<_>>()),
        );
        Ok(m)
    }
}

/// One player: join, stay, leave, and read the stream to its end.
async fn player(
    channel: Channel,
    session: String,
    (player_id, token): (String, Option<MetadataValue<Ascii>>),
    lifetime: Duration,
    counters: Arc<Counters>,
    join_latency: Arc<std::sync::Mutex<Histogram<u64>>>,
) {
    // Join latency counts from opening the stream.
    let started = Instant::now();
    let join = pb::Join { target: Some(pb::join::Target::SessionId(session)), player_id, ..Default::default() };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    // Capacity 2: neither send waits.
    let _ = tx.try_send(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) });
    let welcomed = async {
        let request = super::play_request(token, tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut responses = PlayerServiceClient::new(channel).play(request).await?.into_inner();
        match responses.message().await?.and_then(|m| m.kind) {
            Some(server_message::Kind::Welcome(_)) => Ok(responses),
            other => Err(Failure::from(format!("expected a welcome, got {other:?}"))),
        }
    };
    let mut responses = match welcomed.await {
        Ok(responses) => responses,
        Err(_) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if let Ok(mut histogram) = join_latency.lock() {
        let _ = histogram.record(started.elapsed().as_micros().max(1) as u64);
    }
    counters.joined.fetch_add(1, Ordering::Relaxed);
    counters.population.fetch_add(1, Ordering::Relaxed);
    let stay = tokio::time::sleep(lifetime);
    tokio::pin!(stay);
    // Read what arrives (others' presence) while staying, then leave.
    let mut tx = Some(tx);
    let mut leaving = false;
    let ended_ok = loop {
        tokio::select! {
            () = &mut stay, if !leaving => {
                leaving = true;
                // Leave, then half-close: a server that ignores Leave (the
                // baseline) takes the half-close as the leave.
                if let Some(tx) = tx.take() {
                    let _ = tx.try_send(pb::ClientMessage { kind: Some(client_message::Kind::Leave(pb::Leave {})) });
                }
            }
            message = responses.message() => match message {
                Ok(Some(_)) => {}
                Ok(None) => break leaving,
                Err(status) => break leaving && status.code() == Code::Ok,
            },
            // A stream the server does not end after the leave.
            () = tokio::time::sleep(Duration::from_secs(10)), if leaving => break false,
        }
    };
    counters.population.fetch_sub(1, Ordering::Relaxed);
    if ended_ok {
        counters.left.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads the server's RSS every second from `start` for `duration`, with
/// a progress bar; returns (seconds since start, RSS bytes).
async fn sample_rss(pid: Option<u32>, start: Instant, duration: Duration, counters: Arc<Counters>) -> Vec<(f64, u64)> {
    let bar = super::progress(duration.as_secs(), "churn [{bar:30}] {pos}/{len} s {msg}");
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(start, Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let elapsed = start.elapsed();
        if let Some(rss) = pid.and_then(super::process_rss) {
            samples.push((elapsed.as_secs_f64(), rss));
        }
        bar.set_position(elapsed.as_secs());
        bar.set_message(format!(
            "{} joined, {} now",
            counters.joined.load(Ordering::Relaxed),
            counters.population.load(Ordering::Relaxed)
        ));
        if elapsed >= duration {
            bar.finish_and_clear();
            return samples;
        }
    }
}

/// Every session matching the filter; `None` from a server without
/// ListSessions (the baseline).
async fn list(
    client: &mut super::SessionClient,
    filter: &pb::SessionFilter,
) -> Result<Option<Vec<pb::SessionInfo>>, Failure> {
    match crate::list_all(client, filter.clone()).await {
        Ok(sessions) => Ok(Some(sessions)),
        Err(status) if status.code() == Code::Unimplemented => Ok(None),
        Err(status) => Err(status.into()),
    }
}
