//! What a client can make the server hold in memory, measured on the real
//! binary (a child process, so that its RSS is its own).

mod common;

use std::time::Duration;

use common::binary::{Binary, EAGER_TRIM};
use common::{Player, WAIT, join_session};
use game_session::pb::{self, server_message};

/// All queued event bytes the server reports (every kind).
async fn queued_bytes(server: &Binary) -> f64 {
    let samples = server.scrape().await;
    samples.iter().filter(|(series, _)| series.starts_with("game_session_queued_event_bytes{")).map(|(_, v)| v).sum()
}

/// Polls until the server reports no queued bytes of relays (what every
/// reader has read or every removed player has freed).
async fn relay_bytes_freed(server: &Binary) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = server.sample("game_session_queued_event_bytes{kind=\"relay\"}").await;
        if held == 0.0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{held} relay bytes still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let server = Binary::start_with_env(
        &["--max-sessions", "20000", "--max-watchers", "200", "--idle-timeout", "10m"],
        &[EAGER_TRIM],
    )
    .await;
    let api = server.sessions().await;
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
    let before = server.rss();

    // Ten connections with ten watchers each; none reads past the headers.
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS / 10 {
        let api = server.sessions().await;
        for _ in 0..10 {
            let watch = api.clone().watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch");
            watchers.push(watch.into_inner());
        }
    }
    // The server writes until each stream's window and send buffer fill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sender = Player::join(server.addr, join_session(&honest, "sender")).await;
    let mut reader = Player::join(server.addr, join_session(&honest, "reader")).await;
    for n in 0..100u32 {
        sender.relay(&n.to_be_bytes(), &[]).await;
    }
    for n in 0..100u32 {
        assert_eq!(reader.next_relayed().await.payload, &n.to_be_bytes()[..], "the honest session lost a message");
    }
    let grown = server.rss().saturating_sub(before);
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
    // The replay buffer off: what is measured is the queues.
    let args = [
        "--outbound-queue-bytes",
        "2097152",
        "--max-players-limit",
        "16",
        "--player-byte-rate",
        "0",
        "--replay-buffer-messages",
        "0",
    ];
    let server = Binary::start_with_env(&args, &[EAGER_TRIM]).await;
    let mut api = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "relay".into(), max_players: 10, ..Default::default() };
    let session = api.create_session(request).await.expect("create").into_inner().session.expect("session").session_id;
    let addr = server.addr;
    let before = server.rss();

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
    // The sender keeps at most eight relays ahead of the reader, so that
    // the reader is never behind, however busy the machine.
    let (progress, mut read) = tokio::sync::watch::channel(0u32);
    let sending = async {
        for n in 0..RELAYS {
            read.wait_for(|&read| n < read + 8).await.expect("the reader is reading");
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
                    progress.send_replace(relayed);
                }
                // Shed for reading too slowly: the seat is held for a
                // resume, and the queue freed.
                server_message::Kind::Presence(presence) if presence.kind == pb::PresenceKind::Held as i32 => {
                    removed += 1;
                }
                _ => {}
            }
        }
    };
    tokio::join!(sending, reading);
    assert_eq!(removed, 8, "every stalled player was shed (its seat held)");
    // What was queued for them is freed while their connections linger.
    relay_bytes_freed(&server).await;
    let grown = server.rss().saturating_sub(before);
    assert!(grown < 16 << 20, "eight removed players still hold {} MiB", grown >> 20);
    drop(stalled);
}

