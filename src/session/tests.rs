//! Actor-level tests on paused time: the outbound queue policy, the inbox
//! policy and the idle timeout, observed directly on the players' queues.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::*;
use crate::error::Error;

const QUEUE: usize = 8;
const GRACE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(30);

fn manager(inbox: usize) -> SessionManager {
    let config = ManagerConfig {
        max_sessions: 10,
        default_max_players: 8,
        max_players_limit: 8,
        watch_buffer: 64,
        session: SessionConfig { outbound_queue: QUEUE, slow_player_grace: GRACE, inbox, idle_timeout: IDLE },
    };
    SessionManager::new(config, Modes::default())
}

fn create(manager: &SessionManager) -> SessionId {
    let params = CreateParams {
        mode: "relay".into(),
        max_players: 0,
        labels: BTreeMap::new(),
        config: Bytes::new(),
        open_to_join_or_create: false,
    };
    manager.create(params, None).map(|c| c.session.id).unwrap_or_else(|e| panic!("create: {e}"))
}

type Inputs = mpsc::UnboundedSender<Result<Input, InboundError>>;

/// Joins `id`; returns the sender of the player's inputs and its queue with
/// the welcome already taken.
async fn join(manager: &SessionManager, session: &SessionId, id: &str) -> (Inputs, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let inbound = Box::pin(UnboundedReceiverStream::new(rx));
    let player = NewPlayer { id: id.into(), display_name: String::new(), metadata: BTreeMap::new() };
    let mut joined = manager
        .join(JoinTarget::Session(session.to_string()), player, inbound)
        .await
        .unwrap_or_else(|e| panic!("join {id}: {e}"));
    match joined.outbound.recv().await {
        Some(Delivery::Private(p)) if matches!(*p, Private::Welcome(_)) => {}
        other => panic!("expected a welcome, got {other:?}"),
    }
    (tx, joined.outbound)
}

fn relay(tx: &Inputs, droppable: bool) {
    let input = Input::Relay(RelayInput { payload: Bytes::from_static(b"pos"), targets: vec![], droppable });
    tx.send(Ok(input)).unwrap_or_else(|_| panic!("the actor dropped a live player's inputs"));
}

/// Lets the actor process everything sent so far.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Everything queued right now, without waiting.
fn drain(rx: &mut OutboundRx) -> Vec<Delivery> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    while let Poll::Ready(Some(item)) = rx.poll_recv(&mut cx) {
        items.push(item);
    }
    items
}

/// A compact view of a queue item, for exact assertions.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Relay { seq: u64, droppable: bool },
    Backend(u64),
    Presence(PresenceKind, String),
    Dropped { count: u64, last: u64 },
    End(Option<Error>),
    EndAcked,
    Other,
}

fn seen(item: &Delivery) -> Seen {
    match item {
        Delivery::Event(event) => match &event.event {
            Event::Relayed { sequence, droppable, .. } => Seen::Relay { seq: *sequence, droppable: *droppable },
            Event::Backend { sequence, .. } => Seen::Backend(*sequence),
            Event::Presence { kind, player, .. } => Seen::Presence(*kind, player.id.to_string()),
            Event::Ended { .. } => Seen::Other,
        },
        Delivery::Private(p) => match **p {
            Private::Dropped { count, last_sequence } => Seen::Dropped { count, last: last_sequence },
            _ => Seen::Other,
        },
        Delivery::End(err) => Seen::End(err.as_deref().cloned()),
        Delivery::EndAcked(_) => Seen::EndAcked,
    }
}

