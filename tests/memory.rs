//! What a client can make the server hold in memory, measured on the real
//! binary (a child process, so that its RSS is its own).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Player, WAIT, join_session};
use game_session::pb::{self, server_message, session_service_client::SessionServiceClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// The server binary on a free port, with `args`; returns it and its address.
async fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_game-session"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--health-listen",
            "off",
            "--log",
            "warn,game_session=info",
        ])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("log in time").expect("read");
        let line = line.expect("the server exited early");
        if line.contains("serving players")
            && let Some(rest) = line.split("address=").nth(1)
        {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
    };
    // The log must keep draining, or the server blocks writing it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// The child's resident set, in bytes.
fn rss(child: &Child) -> u64 {
    let pid = child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect")
}

/// Catches a WatchSessions stream that copies the whole listing for each
/// watcher: 100 watchers that never read, over 10,000 sessions, once took a
/// server from 82 to 708 MiB. Each may now cost at most 1 MiB (a pointer
/// per session, and what HTTP/2 buffers for a stalled stream), while an
/// honest session relays every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_watchers_pin_little_memory() {
    const SESSIONS: usize = 10_000;
    const WATCHERS: usize = 100;
    let (child, addr) = spawn(&["--max-sessions", "20000", "--max-watchers", "200", "--idle-timeout", "10m"]).await;
    let api = SessionServiceClient::new(channel(&addr).await);
    let creators: Vec<_> = (0..8)
        .map(|_| {
            let mut api = api.clone();
            tokio::spawn(async move {
                for _ in 0..SESSIONS / 8 {
                    let labels = [("map".to_owned(), "forest".to_owned()), ("region".to_owned(), "eu-west".to_owned())];
                    let request = pb::CreateSessionRequest {
                        mode: "relay".into(),
                        labels: labels.into_iter().collect(),
                        ..Default::default()
                    };
                    api.create_session(request).await.expect("create");
                }
            })
        })
        .collect();
    for creator in creators {
        creator.await.expect("creator");
    }
    let request = pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    let honest = api.clone().create_session(request).await.expect("create").into_inner();
    let honest = honest.session.expect("session").session_id;
    let before = rss(&child);

    // Ten connections with ten watchers each; none reads past the headers.
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS / 10 {
        let api = SessionServiceClient::new(channel(&addr).await);
        for _ in 0..10 {
            let watch = api.clone().watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch");
            watchers.push(watch.into_inner());
        }
    }
    // The server writes until each stream's window and send buffer fill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sender = Player::join(addr.parse().expect("addr"), join_session(&honest, "sender")).await;
    let mut reader = Player::join(addr.parse().expect("addr"), join_session(&honest, "reader")).await;
    for n in 0..100u32 {
        sender.relay(&n.to_be_bytes(), &[]).await;
    }
    for n in 0..100u32 {
        assert_eq!(reader.next_relayed().await.payload, &n.to_be_bytes()[..], "the honest session lost a message");
    }
    let grown = rss(&child).saturating_sub(before);
    let per_watcher = grown / WATCHERS as u64;
    assert!(
        per_watcher < 1 << 20,
        "{WATCHERS} stalled watchers grew the server by {} MiB ({} KiB each)",
        grown >> 20,
        per_watcher >> 10
    );
    drop(watchers);
}

/// Catches slow players that pin memory without bound: eight players who
/// stop reading while 60 KiB relays keep coming (once 511 MiB held for as
/// long as their connections answered pings) are removed when their queues
/// hold `--outbound-queue-bytes`, and what was queued for them is freed at
/// once; the honest reader gets every relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_slow_players_free_their_queues() {
    const PAYLOAD: usize = 60 * 1024;
    const RELAYS: u32 = 200;
    // The sender's own rate limit off: this test is about readers.
    let args = ["--outbound-queue-bytes", "2097152", "--max-players-limit", "16", "--player-byte-rate", "0"];
    let (child, addr) = spawn(&args).await;
    let mut api = SessionServiceClient::new(channel(&addr).await);
    let request = pb::CreateSessionRequest { mode: "relay".into(), max_players: 10, ..Default::default() };
    let session = api.create_session(request).await.expect("create").into_inner().session.expect("session").session_id;
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let before = rss(&child);

    let mut reader = Player::join(addr, join_session(&session, "reader")).await;
    // Small HTTP/2 windows: what they do not read waits in the server.
    let connect = common::Connect { window: Some(16 * 1024), ..Default::default() };
    let mut stalled = Vec::new();
    for n in 0..8 {
        let join = join_session(&session, &format!("stalled-{n}"));
        stalled.push(Player::try_join(addr, join, connect.clone()).await.expect("join"));
    }
    let sender = Player::join(addr, join_session(&session, "sender")).await;
    let mut removed = 0;
    let mut relayed = 0u32;
    let sending = async {
        for n in 0..RELAYS {
            let mut payload = vec![0u8; PAYLOAD];
            payload[..4].copy_from_slice(&n.to_be_bytes());
            sender.relay(&payload, &[]).await;
        }
    };
    let reading = async {
        while relayed < RELAYS {
            match reader.next().await {
                server_message::Kind::Relayed(relay) => {
                    assert_eq!(relay.payload[..4], relayed.to_be_bytes(), "the reader lost or reordered a relay");
                    relayed += 1;
                }
                server_message::Kind::Presence(presence) if presence.kind == pb::PresenceKind::Removed as i32 => {
                    removed += 1;
                }
                _ => {}
            }
        }
    };
    tokio::join!(sending, reading);
    assert_eq!(removed, 8, "every stalled player was removed");
    let grown = rss(&child).saturating_sub(before);
    assert!(grown < 64 << 20, "eight removed players still hold {} MiB", grown >> 20);
    drop(stalled);
}
