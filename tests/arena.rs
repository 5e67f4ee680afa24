//! The `arena` example's rules behind the real server: the speed limit that
//! keeps a cheating client from teleporting, the phases in the labels, and
//! the match's result after its end.

mod common;

#[path = "../examples/arena/logic.rs"]
mod logic;

use bytes::Bytes;
use common::binary::Binary;
use common::{Player, TestServer, WAIT, join_session};
use game_session::Modes;
use game_session::pb::{self, server_message::Kind};
use game_session::session::Relay;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

/// The next state a player gets, as JSON.
async fn next_state(player: &mut Player) -> (pb::State, Value) {
    loop {
        if let Kind::State(state) = player.next().await {
            let value = serde_json::from_slice(&state.payload).expect("JSON");
            return (state, value);
        }
    }
}

fn position(state: &Value, id: &str) -> (f64, f64) {
    let players = state["players"].as_array().expect("players");
    let p = players.iter().find(|p| p["id"] == id).unwrap_or_else(|| panic!("{id} in {state}"));
    (p["x"].as_f64().expect("x"), p["y"].as_f64().expect("y"))
}

fn velocity(x: f32, y: f32) -> Bytes {
    let mut payload = x.to_le_bytes().to_vec();
    payload.extend_from_slice(&y.to_le_bytes());
    payload.into()
}

/// Catches a server that trusts the client's speed (a cheat that
/// teleports), that moves a player on a malformed input, whose phases do
/// not show in the labels, or whose result is not readable after the end.
#[tokio::test]
async fn the_arena_enforces_the_speed_limit_and_reports_the_winner() {
    let modes = Modes::builder().register("relay", Relay).register("arena", logic::Arena).build();
    let mut config = common::config();
    config.tick_threads = Some(1);
    let server = TestServer::start_with_modes(config, modes).await;
    let mut api = server.sessions().await;
    // Two seats: the match starts as soon as both are taken.
    let request = pb::CreateSessionRequest {
        mode: "arena".into(),
        max_players: 2,
        config: Bytes::from("2"),
        ..Default::default()
    };
    let created = api.create_session(request).await.expect("create").into_inner().session.expect("session");
    assert_eq!(created.labels.get("phase").map(String::as_str), Some("lobby"));
    let session = created.session_id;

    let mut cheat = Player::join(server.addr, join_session(&session, "cheat")).await;
    let (_, lobby) = next_state(&mut cheat).await;
    assert_eq!(lobby["phase"], "lobby");
    let mut honest = Player::join(server.addr, join_session(&session, "honest")).await;

    // A thousand units a second asked for; at most 5 allowed: 1/6 a tick.
    let input = pb::Input { sequence: 1, payload: velocity(1000.0, 0.0) };
    cheat.send(pb::client_message::Kind::Input(input)).await;
    let mut previous: Option<(f64, f64)> = None;
    let mut moved = 0.0;
    loop {
        let (state, value) = next_state(&mut cheat).await;
        let now = position(&value, "cheat");
        if let Some((x, y)) = previous
            && state.last_input_sequence == 1
        {
            let step = ((now.0 - x).powi(2) + (now.1 - y).powi(2)).sqrt();
            assert!(step <= f64::from(logic::MAX_SPEED) / f64::from(logic::HZ) + 0.011, "moved {step} in a tick");
            moved += step;
        }
        previous = Some(now);
        if moved > 1.0 {
            break;
        }
    }
    // NaN is refused: the player keeps its last (clamped) velocity.
    let input = pb::Input { sequence: 2, payload: velocity(f32::NAN, 0.0) };
    cheat.send(pb::client_message::Kind::Input(input)).await;
    let signal = pb::SignalSessionRequest { session_id: session.clone(), payload: Bytes::from_static(b"status") };
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let status = api.signal_session(signal.clone()).await.expect("signal").into_inner();
        let status: Value = serde_json::from_slice(&status.payload).expect("JSON");
        assert_eq!(status["phase"], "playing");
        if status["refused_inputs"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the NaN input was not refused: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions[0].labels.get("phase").map(String::as_str), Some("playing"));

    // The two-second match ends by itself; the result names the winner.
    let (seen, end) = honest.until_end().await;
    assert!(end.is_ok(), "{end:?}");
    assert!(matches!(seen.last(), Some(Kind::SessionEnded(e)) if e.message == "time is up"), "{:?}", seen.last());
    let ended = api.get_session(pb::GetSessionRequest { session_id: session }).await.expect("get").into_inner();
    let end = ended.session.and_then(|s| s.end).expect("the end");
    assert_eq!(end.reason, pb::SessionEndReason::Completed as i32);
    let result: Value = serde_json::from_slice(&end.result).expect("JSON");
    let times = result["it_ms"].as_object().expect("times");
    let total: u64 = times.values().filter_map(Value::as_u64).sum();
    // Someone was "it" for the whole match (2 s, give or take a tick).
    assert!((1900..=2100).contains(&total), "{result}");
    let winner = result["winner"].as_str().expect("a winner");
    let least = times.iter().min_by_key(|(_, t)| t.as_u64()).map(|(id, _)| id.as_str());
    assert_eq!(Some(winner), least, "{result}");
    drop(cheat);
    server.shutdown().await;
}