/// Catches a stalled player whose queue grows past its bound, droppable
/// messages that are not dropped first, drops that are never reported, and
/// a non-droppable message that is skipped.
#[tokio::test(start_paused = true)]
async fn a_stalled_player_drops_droppables_first_and_is_told() {
    let manager = manager(16);
    let session = create(&manager);
    let (sender, _sender_rx) = join(&manager, &session, "sender").await;
    let (_reader_in, mut reader) = join(&manager, &session, "reader").await;
    let (_stalled_in, mut stalled) = join(&manager, &session, "stalled").await;
    settle().await;
    assert_eq!(drain(&mut reader).len(), 1, "the reader saw the stalled player join");

    // Sequences 1-3 were the joins; 4..=53 are positions. The reader reads
    // as it goes; the stalled player never does.
    let mut reader_got = 0;
    for _ in 0..50 {
        relay(&sender, true);
        settle().await;
        reader_got += drain(&mut reader).len();
        assert!(stalled.len() <= QUEUE / 2, "droppables stop at half capacity");
    }
    assert_eq!(stalled.len(), QUEUE / 2);
    for _ in 0..3 {
        relay(&sender, false);
        settle().await;
        reader_got += drain(&mut reader).len();
    }
    assert_eq!(stalled.len(), QUEUE / 2 + 3, "non-droppable messages are still queued");
    assert_eq!(reader_got, 53, "the reader got every message");

    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    let mut want: Vec<Seen> = (4..8).map(|seq| Seen::Relay { seq, droppable: true }).collect();
    want.extend((54..57).map(|seq| Seen::Relay { seq, droppable: false }));
    assert_eq!(got, want);

    // With room again, the next delivery is preceded by the notice: 46
    // positions (8..=53) were dropped.
    relay(&sender, true);
    settle().await;
    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    assert_eq!(got, [Seen::Dropped { count: 46, last: 53 }, Seen::Relay { seq: 57, droppable: true }]);
}

/// Catches a player who caught up but never hears of its dropped messages
/// because nothing else is sent to it.
#[tokio::test(start_paused = true)]
async fn a_caught_up_player_hears_of_drops_without_new_traffic() {
    let manager = manager(16);
    let session = create(&manager);
    let (sender, _sender_rx) = join(&manager, &session, "sender").await;
    let (_stalled_in, mut stalled) = join(&manager, &session, "stalled").await;
    for _ in 0..10 {
        relay(&sender, true);
    }
    settle().await;
    assert_eq!(drain(&mut stalled).len(), QUEUE / 2);
    tokio::time::sleep(GRACE / 2).await;
    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    assert_eq!(got, [Seen::Dropped { count: 6, last: 12 }]);
}

/// Catches a queue that overflows its bound instead of disconnecting the
/// player, and a disconnect that disturbs the others.
#[tokio::test(start_paused = true)]
async fn overflowing_the_queue_disconnects_with_resource_exhausted() {
    let manager = manager(16);
    let session = create(&manager);
    let (sender, _sender_rx) = join(&manager, &session, "sender").await;
    let (_reader_in, mut reader) = join(&manager, &session, "reader").await;
    let (_stalled_in, mut stalled) = join(&manager, &session, "stalled").await;
    settle().await;
    drain(&mut reader);
    let mut reader_saw = Vec::new();
    for _ in 0..20 {
        relay(&sender, false);
        settle().await;
        reader_saw.extend(drain(&mut reader).iter().map(seen));
        assert!(stalled.len() <= QUEUE + 1, "the queue grew past its bound");
    }
    // QUEUE messages, then the end with its reason.
    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    assert_eq!(got.len(), QUEUE + 1);
    match got.last() {
        Some(Seen::End(Some(Error::SlowPlayer(why)))) => assert!(why.contains("overflowed"), "{why}"),
        other => panic!("expected a RESOURCE_EXHAUSTED end, got {other:?}"),
    }
    assert_eq!(reader_saw.len(), 21, "20 relays and one presence event");
    assert!(reader_saw.contains(&Seen::Presence(PresenceKind::Removed, "stalled".into())));
    relay(&sender, false);
    settle().await;
    assert_eq!(drain(&mut reader).len(), 1, "the session goes on");
}

