//! The connections scenario: N idle players, joined and pinging every few
//! seconds, multiplexed over a few HTTP/2 connections or with a connection
//! each. It reports the connect time and the server's memory per stream.
//!
//! 1. Warm-up: a few sessions full of joined players, which stay, so that the
//!    server's allocator arenas and buffers exist before measuring.
//! 2. The server's RSS; then `players / players-per-session` sessions are
//!    created (rounded up), and the RSS is read again.
//! 3. Connect time: the connections open and every player joins on its own
//!    Play stream, round robin over the connections; each then pings every
//!    `--ping-interval` (the first pings spread evenly over one interval)
//!    and reads what arrives.
//! 4. After `--settle`, the RSS with every stream joined: the growth over
//!    step 2, divided by the players, is the memory per stream. The players
//!    stay for `--hold`, pinging.
//! 5. Every request stream half-closes (a leave); once the server has ended
//!    them all (a stream not ended within 30 s counts as an error), and after
//!    `--settle`, the RSS at idle.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::stream::{self, StreamExt};
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::{self, client_message, server_message};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{Failure, Measured, Run, Server, Target};

/// The connections scenario's settings.
#[derive(Debug, Args)]
pub struct Connections {
    /// Players (N), each on its own Play stream.
    #[arg(long, default_value_t = 10_000)]
    players: usize,
    /// HTTP/2 connections the streams are multiplexed over.
    #[arg(long, default_value_t = 8, conflicts_with = "connection_per_player")]
    connections: usize,
    /// One connection per player instead (needs an open-files limit above
    /// N for the client and the server; gsctl raises its own to the hard
    /// limit, and a server it starts inherits that).
    #[arg(long)]
    connection_per_player: bool,
    /// Seats per session (CreateSession's max_players); sessions are filled.
    #[arg(long, default_value_t = 8)]
    players_per_session: u32,
    /// How often each player pings.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// How long the players stay joined after the measurement, pinging.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Wait before each RSS reading, for the server to settle.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Sessions filled during the warm-up (they stay to the end).
    #[arg(long, default_value_t = 16)]
    warmup_sessions: usize,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    #[command(flatten)]
    pub target: Target,
}

impl Connections {
    fn connection_count(&self) -> usize {
        if self.connection_per_player {
            self.players + self.warmup_sessions * self.per_session()
        } else {
            self.connections.max(1)
        }
    }

    fn per_session(&self) -> usize {
        self.players_per_session.max(1) as usize
    }
}

impl Run for Connections {
    fn workload(&self) -> Value {
        json!({
            "scenario": "connections",
            "players": self.players,
            "connections": self.connection_count(),
            "connection_per_player": self.connection_per_player,
            "players_per_session": self.players_per_session,
            "ping_interval_seconds": self.ping_interval.as_secs_f64(),
            "hold_seconds": self.hold.as_secs_f64(),
        })
    }

    fn describe(&self) -> String {
        let connections = if self.connection_per_player {
            "a connection per player".to_owned()
        } else {
            format!("{} connections", self.connection_count())
        };
        format!(
            "connections: {} idle players ({} per session) over {connections}, pinging every {} s",
            self.players,
            self.per_session(),
            self.ping_interval.as_secs_f64()
        )
    }

    /// More streams on a connection than the server's default allows (N
    /// players over C connections, the warm-up's on one), and, with a
    /// connection per player, more connections.
    fn server_args(&self) -> Vec<String> {
        let warmup_players = self.warmup_sessions * self.per_session();
        let streams = if self.connection_per_player {
            1
        } else {
            self.players.div_ceil(self.connection_count()).max(warmup_players)
        };
        // Room for the scenario's own calls (creating sessions, reading metrics).
        let mut args = vec!["--max-streams-per-connection".to_owned(), (streams + 64).max(1_000).to_string()];
        let connections = self.connection_count() + 64;
        if connections > 10_000 {
            args.extend(["--max-connections".to_owned(), connections.to_string()]);
        }
        args
    }

