//! Tests of the session layer on paused time, without a network, observed
//! directly on the players' queues:
//! - the room and the relay logic, driven by hand (no actor);
//! - the actor: the outbound queue policy, the inbox policy, the idle
//!   timeout, the half-close protocol, and panics.

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
const QUEUE_BYTES: usize = 64 * 1024;
const GRACE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(30);

fn new_registry(inbox: usize) -> Registry {
    registry_with(inbox, RateLimits::OFF, usize::MAX)
}

/// A registry whose sessions have `rates` for their players and `budget`
/// bytes for all queued events.
fn registry_with(inbox: usize, rates: RateLimits, budget: usize) -> Registry {
    Registry::new(config(inbox, rates, budget), Modes::default())
}

/// The replay buffer of the sessions here.
const REPLAY: ReplayLimits = ReplayLimits { messages: 6, bytes: 1 << 20, age: Duration::from_secs(30) };

/// The config of [`registry_with`].
fn config(inbox: usize, rates: RateLimits, budget: usize) -> RegistryConfig {
    RegistryConfig {
        max_sessions: 10,
        default_max_players: 8,
        max_players_limit: 8,
        watch_buffer: 64,
        creation: CreationLimits::OFF,
        ended_retention: Duration::from_secs(300),
        session: SessionConfig {
            outbound_queue: QUEUE,
            outbound_queue_bytes: QUEUE_BYTES,
            queued_bytes_budget: budget,
            slow_player_grace: GRACE,
            inbox,
            idle_timeout: IDLE,
            rates,
            ticks: TickSettings::inline(),
            seat_hold: Duration::ZERO,
            replay: REPLAY,
        },
    }
}

fn create(registry: &Registry) -> SessionId {
    create_of(registry, "relay")
}

/// Creates a session of `mode` with the default seats and no config.
fn create_of(registry: &Registry, mode: &str) -> SessionId {
    let params = CreateParams {
        mode: mode.into(),
        max_players: 0,
        labels: BTreeMap::new(),
        config: Bytes::new(),
        open_to_join_or_create: false,
        seat_hold: None,
        replay: None,
    };
    // The registry creates without waiting.
    let created = registry.create(params, None).now_or_never().unwrap_or_else(|| panic!("create waited"));
    created.map(|c| c.session.id).unwrap_or_else(|e| panic!("create: {e}"))
}

type PlayerTx = mpsc::UnboundedSender<Result<Inbound, InboundError>>;

/// Joins `id`; returns the sender of the player's inputs and its queue with
/// the welcome already taken.
async fn join(registry: &Registry, session: &SessionId, id: &str) -> (PlayerTx, OutboundRx) {
    join_as(registry, session, new_player(id)).await
}

/// As [`join`], as `player`.
async fn join_as(registry: &Registry, session: &SessionId, player: NewPlayer) -> (PlayerTx, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let inbound = Box::pin(UnboundedReceiverStream::new(rx));
    let id = player.id.clone();
    let mut joined = registry
        .join(JoinTarget::Session(session.to_string()), player, Caller::Connection(None), inbound)
        .await
        .unwrap_or_else(|e| panic!("join {id}: {e}"));
    match joined.outbound.recv().await {
        Some(Delivery::Direct(d)) if matches!(*d, Direct::Welcome(_)) => {}
        other => panic!("expected a welcome, got {other:?}"),
    }
    (tx, joined.outbound)
}

fn relay(tx: &PlayerTx, droppable: bool) {
    let message = RelayMessage { payload: Bytes::from_static(b"pos"), targets: vec![], droppable };
    let input = Inbound::Message(PlayerMessage::Relay(message));
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
        Delivery::Direct(d) => match **d {
            Direct::Dropped { count, last_sequence } => Seen::Dropped { count, last: last_sequence },
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
    let registry = new_registry(16);
    let session = create(&registry);
    let (sender, _sender_rx) = join(&registry, &session, "sender").await;
    let (_reader_in, mut reader) = join(&registry, &session, "reader").await;
    let (_stalled_in, mut stalled) = join(&registry, &session, "stalled").await;
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
    let registry = new_registry(16);
    let session = create(&registry);
    let (sender, _sender_rx) = join(&registry, &session, "sender").await;
    let (_stalled_in, mut stalled) = join(&registry, &session, "stalled").await;
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
    let registry = new_registry(16);
    let session = create(&registry);
    let (sender, _sender_rx) = join(&registry, &session, "sender").await;
    let (_reader_in, mut reader) = join(&registry, &session, "reader").await;
    let (_stalled_in, mut stalled) = join(&registry, &session, "stalled").await;
    settle().await;
    drain(&mut reader);
    let mut reader_saw = Vec::new();
    for _ in 0..20 {
        relay(&sender, false);
        settle().await;
        reader_saw.extend(drain(&mut reader).iter().map(seen));
        assert!(stalled.len() <= QUEUE + 1, "the queue grew past its bound");
    }
    // The end with its reason, alone: the QUEUE messages waiting for the
    // player were freed when it was removed.
    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    assert_eq!(got.len(), 1, "{got:?}");
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
    let registry = new_registry(16);
    let session = create(&registry);
    let (sender, _sender_rx) = join(&registry, &session, "sender").await;
    let (_stalled_in, mut stalled) = join(&registry, &session, "stalled").await;
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
    let registry = new_registry(INBOX);
    let session = create(&registry);
    let (_in, mut player) = join(&registry, &session, "p").await;
    let handle = registry.handle(&session).unwrap_or_else(|e| panic!("{e}"));

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
    let registry = new_registry(16);
    let empty = create(&registry);
    let occupied = create(&registry);
    let (leaver_in, _leaver) = join(&registry, &occupied, "leaver").await;
    tokio::time::sleep(IDLE + Duration::from_millis(1)).await;
    assert!(registry.handle(&empty).is_err(), "the empty session outlived its idle timeout");
    assert!(registry.handle(&occupied).is_ok(), "a session with a player ended");
    assert_eq!((registry.len(), registry.is_empty()), (1, false));

    leaver_in.send(Ok(Inbound::Leave)).unwrap_or_else(|_| panic!("send"));
    tokio::time::sleep(IDLE - Duration::from_millis(10)).await;
    assert!(registry.handle(&occupied).is_ok(), "ended before its idle timeout");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(registry.handle(&occupied).is_err());
    assert!(registry.is_empty());
}

/// Catches a connection that died (hyper reports a keepalive timeout as a
/// clean end of the request body) being announced as a leave, and a real
/// half-close being announced as a disconnect: the response stream decides.
#[tokio::test(start_paused = true)]
async fn a_half_close_is_a_leave_only_if_the_response_stream_takes_its_end() {
    let registry = new_registry(16);
    let session = create(&registry);
    let (_watcher_in, mut watcher) = join(&registry, &session, "watcher").await;
    let (leaver_in, mut leaver) = join(&registry, &session, "leaver").await;
    let (vanished_in, vanished) = join(&registry, &session, "vanished").await;
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
    let registry = new_registry(16);
    let session = create(&registry);
    let (_watcher_in, mut watcher) = join(&registry, &session, "watcher").await;
    let (silent_in, _silent_never_read) = join(&registry, &session, "silent").await;
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
    let registry = new_registry(64);
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let joins: Vec<_> = (0..64)
        .map(|i| {
            let (registry, barrier) = (registry.clone(), barrier.clone());
            tokio::spawn(async move {
                let (_tx, rx) = mpsc::unbounded_channel::<Result<Inbound, InboundError>>();
                let player = new_player(&format!("p{i}"));
                barrier.wait().await;
                let inbound = Box::pin(UnboundedReceiverStream::new(rx));
                registry
                    .join(JoinTarget::Mode("relay".into()), player, Caller::Connection(None), inbound)
                    .await
                    .map(|j| (j, _tx))
            })
        })
        .collect();
    let mut joined = Vec::new();
    for join in joins {
        joined.push(join.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("join failed: {e}")));
    }
    assert_eq!(joined.len(), 64);
    let (sessions, _) = registry.list(&SessionFilter::default(), None, 100).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sessions.iter().map(|s| s.player_count).sum::<u32>(), 64);
    assert!(sessions.iter().all(|s| s.player_count <= s.max_players));
}

/// A join-or-create by `caller` into a registry whose sessions have one
/// seat, so that every such join starts a session; returns the session's
/// id, with the player's sender to keep it seated.
async fn create_by_joining(registry: &Registry, caller: &Caller, id: &str) -> Result<(SessionId, PlayerTx), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let player = new_player(id);
    let inbound = Box::pin(UnboundedReceiverStream::new(rx));
    let joined = registry.join(JoinTarget::Mode("relay".into()), player, caller.clone(), inbound).await?;
    Ok((joined.session_id, tx))
}