/// Catches a player who stays behind forever without being disconnected
/// after the grace period.
#[tokio::test(start_paused = true)]
async fn staying_behind_past_the_grace_period_disconnects() {
    let manager = manager(16);
    let session = create(&manager);
    let (sender, _sender_rx) = join(&manager, &session, "sender").await;
    let (_stalled_in, mut stalled) = join(&manager, &session, "stalled").await;
    // Exactly half full, and behind since the droppable message found it so:
    // the boundary counts as behind.
    for _ in 0..QUEUE / 2 {
        relay(&sender, false);
    }
    relay(&sender, true);
    settle().await;
    tokio::time::sleep(GRACE - Duration::from_millis(10)).await;
    assert_eq!(stalled.len(), QUEUE / 2, "still within the grace period");
    tokio::time::sleep(Duration::from_millis(20)).await;
    match drain(&mut stalled).iter().map(seen).next_back() {
        Some(Seen::End(Some(Error::SlowPlayer(why)))) => assert!(why.contains("fell behind"), "{why}"),
        other => panic!("expected a RESOURCE_EXHAUSTED end, got {other:?}"),
    }
}

/// Catches a full session inbox that blocks the caller or queues without
/// bound, and commands accepted before it filled that are lost.
#[tokio::test(start_paused = true)]
async fn a_full_inbox_refuses_at_once_and_loses_nothing() {
    const INBOX: usize = 4;
    let manager = manager(INBOX);
    let session = create(&manager);
    let (_in, mut player) = join(&manager, &session, "p").await;
    let handle = manager.get(&session).unwrap_or_else(|e| panic!("{e}"));

    // The actor does not run between these polls (one thread, no await), so
    // the inbox fills.
    let mut cx = Context::from_waker(Waker::noop());
    let mut accepted = Vec::new();
    for i in 0..INBOX {
        let mut send = Box::pin(handle.send(Bytes::from(vec![i as u8]), vec![]));
        assert!(send.poll_unpin(&mut cx).is_pending(), "command {i} was queued");
        accepted.push(send);
    }
    let refused = handle.send(Bytes::from_static(b"one too many"), vec![]).now_or_never();
    assert_eq!(refused, Some(Err(Error::SessionBusy(session.to_string()))));

    let mut sequences = Vec::new();
    for send in accepted {
        sequences.push(send.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(sequences, [2, 3, 4, 5]);
    let got: Vec<Seen> = drain(&mut player).iter().map(seen).collect();
    assert_eq!(got, [Seen::Backend(2), Seen::Backend(3), Seen::Backend(4), Seen::Backend(5)]);
}

/// Catches an idle timeout that ends a session with players, or never ends
/// an empty one.
#[tokio::test(start_paused = true)]
async fn only_empty_sessions_end_when_idle() {
    let manager = manager(16);
    let empty = create(&manager);
    let occupied = create(&manager);
    let (leaver_in, _leaver) = join(&manager, &occupied, "leaver").await;
    tokio::time::sleep(IDLE + Duration::from_millis(1)).await;
    assert!(manager.get(&empty).is_err(), "the empty session outlived its idle timeout");
    assert!(manager.get(&occupied).is_ok(), "a session with a player ended");
    assert_eq!((manager.len(), manager.is_empty()), (1, false));

    leaver_in.send(Ok(Input::Leave)).unwrap_or_else(|_| panic!("send"));
    tokio::time::sleep(IDLE - Duration::from_millis(10)).await;
    assert!(manager.get(&occupied).is_ok(), "ended before its idle timeout");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(manager.get(&occupied).is_err());
    assert!(manager.is_empty());
}

/// Catches a connection that died (hyper reports a keepalive timeout as a
/// clean end of the request body) being announced as a leave, and a real
/// half-close being announced as a disconnect: the response stream decides.
#[tokio::test(start_paused = true)]
async fn a_half_close_is_a_leave_only_if_the_response_stream_takes_its_end() {
    let manager = manager(16);
    let session = create(&manager);
    let (_watcher_in, mut watcher) = join(&manager, &session, "watcher").await;
    let (leaver_in, mut leaver) = join(&manager, &session, "leaver").await;
    let (vanished_in, vanished) = join(&manager, &session, "vanished").await;
    settle().await;
    assert_eq!(drain(&mut watcher).len(), 2);
    assert_eq!(drain(&mut leaver).len(), 1);

    drop(leaver_in);
    settle().await;
    let mut items = drain(&mut leaver);
    assert_eq!(items.iter().map(seen).collect::<Vec<_>>(), [Seen::EndAcked]);
    assert!(drain(&mut watcher).is_empty(), "the seat is held until the end is taken");
    match items.pop() {
        Some(Delivery::EndAcked(ack)) => ack.send(()).unwrap_or_else(|_| panic!("the actor stopped waiting")),
        other => panic!("expected the acked end, got {other:?}"),
    }
    settle().await;
    assert_eq!(
        drain(&mut watcher).iter().map(seen).collect::<Vec<_>>(),
        [Seen::Presence(PresenceKind::Left, "leaver".into())]
    );

    drop(vanished_in);
    drop(vanished);
    settle().await;
    assert_eq!(
        drain(&mut watcher).iter().map(seen).collect::<Vec<_>>(),
        [Seen::Presence(PresenceKind::Disconnected, "vanished".into())]
    );
}

/// Catches a half-closed player who never reads again holding its seat
/// forever: after the grace period it is a disconnect and the seat is free.
#[tokio::test(start_paused = true)]
async fn a_half_closed_player_that_stops_reading_is_freed_after_the_grace_period() {
    let manager = manager(16);
    let session = create(&manager);
    let (_watcher_in, mut watcher) = join(&manager, &session, "watcher").await;
    let (silent_in, _silent_never_read) = join(&manager, &session, "silent").await;
    settle().await;
    drain(&mut watcher);
    drop(silent_in);
    tokio::time::sleep(GRACE - Duration::from_millis(10)).await;
    assert!(drain(&mut watcher).is_empty(), "freed before the grace period");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        drain(&mut watcher).iter().map(seen).collect::<Vec<_>>(),
        [Seen::Presence(PresenceKind::Disconnected, "silent".into())]
    );
}

/// Catches a burst of join-or-create joins that all pick the same session
/// and fail as "full" instead of spreading over new sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_join_or_create_spreads_over_sessions() {
    let manager = manager(64);
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let joins: Vec<_> = (0..64)
        .map(|i| {
            let (manager, barrier) = (manager.clone(), barrier.clone());
            tokio::spawn(async move {
                let (_tx, rx) = mpsc::unbounded_channel::<Result<Input, InboundError>>();
                let player = NewPlayer { id: format!("p{i}"), display_name: String::new(), metadata: BTreeMap::new() };
                barrier.wait().await;
                let inbound = Box::pin(UnboundedReceiverStream::new(rx));
                manager.join(JoinTarget::Mode("relay".into()), player, inbound).await.map(|j| (j, _tx))
            })
        })
        .collect();
    let mut joined = Vec::new();
    for join in joins {
        joined.push(join.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("join failed: {e}")));
    }
    assert_eq!(joined.len(), 64);
    let (sessions, _) = manager.list(&SessionFilter::default(), None, 100);
    assert_eq!(sessions.iter().map(|s| s.player_count).sum::<u32>(), 64);
    assert!(sessions.iter().all(|s| s.player_count <= s.max_players));
}