    async fn run(&self, server: &Server) -> Result<Measured, Failure> {
        if self.players == 0 || self.ping_interval.is_zero() {
            return Err("--players and --ping-interval must be above zero".into());
        }
        let counters = Arc::new(Counters::default());
        // Cancelled at the end, or on the way out of a failed run: every
        // request stream then half-closes.
        let close = CancellationToken::new();
        let _close_on_failure = close.clone().drop_guard();
        let warmup_players = self.warmup_sessions * self.per_session();

        // Warm-up, on connections of its own when each player has one.
        let warmup_channels = server.connect(if self.connection_per_player { warmup_players } else { 1 }).await?;
        let no_labels = HashMap::new();
        let warmup = super::create_sessions(
            server,
            &warmup_channels[..1],
            self.warmup_sessions,
            self.players_per_session,
            &no_labels,
        )
        .await?;
        let joiner = Joiner {
            per_session: self.per_session(),
            parallel: self.parallel,
            ping: self.ping_interval,
            counters: &counters,
            close: &close,
            credentials: &server.credentials,
        };
        let mut readers = joiner.join_all(&warmup_channels, &warmup, warmup_players, "warmup").await?;
        tokio::time::sleep(self.settle).await;
        let rss_baseline = server.rss();

        // The sessions, empty.
        let control = server.connect(1).await?;
        let sessions = super::create_sessions(
            server,
            &control,
            self.players.div_ceil(self.per_session()),
            self.players_per_session,
            &no_labels,
        )
        .await?;
        tokio::time::sleep(self.settle).await;
        let rss_sessions = server.rss();

        // The connections and the streams, joined.
        let connecting = Instant::now();
        let channels = server.connect(if self.connection_per_player { self.players } else { self.connections }).await?;
        readers.extend(joiner.join_all(&channels, &sessions, self.players, "p").await?);
        let connect_time = connecting.elapsed();
        tokio::time::sleep(self.settle).await;
        let rss_joined = server.rss();
        tokio::time::sleep(self.hold).await;
        let rss_held = server.rss();

        // Half-close every stream (a leave); the server then ends each one.
        close.cancel();
        let closing = Instant::now();
        let deadline = closing + Duration::from_secs(30);
        for reader in readers {
            let abort = reader.abort_handle();
            if tokio::time::timeout_at(deadline, reader).await.is_err() {
                abort.abort();
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let close_time = closing.elapsed();
        drop(channels);
        drop(warmup_channels);
        super::end_sessions(server, &control[0], sessions.into_iter().chain(warmup).collect()).await;
        tokio::time::sleep(self.settle).await;
        let rss_idle = server.rss();

        let n = self.players as f64;
        let per = |after: Option<u64>, before: Option<u64>| after.zip(before).map(|(a, b)| (a as f64 - b as f64) / n);
        let mut m = Measured::default();
        m.add("connect_seconds", "connect and join all (s)", Some(connect_time.as_secs_f64()), 2);
        m.add("joins_per_second", "joins /s", Some(n / connect_time.as_secs_f64()), 0);
        m.add("server_rss_baseline_mib", "server RSS after warm-up (MiB)", rss_baseline.map(super::mib), 1);
        m.add("server_rss_sessions_mib", "server RSS with empty sessions (MiB)", rss_sessions.map(super::mib), 1);
        m.add("server_rss_joined_mib", "server RSS with every player (MiB)", rss_joined.map(super::mib), 1);
        m.add("server_rss_per_stream_bytes", "server RSS per stream (bytes)", per(rss_joined, rss_sessions), 0);
        m.add(
            "server_rss_per_player_bytes",
            "server RSS per player, with its session (bytes)",
            per(rss_joined, rss_baseline),
            0,
        );
        m.add("server_rss_held_mib", "server RSS after the hold (MiB)", rss_held.map(super::mib), 1);
        m.add("close_seconds", "all streams closed in (s)", Some(close_time.as_secs_f64()), 2);
        m.add("server_rss_idle_after_mib", "server RSS at idle afterwards (MiB)", rss_idle.map(super::mib), 1);
        m.add("pings_sent", "pings sent", Some(counters.pings.load(Ordering::Relaxed) as f64), 0);
        m.add("pongs_received", "pongs received", Some(counters.pongs.load(Ordering::Relaxed) as f64), 0);
        m.add("stream_errors", "streams ended with an error", Some(counters.errors.load(Ordering::Relaxed) as f64), 0);
        Ok(m)
    }
}

/// What every player's stream counts.
#[derive(Default)]
struct Counters {
    pings: AtomicU64,
    pongs: AtomicU64,
    errors: AtomicU64,
}

/// Opens joined, pinging Play streams.
struct Joiner<'a> {
    per_session: usize,
    /// Joins in flight at once.
    parallel: usize,
    ping: Duration,
    counters: &'a Arc<Counters>,
    /// Half-closes every request stream when cancelled.
    close: &'a CancellationToken,
    /// Each player's token, when the server checks them.
    credentials: &'a super::Credentials,
}

impl Joiner<'_> {
    /// Joins `count` players (ids `{prefix}{n}`) to the sessions, filling one
    /// after the other, each on its own Play stream, round robin over the
    /// connections. Returns once every one was welcomed, with the tasks
    /// reading their streams.
    async fn join_all(
        &self,
        channels: &[Channel],
        sessions: &[String],
        count: usize,
        prefix: &str,
    ) -> Result<Vec<JoinHandle<()>>, Failure> {
        let bar = super::progress(count as u64, "{prefix} [{bar:30}] {pos}/{len} joined {elapsed_precise}");
        bar.set_prefix(prefix.to_owned());
        let seats = sessions.iter().flat_map(|session| std::iter::repeat_n(session, self.per_session)).take(count);
        let joins = seats.enumerate().map(|(n, session)| {
            let channel = channels[n % channels.len()].clone();
            let bar = bar.clone();
            let join = self.join(channel, session.clone(), format!("{prefix}{n}"), n as f64 / count as f64);
            async move {
                let reader = join.await;
                bar.inc(1);
                reader
            }
        });
        let readers = stream::iter(joins).buffer_unordered(self.parallel.max(1)).collect::<Vec<_>>().await;
        bar.finish_and_clear();
        readers.into_iter().collect()
    }