/// Catches a caller that can start sessions without limit by join-or-create
/// (each holding memory and a task), one whose sessions count against
/// another caller, and a count that is not given back when a session ends.
#[tokio::test(start_paused = true)]
async fn join_or_create_holds_each_caller_to_its_creation_limits() {
    let creation = CreationLimits { live_per_caller: 2, per_second: 1, burst: 3 };
    let mut config = config(16, RateLimits::OFF, usize::MAX);
    (config.default_max_players, config.creation) = (1, creation);
    let registry = Registry::new(config, Modes::default());
    let (alice, bob) = (Caller::Subject("alice".into()), Caller::Connection(Some(([10, 0, 0, 1], 4000).into())));

    let (first, _a1) = create_by_joining(&registry, &alice, "a1").await.unwrap_or_else(|e| panic!("{e}"));
    let (second, _a2) = create_by_joining(&registry, &alice, "a2").await.unwrap_or_else(|e| panic!("{e}"));
    let refused = create_by_joining(&registry, &alice, "a3").await.map(|_| ());
    let Err(Error::CreationLimited(message)) = refused else { panic!("a third live session: {refused:?}") };
    assert_eq!(
        message,
        "join-or-create would start a new session, but player \"alice\" already has 2 running that it started \
         (--max-sessions-per-caller); join one of them by id, or leave them to end"
    );
    // Another caller is not charged for alice's sessions.
    let (_, _b1) = create_by_joining(&registry, &bob, "b1").await.unwrap_or_else(|e| panic!("{e}"));

    // An ended session is given back at once; the rate still holds.
    registry.end(&first, EndReason::EndedByBackend, "over".into()).await.unwrap_or_else(|e| panic!("{e}"));
    settle().await;
    let (_, _a3) = create_by_joining(&registry, &alice, "a3").await.unwrap_or_else(|e| panic!("{e}"));
    registry.end(&second, EndReason::EndedByBackend, "over".into()).await.unwrap_or_else(|e| panic!("{e}"));
    settle().await;
    // Three taken within the burst of three: the fourth waits a second.
    let refused = create_by_joining(&registry, &alice, "a4").await.map(|_| ());
    let Err(Error::CreationLimited(message)) = refused else { panic!("past the rate: {refused:?}") };
    let wait = message
        .strip_prefix(
            "join-or-create would start a new session, but player \"alice\" starts sessions faster than 1 a \
                       second (burst 3, --session-create-rate); retry in ",
        )
        .and_then(|rest| rest.strip_suffix(" ms")?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{message}"));
    // The hint is exact: a millisecond early is still refused, on time is not.
    assert!((990..=1000).contains(&wait), "{message}");
    tokio::time::advance(Duration::from_millis(wait - 1)).await;
    assert!(create_by_joining(&registry, &alice, "a4").await.is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    let (_, _a4) = create_by_joining(&registry, &alice, "a4").await.unwrap_or_else(|e| panic!("{e}"));
}

/// Catches a session whose actor panicked staying in the registry, where it
/// would count against the session limit, stall shutdown and break
/// join-or-create for its mode.
#[tokio::test(start_paused = true)]
async fn a_panicking_actor_leaves_the_registry() {
    let registry = new_registry(16);
    let session = create(&registry);
    let player = new_player("p");
    // The actor polls a player's stream itself: a bug there panics the actor.
    let inbound = Box::pin(futures_util::stream::poll_fn(|_| -> Poll<Option<Result<Inbound, InboundError>>> {
        panic!("a bug in session logic")
    }));
    // The panic happens in the actor's task, after the join is answered.
    let _ = registry.join(JoinTarget::Session(session.to_string()), player, Caller::Connection(None), inbound).await;
    settle().await;
    assert!(registry.handle(&session).is_err());
    assert!(registry.is_empty());
    let (tx, rx) = mpsc::unbounded_channel::<Result<Inbound, InboundError>>();
    let player = new_player("q");
    let joined = registry
        .join(
            JoinTarget::Mode("relay".into()),
            player,
            Caller::Connection(None),
            Box::pin(UnboundedReceiverStream::new(rx)),
        )
        .await;
    assert!(joined.is_ok(), "join-or-create still works: {:?}", joined.err());
    drop(tx);
}

// The room and the relay logic, driven by hand.

/// A room for up to three players, as the registry would make it.
fn room(registry: &Registry) -> Room {
    let info = SessionInfo {
        id: "room".into(),
        mode: "relay".into(),
        max_players: 3,
        player_count: 0,
        labels: Arc::new(BTreeMap::new()),
        open_to_join_or_create: false,
        locked: false,
        created_unix_micros: 0,
        sequence: 0,
        players: Vec::new(),
        seats: Vec::new(),
        end: None,
    };
    let config = SessionConfig {
        outbound_queue: QUEUE,
        outbound_queue_bytes: QUEUE_BYTES,
        queued_bytes_budget: usize::MAX,
        slow_player_grace: GRACE,
        inbox: 16,
        idle_timeout: IDLE,
        rates: RateLimits::OFF,
        ticks: TickSettings::inline(),
        seat_hold: Duration::ZERO,
        replay: REPLAY,
    };
    Room::new(info, config, Arc::new(std::sync::atomic::AtomicU64::new(0)), Arc::new(registry.clone()))
}

fn new_player(id: &str) -> NewPlayer {
    NewPlayer { id: id.into(), display_name: String::new(), metadata: BTreeMap::new(), proof: SeatProof::None }
}

/// Seats `ids` in order; returns their queues with everything so far
/// (welcomes, joins) taken.
fn seat_all(room: &mut Room, ids: &[&str]) -> Vec<OutboundRx> {
    let mut queues: Vec<OutboundRx> =
        ids.iter().map(|id| room.seat(new_player(id), &tracing::Span::none()).joined.outbound).collect();
    for queue in &mut queues {
        drain(queue);
    }
    queues
}

fn relay_message(payload: &'static [u8], targets: &[&str]) -> PlayerMessage {
    let targets = targets.iter().map(|t| PlayerId::from(*t)).collect();
    PlayerMessage::Relay(RelayMessage { payload: Bytes::from_static(payload), targets, droppable: false })
}

/// A relay as its recipient sees it: sequence, sender, payload.
fn relayed(items: &[Delivery]) -> Vec<(u64, String, Bytes)> {
    items
        .iter()
        .map(|item| match item {
            Delivery::Event(event) => match &event.event {
                Event::Relayed { sequence, sender, payload, .. } => (*sequence, sender.to_string(), payload.clone()),
                other => panic!("expected a relay, got {other:?}"),
            },
            other => panic!("expected a relay, got {other:?}"),
        })
        .collect()
}

/// Catches a relay that reaches its sender, misses a player, goes to players
/// it did not target, or takes a sequence number out of order.
#[tokio::test(start_paused = true)]
async fn relay_reaches_every_other_player_or_just_its_targets_in_sequence() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let mut q = seat_all(&mut room, &["a", "b", "c"]);
    let (a, b): (PlayerId, PlayerId) = ("a".into(), "b".into());

    // Three joins took sequences 1 to 3.
    Relay.on_message(&mut room, &a, relay_message(b"to all", &[]));
    Relay.on_message(&mut room, &b, relay_message(b"to a", &["a"]));
    let hello = Bytes::from_static(b"to all");
    assert_eq!(relayed(&drain(&mut q[0])), [(5, "b".to_owned(), Bytes::from_static(b"to a"))]);
    assert_eq!(relayed(&drain(&mut q[1])), [(4, "a".to_owned(), hello.clone())]);
    assert_eq!(relayed(&drain(&mut q[2])), [(4, "a".to_owned(), hello)]);
}

/// Catches a relay naming a player who holds no seat that reaches anyone,
/// uses up a sequence number, or is refused without naming the bad target.
#[tokio::test(start_paused = true)]
async fn relay_to_an_unknown_player_is_refused_to_its_sender_alone() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let mut q = seat_all(&mut room, &["a", "b"]);
    let a: PlayerId = "a".into();

    Relay.on_message(&mut room, &a, relay_message(b"x", &["b", "ghost"]));
    match drain(&mut q[0]).as_slice() {
        [Delivery::Direct(direct)] => match &**direct {
            Direct::Error { error: err, .. } => {
                assert_eq!(*err, Error::UnknownPlayer { field: "relay.targets[1]".into(), player: "ghost".into() })
            }
            other => panic!("expected an error, got {other:?}"),
        },
        other => panic!("expected one error, got {other:?}"),
    }
    assert!(drain(&mut q[1]).is_empty(), "a refused relay reached a target");
    Relay.on_message(&mut room, &a, relay_message(b"y", &[]));
    assert_eq!(relayed(&drain(&mut q[1])), [(3, "a".to_owned(), Bytes::from_static(b"y"))]);
}

/// Catches a backend message that misses a player or goes to untargeted
/// ones, and an unknown target that is not refused with its field.
#[tokio::test(start_paused = true)]
async fn a_backend_message_reaches_its_targets_or_everyone() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let mut q = seat_all(&mut room, &["a", "b"]);

    assert_eq!(Relay.on_backend_message(&mut room, Bytes::from_static(b"all"), vec![]), Ok(3));
    assert_eq!(Relay.on_backend_message(&mut room, Bytes::from_static(b"b"), vec!["b".into()]), Ok(4));
    let unknown = Relay.on_backend_message(&mut room, Bytes::from_static(b"?"), vec!["ghost".into()]);
    assert_eq!(unknown, Err(Error::UnknownPlayer { field: "player_ids[0]".into(), player: "ghost".into() }));
    let seen_by = |q: &mut OutboundRx| drain(q).iter().map(seen).collect::<Vec<_>>();
    assert_eq!(seen_by(&mut q[0]), [Seen::Backend(3)]);
    assert_eq!(seen_by(&mut q[1]), [Seen::Backend(3), Seen::Backend(4)]);
}