/// Catches a session whose actor panicked staying in the registry, where it
/// would count against the session limit, stall shutdown and break
/// join-or-create for its mode.
#[tokio::test(start_paused = true)]
async fn a_panicking_actor_leaves_the_registry() {
    let manager = manager(16);
    let session = create(&manager);
    let player = NewPlayer { id: "p".into(), display_name: String::new(), metadata: BTreeMap::new() };
    // The actor polls a player's stream itself: a bug there panics the actor.
    let inbound = Box::pin(futures_util::stream::poll_fn(|_| -> Poll<Option<Result<Input, InboundError>>> {
        panic!("a bug in session logic")
    }));
    // The panic happens in the actor's task, after the join is answered.
    let _ = manager.join(JoinTarget::Session(session.to_string()), player, inbound).await;
    settle().await;
    assert!(manager.get(&session).is_err());
    assert!(manager.is_empty());
    let (tx, rx) = mpsc::unbounded_channel::<Result<Input, InboundError>>();
    let player = NewPlayer { id: "q".into(), display_name: String::new(), metadata: BTreeMap::new() };
    let joined =
        manager.join(JoinTarget::Mode("relay".into()), player, Box::pin(UnboundedReceiverStream::new(rx))).await;
    assert!(joined.is_ok(), "join-or-create still works: {:?}", joined.err());
    drop(tx);
}
