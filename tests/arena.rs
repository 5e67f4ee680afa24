//! The `arena` example's rules behind the real server: the speed limit that
//! keeps a cheating client from teleporting, the phases in the labels, and
//! the match's result after its end.

mod common;

#[path = "../examples/arena/logic.rs"]
mod logic;

use bytes::Bytes;
use common::{Player, TestServer, join_session};
use game_session::Modes;
use game_session::pb::{self, server_message::Kind};
use game_session::session::Relay;
use serde_json::Value;

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