/// Catches a room that seats more players than it has seats, seats one id
/// twice, or does not name a player who asked the server to.
#[tokio::test(start_paused = true)]
async fn the_room_admits_up_to_its_seats_and_each_id_once() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let request = |id: &str| {
        let inbound: InboundStream = Box::pin(futures_util::stream::pending());
        Box::new(JoinRequest { player: new_player(id), inbound, caller: tracing::Span::none() })
    };
    let _q = seat_all(&mut room, &["a", "b"]);
    let rejected = room.admit(request("a")).err().map(|(err, back)| (err, back.map(|r| r.player.id)));
    let taken = Error::PlayerAlreadyJoined { session: "room".into(), player: "a".into() };
    assert_eq!(rejected, Some((taken, Some("a".to_owned()))), "the request comes back for another try");
    let named = room.admit(request("")).map(|r| r.player.id).unwrap_or_default();
    assert_eq!(named.len(), 32, "a player who asked gets a 32-hex-digit id: {named:?}");
    let _c = seat_all(&mut room, &["c"]);
    let full = room.admit(request("d")).err().map(|(err, _)| err);
    assert_eq!(full, Some(Error::SessionFull("room".into())));
}

/// Catches a freed seat whose player the others are not told about, whose
/// stream does not end (with the removal's error when removed, at once and
/// with its queue freed), or whose later messages are still taken as
/// current.
#[tokio::test(start_paused = true)]
async fn freeing_a_seat_tells_the_others_and_ends_the_players_stream() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let mut q = seat_all(&mut room, &["a", "b", "c"]);
    let (b, c): (PlayerId, PlayerId) = ("b".into(), "c".into());
    assert!(room.is_current(&b, 1));

    assert!(room.free_seat(&b, &Departure::Left).is_some());
    let removed = Error::SlowPlayer("test".into());
    assert!(room.free_seat(&c, &Departure::Removed(removed.clone())).is_some());
    assert!(room.free_seat(&c, &Departure::Left).is_none(), "a seat is freed once");

    assert!(!room.is_current(&b, 1));
    let seen_by = |q: &mut OutboundRx| drain(q).iter().map(seen).collect::<Vec<_>>();
    assert_eq!(
        seen_by(&mut q[0]),
        [Seen::Presence(PresenceKind::Left, "b".into()), Seen::Presence(PresenceKind::Removed, "c".into())]
    );
    assert_eq!(seen_by(&mut q[1]), [], "a leaving player's stream just ends");
    assert!(q[1].recv().await.is_none());
    // Removed: its status at once, with what was queued for it (b's leave)
    // freed.
    assert_eq!(seen_by(&mut q[2]), [Seen::End(Some(removed))]);
}

/// Catches a departure's own text (a transport error, the decoder's words,
/// how far a player fell behind) reaching the other players: they get only
/// the fixed phrase for each cause, while the removed player still gets its
/// full error.
#[tokio::test(start_paused = true)]
async fn presence_details_are_fixed_phrases() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let mut q = seat_all(&mut room, &["watcher", "d", "s", "p", "l"]);
    drain(&mut q[0]);
    let transport = "h2 protocol error: error reading a body from connection";
    let decoder = Error::Protocol {
        fault: crate::error::ProtocolFault::Malformed,
        message: "failed to decode Protobuf message: \x1b]0;evil\x07".into(),
    };
    let departures = [
        ("d", Departure::Disconnected(transport.into())),
        ("s", Departure::Removed(Error::SlowPlayer("fell behind by 512 messages".into()))),
        ("p", Departure::Removed(decoder.clone())),
        ("l", Departure::Left),
    ];
    for (id, departure) in &departures {
        assert!(room.free_seat(&PlayerId::from(*id), departure).is_some());
    }
    let details: Vec<(String, &str)> = drain(&mut q[0])
        .iter()
        .filter_map(|item| match item {
            Delivery::Event(event) => match &event.event {
                Event::Presence { player, detail, .. } => Some((player.id.to_string(), *detail)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let expected = [("d", "connection lost"), ("s", "too slow"), ("p", "protocol error"), ("l", "")];
    assert_eq!(details, expected.map(|(id, detail)| (id.to_owned(), detail)));
    let ended: Vec<Seen> = drain(&mut q[3]).iter().map(seen).collect();
    assert_eq!(ended.last(), Some(&Seen::End(Some(decoder))), "the removed player gets its own full error");
}

/// Catches an end that some player is not told about, or whose stream goes
/// on after it.
#[tokio::test(start_paused = true)]
async fn ending_the_room_tells_every_player_last() {
    let registry = new_registry(16);
    let mut room = room(&registry);
    let mut q = seat_all(&mut room, &["a", "b"]);
    assert_eq!(room.end(EndReason::EndedByBackend, "bye", None), 3);
    for queue in &mut q {
        let items = drain(queue);
        match items.as_slice() {
            [Delivery::Event(event), Delivery::End(None)] => match &event.event {
                Event::Ended { sequence, reason, message } => {
                    assert_eq!((*sequence, *reason, message.as_str()), (3, EndReason::EndedByBackend, "bye"))
                }
                other => panic!("expected the end, got {other:?}"),
            },
            other => panic!("expected the end and the stream's end, got {other:?}"),
        }
    }
}

// Panics (a panicking hook: tests/logic.rs, through the real server).

/// Catches a panic while the actor polls a player's stream (its decoding
/// runs there) that ends the session without telling its players why, so
/// that a crash looks like a normal end.
#[tokio::test(start_paused = true)]
async fn a_panic_while_polling_a_player_ends_the_session_with_an_internal_error() {
    let registry = new_registry(16);
    let session = create(&registry);
    let (_watcher_in, mut watcher) = join(&registry, &session, "watcher").await;
    let player = new_player("p");
    let inbound = Box::pin(futures_util::stream::poll_fn(|_| -> Poll<Option<Result<Inbound, InboundError>>> {
        panic!("a bug in a player's stream")
    }));
    let _ = registry.join(JoinTarget::Session(session.to_string()), player, Caller::Connection(None), inbound).await;
    settle().await;
    let items = drain(&mut watcher);
    match items.as_slice() {
        [Delivery::Event(joined), Delivery::Event(ended), Delivery::End(None)] => {
            assert!(matches!(joined.event, Event::Presence { kind: PresenceKind::Joined, .. }), "{joined:?}");
            match &ended.event {
                Event::Ended { sequence, reason, message } => assert_eq!(
                    (*sequence, *reason, message.as_str()),
                    (3, EndReason::InternalError, "the session failed on the server")
                ),
                other => panic!("expected the end, got {other:?}"),
            }
        }
        other => panic!("expected p's join, the end and the stream's end, got {other:?}"),
    }
    assert!(registry.is_empty());
}

/// Catches a session that never gives its worker thread back while its
/// players' streams stay ready: on one thread, a task spawned beside a
/// flooding session must get to run long before the flood is handled.
#[tokio::test(start_paused = true)]
async fn a_flooding_session_yields_its_worker() {
    const FLOOD: usize = 10_000;
    let registry = new_registry(16);
    let session = create(&registry);
    let relays = (0..FLOOD).map(|_| {
        let message = RelayMessage { payload: Bytes::from_static(b"x"), targets: vec![], droppable: false };
        Ok::<_, InboundError>(Inbound::Message(PlayerMessage::Relay(message)))
    });
    use futures_util::StreamExt as _;
    let flood = Box::pin(futures_util::stream::iter(relays).chain(futures_util::stream::pending()));
    let player = new_player("flood");
    let joined = registry.join(JoinTarget::Session(session.to_string()), player, Caller::Connection(None), flood).await;
    let mut joined = joined.unwrap_or_else(|e| panic!("join: {e}"));
    // The probe runs as soon as the actor lets the thread go.
    let probe = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let (sessions, _) = registry.list(&SessionFilter::default(), None, 1).await.unwrap_or_default();
            sessions.first().map(|s| s.sequence)
        })
    };
    let seen = probe.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("the session is listed"));
    assert!(seen < FLOOD as u64 / 2, "the probe ran only after {seen} of {FLOOD} relays: the actor never yielded");
    drain(&mut joined.outbound);
}

