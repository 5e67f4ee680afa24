//! A flooding player over real TCP: what it sends past its rate limits is
//! dropped before it reaches anyone, it is told, and a flood that goes on
//! removes it, while the honest players of its session and of every other
//! session keep every message they expect. The limits' exact arithmetic is
//! asserted in `src/session/rate.rs` and `src/session/tests.rs`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestServer, WAIT, join_session};
use game_session::pb::{self, client_message, server_message::Kind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

/// Honest players beside the flooder in its session.
const HONEST: usize = 7;
/// Other sessions, of two honest players each.
const OTHER_SESSIONS: usize = 100;
/// Relays each honest player of the flooder's session sends.
const HONEST_RELAYS: usize = 20;
/// Relays each player of the other sessions sends.
const OTHER_RELAYS: usize = 5;
/// Tasks sending the flood at once, none waiting for an answer.
const FLOOD_TASKS: usize = 4;

/// A joined player's two halves, so that one task can send while another
/// reads.
async fn join(
    addr: SocketAddr,
    session: &str,
    id: &str,
) -> (mpsc::Sender<pb::ClientMessage>, Streaming<pb::ServerMessage>) {
    let first = pb::ClientMessage { kind: Some(client_message::Kind::Join(join_session(session, id))) };
    let (tx, mut rx, _fd) = common::open(addr, first, common::Connect::default()).await.expect("join");
    match tokio::time::timeout(WAIT, rx.message()).await.expect("welcome in time") {
        Ok(Some(pb::ServerMessage { kind: Some(Kind::Welcome(_)) })) => (tx, rx),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn relay(payload: Vec<u8>) -> pb::ClientMessage {
    pb::ClientMessage {
        kind: Some(client_message::Kind::Relay(pb::Relay {
            payload: payload.into(),
            targets: vec![],
            droppable: false,
        })),
    }
}

/// Sends `count` relays, 10 ms apart, as an honest game would.
fn send_honestly(tx: mpsc::Sender<pb::ClientMessage>, id: String, count: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..count {
            tx.send(relay(format!("{id}/{i}").into_bytes())).await.expect("send");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Kept open until the reader is done: a half-close is a leave.
        std::future::pending::<()>().await;
    })
}

/// Reads until `expected` relays from honest senders arrived; returns them,
/// with any relays from `flooder` counted apart. Panics if the stream ends.
fn read_honest(
    mut rx: Streaming<pb::ServerMessage>,
    expected: usize,
) -> tokio::task::JoinHandle<(Vec<String>, usize, Streaming<pb::ServerMessage>)> {
    tokio::spawn(async move {
        let (mut honest, mut flood) = (Vec::new(), 0);
        while honest.len() < expected {
            match tokio::time::timeout(WAIT, rx.message()).await.expect("a message in time") {
                Ok(Some(pb::ServerMessage { kind: Some(Kind::Relayed(relayed)) })) => {
                    if relayed.sender_id == "flooder" {
                        flood += 1;
                    } else {
                        honest.push(String::from_utf8_lossy(&relayed.payload).into_owned());
                    }
                }
                Ok(Some(_)) => {}
                other => panic!("an honest player's stream ended: {other:?}"),
            }
        }
        (honest, flood, rx)
    })
}

/// Catches a flood that gets its recipients removed as slow, slows down
/// other sessions, is never refused, or is answered with an error per
/// dropped message: a sender relays non-droppable messages as fast as four
/// tasks can send, without reading; every honest player (7 in its session,
/// 200 in 100 others) gets every honest message and stays seated; the
/// flooder gets few RESOURCE_EXHAUSTED notices and is then removed with
/// RESOURCE_EXHAUSTED for sending too fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_is_removed_and_nobody_else_loses_a_message() {
    let mut config = common::config();
    config.player_message_rate = 50;
    config.player_message_burst = 100;
    config.flood_grace = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let addr = server.addr;

    let flooded = server.create_session(HONEST as u32 + 1).await;
    let (flood_tx, mut flood_rx) = join(addr, &flooded, "flooder").await;
    let mut honest = Vec::new();
    for i in 0..HONEST {
        let id = format!("honest-{i}");
        let (tx, rx) = join(addr, &flooded, &id).await;
        honest.push((id, tx, rx));
    }
    let mut others = Vec::new();
    for s in 0..OTHER_SESSIONS {
        let session = server.create_session(2).await;
        for p in 0..2 {
            let id = format!("s{s}-p{p}");
            let (tx, rx) = join(addr, &session, &id).await;
            others.push((session.clone(), id, tx, rx));
        }
    }

    // The flood: as fast as the client sends, nobody waiting on a reply.
    let stop = CancellationToken::new();
    let mut flooders = Vec::new();
    for _ in 0..FLOOD_TASKS {
        let (tx, stop) = (flood_tx.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    result = tx.send(relay(vec![0xF1; 64])) => if result.is_err() { break },
                }
                sent += 1;
            }
            sent
        }));
    }
    drop(flood_tx);
    // The flooder's own stream: its notices, then its end.
    let flooder_end = tokio::spawn(async move {
        let mut notices = Vec::new();
        let end: Result<(), Status> = loop {
            match tokio::time::timeout(Duration::from_secs(30), flood_rx.message()).await.expect("the flood ends") {
                Ok(Some(pb::ServerMessage { kind: Some(Kind::Error(error)) })) => notices.push(error),
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        (notices, end)
    });

    // Honest traffic while the flood runs.
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (id, tx, rx) in honest {
        senders.push(send_honestly(tx, id.clone(), HONEST_RELAYS));
        readers.push((id, read_honest(rx, (HONEST - 1) * HONEST_RELAYS)));
    }
    let mut other_readers = Vec::new();
    for (session, id, tx, rx) in others {
        senders.push(send_honestly(tx, id.clone(), OTHER_RELAYS));
        other_readers.push((session, id, read_honest(rx, OTHER_RELAYS)));
    }

    let mut flood_relays_seen = Vec::new();
    let mut honest_rx = Vec::new();
    for (id, reader) in readers {
        let (got, flood, rx) = reader.await.expect("reader");
        let mut expected: Vec<String> = (0..HONEST)
            .map(|i| format!("honest-{i}"))
            .filter(|sender| *sender != id)
            .flat_map(|sender| (0..HONEST_RELAYS).map(move |n| format!("{sender}/{n}")))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        expected.sort();
        assert_eq!(got_sorted, expected, "{id} got every honest relay of its session, once");
        flood_relays_seen.push(flood);
        honest_rx.push(rx);
    }
    for (_, id, reader) in other_readers {
        let (got, flood, _rx) = reader.await.expect("reader");
        let peer = if id.ends_with("p0") { id.replace("p0", "p1") } else { id.replace("p1", "p0") };
        let expected: Vec<String> = (0..OTHER_RELAYS).map(|n| format!("{peer}/{n}")).collect();
        assert_eq!(got, expected, "{id} got its peer's relays in order");
        assert_eq!(flood, 0, "{id} got another session's flood");
    }

    let (notices, end) = flooder_end.await.expect("flooder's reader");
    stop.cancel();
    let mut flood_sent = 0;
    for task in flooders {
        flood_sent += task.await.expect("flood task");
    }
    match end {
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().starts_with("sending faster than 50 messages/s (burst 100) for 1s"), "{status:?}");
        }
        Ok(()) => panic!("the flooder's stream ended with OK"),
    }
    // Told, but at most once a second: the flood lasted about the grace.
    assert!((1..=4).contains(&notices.len()), "{} notices for {flood_sent} relays: {notices:?}", notices.len());
    for notice in &notices {
        assert_eq!(notice.code, Code::ResourceExhausted as i32, "{notice:?}");
        assert!(notice.message.starts_with("sending faster than 50 messages/s"), "{notice:?}");
    }
    // What got through is the burst and the rate, not the flood.
    let most = flood_relays_seen.iter().copied().max().unwrap_or(0);
    assert!(most <= 100 + 50 * 5, "a recipient got {most} of {flood_sent} flooded relays");
    assert!(flood_sent > 2 * most as u64, "the flood sent only {flood_sent} relays");

    // Nobody honest was removed.
    let info = server.session_info(&flooded).await;
    let mut seated: Vec<String> = info.players.iter().map(|p| p.player_id.clone()).collect();
    seated.sort();
    assert_eq!(seated, (0..HONEST).map(|i| format!("honest-{i}")).collect::<Vec<_>>());
    let mut sessions = server.sessions().await;
    let listed = sessions
        .list_sessions(pb::ListSessionsRequest { page_size: 1000, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.sessions.len(), OTHER_SESSIONS + 1);
    for session in listed.sessions.iter().filter(|s| s.session_id != flooded) {
        assert_eq!(session.player_count, 2, "{session:?}");
    }
    for sender in senders {
        sender.abort();
    }
    drop(honest_rx);
    server.shutdown().await;
}
