//! Measures the server's memory per idle, joined Play stream.
//!
//! Start the server (release build) with room for the sessions and an idle
//! timeout longer than the run, then point this client at it:
//!
//! ```sh
//! GAME_SESSION_MAX_SESSIONS=100000 GAME_SESSION_IDLE_TIMEOUT=10m GAME_SESSION_LOG=warn \
//!   target/release/game-session --listen 127.0.0.1:50051 &
//! cargo run --release --example idle_streams -- \
//!   --addr http://127.0.0.1:50051 --server-pid $! --streams 10000
//! ```
//!
//! What it does:
//!
//! 1. opens `--connections` HTTP/2 connections (every stream is multiplexed
//!    over them, round robin);
//! 2. warms up: a few sessions full of joined players, which stay open, so
//!    that the server's allocator arenas and buffers exist before measuring;
//! 3. reads the server's RSS, creates `streams / players-per-session` sessions
//!    (rounded up) through SessionService, and reads it again (the cost of
//!    empty sessions);
//! 4. opens `--streams` Play streams, each sending one join by session id and
//!    keeping its request stream open (never half-closed); waits for every
//!    welcome, then for `--settle`, and reads the RSS a third time (the cost
//!    of the joined streams);
//! 5. waits `--hold` (e.g. to take a heap snapshot of the server meanwhile),
//!    then half-closes every stream (a leave), waits for the server to end them,
//!    and reads the RSS once more (what is returned to the OS, or not).
//!
//! Each stream's responses (its welcome, then the presence events of the
//! players who join after it) are read and discarded by a small task, as a
//! real client would, so nothing waits in the server's queues.
//!
//! The server advertises no limit on concurrent streams per connection
//! (tonic passes `max_concurrent_streams(None)` to hyper), so a few
//! connections carry tens of thousands of streams.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::stream::{self, StreamExt};
use game_session::BoxError;
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::session_service_client::SessionServiceClient;
use game_session::pb::{self, client_message, server_message};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Memory per idle joined Play stream, as seen in the server's RSS.
#[derive(Debug, Parser)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The server's process id, whose RSS is read from /proc.
    #[arg(long)]
    server_pid: u32,
    /// Play streams to open and hold.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seats per session (CreateSession's max_players); sessions are filled.
    #[arg(long, default_value_t = 8)]
    players_per_session: u32,
    /// Sessions filled during the warm-up (they stay open).
    #[arg(long, default_value_t = 16)]
    warmup_sessions: usize,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// Wait after the last welcome before reading the RSS.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Keep the streams open this long after measuring, e.g. to take a heap
    /// snapshot of the server (`vgdb --pid=<pid> detailed_snapshot`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let per_session = args.players_per_session.max(1) as usize;
    let n = args.streams as f64;

    let channels = connect(&args.addr, args.connections.max(1)).await?;
    let received = Arc::new(AtomicU64::new(0));
    // Cancelled at the end: every request stream then half-closes.
    let close = CancellationToken::new();

    // Warm-up: full sessions whose players stay joined to the end.
    let warmup = open_sessions(&channels, args.warmup_sessions, args.players_per_session).await?;
    let joiner =
        Joiner { channels: &channels, per_session, parallel: args.parallel, received: &received, close: &close };
    let mut readers = joiner.join_all(&warmup, warmup.len() * per_session, "warmup").await?;
    tokio::time::sleep(args.settle).await;
    let baseline = Rss::read(args.server_pid)?;
    println!("connections:          {}", channels.len());
    println!("RSS baseline:         {baseline} ({} warm-up sessions x {per_session} players)", warmup.len());

    // The sessions, empty.
    let sessions = open_sessions(&channels, args.streams.div_ceil(per_session), args.players_per_session).await?;
    tokio::time::sleep(args.settle).await;
    let before = Rss::read(args.server_pid)?;
    println!("RSS before streams:   {before} (+{} sessions)", sessions.len());
    println!("per empty session:    {:.0} bytes", before.minus(&baseline).rss_bytes() / sessions.len() as f64);

    // The streams, joined.
    let started = Instant::now();
    readers.extend(joiner.join_all(&sessions, args.streams, "p").await?);
    let connect_time = started.elapsed();
    println!(
        "streams:              {} joined in {:.2} s ({:.0} joins/s)",
        args.streams,
        connect_time.as_secs_f64(),
        n / connect_time.as_secs_f64()
    );
    tokio::time::sleep(args.settle).await;
    let after = Rss::read(args.server_pid)?;
    let per_stream = after.minus(&before);
    println!("RSS after streams:    {after}");
    println!(
        "per joined stream:    {:.0} bytes (anon {:.0} bytes); target 6144",
        per_stream.rss_bytes() / n,
        per_stream.anon_bytes() / n
    );
    println!("  with its session:   {:.0} bytes", after.minus(&baseline).rss_bytes() / n);
    println!("messages read:        {}", received.load(Ordering::Relaxed));
    if !args.hold.is_zero() {
        println!("holding the streams open for {:?}", args.hold);
        tokio::time::sleep(args.hold).await;
    }

    // Half-close every stream (a leave); the server then ends each one.
    close.cancel();
    let ended = Instant::now();
    for reader in readers {
        reader.await?;
    }
    let close_time = ended.elapsed();
    tokio::time::sleep(args.settle).await;
    let closed = Rss::read(args.server_pid)?;
    println!("closed:               in {:.2} s", close_time.as_secs_f64());
    println!("RSS after close:      {closed}");
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
async fn open_sessions(channels: &[Channel], count: usize, max_players: u32) -> Result<Vec<String>, BoxError> {
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

/// Opens joined Play streams.
struct Joiner<'a> {
    channels: &'a [Channel],
    per_session: usize,
    /// Joins in flight at once.
    parallel: usize,
    /// Counts the messages read on every stream.
    received: &'a Arc<AtomicU64>,
    /// Half-closes every request stream when cancelled.
    close: &'a CancellationToken,
}

