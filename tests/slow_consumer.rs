//! The slow consumer over real TCP: a player who stops reading slows no one
//! else, loses only droppable data (and is told), and is disconnected when
//! it stays behind. The queue's exact bound is asserted in the actor-level
//! tests (`src/session/tests.rs`).

mod common;

use std::time::Duration;

use common::{Connect, Player, TestServer, join_session};
use game_session::pb::{PresenceKind, server_message::Kind};
use tonic::Code;

const PAYLOAD: usize = 8 * 1024;

fn payload(i: usize) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
    p
}

fn index(payload: &[u8]) -> usize {
    u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")) as usize
}

/// A session of three: a sender, a reader that reads, and a stalled player
/// whose client advertises a 1 KiB HTTP/2 window, so that once it stops
/// reading the server's queue for it fills after a few messages.
struct Trio {
    server: TestServer,
    sender: Player,
    reader: Player,
    stalled: Player,
}

async fn trio(outbound_queue: usize, slow_player_grace: Duration) -> Trio {
    let mut config = common::config();
    config.outbound_queue = outbound_queue;
    config.slow_player_grace = slow_player_grace;
    // The sender's bursts of 8 KiB relays may outrun the default byte rate
    // on a fast machine; what is tested here is the recipients' queues.
    config.player_byte_rate = 0;
    let server = TestServer::start_with(config).await;
    let session = server.create_session(3).await;
    let sender = Player::join_as(server.addr, &session, "sender").await;
    let mut reader = Player::join_as(server.addr, &session, "reader").await;
    let stalled = Player::try_join(
        server.addr,
        join_session(&session, "stalled"),
        Connect { window: Some(1024), ..Connect::default() },
    )
    .await
    .expect("join");
    reader.next_presence().await;
    Trio { server, sender, reader, stalled }
}

/// Catches a stalled player that slows the others, droppable data lost
/// without a notice, and non-droppable data skipped: the reader gets all
/// 300 messages in order; the stalled player, once it reads again, gets
/// every non-droppable one, and its relayed messages plus the dropped count
/// add up to exactly 300.
#[tokio::test]
async fn a_stalled_player_loses_only_droppable_data_and_is_told() {
    let Trio { server, sender, mut reader, mut stalled } = trio(32, Duration::from_secs(3)).await;

    // Bursts of 10, each read by the reader before the next: the reader is
    // never behind (its queue stays under half of 32), the stalled player
    // soon is.
    const TOTAL: usize = 300;
    let mut got = Vec::new();
    for burst in 0..TOTAL / 10 {
        for i in burst * 10..burst * 10 + 10 {
            sender.relay_with(&payload(i), &[], i % 30 != 0).await;
        }
        for _ in 0..10 {
            got.push(index(&reader.next_relayed().await.payload));
        }
    }
    assert_eq!(got, (0..TOTAL).collect::<Vec<_>>(), "the reader missed or reordered messages");

    // Now the stalled player reads everything it was sent.
    let mut relayed = Vec::new();
    let mut dropped = 0;
    let mut last_sequence = 0;
    while relayed.len() + dropped < TOTAL {
        match stalled.next().await {
            Kind::Relayed(m) => {
                assert!(m.sequence > last_sequence, "out of order");
                last_sequence = m.sequence;
                relayed.push(index(&m.payload));
            }
            Kind::Dropped(notice) => dropped += notice.count as usize,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(relayed.len() + dropped, TOTAL);
    assert!(dropped > 0, "the stalled player's queue never filled, so this test proved nothing");
    let non_droppable: Vec<usize> = (0..TOTAL).step_by(30).collect();
    for i in &non_droppable {
        assert!(relayed.contains(i), "non-droppable message {i} was skipped");
    }
    server.shutdown().await;
}

/// Catches a player who stays behind and is never disconnected, or whose
/// disconnect lacks its reason: after the grace period it gets
/// RESOURCE_EXHAUSTED saying it fell behind, and the others are told it was
/// removed (in fixed words) and miss nothing.
#[tokio::test]
async fn a_player_behind_past_the_grace_period_is_disconnected() {
    let Trio { server, sender, mut reader, mut stalled } = trio(16, Duration::from_millis(300)).await;

    // Droppable positions for well over the grace period: they never
    // overflow the queue, so only the grace period can end the stream.
    const TOTAL: usize = 120;
    for i in 0..TOTAL {
        sender.relay_with(&payload(i), &[], true).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut relays = 0;
    let mut removed = None;
    while relays < TOTAL || removed.is_none() {
        match reader.next().await {
            Kind::Relayed(m) => {
                assert_eq!(index(&m.payload), relays);
                relays += 1;
            }
            Kind::Presence(p) => removed = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    let removed = removed.expect("presence");
    // Shed, its seat held for a resume.
    assert_eq!(removed.kind, PresenceKind::Held as i32);
    assert_eq!(removed.player.map(|p| p.player_id).as_deref(), Some("stalled"));
    assert_eq!(removed.detail, "too slow", "the others get fixed words, not the reason");

    let (_, end) = stalled.until_end().await;
    let status = end.expect_err("the stalled player's stream fails");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("fell behind reading the stream for more than 300ms"), "{status:?}");
    server.shutdown().await;
}