/// Catches a budget for all queued bytes that does not hold: eight players
/// in eight sessions stop reading while 60 KiB relays keep coming. Each
/// queue alone may hold 16 MiB (all 150 relays, 9 MiB); the server's budget of
/// 8 MiB removes them as they pass their share of it, so that what is
/// queued never goes past the budget by more than a message per queue,
/// while an honest session alongside gets every relay and nobody honest is
/// removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_budget_holds_under_eight_stalled_players() {
    const PAYLOAD: usize = 60 * 1024;
    const RELAYS: u32 = 150;
    const BUDGET: usize = 8 << 20;
    let budget = BUDGET.to_string();
    let args = [
        "--queued-bytes-budget",
        &budget,
        "--outbound-queue-bytes",
        "16777216",
        "--player-byte-rate",
        "0",
        "--replay-buffer-messages",
        "0",
    ];
    let server = Binary::start_with_env(&args, &[EAGER_TRIM]).await;
    let mut api = server.sessions().await;
    let mut create = async || {
        let request = pb::CreateSessionRequest { mode: "relay".into(), max_players: 2, ..Default::default() };
        api.create_session(request).await.expect("create").into_inner().session.expect("session").session_id
    };
    let honest = create().await;
    let mut pairs = Vec::new();
    for n in 0..8 {
        pairs.push((create().await, format!("stalled-{n}")));
    }
    let before = server.rss();

    let mut reader = Player::join(server.addr, join_session(&honest, "reader")).await;
    let honest_sender = Player::join(server.addr, join_session(&honest, "sender")).await;
    // Small HTTP/2 windows: what they do not read waits in the server.
    let connect = common::Connect { window: Some(16 * 1024), ..Default::default() };
    let mut stalled = Vec::new();
    let mut senders = Vec::new();
    for (session, id) in &pairs {
        stalled.push(Player::try_join(server.addr, join_session(session, id), connect.clone()).await.expect("join"));
        senders.push(Player::join(server.addr, join_session(session, &format!("{id}-sender"))).await);
    }
    reader.next_presence().await; // the honest sender joined

    // Sample what the server says it holds while the senders send.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let sampling = async {
        let mut peak = 0.0f64;
        while !*stopped.borrow() {
            peak = peak.max(queued_bytes(&server).await);
            let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
        }
        peak
    };
    let sending = async {
        let senders = &senders;
        let floods = senders.iter().map(|sender| async move {
            let mut payload = vec![0u8; PAYLOAD];
            for n in 0..RELAYS {
                payload[..4].copy_from_slice(&n.to_be_bytes());
                sender.relay(&payload, &[]).await;
            }
        });
        let honest = async {
            for n in 0..RELAYS {
                honest_sender.relay(&n.to_be_bytes(), &[]).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::join!(futures_util::future::join_all(floods), honest);
    };
    let reading = async {
        for n in 0..RELAYS {
            let relay = reader.next_relayed().await;
            assert_eq!(relay.payload, &n.to_be_bytes()[..], "the honest reader lost or reordered a relay");
        }
        let _ = stop.send(true);
    };
    let ((), (), peak) = tokio::join!(sending, reading, sampling);
    // Each stalled player's sender sees it shed (its seat held for a resume).
    for sender in &mut senders {
        let removed = sender.next_presence().await;
        assert_eq!(removed.kind, pb::PresenceKind::Held as i32, "{removed:?}");
        assert_eq!(removed.detail, "too slow");
    }
    let queues = 2 + 2 * pairs.len();
    let bound = (BUDGET + queues * (PAYLOAD + 1024)) as f64;
    assert!(peak <= bound, "{peak} bytes queued, over the budget of {BUDGET} and a message per queue");
    assert!(peak > (BUDGET / 2) as f64, "the stalled players never filled the budget ({peak} bytes): no test");
    let slow = server.sample("game_session_seats_held{mode=\"relay\"}").await;
    assert_eq!(slow, 8.0, "the stalled players, and nobody else, were shed");
    relay_bytes_freed(&server).await;
    // The queues are empty; what they held goes back to the kernel as the
    // connections' tasks next run (at once on an idle machine, later on a
    // loaded one).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let grown = server.rss().saturating_sub(before);
        if grown < 16 << 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "eight removed players still hold {} MiB", grown >> 20);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    honest_sender.leave().await;
    drop(stalled);
}