/// One `arena_client` (the example's own client, the binary a new user
/// runs) as a bot printing a line per state, until it has seen `states`.
fn client(server: &Binary, name: &str, states: u32) -> tokio::process::Child {
    tokio::process::Command::new(common::binary::example("arena_client"))
        .args(["--addr", &format!("http://{}", server.addr), "--name", name, "--bot", "--plain"])
        .args(["--states", &states.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn arena_client")
}

/// Where `id` is in one of the client's state lines (`tick 12 lobby it=null
/// alice(3.1,5) bob(5.7,5)`).
fn position_in_line(line: &str, id: &str) -> Option<(f32, f32)> {
    let rest = line.split_whitespace().find_map(|word| word.strip_prefix(&format!("{id}(")))?;
    let (x, y) = rest.strip_suffix(')')?.split_once(',')?;
    Some((x.parse().ok()?, y.parse().ok()?))
}

/// Catches an example that does not run as the README says: the example
/// server and two of its clients (bots) in an arena, as two terminals
/// would. Each client must be welcomed into the same arena, see the other
/// player on the field and see it move, within the speed limit, tick by
/// tick, and leave cleanly after its states.
#[tokio::test]
async fn two_arena_clients_play_against_the_example_server() {
    let server = Binary::example("arena", &[]).await;
    let mut alice = client(&server, "alice", 120);
    let mut alice_lines = BufReader::new(alice.stdout.take().expect("stdout")).lines();
    let first = timeout(WAIT, alice_lines.next_line()).await.expect("in time").expect("read").expect("a line");
    let arena = first.strip_prefix("joined arena ").and_then(|rest| rest.strip_suffix(" as alice")).expect(&first);
    // Bob comes once alice is in: join-or-create puts him in her arena.
    let bob = client(&server, "bob", 30);
    let bob_out = timeout(WAIT, bob.wait_with_output()).await.expect("bob in time").expect("bob");
    assert!(bob_out.status.success(), "bob: {:?}", bob_out.status);
    let bob_out = String::from_utf8_lossy(&bob_out.stdout);
    assert_eq!(bob_out.lines().next(), Some(format!("joined arena {arena} as bob").as_str()));
    assert_eq!(bob_out.lines().filter(|l| l.starts_with("tick ")).count(), 30, "{bob_out}");
    assert!(bob_out.lines().skip(1).all(|l| position_in_line(l, "alice").is_some()), "bob sees alice: {bob_out}");

    let mut lines = Vec::new();
    while let Some(line) = timeout(WAIT, alice_lines.next_line()).await.expect("in time").expect("read") {
        lines.push(line);
    }
    let status = timeout(WAIT, alice.wait()).await.expect("alice in time").expect("alice");
    assert!(status.success(), "alice: {status:?}");
    assert_eq!(lines.len(), 120, "one line per state: {lines:?}");
    // Alice saw bob arrive and move, and never faster than the speed limit
    // allows in one tick (plus the two decimals the state rounds to).
    let seen: Vec<(u64, (f32, f32))> = lines
        .iter()
        .filter_map(|l| Some((l.split_whitespace().nth(1)?.parse().ok()?, position_in_line(l, "bob")?)))
        .collect();
    assert!(seen.len() >= 25, "alice saw bob in {} states: {lines:?}", seen.len());
    assert!(seen.windows(2).any(|w| w[0].1 != w[1].1), "bob never moved for alice: {seen:?}");
    let step = logic::MAX_SPEED / logic::HZ as f32 + 0.02;
    for w in seen.windows(2) {
        let ((t0, (x0, y0)), (t1, (x1, y1))) = (w[0], w[1]);
        let ticks = (t1 - t0) as f32;
        let moved = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        assert!(moved <= step * ticks + 1.0, "bob moved {moved} in {ticks} ticks: {seen:?}");
    }
}