impl Joiner<'_> {
    /// Joins `count` players (ids `{prefix}{n}`) to the sessions, filling
    /// one after the other, each on its own Play stream, round robin over the
    /// connections. Returns once every one was welcomed, with the tasks
    /// reading their streams.
    async fn join_all(&self, sessions: &[String], count: usize, prefix: &str) -> Result<Vec<JoinHandle<()>>, BoxError> {
        let seats = sessions.iter().flat_map(|session| std::iter::repeat_n(session, self.per_session)).take(count);
        let joins = seats.enumerate().map(|(n, session)| {
            let channel = self.channels[n % self.channels.len()].clone();
            self.join(channel, session.clone(), format!("{prefix}{n}"))
        });
        stream::iter(joins).buffer_unordered(self.parallel.max(1)).collect::<Vec<_>>().await.into_iter().collect()
    }

    /// Opens one Play stream, joins `session` as `player`, waits for the
    /// welcome, and spawns the task that reads the rest. The request stream
    /// sends the join and then stays open until `close` is cancelled.
    fn join(
        &self,
        channel: Channel,
        session: String,
        player: String,
    ) -> impl Future<Output = Result<JoinHandle<()>, BoxError>> + use<> {
        let received = self.received.clone();
        let close = self.close.clone();
        async move {
            let join = pb::Join {
                target: Some(pb::join::Target::SessionId(session)),
                player_id: player,
                display_name: String::new(),
                metadata: Default::default(),
            };
            let first = pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) };
            let requests =
                stream::once(async move { first }).chain(stream::pending()).take_until(close.cancelled_owned());
            let mut responses = PlayerServiceClient::new(channel).play(requests).await?.into_inner();
            match responses.message().await?.and_then(|m| m.kind) {
                Some(server_message::Kind::Welcome(_)) => {}
                other => return Err(format!("expected a welcome, got {other:?}").into()),
            }
            received.fetch_add(1, Ordering::Relaxed);
            Ok(tokio::spawn(drain(responses, received)))
        }
    }
}

/// Reads and discards a stream's responses until it ends.
async fn drain(mut responses: Streaming<pb::ServerMessage>, received: Arc<AtomicU64>) {
    while let Ok(Some(_)) = responses.message().await {
        received.fetch_add(1, Ordering::Relaxed);
    }
}

/// A process's resident memory, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy)]
struct Rss {
    /// VmRSS: all resident pages.
    rss_kib: u64,
    /// RssAnon: resident anonymous pages (the heap and stacks).
    anon_kib: u64,
}

impl Rss {
    fn read(pid: u32) -> Result<Rss, BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64, BoxError> {
            let line = status.lines().find(|l| l.starts_with(name)).ok_or_else(|| format!("no {name} for {pid}"))?;
            let kib = line[name.len()..].trim().trim_end_matches("kB").trim();
            Ok(kib.parse()?)
        };
        Ok(Rss { rss_kib: field("VmRSS:")?, anon_kib: field("RssAnon:")? })
    }

    /// The growth from `earlier` to `self` (may be negative).
    fn minus(&self, earlier: &Rss) -> Growth {
        Growth {
            rss_kib: self.rss_kib as i64 - earlier.rss_kib as i64,
            anon_kib: self.anon_kib as i64 - earlier.anon_kib as i64,
        }
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} KiB (anon {} KiB)", self.rss_kib, self.anon_kib)
    }
}

/// A difference of two [`Rss`] readings.
struct Growth {
    rss_kib: i64,
    anon_kib: i64,
}

impl Growth {
    fn rss_bytes(&self) -> f64 {
        self.rss_kib as f64 * 1024.0
    }

    fn anon_bytes(&self) -> f64 {
        self.anon_kib as f64 * 1024.0
    }
}