/// Catches a queue bounded in messages only: a player that stops reading
/// large messages must be removed once its queue holds the configured bytes,
/// long before it holds the configured number of messages, with its queue
/// freed and the others unaffected.
#[tokio::test(start_paused = true)]
async fn a_queue_full_in_bytes_removes_its_player() {
    let registry = new_registry(16);
    let session = create(&registry);
    let (sender, _sender_rx) = join(&registry, &session, "sender").await;
    let (_reader_in, mut reader) = join(&registry, &session, "reader").await;
    let (_stalled_in, mut stalled) = join(&registry, &session, "stalled").await;
    settle().await;
    drain(&mut reader);
    // 16 KiB each: the fourth takes the stalled queue past 64 KiB.
    let big = Bytes::from(vec![7u8; 16 * 1024]);
    let mut reader_saw = Vec::new();
    for _ in 0..4 {
        let message = RelayMessage { payload: big.clone(), targets: vec![], droppable: false };
        sender.send(Ok(Inbound::Message(PlayerMessage::Relay(message)))).unwrap_or_else(|_| panic!("send"));
        settle().await;
        reader_saw.extend(drain(&mut reader).iter().map(seen));
    }
    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    match got.as_slice() {
        [Seen::End(Some(Error::SlowPlayer(why)))] => assert!(why.contains("bytes were waiting"), "{why}"),
        other => panic!("expected the end alone, its queue freed: {other:?}"),
    }
    assert_eq!(reader_saw.iter().filter(|s| matches!(s, Seen::Relay { .. })).count(), 4, "{reader_saw:?}");
    assert!(reader_saw.contains(&Seen::Presence(PresenceKind::Removed, "stalled".into())));
}

/// Catches a server past its budget for queued bytes that goes on queueing
/// for players who hold more than their share until their grace or their
/// own capacity runs out: with no budget left (a share of nothing), a
/// player with two messages waiting is removed at its next non-droppable
/// message, and a player who reads keeps its seat and every non-droppable
/// message.
#[tokio::test(start_paused = true)]
async fn past_the_budget_the_players_holding_memory_go_first() {
    // A budget of nothing: every fan-out finds the server past it.
    let registry = registry_with(16, RateLimits::OFF, 0);
    let session = create(&registry);
    let (sender, mut sender_rx) = join(&registry, &session, "sender").await;
    let (_reader_in, mut reader) = join(&registry, &session, "reader").await;
    let (_stalled_in, mut stalled) = join(&registry, &session, "stalled").await;
    settle().await;
    drain(&mut reader);
    drain(&mut sender_rx);
    let mut reader_saw = Vec::new();
    // One non-droppable and one droppable, over and over: the stalled
    // player queues the first pair; the next non-droppable finds two
    // waiting, more than its share, and removes it. The reader drains
    // between pairs, so never has more than one waiting.
    for _ in 0..QUEUE / 2 + 1 {
        relay(&sender, false);
        relay(&sender, true);
        settle().await;
        reader_saw.extend(drain(&mut reader).iter().map(seen));
        drain(&mut sender_rx);
    }
    let got: Vec<Seen> = drain(&mut stalled).iter().map(seen).collect();
    match got.as_slice() {
        [Seen::End(Some(Error::SlowPlayer(why)))] => assert!(why.contains("budget"), "{why}"),
        other => panic!("expected the end alone: {other:?}"),
    }
    // The reader keeps every non-droppable message and its seat (with a
    // queue this small, two at once is a quarter: it may lose a droppable).
    let kept = reader_saw.iter().filter(|s| matches!(s, Seen::Relay { droppable: false, .. })).count();
    assert_eq!(kept, QUEUE / 2 + 1, "{reader_saw:?}");
    assert!(!reader_saw.iter().any(|s| matches!(s, Seen::End(_))), "{reader_saw:?}");
}

// Rate limits.

const RATES: RateLimits = RateLimits {
    messages_per_second: 10,
    message_burst: 20,
    bytes_per_second: 1 << 20,
    byte_burst: 2 << 20,
    flood_grace: Duration::from_secs(3),
};