    /// Opens one Play stream, joins `session` as `player`, waits for the
    /// welcome, and spawns the task that reads the rest. The request stream
    /// sends the join, then a ping every interval (the first after
    /// `phase` of one), until `close` is cancelled.
    fn join(
        &self,
        channel: Channel,
        session: String,
        player: String,
        phase: f64,
    ) -> impl Future<Output = Result<JoinHandle<()>, Failure>> + use<> {
        let counters = self.counters.clone();
        let close = self.close.clone();
        let ping = self.ping;
        let token = self.credentials.player_token(&player);
        async move {
            let token = token?;
            let join = pb::Join {
                target: Some(pb::join::Target::SessionId(session)),
                player_id: player,
                ..Default::default()
            };
            let first = pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) };
            let ticks = tokio::time::interval_at(Instant::now() + ping.mul_f64(1.0 + phase), ping);
            let pinger = counters.clone();
            let pings = IntervalStream::new(ticks).map(move |_| {
                pinger.pings.fetch_add(1, Ordering::Relaxed);
                pb::ClientMessage { kind: Some(client_message::Kind::Ping(pb::Ping { client_time: 0, rtt_micros: 0 })) }
            });
            let requests = stream::once(async move { first }).chain(pings).take_until(close.cancelled_owned());
            let request = super::play_request(token, requests);
            let mut responses = PlayerServiceClient::new(channel).play(request).await?.into_inner();
            match responses.message().await?.and_then(|m| m.kind) {
                Some(server_message::Kind::Welcome(_)) => {}
                other => return Err(format!("expected a welcome, got {other:?}").into()),
            }
            Ok(tokio::spawn(read(responses, counters)))
        }
    }
}

/// Reads a stream's responses until it ends, counting the pongs.
async fn read(mut responses: Streaming<pb::ServerMessage>, counters: Arc<Counters>) {
    loop {
        match responses.message().await {
            Ok(Some(pb::ServerMessage { kind: Some(server_message::Kind::Pong(_)) })) => {
                counters.pongs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