/// The error replies in `items`, as (code-bearing error, unanswered count).
fn errors(items: &[Delivery]) -> Vec<(Error, u64)> {
    items
        .iter()
        .filter_map(|item| match item {
            Delivery::Direct(direct) => match &**direct {
                Direct::Error { error, unanswered } => Some((error.clone(), *unanswered)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Catches a flood that reaches its recipients past the limit, a notice per
/// dropped message, and a flooder that is never removed (or whose removal
/// touches the others): the reader gets the burst and then the rate, the
/// flooder one notice a second and then its removal with
/// RESOURCE_EXHAUSTED, and the reader stays.
#[tokio::test(start_paused = true)]
async fn a_flooding_sender_is_limited_told_once_a_second_and_removed() {
    let registry = registry_with(16, RATES, usize::MAX);
    let session = create(&registry);
    let (flooder, mut flooder_rx) = join(&registry, &session, "flooder").await;
    let (_reader_in, mut reader) = join(&registry, &session, "reader").await;
    settle().await;
    drain(&mut flooder_rx);
    let (mut relays, mut notices, mut end) = (0, Vec::new(), None);
    // 100 relays a second, ten times the limit, read as they come.
    for _ in 0..1000 {
        if flooder.send(Ok(Inbound::Message(relay_msg(false)))).is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let got = drain(&mut reader);
        relays += got.iter().filter(|item| matches!(seen(item), Seen::Relay { .. })).count();
        assert!(!got.iter().any(|item| matches!(seen(item), Seen::End(_))), "the reader was removed");
        if got.iter().any(|item| seen(item) == Seen::Presence(PresenceKind::Removed, "flooder".into())) {
            let mine = drain(&mut flooder_rx);
            notices.extend(errors(&mine));
            end = mine.last().map(seen);
            break;
        }
        notices.extend(errors(&drain(&mut flooder_rx)));
    }
    match end {
        Some(Seen::End(Some(Error::RateLimited(why)))) => {
            assert_eq!(why, "sending faster than 10 messages/s (burst 20) for 3s: removed")
        }
        other => panic!("expected the flooder's removal, got {other:?}"),
    }
    // The burst (20), then 10 a second for the ~3 s until the removal.
    assert!((45..=60).contains(&relays), "the reader got {relays} relays");
    assert!((3..=4).contains(&notices.len()), "one notice a second: {notices:?}");
    assert!(notices.iter().all(|(e, _)| matches!(e, Error::RateLimited(t) if t.starts_with("sending faster"))));
}

fn relay_msg(droppable: bool) -> PlayerMessage {
    PlayerMessage::Relay(RelayMessage { payload: Bytes::from_static(b"pos"), targets: vec![], droppable })
}

/// Catches pings or refused messages that escape the rate limit: a burst of
/// pings past the limit gets exactly the burst's pongs.
#[tokio::test(start_paused = true)]
async fn pings_count_against_the_limit() {
    let registry = registry_with(16, RATES, usize::MAX);
    let session = create(&registry);
    let (pinger, mut pinger_rx) = join(&registry, &session, "pinger").await;
    let mut pongs = 0;
    let mut notices = 0;
    // 30 pings within 30 ms, read as they come (so that the queue's bound
    // plays no part): the burst of 20 and nothing more.
    for n in 0..30 {
        pinger.send(Ok(Inbound::Ping { client_time: n, rtt_micros: 0 })).unwrap_or_else(|_| panic!("send"));
        settle().await;
        for item in drain(&mut pinger_rx) {
            match item {
                Delivery::Direct(direct) => match *direct {
                    Direct::Pong { .. } => pongs += 1,
                    Direct::Error { error: Error::RateLimited(_), .. } => notices += 1,
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!((pongs, notices), (20, 1));
}

/// Catches a player removed for the volume of its own error replies: one
/// that sends a burst of bad messages far larger than its queue, and reads
/// promptly, stays; its replies are coalesced, and a later one says how
/// many went unanswered.
#[tokio::test(start_paused = true)]
async fn a_burst_of_bad_messages_never_removes_a_reading_player() {
    let registry = new_registry(16);
    let session = create(&registry);
    let (mistaken, mut mistaken_rx) = join(&registry, &session, "mistaken").await;
    let (other, _other_rx) = join(&registry, &session, "other").await;
    settle().await;
    drain(&mut mistaken_rx);
    let bad = || Ok(Inbound::Invalid(Error::invalid("kind", "empty message")));
    for _ in 0..100 {
        mistaken.send(bad()).unwrap_or_else(|_| panic!("send"));
    }
    settle().await;
    let first = drain(&mut mistaken_rx);
    // Of the ten answered at once, those that found the queue half full
    // (QUEUE / 2) were dropped rather than queued.
    assert_eq!(errors(&first).len(), QUEUE / 2, "{:?}", first.iter().map(seen).collect::<Vec<_>>());
    assert_eq!(first.len(), QUEUE / 2, "nothing but error replies: {:?}", first.iter().map(seen).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(1)).await;
    mistaken.send(bad()).unwrap_or_else(|_| panic!("send"));
    relay(&other, false);
    settle().await;
    let later: Vec<Delivery> = drain(&mut mistaken_rx);
    assert_eq!(errors(&later), [(Error::invalid("kind", "empty message"), 90)]);
    assert!(later.iter().any(|item| matches!(seen(item), Seen::Relay { .. })), "the player still gets relays");
    assert!(!later.iter().any(|item| matches!(seen(item), Seen::End(_))), "the player was removed");
}

// Ticks.

/// What the scripted ticking logic saw: each tick's number and its inputs
/// as (sender, sequence).
type TickLog = Arc<std::sync::Mutex<Vec<(u64, Vec<(String, u64)>)>>>;

/// A ticking mode for the tests: 10 Hz, labels `phase: lobby` at init and
/// `phase: playing` from tick 2; a full state to whoever needs one and a
/// delta to the rest each tick (the payload: the tick's number); ends at
/// `end_at`; panics at `panic_at`; sleeps `stall` in tick 2.
#[derive(Clone)]
struct Scripted {
    log: TickLog,
    end_at: u64,
    panic_at: u64,
    stall: Duration,
}

impl Mode for Scripted {
    fn create(&self, _config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        Ok(Box::new(self.clone()))
    }
}

impl SessionLogic for Scripted {
    fn init(&mut self, room: &mut Room) -> Option<TickRate> {
        room.set_labels(BTreeMap::from([("phase".to_owned(), "lobby".to_owned())]));
        TickRate::hz(10).ok()
    }

    fn on_tick(&mut self, tick: &mut Tick) {
        let inputs = tick.inputs().iter().map(|i| (i.from.to_string(), i.sequence)).collect();
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((tick.number(), inputs));
        if tick.number() == self.panic_at {
            panic!("a bug in tick {}", tick.number());
        }
        if tick.number() == 2 {
            std::thread::sleep(self.stall);
            tick.set_labels(BTreeMap::from([("phase".to_owned(), "playing".to_owned())]));
        }
        let payload = Bytes::from(tick.number().to_string());
        let fresh = tick.needs_full_state().to_vec();
        let rest: Vec<PlayerId> = tick.players().iter().filter(|p| !fresh.contains(p)).cloned().collect();
        if !fresh.is_empty() {
            tick.state(payload.clone(), Recipients::Only(fresh));
        }
        tick.delta(payload, Recipients::Only(rest));
        if tick.number() == 3 {
            tick.send(Bytes::from_static(b"halfway"), Recipients::All);
        }
        if tick.number() == self.end_at {
            tick.end("match over");
        }
    }

    fn on_message(&mut self, room: &mut Room, from: &PlayerId, _message: PlayerMessage) {
        room.send_error(from, Error::invalid("relay", "this mode takes inputs"));
    }

    fn on_backend_message(&mut self, _room: &mut Room, _payload: Bytes, _targets: Vec<PlayerId>) -> Result<u64, Error> {
        Err(Error::invalid("payload", "not taken"))
    }
}

fn scripted(end_at: u64, panic_at: u64) -> Scripted {
    Scripted { log: TickLog::default(), end_at, panic_at, stall: Duration::ZERO }
}

/// A registry running `mode` as "ticking" (and relay), with `ticks`.
fn ticking_registry(mode: Scripted, ticks: TickSettings) -> Registry {
    let mut config = config(64, RateLimits::OFF, usize::MAX);
    config.session.ticks = ticks;
    Registry::new(config, Modes::builder().register("relay", Relay).register("ticking", mode).build())
}

fn create_ticking(registry: &Registry) -> SessionId {
    create_of(registry, "ticking")
}

fn input(tx: &PlayerTx, sequence: u64) {
    let message = InputMessage { sequence, payload: Bytes::from_static(b"move") };
    tx.send(Ok(Inbound::Message(PlayerMessage::Input(message)))).unwrap_or_else(|_| panic!("inputs dropped"));
}

/// A tick's state or delta as a player got it: (tick, full, payload, last
/// input sequence, deltas dropped).
fn states(rx: &mut OutboundRx) -> Vec<(u64, bool, String, u64, u64)> {
    drain(rx)
        .iter()
        .filter_map(|item| match item {
            Delivery::Direct(d) => match &**d {
                Direct::State(s) if s.kind != StateKind::Message => Some((
                    s.tick,
                    s.kind == StateKind::Full,
                    String::from_utf8_lossy(&s.payload).into_owned(),
                    s.last_input_sequence,
                    s.deltas_dropped,
                )),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Catches ticks off their rate, inputs handed over out of order or to the
/// wrong player, a wrong last-processed input sequence, the excess policy
/// not holding, a delta sent before a full state, labels that do not reach
/// the listing, and an end by the logic with the wrong reason.
#[tokio::test(start_paused = true)]
async fn ticks_come_at_their_rate_with_the_inputs_since_the_last() {
    let mode = scripted(4, 0);
    let log = mode.log.clone();
    let registry = ticking_registry(mode, TickSettings::inline());
    let session = create_ticking(&registry);
    settle().await;
    let listed = |registry: &Registry| {
        let (sessions, _) = registry.list(&SessionFilter::default(), None, 10).now_or_never()?.ok()?;
        sessions.first().and_then(|s| s.labels.get("phase").cloned())
    };
    assert_eq!(listed(&registry).as_deref(), Some("lobby"));
    let (a, mut a_rx) = join(&registry, &session, "a").await;
    let (b, mut b_rx) = join(&registry, &session, "b").await;
    drain(&mut a_rx);

    // Before tick 1 (at 100 ms): a sends 1-10 (past the bound of 8, so 1
    // and 2 go), b sends 7 after a's fifth. (The order between two players
    // is the order the session reads them in: settled here.)
    for sequence in 1..=5 {
        input(&a, sequence);
    }
    settle().await;
    input(&b, 7);
    settle().await;
    for sequence in 6..=10 {
        input(&a, sequence);
    }
    tokio::time::sleep(Duration::from_millis(97)).await;
    assert!(log.lock().unwrap_or_else(|p| p.into_inner()).is_empty(), "a tick before its period");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let first: Vec<(String, u64)> =
        [("a", 3), ("a", 4), ("a", 5), ("b", 7), ("a", 6), ("a", 7), ("a", 8), ("a", 9), ("a", 10)]
            .map(|(p, s)| (p.to_owned(), s))
            .into();
    assert_eq!(*log.lock().unwrap_or_else(|p| p.into_inner()), vec![(1, first)]);
    // Both joined since: a full state each, with their own last inputs.
    assert_eq!(states(&mut a_rx), [(1, true, "1".to_owned(), 10, 0)]);
    assert_eq!(states(&mut b_rx), [(1, true, "1".to_owned(), 7, 0)]);

    // Tick 2, at 200 ms: b's input only; then deltas.
    input(&b, 8);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.lock().unwrap_or_else(|p| p.into_inner())[1], (2, vec![("b".to_owned(), 8)]));
    assert_eq!(states(&mut a_rx), [(2, false, "2".to_owned(), 10, 0)]);
    assert_eq!(states(&mut b_rx), [(2, false, "2".to_owned(), 8, 0)]);
    assert_eq!(listed(&registry).as_deref(), Some("playing"));

    // Tick 3, at 300 ms, also sends a message, tagged as a state is.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let message = |rx: &mut OutboundRx| {
        drain(rx).iter().find_map(|item| match item {
            Delivery::Direct(d) => match &**d {
                Direct::State(s) if s.kind == StateKind::Message => {
                    Some((s.tick, s.payload.clone(), s.last_input_sequence))
                }
                _ => None,
            },
            _ => None,
        })
    };
    assert_eq!(message(&mut a_rx), Some((3, Bytes::from_static(b"halfway"), 10)));
    assert_eq!(message(&mut b_rx), Some((3, Bytes::from_static(b"halfway"), 8)));

    // Tick 4 at 400 ms; the logic ends the session then.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let numbers: Vec<u64> = log.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    let ended = drain(&mut b_rx).into_iter().find_map(|item| match item {
        Delivery::Event(event) => match &event.event {
            Event::Ended { reason, message, .. } => Some((*reason, message.clone())),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(ended, Some((EndReason::Completed, "match over".to_owned())));
    assert!(registry.is_empty());
}

/// Catches a session that ticks with nobody in it (a matchmaker's sessions
/// created ahead of their players would cost CPU), a first tick sooner
/// than a full period after the first join, and tick numbers that restart
/// or jump after an empty spell.
#[tokio::test(start_paused = true)]
async fn an_empty_session_does_not_tick() {
    let mode = scripted(u64::MAX, 0);
    let log = mode.log.clone();
    let registry = ticking_registry(mode, TickSettings::inline());
    let session = create_ticking(&registry);
    let numbers = || -> Vec<u64> { log.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, _)| *n).collect() };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(numbers(), [0u64; 0], "ticks before anyone joined");

    let (a, _a_rx) = join(&registry, &session, "a").await;
    tokio::time::sleep(Duration::from_millis(99)).await;
    assert_eq!(numbers(), [0u64; 0], "a tick sooner than a period after the join");
    tokio::time::sleep(Duration::from_millis(202)).await;
    assert_eq!(numbers(), [1, 2, 3]);

    a.send(Ok(Inbound::Leave)).unwrap_or_else(|_| panic!("send"));
    settle().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(numbers(), [1, 2, 3], "ticks with the session empty");

    let (_b, _b_rx) = join(&registry, &session, "b").await;
    tokio::time::sleep(Duration::from_millis(101)).await;
    assert_eq!(numbers(), [1, 2, 3, 4], "tick numbers go on where they stopped");
}

/// Catches a player who falls behind getting deltas that no longer apply:
/// the first delta that finds it behind is dropped with its queued ones,
/// it gets no delta until its next full state (which says how many it
/// missed and replaces the state still queued), and a player who reads
/// gets every tick.
#[tokio::test(start_paused = true)]
async fn a_lagging_player_gets_a_full_state_in_place_of_its_deltas() {
    let registry = ticking_registry(scripted(u64::MAX, 0), TickSettings::inline());
    let session = create_ticking(&registry);
    let (_a, mut reader) = join(&registry, &session, "reader").await;
    let (_b, mut lagging) = join(&registry, &session, "lagging").await;
    drain(&mut reader);
    settle().await; // observed 1 ms after each tick
    let mut read = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        read.extend(states(&mut reader));
    }
    let mut want = vec![(1, true, "1".to_owned(), 0, 0)];
    want.extend((2..=8).map(|tick| (tick, false, tick.to_string(), 0, 0)));
    assert_eq!(read, want, "the reader got every tick");
    // The lagging player reads nothing after its welcome; it is behind at
    // QUEUE / 2 = 4 items. Tick 1's full state, deltas 2 and 3 and tick 3's
    // message fill that; delta 4 is dropped with deltas 2 and 3 (3 missed;
    // the message stays: messages are never dropped); the logic sends it
    // tick 5's full state, which replaces tick 1's; deltas 6 and 7 follow,
    // and delta 8 is dropped with them. Left: the message and tick 5's state.
    let left: Vec<_> = drain(&mut lagging)
        .iter()
        .filter_map(|item| match item {
            Delivery::Direct(d) => match &**d {
                Direct::State(s) => Some((s.tick, s.kind, s.deltas_dropped)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(left, [(3, StateKind::Message, 0), (5, StateKind::Full, 3)]);
}

/// Catches a panicking tick that takes down more than its session.
#[tokio::test(start_paused = true)]
async fn a_panicking_tick_ends_only_its_session() {
    let registry = ticking_registry(scripted(u64::MAX, 2), TickSettings::inline());
    let failing = create_ticking(&registry);
    let other = create(&registry);
    let (_a, mut a_rx) = join(&registry, &failing, "a").await;
    let (sender, _s_rx) = join(&registry, &other, "s").await;
    let (_r, mut r_rx) = join(&registry, &other, "r").await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let ended = drain(&mut a_rx).into_iter().find_map(|item| match item {
        Delivery::Event(event) => match &event.event {
            Event::Ended { reason, .. } => Some(*reason),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(ended, Some(EndReason::InternalError));
    assert!(registry.handle(&failing).is_err());
    drain(&mut r_rx);
    relay(&sender, false);
    settle().await;
    assert!(drain(&mut r_rx).iter().any(|item| matches!(seen(item), Seen::Relay { .. })));
}

/// Catches a runaway tick that stalls other sessions or is never given up
/// on: on a pool of one thread, a tick that sleeps 2 s past a 200 ms
/// watchdog ends its session with an internal error, and another ticking
/// session goes on ticking on the thread that replaced it. Real time: the
/// pool's threads do not advance a paused clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_past_the_watchdog_ends_its_session_and_its_thread_is_replaced() {
    let runaway = Scripted { stall: Duration::from_secs(2), ..scripted(u64::MAX, 0) };
    let steady = scripted(u64::MAX, 0);
    let steady_log = steady.log.clone();
    let ticks =
        TickSettings { pool: Some(TickPool::new(1)), watchdog: Duration::from_millis(200), max_inputs_per_tick: 8 };
    let mut config = config(64, RateLimits::OFF, usize::MAX);
    config.session.ticks = ticks;
    let modes =
        Modes::builder().register("relay", Relay).register("ticking", runaway).register("steady", steady).build();
    let registry = Registry::new(config, modes);
    let failing = create_ticking(&registry);
    let steady_id = create_of(&registry, "steady");
    let (_a, mut a_rx) = join(&registry, &failing, "a").await;
    let (_b, _b_rx) = join(&registry, &steady_id, "b").await;

    // Tick 2 (at 200 ms) runs away; the watchdog fires at 400 ms.
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a_rx.recv().await {
                Some(Delivery::Event(event)) => {
                    if let Event::Ended { reason, .. } = &event.event {
                        return *reason;
                    }
                }
                Some(_) => {}
                None => panic!("the stream ended without the session's end"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the runaway session never ended"));
    assert_eq!(ended, EndReason::InternalError);
    assert!(started.elapsed() < Duration::from_millis(1500), "ended only after {:?}", started.elapsed());
    // The registry forgets it right after its players hear of the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while registry.handle(&failing).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the failed session stayed listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The steady session ticks on while the runaway still holds the only
    // original thread (for 2 s).
    let count = || steady_log.lock().unwrap_or_else(|p| p.into_inner()).len();
    let before = count();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(count() >= before + 3, "the steady session ticked {} times in 600 ms", count() - before);
    assert!(registry.handle(&steady_id).is_ok());
}

/// A logic whose `init` panics.
struct BrokenInit;

impl Mode for BrokenInit {
    fn create(&self, _config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        Ok(Box::new(BrokenInit))
    }
}

impl SessionLogic for BrokenInit {
    fn init(&mut self, _room: &mut Room) -> Option<TickRate> {
        panic!("a bug in init")
    }

    fn on_message(&mut self, _room: &mut Room, _from: &PlayerId, _message: PlayerMessage) {}

    fn on_backend_message(&mut self, _room: &mut Room, _payload: Bytes, _targets: Vec<PlayerId>) -> Result<u64, Error> {
        Ok(0)
    }
}

/// Catches a panicking `init` that leaves a session half made (listed, or
/// counted against the limit) or takes the registry down.
#[tokio::test(start_paused = true)]
async fn a_panicking_init_refuses_the_session_alone() {
    let modes = Modes::builder().register("relay", Relay).register("broken", BrokenInit).build();
    let registry = Registry::new(config(16, RateLimits::OFF, usize::MAX), modes);
    let params = CreateParams {
        mode: "broken".into(),
        max_players: 0,
        labels: BTreeMap::new(),
        config: Bytes::new(),
        open_to_join_or_create: false,
        seat_hold: None,
        replay: None,
    };
    let refused = registry.create(params, None).await.map(|c| c.session.id);
    assert_eq!(refused, Err(Error::Internal("the session's mode failed to start it".into())));
    assert!(registry.is_empty());
    let _ = create(&registry);
    assert!(!registry.is_empty(), "the registry goes on");
}

/// A relay that writes down which hook it heard, for whom.
#[derive(Clone, Default)]
struct Hooks(Arc<std::sync::Mutex<Vec<String>>>);

impl Hooks {
    fn heard(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note(&self, hook: &str, player: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{hook} {player}"));
    }
}

impl Mode for Hooks {
    fn create(&self, _config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        Ok(Box::new(self.clone()))
    }
}

impl SessionLogic for Hooks {
    fn on_join_attempt(&mut self, _room: &Room, player: &NewPlayer) -> Result<(), Error> {
        self.note("attempt", &player.id);
        Ok(())
    }

    fn on_join(&mut self, _room: &mut Room, player: &Arc<PlayerInfo>) {
        self.note("join", &player.id);
    }

    fn on_reconnect(&mut self, _room: &mut Room, player: &Arc<PlayerInfo>) {
        self.note("reconnect", &player.id);
    }

    fn on_leave(&mut self, _room: &mut Room, player: &Arc<PlayerInfo>) {
        self.note("leave", &player.id);
    }

    fn on_disconnect(&mut self, _room: &mut Room, player: &Arc<PlayerInfo>, _departure: &Departure) {
        self.note("disconnect", &player.id);
    }

    fn on_message(&mut self, room: &mut Room, from: &PlayerId, message: PlayerMessage) {
        Relay.on_message(room, from, message);
    }

    fn on_backend_message(&mut self, room: &mut Room, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error> {
        Relay.on_backend_message(room, payload, targets)
    }
}

/// Catches a takeover that asks the logic to admit the player again, tells
/// it of a join instead of a reconnect, shows the others a leave and a join,
/// leaves the old stream open, or lets the old stream still play the seat;
/// and a join without the proof (auth off) that takes a seat over.
#[tokio::test(start_paused = true)]
async fn a_takeover_moves_the_seat_and_tells_the_logic_of_a_reconnect() {
    let hooks = Hooks::default();
    let registry = Registry::new(
        config(64, RateLimits::OFF, usize::MAX),
        Modes::builder().register("relay", Relay).register("hooks", hooks.clone()).build(),
    );
    let session = create_of(&registry, "hooks");
    let (old_tx, mut old_rx) = join(&registry, &session, "a").await;
    let (_b_tx, mut b_rx) = join(&registry, &session, "b").await;
    drain(&mut old_rx);

    // Without the proof, the seat is not taken.
    let (tx, rx) = mpsc::unbounded_channel();
    let refused = registry
        .join(
            JoinTarget::Session(session.to_string()),
            new_player("a"),
            Caller::Connection(None),
            Box::pin(UnboundedReceiverStream::new(rx)),
        )
        .await;
    drop(tx);
    assert!(matches!(refused, Err(Error::PlayerAlreadyJoined { .. })), "{refused:?}");

    let proven = NewPlayer { proof: SeatProof::Subject, ..new_player("a") };
    let (new_tx, _new_rx) = join_as(&registry, &session, proven).await;
    settle().await;
    assert_eq!(hooks.heard(), ["attempt a", "join a", "attempt b", "join b", "reconnect a"]);
    assert_eq!(drain(&mut old_rx).iter().map(seen).collect::<Vec<_>>(), [Seen::End(Some(Error::TakenOver))]);
    assert_eq!(
        drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>(),
        [Seen::Presence(PresenceKind::Reconnected, "a".into())]
    );

    // The old stream no longer plays the seat (its inputs are not read);
    // the new one does.
    assert!(old_tx.is_closed(), "the old stream's inputs are still read");
    relay(&new_tx, false);
    settle().await;
    assert!(matches!(
        drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>()[..],
        [Seen::Relay { droppable: false, .. }]
    ));
    assert_eq!(hooks.heard().len(), 5, "no leave or disconnect for the old stream");
}

/// The seat hold of [`holding_registry`].
const HOLD: Duration = Duration::from_secs(10);

/// A registry whose sessions hold seats for [`HOLD`], with the `hooks` mode.
fn holding_registry(hooks: &Hooks) -> Registry {
    let mut config = config(64, RateLimits::OFF, usize::MAX);
    config.session.seat_hold = HOLD;
    Registry::new(config, Modes::builder().register("hooks", hooks.clone()).build())
}

/// Joins `id` and returns its welcome's sequence and resume generation too.
async fn join_resumable(registry: &Registry, session: &SessionId, id: &str) -> (PlayerTx, OutboundRx, u64, u64) {
    let (tx, rx) = mpsc::unbounded_channel();
    let inbound = Box::pin(UnboundedReceiverStream::new(rx));
    let mut joined = registry
        .join(JoinTarget::Session(session.to_string()), new_player(id), Caller::Connection(None), inbound)
        .await
        .unwrap_or_else(|e| panic!("join {id}: {e}"));
    match joined.outbound.recv().await {
        Some(Delivery::Direct(d)) => match *d {
            Direct::Welcome(Welcome { sequence, resume_generation: Some(generation), .. }) => {
                (tx, joined.outbound, sequence, generation)
            }
            other => panic!("expected a welcome with a resume generation, got {other:?}"),
        },
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// Resumes `id`'s seat of `generation` after `last`.
async fn resume(
    registry: &Registry,
    session: &SessionId,
    id: &str,
    generation: u64,
    last: u64,
) -> Result<(PlayerTx, OutboundRx), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let request = ResumeRequest {
        player: id.into(),
        generation,
        last_sequence: last,
        inbound: Box::pin(UnboundedReceiverStream::new(rx)),
        caller: tracing::Span::none(),
    };
    registry.resume(session, request).await.map(|joined| (tx, joined.outbound))
}

/// Cuts `tx`'s connection as a reset would.
fn cut(tx: &PlayerTx) {
    let _ = tx.send(Err(InboundError::Transport("connection reset".into())));
}

/// A resumed stream's answer and what follows it.
fn resumed(items: &[Delivery]) -> (Resumed, Vec<Seen>) {
    let Some((Delivery::Direct(first), rest)) = items.split_first() else { panic!("no answer: {items:?}") };
    let Direct::Resumed(answer) = &**first else { panic!("expected `resumed`, got {first:?}") };
    let answer = Resumed { player: answer.player.clone(), session_id: answer.session_id.clone(), ..*answer };
    (answer, rest.iter().map(seen).collect())
}

/// Catches a dropped stream that frees its seat, a replay that misses what
/// the player was sent while away, gives it what it was not sent (another
/// player's targeted relay) or repeats what it had, hooks out of order,
/// and a used token that still works: the seat is held, the others see it
/// held and back, and the resume gets exactly its own messages.
#[tokio::test(start_paused = true)]
async fn a_dropped_seat_is_held_and_a_resume_replays_exactly_what_it_missed() {
    let hooks = Hooks::default();
    let registry = holding_registry(&hooks);
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, generation) = join_resumable(&registry, &session, "a").await;
    let (b_tx, mut b_rx) = join(&registry, &session, "b").await;
    let (c_tx, mut c_rx) = join(&registry, &session, "c").await;
    // Before the drop: a has these (it read them), so they are not replayed.
    relay(&b_tx, false);
    settle().await;
    let last = welcome + 3; // b's join, c's join, b's relay
    drain(&mut b_rx);
    drain(&mut c_rx);

    cut(&a_tx);
    settle().await;
    assert_eq!(drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>(), [Seen::Presence(PresenceKind::Held, "a".into())]);
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(summary.player_count, 3, "a held seat is taken");
    assert!(summary.seats.iter().any(|s| &*s.player == "a" && s.held_until_unix_micros.is_some()));

    // While a is away: a relay to all (a gets it), one to b alone (not a),
    // one to a alone, and a backend message to all.
    relay(&b_tx, false);
    let send = |tx: &PlayerTx, message| tx.send(Ok(Inbound::Message(message))).unwrap_or_else(|_| panic!("send"));
    send(&c_tx, relay_message(b"for b", &["b"]));
    send(&c_tx, relay_message(b"for a", &["a"]));
    settle().await;
    registry.send(&session, Bytes::from_static(b"news"), Vec::new()).await.unwrap_or_else(|e| panic!("send: {e}"));
    settle().await;
    let held = last + 1;

    let (_new_tx, mut new_rx) =
        resume(&registry, &session, "a", generation, last).await.unwrap_or_else(|e| panic!("resume: {e}"));
    settle().await;
    let (answer, replay) = resumed(&drain(&mut new_rx));
    assert_eq!(
        replay,
        [
            Seen::Relay { seq: held + 1, droppable: false },
            Seen::Relay { seq: held + 3, droppable: false },
            Seen::Backend(held + 4),
        ],
        "b's relay to all, c's relay to a, the backend's; not c's relay to b, nor a's own held presence"
    );
    assert_eq!((answer.last_sequence, answer.replayed, answer.sequence), (last, 3, held + 5));
    assert_ne!(answer.resume_generation, generation);
    let b_saw = drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>();
    assert_eq!(b_saw.last(), Some(&Seen::Presence(PresenceKind::Reconnected, "a".into())));
    assert_eq!(hooks.heard()[6..], ["disconnect a", "reconnect a"]);

    // The token the resume used is spent.
    let again = resume(&registry, &session, "a", generation, last).await;
    assert!(matches!(again, Err(Error::ResumeSuperseded)), "{:?}", again.map(|_| ()));
    // Live messages follow the resume's sequence.
    relay(&b_tx, false);
    settle().await;
    assert_eq!(
        drain(&mut new_rx).iter().map(seen).collect::<Vec<_>>(),
        [Seen::Relay { seq: held + 6, droppable: false }]
    );
}

/// Catches a hold that never ends, a seat freed without telling the others
/// or the logic, and a token that outlives its seat.
#[tokio::test(start_paused = true)]
async fn a_held_seat_whose_hold_runs_out_leaves() {
    let hooks = Hooks::default();
    let registry = holding_registry(&hooks);
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, generation) = join_resumable(&registry, &session, "a").await;
    let (_b_tx, mut b_rx) = join(&registry, &session, "b").await;
    cut(&a_tx);
    settle().await;
    tokio::time::advance(HOLD - Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>(), [Seen::Presence(PresenceKind::Held, "a".into())]);
    tokio::time::advance(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>(), [Seen::Presence(PresenceKind::Left, "a".into())]);
    assert_eq!(hooks.heard()[4..], ["disconnect a", "leave a"]);
    let refused = resume(&registry, &session, "a", generation, welcome + 1).await;
    assert!(matches!(refused, Err(Error::NoSeat { .. })), "{:?}", refused.map(|_| ()));
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(summary.player_count, 1);
}

/// Catches a resume that papers over a gap, a failed resume that frees the
/// seat, and a seat that its token cannot take back by a join afterwards;
/// and a kick that leaves a held seat's token working.
#[tokio::test(start_paused = true)]
async fn a_gap_past_the_buffer_is_refused_and_the_token_joins_the_held_seat_again() {
    let hooks = Hooks::default();
    let registry = holding_registry(&hooks);
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, generation) = join_resumable(&registry, &session, "a").await;
    let (b_tx, mut b_rx) = join(&registry, &session, "b").await;
    cut(&a_tx);
    settle().await;
    // More than the buffer keeps, read by b as they come.
    for _ in 0..REPLAY.messages + 1 {
        relay(&b_tx, false);
        settle().await;
        drain(&mut b_rx);
    }
    let refused = resume(&registry, &session, "a", generation, welcome + 1).await;
    assert!(matches!(refused, Err(Error::ReplayGap { .. })), "{:?}", refused.map(|_| ()));
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert!(summary.seats.iter().any(|s| &*s.player == "a" && s.held_until_unix_micros.is_some()), "still held");

    let proven = NewPlayer { proof: SeatProof::Generation(generation), ..new_player("a") };
    let (_a2_tx, _a2_rx) = join_as(&registry, &session, proven).await;
    settle().await;
    assert_eq!(
        drain(&mut b_rx).iter().map(seen).collect::<Vec<_>>(),
        [Seen::Presence(PresenceKind::Reconnected, "a".into())]
    );
    assert_eq!(hooks.heard()[4..], ["disconnect a", "reconnect a"]);

    // A kick frees the seat, and its tokens with it.
    let (b2_tx, _b2_rx, b_welcome, b_generation) = join_resumable(&registry, &session, "c").await;
    cut(&b2_tx);
    settle().await;
    registry.remove_player(&session, "c".into(), "cheating".into()).await.unwrap_or_else(|e| panic!("kick: {e}"));
    settle().await;
    assert_eq!(hooks.heard()[6..], ["attempt c", "join c", "disconnect c", "leave c"]);
    let refused = resume(&registry, &session, "c", b_generation, b_welcome).await;
    assert!(matches!(refused, Err(Error::NoSeat { .. })), "{:?}", refused.map(|_| ()));
}

/// Catches a session whose seats are all held that ends as idle (the
/// players may still come back), and a freed seat that never lets it idle.
#[tokio::test(start_paused = true)]
async fn a_session_whose_seats_are_all_held_is_not_idle() {
    let hooks = Hooks::default();
    let mut config = config(64, RateLimits::OFF, usize::MAX);
    config.session.seat_hold = IDLE * 2;
    let registry = Registry::new(config, Modes::builder().register("hooks", hooks.clone()).build());
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, generation) = join_resumable(&registry, &session, "a").await;
    cut(&a_tx);
    settle().await;
    tokio::time::advance(IDLE + Duration::from_secs(1)).await;
    settle().await;
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert!(summary.end.is_none(), "ended while its seat was held: {:?}", summary.end);
    // Its own hold's presence (welcome + 1) has aged out of the buffer;
    // nothing after it is missing.
    let (b_tx, _b_rx) =
        resume(&registry, &session, "a", generation, welcome + 1).await.unwrap_or_else(|e| panic!("{e}"));
    // Held again, and this time not back: the hold runs out, then the idle
    // timeout ends the empty session.
    cut(&b_tx);
    settle().await;
    tokio::time::advance(IDLE * 2).await;
    settle().await;
    tokio::time::advance(IDLE + Duration::from_secs(1)).await;
    settle().await;
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(summary.end.map(|end| end.reason), Some(EndReason::Idle));
}

/// Catches a replay that leaves out what the queue policy dropped for the
/// player before its drop: droppable relays dropped while it was behind
/// are in the buffer, and so in the replay.
#[tokio::test(start_paused = true)]
async fn a_replay_holds_the_droppable_messages_dropped_for_the_player() {
    let hooks = Hooks::default();
    let registry = holding_registry(&hooks);
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, generation) = join_resumable(&registry, &session, "a").await;
    let (b_tx, _b_rx) = join(&registry, &session, "b").await;
    // a reads nothing: from half its queue on, droppables are dropped for it.
    for _ in 0..4 {
        relay(&b_tx, true);
    }
    settle().await;
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    let dropped = summary.seats.iter().find(|s| &*s.player == "a").map(|s| s.dropped);
    assert_eq!(dropped, Some(1), "one droppable dropped for a");
    cut(&a_tx);
    settle().await;
    let (_tx, mut rx) = resume(&registry, &session, "a", generation, welcome).await.unwrap_or_else(|e| panic!("{e}"));
    settle().await;
    let (answer, replay) = resumed(&drain(&mut rx));
    let relays = (1..=4).map(|n| Seen::Relay { seq: welcome + 1 + n, droppable: true });
    let want: Vec<Seen> = std::iter::once(Seen::Presence(PresenceKind::Joined, "b".into())).chain(relays).collect();
    assert_eq!(replay, want, "b's join and all four relays, the dropped one too");
    assert_eq!(answer.replayed, 5);
}

/// Catches a replay buffer that holds memory while the server is past its
/// budget for queued bytes: it keeps nothing then, so a resume that
/// missed something is refused (the seat stays held).
#[tokio::test(start_paused = true)]
async fn past_the_budget_the_replay_buffer_keeps_nothing() {
    let hooks = Hooks::default();
    let mut config = config(64, RateLimits::OFF, 0);
    config.session.seat_hold = HOLD;
    let registry = Registry::new(config, Modes::builder().register("hooks", hooks.clone()).build());
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, generation) = join_resumable(&registry, &session, "a").await;
    let (_b_tx, _b_rx) = join(&registry, &session, "b").await;
    cut(&a_tx);
    settle().await;
    let refused = resume(&registry, &session, "a", generation, welcome).await;
    assert!(matches!(refused, Err(Error::ReplayGap { .. })), "{:?}", refused.map(|_| ()));
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(summary.player_count, 2, "the seat is still held");
}

/// Catches a player that can reconnect in a loop without bound (each
/// takeover tells every other player): takeovers count against its
/// message rate, so past the burst a resume is refused with RateLimited,
/// and the seat stays its own.
#[tokio::test(start_paused = true)]
async fn reconnecting_in_a_loop_is_bound_by_the_players_message_rate() {
    let hooks = Hooks::default();
    let mut config = config(64, RATES, usize::MAX);
    config.session.seat_hold = HOLD;
    let registry = Registry::new(config, Modes::builder().register("hooks", hooks.clone()).build());
    let session = create_of(&registry, "hooks");
    let (_a_tx, _a_rx, welcome, mut generation) = join_resumable(&registry, &session, "a").await;
    let mut streams = Vec::new();
    let mut last = welcome;
    for n in 0..RATES.message_burst {
        let (tx, mut rx) =
            resume(&registry, &session, "a", generation, last).await.unwrap_or_else(|e| panic!("resume {n}: {e}"));
        let (answer, _) = resumed(&drain(&mut rx));
        (generation, last) = (answer.resume_generation, answer.sequence);
        streams.push((tx, rx));
    }
    let refused = resume(&registry, &session, "a", generation, last).await;
    assert!(matches!(refused, Err(Error::RateLimited(_))), "{:?}", refused.map(|_| ()));
    // A second later the bucket has room again.
    tokio::time::advance(Duration::from_secs(1)).await;
    resume(&registry, &session, "a", generation, last).await.unwrap_or_else(|e| panic!("after a second: {e}"));
}

/// Catches a drain held up by seats nobody can resume any more (a draining
/// server refuses resumes): draining frees the held seats at once, and a
/// session whose seats were all held ends then, not when the holds or the
/// drain period run out.
#[tokio::test(start_paused = true)]
async fn draining_frees_the_held_seats() {
    let hooks = Hooks::default();
    let registry = holding_registry(&hooks);
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, _, _) = join_resumable(&registry, &session, "a").await;
    cut(&a_tx);
    settle().await;
    registry.start_drain();
    settle().await;
    let summary = registry.get(&session).await.unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(summary.end.map(|end| end.reason), Some(EndReason::ServerShutdown));
    assert_eq!(hooks.heard()[2..], ["disconnect a", "leave a"]);
    assert!(matches!(summary.players.as_slice(), []), "{:?}", summary.players);
}

/// Catches a seat lost for good when the answer to a resume (with the new
/// token) is lost with the connection: while the seat is held and the
/// stream that got the new token never spoke, the token before it still
/// takes the seat back; once that stream spoke, or while it is live, the
/// older token is spent.
#[tokio::test(start_paused = true)]
async fn a_token_whose_successor_was_lost_still_takes_the_held_seat_back() {
    let hooks = Hooks::default();
    let registry = holding_registry(&hooks);
    let session = create_of(&registry, "hooks");
    let (a_tx, _a_rx, welcome, first) = join_resumable(&registry, &session, "a").await;
    cut(&a_tx);
    settle().await;
    // Resumed, but the answer never arrives: the new stream drops at once.
    let (lost_tx, _lost_rx) = resume(&registry, &session, "a", first, welcome).await.unwrap_or_else(|e| panic!("{e}"));
    cut(&lost_tx);
    settle().await;
    let (live_tx, mut live_rx) =
        resume(&registry, &session, "a", first, welcome).await.unwrap_or_else(|e| panic!("the older token: {e}"));
    settle().await;
    let (answer, _) = resumed(&drain(&mut live_rx));
    // Live: the older token does not take the seat from this stream.
    let refused = resume(&registry, &session, "a", first, welcome).await;
    assert!(matches!(refused, Err(Error::ResumeSuperseded)), "{:?}", refused.map(|_| ()));
    // This stream speaks (it had its answer), then drops: its own token
    // works, the one before it no longer does.
    live_tx.send(Ok(Inbound::Ping { client_time: 1, rtt_micros: 0 })).unwrap_or_else(|_| panic!("ping"));
    settle().await;
    cut(&live_tx);
    settle().await;
    let refused = resume(&registry, &session, "a", first, welcome).await;
    assert!(matches!(refused, Err(Error::ResumeSuperseded)), "{:?}", refused.map(|_| ()));
    resume(&registry, &session, "a", answer.resume_generation, answer.sequence)
        .await
        .unwrap_or_else(|e| panic!("the newest token: {e}"));
}
