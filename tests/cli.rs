//! gsctl, the command-line client, against the real server: the backend
//! commands in both output formats, health for probes, watch, play and the
//! bench scenarios; and against a server with auth and TLS on: minted
//! tokens, admin credentials, mutual TLS, and the one-line errors of what
//! goes wrong (no or the wrong credential, TLS on one side only, an unknown
//! CA, nothing listening).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Player, TestServer, WAIT};
use game_session::Config;
use game_session::pb::{self, ListSessionsRequest, PresenceKind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// gsctl aimed at `addr` (`host:port`), untouched by the caller's `GSCTL_*`
/// settings.
fn gsctl_at(addr: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gsctl"));
    command.env("GSCTL_ADDR", addr).kill_on_drop(true);
    for name in [
        "GSCTL_JSON",
        "GSCTL_TOKEN",
        "GSCTL_TLS",
        "GSCTL_CA_FILE",
        "GSCTL_CERT_FILE",
        "GSCTL_KEY_FILE",
        "GSCTL_TLS_SERVER_NAME",
        "GSCTL_TIMEOUT",
        "GSCTL_JWT_SECRET",
        "GSCTL_JWT_SECRET_FILE",
    ] {
        command.env_remove(name);
    }
    command
}

/// gsctl aimed at a plain-text test server, as `host:port`.
fn gsctl(server: &TestServer) -> Command {
    gsctl_at(&server.addr.to_string())
}

/// Runs a prepared gsctl command with `args`, within [`WAIT`].
async fn output(mut command: Command, args: &[&str]) -> Output {
    tokio::time::timeout(WAIT, command.args(args).output()).await.expect("in time").expect("run")
}

async fn run(server: &TestServer, args: &[&str]) -> Output {
    output(gsctl(server), args).await
}

/// The stdout of a run that must have exited 0.
fn success(output: &Output, args: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "gsctl {args:?}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The stderr of a run that must have failed with exit code 1 and printed
/// nothing on stdout.
fn failure(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "", "{stderr}");
    stderr
}

/// Runs gsctl and returns its stdout; panics unless it exits 0.
async fn ok(server: &TestServer, args: &[&str]) -> String {
    success(&run(server, args).await, args)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Catches backend commands that send the wrong request or print the wrong
/// thing: create with labels, list with a filter (table and JSON), get,
/// send, end, and an error with its gRPC code and a non-zero exit.
#[tokio::test]
async fn backend_commands_in_tables_and_json() {
    let server = TestServer::start().await;
    let created = json(&ok(&server, &["create", "--json", "--label", "region=eu", "--max-players", "4"]).await);
    assert_eq!(created["created"], Value::Bool(true));
    let id = created["session"]["sessionId"].as_str().expect("id").to_owned();
    assert_eq!(created["session"]["maxPlayers"], 4);
    let other = ok(&server, &["create", "--open"]).await;
    assert!(other.starts_with("created "), "{other}");

    let listed = json(&ok(&server, &["list", "--json", "--label", "region=eu"]).await);
    let ids: Vec<&str> =
        listed["sessions"].as_array().expect("array").iter().filter_map(|s| s["sessionId"].as_str()).collect();
    assert_eq!(ids, [id.as_str()]);
    let table = ok(&server, &["list", "--open-seats"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two sessions:\n{table}");
    assert!(lines[0].starts_with("SESSION") && lines[0].contains("LABELS"), "{table}");
    let eu_row = lines.iter().find(|l| l.starts_with(&id)).expect("the eu session's row");
    assert!(eu_row.contains("0/4") && eu_row.contains("region=eu"), "{eu_row}");

    let _player = Player::join_as(server.addr, &id, "p1").await;
    let got = json(&ok(&server, &["get", "--json", &id]).await);
    assert_eq!(got["players"][0]["playerId"], "p1");
    let table = ok(&server, &["get", &id]).await;
    let header = table.lines().find(|l| l.starts_with("PLAYER")).expect("a players table");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["PLAYER", "NAME", "SEAT", "JOINED", "RTT", "QUEUED", "DROPPED", "METADATA"]);
    // p1 (named "p1 name"): live, no round trip reported, nothing queued or dropped.
    let row = table.lines().find(|l| l.starts_with("p1 ")).expect("p1's row");
    let at = |column: &str| &row[header.find(column).expect("a column")..];
    assert!(at("SEAT").starts_with("live ") && at("RTT").starts_with("-  "), "{table}");
    assert!(at("QUEUED").starts_with("0 (0 B)  0"), "{table}");

    assert_eq!(ok(&server, &["send", &id, "hello"]).await.trim(), "sent at sequence 2");
    assert_eq!(json(&ok(&server, &["end", "--json", &id, "--message", "bye"]).await)["sequence"], "3");

    // Ended: shown as such for the retention period.
    let ended = ok(&server, &["get", &id]).await;
    assert!(ended.contains("\nended (ENDED_BY_BACKEND, ") && ended.ends_with(" ago): bye\n"), "{ended}");
    let missing = failure(&run(&server, &["get", "no-such-session"]).await);
    assert_eq!(missing, "error: NOT_FOUND: session_id: session \"no-such-session\" not found\n");
    server.shutdown().await;
}

/// Catches live-ops commands that do not reach the server or do not show
/// what they did: kicking a player (who gets the reason), and locking and
/// unlocking a session (shown, and filtered on, in listings).
#[tokio::test]
async fn kick_lock_and_unlock_from_the_command_line() {
    let server = TestServer::start().await;
    let id = server.create_session(4).await;
    let other = server.create_session(4).await;
    let mut stays = Player::join_as(server.addr, &id, "stays").await;
    let mut kicked = Player::join_as(server.addr, &id, "kicked").await;
    assert_eq!(stays.next_presence().await.kind, PresenceKind::Joined as i32);

    assert_eq!(ok(&server, &["kick", &id, "kicked", "--reason", "afk"]).await, "removed kicked\n");
    let (_, end) = tokio::time::timeout(WAIT, kicked.until_end()).await.expect("ends");
    common::assert_status(end, tonic::Code::PermissionDenied, "by an operator: afk");
    assert_eq!(stays.next_presence().await.kind, PresenceKind::Removed as i32);
    let missing = failure(&run(&server, &["kick", &id, "kicked"]).await);
    assert_eq!(missing, "error: INVALID_ARGUMENT: player_id: player \"kicked\" is not in the session\n");

    let locked = ok(&server, &["lock", &id]).await;
    let lines: Vec<&str> = locked.lines().collect();
    let column = lines[0].split_whitespace().position(|c| c == "LOCKED").expect("a LOCKED column");
    assert_eq!(lines[1].split_whitespace().nth(column), Some("yes"), "{locked}");
    let listed = |flag: &'static str| {
        let server = &server;
        async move {
            let table = ok(server, &["list", flag]).await;
            table.lines().skip(1).filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("--locked").await, [id.as_str()]);
    assert_eq!(listed("--unlocked").await, [other.as_str()]);
    let unlocked = json(&ok(&server, &["unlock", "--json", &id]).await);
    assert_eq!((unlocked["sessionId"].as_str(), unlocked.get("locked")), (Some(id.as_str()), None));
    let mut ids = listed("--unlocked").await;
    ids.sort();
    let mut want = vec![id, other];
    want.sort();
    assert_eq!(ids, want);
    server.shutdown().await;
}

/// Catches a health command that exits 0 on anything but SERVING, which
/// would make it useless as a probe.
#[tokio::test]
async fn health_exits_zero_only_when_serving() {
    let mut server = TestServer::start().await;
    assert_eq!(ok(&server, &["health"]).await.trim(), "SERVING");
    // --addr takes a URL as well as host:port.
    let url = format!("http://{}", server.addr);
    assert_eq!(ok(&server, &["--addr", &url, "health"]).await.trim(), "SERVING");
    assert_eq!(ok(&server, &["health", "--service", "liveness"]).await.trim(), "SERVING");
    assert!(!run(&server, &["health", "--service", "no.such.Service"]).await.status.success());

    // Draining: readiness is NOT_SERVING (exit 1); liveness stays SERVING.
    let _player = Player::join_as(server.addr, &server.create_session(2).await, "keeps-it-draining").await;
    let task = server.begin_shutdown();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let output = run(&server, &["health"]).await;
        if !output.status.success() {
            assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "NOT_SERVING");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readiness never turned off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ok(&server, &["health", "--service", "liveness"]).await.trim(), "SERVING");
    tokio::time::timeout(WAIT, task).await.expect("in time").expect("task").expect("Ok");
}

/// Catches a watch that misses the listing, the synced marker or the live
/// events, or prints them in a form scripts cannot parse.
#[tokio::test]
async fn watch_prints_json_lines() {
    let server = TestServer::start().await;
    let existing = server.create_session(2).await;
    let mut child = gsctl(&server).args(["watch", "--json"]).stdout(Stdio::piped()).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        json(&tokio::time::timeout(WAIT, lines.next_line()).await.expect("in time").expect("read").expect("line"))
    };
    assert_eq!(next().await["initial"]["sessionId"], existing.as_str());
    assert!(next().await["synced"]["revision"].is_string());
    let before = game_session::session::unix_micros();
    let created = server.create_session(3).await;
    let event = next().await;
    assert_eq!(event["event"]["kind"], "SESSION_EVENT_KIND_CREATED");
    assert_eq!(event["event"]["session"]["sessionId"], created.as_str());
    let at: i64 = event["event"]["unixMicros"].as_str().expect("unixMicros").parse().expect("a number");
    assert!((before..=game_session::session::unix_micros()).contains(&at), "{at} not when the session was created");
    child.kill().await.expect("kill");
    server.shutdown().await;
}

/// Catches a watch table without each event's time, or that does not say
/// why a session ended.
#[tokio::test]
async fn watch_shows_each_events_time_and_why_a_session_ended() {
    let server = TestServer::start().await;
    let mut child = gsctl(&server).arg("watch").stdout(Stdio::piped()).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next =
        async || tokio::time::timeout(WAIT, lines.next_line()).await.expect("in time").expect("read").expect("line");
    let columns = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(columns(&next().await), ["REVISION", "TIME", "EVENT", "SESSION", "MODE", "PLAYERS", "END", "LABELS"]);
    assert_eq!(next().await, "-- synced at revision 0 --");
    let created = server.create_session(3).await;
    let started = std::time::SystemTime::now();
    let row = columns(&next().await);
    assert_eq!(row[2..], ["CREATED", created.as_str(), "relay", "0/3", "-"]);
    let at = humantime::parse_rfc3339(&row[1]).expect("an RFC 3339 time");
    let skew = started.duration_since(at).or_else(|e| Ok::<_, ()>(e.duration())).expect("a duration");
    assert!(skew < Duration::from_secs(5), "{} is not when the session was created", row[1]);
    let request = pb::EndSessionRequest { session_id: created.clone(), message: "done".into() };
    server.sessions().await.end_session(request).await.expect("end");
    let row = columns(&next().await);
    assert_eq!(row[2..], ["ENDED", created.as_str(), "relay", "0/3", "ended_by_backend"]);
    child.kill().await.expect("kill");
    server.shutdown().await;
}

/// Catches a play command that does not relay typed lines, does not show
/// what others send with its sequence and sender, or does not leave at the
/// end of input.
#[tokio::test]
async fn play_relays_stdin_and_prints_arrivals() {
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let mut rust = Player::join_as(server.addr, &session, "rust").await;
    let mut child = gsctl(&server)
        .args(["play", "--session", &session, "--player-id", "cli", "--name", "Terminal"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next =
        async || tokio::time::timeout(WAIT, lines.next_line()).await.expect("in time").expect("read").expect("line");

    let welcome = next().await;
    assert_eq!(welcome, format!("#2 joined session {session} (relay) as cli; present: rust"));
    let joined = rust.next_presence().await;
    assert_eq!(joined.player.map(|p| (p.player_id, p.display_name)), Some(("cli".into(), "Terminal".into())));

    stdin.write_all(b"hello from the terminal\n/to rust just for you\n").await.expect("write");
    for want in [&b"hello from the terminal"[..], b"just for you"] {
        let relayed = rust.next_relayed().await;
        assert_eq!((relayed.sender_id.as_str(), &relayed.payload[..]), ("cli", want));
    }
    rust.relay(b"hi back", &[]).await;
    let arrival = next().await;
    assert!(arrival.starts_with("#5 rust (") && arrival.ends_with("ago): hi back"), "{arrival}");

    drop(stdin); // end of input: a leave
    let left = rust.next_presence().await;
    assert_eq!((left.kind, left.player.map(|p| p.player_id)), (PresenceKind::Left as i32, Some("cli".into())));
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits").expect("wait");
    assert!(status.success(), "{status:?}");
    server.shutdown().await;
}

/// Catches a `gsctl get` that shows a held seat as live, or without how
/// long it is held: the seat of a player whose connection broke reads
/// "held (N left)", and the JSON has its state and hold's end.
#[tokio::test]
async fn get_shows_a_held_seat_and_how_long_it_is_held() {
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let _held = common::alice_held(server.addr, &session).await;
    let table = ok(&server, &["get", &session]).await;
    let row = table.lines().find(|line| line.starts_with("alice")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("held (") && row.contains("s left)"), "{table}");
    assert!(table.lines().any(|line| line.starts_with("bob") && line.contains(" live ")), "{table}");
    let got = json(&ok(&server, &["get", "--json", &session]).await);
    let seat = &got["seats"][0];
    assert_eq!((seat["playerId"].as_str(), seat["state"].as_str()), (Some("alice"), Some("SEAT_STATE_HELD")));
    assert!(seat["heldUntilUnixMicros"].as_str().is_some_and(|at| !at.is_empty()), "{got}");
    server.shutdown().await;
}

/// Catches a `gsctl play` that gives up (or loses messages) when its
/// connection drops: its TCP connection is reset mid-session while rust
/// keeps relaying; it says it is resuming, resumes, and prints every relay
/// exactly once, in order, then still relays what is typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_resumes_by_itself_when_its_connection_drops() {
    const RELAYS: usize = 30;
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let proxy = common::proxy::Proxy::start(server.addr).await;
    let mut rust = Player::join_as(server.addr, &session, "rust").await;
    let mut child = gsctl_at(&proxy.addr.to_string())
        .args(["play", "--session", &session, "--player-id", "cli"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut next =
        async || tokio::time::timeout(WAIT, lines.next_line()).await.expect("in time").expect("read").expect("line");
    assert!(next().await.starts_with("#2 joined session"));
    assert_eq!(rust.next_presence().await.kind, PresenceKind::Joined as i32);

    let mut printed = Vec::new();
    for n in 0..RELAYS {
        rust.relay(format!("relay {n}").as_bytes(), &[]).await;
        if n == RELAYS / 3 {
            // Once gsctl has printed some, its connection goes.
            while printed.len() < 3 {
                printed.push(next().await);
            }
            proxy.reset();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resuming = tokio::time::timeout(WAIT, errors.next_line()).await.expect("in time").expect("read");
    let resuming = resuming.expect("a line on stderr");
    assert!(resuming.contains("connection lost") && resuming.contains("resuming as cli"), "{resuming}");
    let mut resumed = None;
    while printed.iter().filter(|line| line.contains("relay ")).count() < RELAYS {
        let line = next().await;
        if line.contains("resumed session") {
            resumed = Some(line);
        } else {
            printed.push(line);
        }
    }
    assert!(resumed.is_some_and(|line| line.contains("missed message(s) follow")), "no resume line");
    // The others saw it held and back.
    assert_eq!(rust.next_presence().await.kind, PresenceKind::Held as i32);
    assert_eq!(rust.next_presence().await.kind, PresenceKind::Reconnected as i32);
    let relays: Vec<String> = printed.iter().filter_map(|line| line.split("): ").nth(1).map(str::to_owned)).collect();
    let expected: Vec<String> = (0..RELAYS).map(|n| format!("relay {n}")).collect();
    assert_eq!(relays, expected, "every relay once, in order: {printed:#?}");

    stdin.write_all(b"still here\n").await.expect("write");
    assert_eq!(&rust.next_relayed().await.payload[..], b"still here");
    drop(stdin);
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits").expect("wait");
    assert!(status.success(), "{status:?}");
    server.shutdown().await;
}

/// Catches gsctl printing a control sequence another player or a label
/// chose: a relayed payload with ESC, OSC and newline sequences (which
/// could forge a "session ended" line, clear the screen or retitle the
/// terminal) arrives as one escaped line in `play`, and `get` escapes the
/// line separators the server still allows in labels and display names.
#[tokio::test]
async fn play_and_get_print_hostile_text_escaped() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let request = pb::CreateSessionRequest {
        mode: "relay".into(),
        max_players: 2,
        labels: HashMap::from([("title".to_owned(), "two\u{2028}lines".to_owned())]),
        ..Default::default()
    };
    let session = api.create_session(request).await.expect("create").into_inner().session.expect("session");
    let session = session.session_id;
    let mut join = common::join_session(&session, "mallory");
    join.display_name = "Mal\u{2029}lory".into();
    let mut mallory = Player::join(server.addr, join).await;
    let mut child = gsctl(&server)
        .args(["play", "--session", &session, "--player-id", "cli"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next =
        async || tokio::time::timeout(WAIT, lines.next_line()).await.expect("in time").expect("read").expect("line");
    assert!(next().await.starts_with("#2 joined session"));
    mallory.next_presence().await;

    let hostile = "hi\n#9 session ended (ENDED_BY_BACKEND): reconnect to evil.example\u{1b}[2J\u{1b}]0;pwned\u{7}\r";
    mallory.relay(hostile.as_bytes(), &["cli"]).await;
    let arrival = next().await;
    let shown =
        "): hi\\n#9 session ended (ENDED_BY_BACKEND): reconnect to evil.example\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\r";
    assert!(arrival.starts_with("#3 mallory, to some players only (") && arrival.ends_with(shown), "{arrival:?}");
    assert!(!arrival.chars().any(char::is_control), "{arrival:?}");
    drop(stdin);
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits").expect("wait");
    assert!(status.success(), "{status:?}");

    let table = ok(&server, &["get", &session]).await;
    assert!(table.contains("title=two\\u{2028}lines"), "{table}");
    assert!(table.contains("Mal\\u{2029}lory"), "{table}");
    assert!(!table.contains('\u{2028}') && !table.contains('\u{2029}'), "{table:?}");
    let got = ok(&server, &["get", "--json", &session]).await;
    assert!(!got.contains('\u{2028}') && !got.contains('\u{2029}'), "{got:?}");
    assert_eq!(json(&got)["labels"]["title"], "two\u{2028}lines", "the JSON still means the same text");
    server.shutdown().await;
}

/// Catches a bench that miscounts: a small relay workload against a healthy
/// server must report every expected delivery, none lost, duplicated or out
/// of order, and a latency distribution; the window hooks run once each.
#[tokio::test]
async fn bench_relay_counts_every_delivery() {
    let server = TestServer::start().await;
    let marks = std::env::temp_dir().join(format!("gsctl-bench-{}", std::process::id()));
    let start_cmd = format!("echo start >> {}", marks.display());
    let end_cmd = format!("echo end >> {}", marks.display());
    let mut args = vec!["--json", "bench", "relay"];
    args.extend(RELAY_WORKLOAD.split(' '));
    args.extend(["--window-start-cmd", &start_cmd, "--window-end-cmd", &end_cmd]);
    let report = json(&ok(&server, &args).await);
    let hooks = std::fs::read_to_string(&marks).expect("the window hooks ran");
    let _ = std::fs::remove_file(&marks);
    assert_eq!(hooks, "start\nend\n", "the hooks run once each, in order");
    assert_eq!(report["workload"]["sessions"], 2, "{report}");
    assert_all_delivered(&report["servers"]["server"]);
    // Without a pid, the server's cost is not measured (null, not zero).
    assert_eq!(report["servers"]["server"]["server_cpu_seconds"], Value::Null, "{report}");
    assert_eq!(report["servers"].as_object().map(|s| s.len()), Some(1), "{report}");
    server.shutdown().await;
}

/// A small relay workload: 2 sessions x 3 players x 50 Hz x 1 s = 300
/// sends, each to 2 players.
const RELAY_WORKLOAD: &str = "--sessions 2 --players 3 --rate 50 --warmup 200ms --duration 1s --connections 2";

fn assert_all_delivered(figures: &Value) {
    let expected = figures["expected_deliveries"].as_f64().expect("expected");
    assert!((540.0..=660.0).contains(&expected), "{figures}");
    assert_eq!(figures["delivered"].as_f64(), Some(expected), "{figures}");
    assert_eq!((figures["lost"].as_f64(), figures["duplicates"].as_f64()), (Some(0.0), Some(0.0)), "{figures}");
    assert_eq!(figures["order_violations"].as_f64(), Some(0.0), "{figures}");
    assert_eq!(figures["offered_deliveries_per_second"].as_f64(), Some(600.0));
    let (p50, max) =
        (figures["latency_p50_ms"].as_f64().expect("p50"), figures["latency_max_ms"].as_f64().expect("max"));
    assert!(p50 > 0.0 && p50 <= max, "{figures}");
}

/// Catches a comparison that does not run both servers on the same
/// workload: `--compare` starts game-session and the baseline (the binaries
/// beside gsctl), measures each with its pid, and reports the ratio.
#[tokio::test]
async fn bench_compare_runs_game_session_and_the_baseline() {
    let mut args = vec!["--json", "bench", "relay", "--compare"];
    args.extend(RELAY_WORKLOAD.split(' '));
    let output = tokio::time::timeout(WAIT * 3, Command::new(env!("CARGO_BIN_EXE_gsctl")).args(&args).output())
        .await
        .expect("in time")
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = json(&String::from_utf8_lossy(&output.stdout));
    for name in ["game-session", "baseline"] {
        let figures = &report["servers"][name];
        assert_all_delivered(figures);
        assert!(figures["server_cpu_seconds"].as_f64().is_some_and(|s| s > 0.0), "{name}: {figures}");
        assert!(figures["server_peak_rss_mib"].as_f64().is_some_and(|m| m > 1.0), "{name}: {figures}");
    }
    assert_eq!(report["ratio"]["offered_deliveries_per_second"].as_f64(), Some(1.0), "{report}");
    let delivered = report["servers"]["game-session"]["delivered"].as_f64().expect("delivered")
        / report["servers"]["baseline"]["delivered"].as_f64().expect("delivered");
    // Equal up to rounding: the report divides its own way.
    let ratio = report["ratio"]["delivered"].as_f64().expect("a ratio");
    assert!((ratio - delivered).abs() < 1e-12, "{ratio} against {delivered}: {report}");
}

/// Catches repeats that do not rotate the servers or that report the wrong
/// figures: with `--repeats 2 --before-bin`, the three servers run in the
/// rotated orders, every run delivers everything, each figure is the median
/// of the runs, and each ratio is one of the medians.
#[tokio::test]
async fn bench_compare_repeats_rotate_the_servers_and_report_medians() {
    let before = env!("CARGO_BIN_EXE_game-session");
    let mut args = vec!["--json", "bench", "relay", "--compare", "--repeats", "2", "--before-bin", before];
    args.extend(RELAY_WORKLOAD.split(' '));
    let output = tokio::time::timeout(WAIT * 6, Command::new(env!("CARGO_BIN_EXE_gsctl")).args(&args).output())
        .await
        .expect("in time")
        .expect("run");
    let report = json(&success(&output, &args));
    assert_eq!(
        report["orders"],
        json!([["game-session", "before", "baseline"], ["before", "baseline", "game-session"]]),
        "{report}"
    );
    let median = |name: &str, key: &str| {
        let runs = report["servers"][name]["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 2, "{name}: {runs:?}");
        runs.iter().for_each(assert_all_delivered);
        let values: Vec<f64> = runs.iter().map(|run| run[key].as_f64().expect("a value")).collect();
        let median = (values[0] + values[1]) / 2.0;
        assert_eq!(report["servers"][name][key].as_f64(), Some(median), "{name}: {report}");
        median
    };
    for (pair, ours, theirs) in
        [("game-session/baseline", "game-session", "baseline"), ("before/baseline", "before", "baseline")]
    {
        let ratio = report["ratios"][pair]["delivered"].as_f64().expect("ratio");
        assert!((ratio - median(ours, "delivered") / median(theirs, "delivered")).abs() < 1e-12, "{report}");
    }
    assert_eq!(report["ratios"]["game-session/before"]["offered_deliveries_per_second"].as_f64(), Some(1.0));
}

/// Catches a connections scenario that loses players or pings: every
/// player joins (the warm-up's too), every ping is answered, and every
/// stream ends cleanly.
#[tokio::test]
async fn bench_connections_joins_and_pings_every_player() {
    let server = TestServer::start().await;
    let args = "--json bench connections --players 40 --connections 2 --ping-interval 100ms --hold 300ms \
                --settle 50ms --warmup-sessions 1";
    let report = json(&ok(&server, &args.split_whitespace().collect::<Vec<_>>()).await);
    let figures = &report["servers"]["server"];
    let pings = figures["pings_sent"].as_f64().expect("pings");
    // 48 players, each pinging first within 2 intervals of its join, then
    // every interval: at least twice in the 350 ms of settle and hold.
    assert!(pings >= 48.0 * 2.0, "{figures}");
    assert_eq!(figures["pongs_received"].as_f64(), Some(pings), "{figures}");
    assert_eq!(figures["stream_errors"].as_f64(), Some(0.0), "{figures}");
    assert!(figures["joins_per_second"].as_f64().is_some_and(|j| j > 0.0), "{figures}");
    let sessions =
        server.sessions().await.list_sessions(ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(sessions.sessions.len(), 0, "the scenario ends its sessions");
    server.shutdown().await;
}

/// Catches churn that leaks: every player joins and leaves cleanly, no
/// player is left in the registry, and the ended pool leaves no session.
#[tokio::test]
async fn bench_churn_leaves_the_registry_empty() {
    let server = TestServer::start().await;
    let args = "--json bench churn --rate 50 --duration 1s --lifetime 200ms --connections 2";
    let report = json(&ok(&server, &args.split_whitespace().collect::<Vec<_>>()).await);
    let figures = &report["servers"]["server"];
    assert_eq!((figures["joins"].as_f64(), figures["leaves"].as_f64()), (Some(50.0), Some(50.0)), "{figures}");
    assert_eq!(figures["failures"].as_f64(), Some(0.0), "{figures}");
    assert_eq!(figures["players_left_in_pool"].as_f64(), Some(0.0), "{figures}");
    assert_eq!(figures["sessions_left_after_end"].as_f64(), Some(0.0), "{figures}");
    // 50 joins/s x 0.2 s = 10 players at once, in 8-seat sessions, twice over.
    assert_eq!(figures["pool_sessions"].as_f64(), Some(3.0), "{figures}");
    let sessions =
        server.sessions().await.list_sessions(ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(sessions.sessions.len(), 0);
    server.shutdown().await;
}

// ---- Against a server with auth and TLS ----

/// The HS256 secret of the secure test servers (at least 32 bytes).
const SECRET: &str = "a-test-secret-of-at-least-32-bytes-long";
/// The admin API key of the secure test servers.
const API_KEY: &str = "an-admin-api-key-of-the-cli-tests";

/// Files a secure server and its clients read, in a directory of their own,
/// removed on drop.
struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// A CA; a server certificate it signs for `localhost` and `127.0.0.1`;
    /// a client certificate it signs; another CA and a client certificate
    /// that one signs; the secret (with a trailing newline, which is not the
    /// secret's) and the API key file.
    fn new() -> Secrets {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gsctl-cli-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secrets = Secrets { dir };
        let (ca_cert, ca_key) = ca("cli test CA");
        secrets.write("ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(ca_params("cli test CA"), ca_key);
        let (cert, key) = leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        secrets.write("server.pem", &cert);
        secrets.write("server.key", &key);
        let (cert, key) = leaf(&["backend.example"], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        secrets.write("client.pem", &cert);
        secrets.write("client.key", &key);
        let (other_ca, other_key) = ca("another CA");
        secrets.write("other-ca.pem", &other_ca.pem());
        let other = Issuer::new(ca_params("another CA"), other_key);
        let (cert, key) = leaf(&["stranger.example"], ExtendedKeyUsagePurpose::ClientAuth, &other);
        secrets.write("other-client.pem", &cert);
        secrets.write("other-client.key", &key);
        secrets.write("secret", &format!("{SECRET}\n"));
        secrets.write("api-keys", &format!("{API_KEY}\n"));
        secrets
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path(name), contents).expect("write");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A server config with auth (the secret and the API key) and TLS.
    fn config(&self) -> Config {
        let mut config = common::config();
        config.auth.jwt_hs256_secret_file = Some(self.path("secret"));
        config.auth.admin_api_key_file = Some(self.path("api-keys"));
        config.tls.tls_cert_file = Some(self.path("server.pem"));
        config.tls.tls_key_file = Some(self.path("server.key"));
        config
    }

    /// gsctl aimed at `addr` over TLS, trusting the test CA.
    fn gsctl(&self, addr: impl ToString) -> Command {
        let mut command = gsctl_at(&addr.to_string());
        command.env("GSCTL_CA_FILE", self.path("ca.pem"));
        command
    }

    /// `gsctl token --secret-file ... args`.
    async fn token(&self, args: &[&str]) -> String {
        let secret = self.path("secret");
        let mut all = vec!["token", "--secret-file", secret.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        success(&output(gsctl_at("unused:1"), &all).await, &all).trim().to_owned()
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A self-signed CA certificate and its key.
fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let cert = ca_params(name).self_signed(&key).expect("CA");
    (cert, key)
}

/// A certificate for `names` signed by `issuer`, as PEM, with its key.
fn leaf(names: &[&str], usage: ExtendedKeyUsagePurpose, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, issuer).expect("sign").pem(), key.serialize_pem())
}

/// The id of a session created with `gsctl create --json` and `credential`.
async fn create(secrets: &Secrets, server: &TestServer, credential: &str) -> String {
    let args = ["create", "--json", "--token", credential];
    let created = json(&success(&output(secrets.gsctl(server.addr), &args).await, &args));
    created["session"]["sessionId"].as_str().expect("id").to_owned()
}

/// Catches a token that says something other than what was asked, is signed
/// with something other than the secret file's content (its trailing newline
/// included), or that the server does not accept: every claim is checked,
/// and a server requiring that issuer and audience takes it as an admin's.
#[tokio::test]
async fn token_carries_exactly_the_claims_asked_for() {
    let secrets = Secrets::new();
    let token = secrets
        .token(&[
            "--sub",
            "ops",
            "--admin",
            "--ttl",
            "10m",
            "--issuer",
            "https://id.example",
            "--audience",
            "game-session",
            "--session",
            "s1",
            "--session",
            "s2",
            "--mode",
            "relay",
        ])
        .await;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["https://id.example"]);
    validation.set_audience(&["game-session"]);
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let mut claims = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("signed with the secret").claims;
    let iat = claims["iat"].as_u64().expect("iat");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!(now.abs_diff(iat) <= 5, "iat {iat}, now {now}");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 600));
    let object = claims.as_object_mut().expect("object");
    object.remove("iat");
    object.remove("exp");
    assert_eq!(
        claims,
        json!({
            "sub": "ops", "scope": "game-session:admin", "iss": "https://id.example", "aud": "game-session",
            "gs_sessions": ["s1", "s2"], "gs_modes": ["relay"],
        })
    );

    let mut config = secrets.config();
    config.auth.jwt_issuer = Some("https://id.example".into());
    config.auth.jwt_audience = Some("game-session".into());
    let server = TestServer::start_with(config).await;
    let args = ["list", "--token", &token];
    let listed = success(&output(secrets.gsctl(server.addr), &args).await, &args);
    assert_eq!(listed, "SESSION  MODE  PLAYERS  OPEN  LOCKED  SEQUENCE  AGE  LABELS\n");
    server.shutdown().await;
}

/// Catches a play that ignores the token (the server then names no player),
/// prints the wrong thing, or does not exit when its session ends: with
/// stdin still open, it must print the welcome as the token's sub and the
/// end, and exit 0 on its own.
#[tokio::test]
async fn play_with_a_minted_token_exits_zero_when_the_session_ends() {
    let secrets = Secrets::new();
    let server = TestServer::start_with(secrets.config()).await;
    let session = create(&secrets, &server, API_KEY).await;
    let token = secrets.token(&["--sub", "alice"]).await;
    let mut child = secrets
        .gsctl(server.addr)
        .args(["play", "--session", &session, "--token", &token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || tokio::time::timeout(WAIT, lines.next_line()).await.expect("in time").expect("read");
    assert_eq!(next().await, Some(format!("#1 joined session {session} (relay) as alice; present: nobody else")));

    let admin = secrets.token(&["--sub", "ops", "--admin"]).await;
    let args = ["end", &session, "--message", "match over", "--token", &admin];
    assert_eq!(success(&output(secrets.gsctl(server.addr), &args).await, &args), "ended at sequence 2\n");
    assert_eq!(next().await, Some("#2 session ended (ENDED_BY_BACKEND): match over".to_owned()));
    assert_eq!(next().await, None);
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits with stdin open").expect("wait");
    assert_eq!(status.code(), Some(0));
    drop(stdin);
    server.shutdown().await;
}

/// Catches admin commands that do not send the credential they are given:
/// each SessionService command works with an admin JWT and with an API key.
#[tokio::test]
async fn admin_commands_take_an_admin_token_or_an_api_key() {
    let secrets = Secrets::new();
    let server = TestServer::start_with(secrets.config()).await;
    let admin = secrets.token(&["--sub", "ops", "--admin"]).await;
    for credential in [admin.as_str(), API_KEY] {
        let run = async |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--token", credential]);
            success(&output(secrets.gsctl(server.addr), &all).await, &all)
        };
        let created = json(&run(&["create", "--json", "--label", "team=ops"]).await);
        let id = created["session"]["sessionId"].as_str().expect("id").to_owned();
        let listed = json(&run(&["list", "--json", "--label", "team=ops"]).await);
        assert_eq!(listed["sessions"][0]["sessionId"], id.as_str(), "{listed}");
        assert_eq!(json(&run(&["get", "--json", &id]).await)["sessionId"], id.as_str());
        assert_eq!(run(&["send", &id, "hello"]).await, "sent at sequence 1\n");
        assert_eq!(run(&["end", &id]).await, "ended at sequence 2\n");
    }
    server.shutdown().await;
}

/// Catches auth failures that do not say what is wrong or what to do: no
/// token (UNAUTHENTICATED), a player's token on an admin command, and a
/// join as another player (PERMISSION_DENIED), each one line and exit 1.
#[tokio::test]
async fn auth_failures_name_the_code_and_what_to_pass() {
    let secrets = Secrets::new();
    let server = TestServer::start_with(secrets.config()).await;
    let missing = failure(&output(secrets.gsctl(server.addr), &["list"]).await);
    assert_eq!(
        missing,
        "error: UNAUTHENTICATED: authorization: missing; send `authorization: Bearer <token>`; pass a token with \
         --token (or GSCTL_TOKEN): `gsctl token --sub ID` mints one for development (add --admin for \
         SessionService commands)\n"
    );
    let player = secrets.token(&["--sub", "alice"]).await;
    let denied = "the credential is valid but not allowed this: SessionService commands need an admin token \
                  (`gsctl token --admin`) or an admin API key, and play joins as its token's sub\n";
    let not_admin = failure(&output(secrets.gsctl(server.addr), &["list", "--token", &player]).await);
    assert_eq!(not_admin, format!("error: PERMISSION_DENIED: SessionService needs an admin credential; {denied}"));

    let session = create(&secrets, &server, API_KEY).await;
    let args = ["play", "--session", &session, "--player-id", "bob", "--token", &player];
    let impersonation = failure(&output(secrets.gsctl(server.addr), &args).await);
    assert_eq!(
        impersonation,
        format!("error: PERMISSION_DENIED: join.player_id: the token is for another player; {denied}")
    );
    server.shutdown().await;
}

/// Catches connection failures reported as a bare "transport error": plain
/// text against TLS, TLS against plain text, a CA that did not sign the
/// server's certificate, a host name the certificate is not for, a port
/// nobody listens on, and a host name that does not resolve each get one
/// line naming the cause and the flag to fix it.
#[tokio::test]
async fn connection_failures_say_why() {
    let secrets = Secrets::new();
    let server = TestServer::start_with(secrets.config()).await;
    let addr = server.addr;
    let token = ["--token", API_KEY];
    let fails = async |mut command: Command, args: &[&str]| {
        command.env_remove("GSCTL_CA_FILE");
        let mut all = vec!["list"];
        all.extend_from_slice(args);
        failure(&output(command, &all).await)
    };

    let plain = fails(gsctl_at(&addr.to_string()), &token).await;
    assert_eq!(
        plain,
        format!(
            "error: cannot reach http://{addr}: the server did not answer in plain-text HTTP/2 (it closed the \
             connection, or sent something else); if it serves TLS, use an https:// address or a TLS flag (--tls, \
             --ca-file)\n"
        )
    );
    let other_ca = secrets.path("other-ca.pem");
    let unknown_ca =
        fails(gsctl_at(&addr.to_string()), &["--ca-file", other_ca.to_str().expect("utf-8"), token[0], token[1]]).await;
    assert_eq!(
        unknown_ca,
        format!(
            "error: cannot reach https://{addr}: TLS: the server's certificate is not signed by a CA this client \
             trusts (unknown issuer); pass the CA's certificate with --ca-file\n"
        )
    );
    let ca = secrets.path("ca.pem");
    let ca = ca.to_str().expect("utf-8");
    let wrong_name = fails(gsctl_at(&addr.to_string()), &["--ca-file", ca, "--tls-server-name", "example.com"]).await;
    assert_eq!(
        wrong_name,
        format!(
            "error: cannot reach https://{addr}: TLS: the server's certificate is not for this host name; pass \
             the name it is for with --tls-server-name\n"
        )
    );

    let plain_server = TestServer::start().await;
    let tls_to_plain = fails(gsctl(&plain_server), &["--ca-file", ca]).await;
    assert_eq!(
        tls_to_plain,
        format!(
            "error: cannot reach https://{}: TLS: the server does not speak TLS on this port; use an http:// \
             address (or host:port without TLS flags)\n",
            plain_server.addr
        )
    );
    plain_server.shutdown().await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let refused = fails(gsctl_at(&closed.to_string()), &[]).await;
    assert_eq!(
        refused,
        format!(
            "error: cannot reach http://{closed}: connection refused: nothing listens on that port (is the server \
             running? is --addr right?)\n"
        )
    );
    let unresolved = fails(gsctl_at("no-such-host.invalid:50051"), &[]).await;
    let prefix = "error: cannot reach http://no-such-host.invalid:50051: cannot resolve the host name (";
    assert!(unresolved.starts_with(prefix) && unresolved.ends_with("); check --addr\n"), "{unresolved}");
    server.shutdown().await;
}

/// Catches a client certificate that is not presented, and a refusal that
/// does not point at it: on a backend address with mutual TLS, admin
/// commands work with --cert-file and --key-file, and fail naming them
/// without a certificate or with one from another CA.
#[tokio::test]
async fn mutual_tls_takes_the_client_certificate() {
    let secrets = Secrets::new();
    let mut config = secrets.config();
    config.backend_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.tls.tls_client_ca_file = Some(secrets.path("ca.pem"));
    let server = TestServer::start_with(config).await;
    let backend = server.backend_addr.expect("backend address");
    // `list` with the API key and the client certificate `name`.pem/.key.
    let with_cert = |name: &str| {
        let (cert, key) = (secrets.path(&format!("{name}.pem")), secrets.path(&format!("{name}.key")));
        let path = |p: std::path::PathBuf| p.to_str().expect("utf-8").to_owned();
        ["list", "--token", API_KEY, "--cert-file", &path(cert), "--key-file", &path(key)].map(str::to_owned)
    };
    let args = with_cert("client");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listed = success(&output(secrets.gsctl(backend), &args).await, &args);
    assert_eq!(listed, "SESSION  MODE  PLAYERS  OPEN  LOCKED  SEQUENCE  AGE  LABELS\n");

    // The server's alert arrives, or the connection closes before it is read.
    let closed = format!(
        "error: cannot reach https://{backend}: the server closed the connection after the TLS handshake; if it \
         checks client certificates (mutual TLS), pass --cert-file and --key-file, signed by a CA it trusts\n"
    );
    let without = failure(&output(secrets.gsctl(backend), &["list", "--token", API_KEY]).await);
    let asked = format!(
        "error: cannot reach https://{backend}: TLS: the server asks for a client certificate (mutual TLS); pass \
         --cert-file and --key-file\n"
    );
    assert!(without == asked || without == closed, "{without}");
    let args = with_cert("other-client");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stranger = failure(&output(secrets.gsctl(backend), &args).await);
    let refused = format!(
        "error: cannot reach https://{backend}: TLS: the server refused this client's certificate (UnknownCA); \
         check --cert-file and --key-file\n"
    );
    assert!(stranger == refused || stranger == closed, "{stranger}");
    server.shutdown().await;
}

/// Catches a help text that describes the server instead of the CLI, a
/// play whose usage error names only one of its two targets, and an
/// http:// address silently combined with TLS flags.
#[tokio::test]
async fn help_and_usage_errors_describe_the_cli() {
    let help = output(gsctl_at("unused:1"), &["--help"]).await;
    let help = success(&help, &["--help"]);
    assert_eq!(help.lines().next(), Some("gsctl, the command-line client of game-session."), "{help}");

    let play = output(gsctl_at("unused:1"), &["play"]).await;
    assert_eq!(play.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&play.stderr);
    assert!(
        stderr.starts_with(
            "error: the following required arguments were not provided:\n  <--session <SESSION>|--mode <MODE>>\n"
        ),
        "{stderr}"
    );

    let mixed = failure(&output(gsctl_at("http://127.0.0.1:1"), &["--tls", "list"]).await);
    assert_eq!(
        mixed,
        "error: --addr http://127.0.0.1:1: an http:// address is plain text, but a TLS flag is given (--tls, \
         --ca-file, --cert-file or --tls-server-name); use https:// or host:port\n"
    );
}

/// Catches a secure comparison that does not turn TLS on, that leaves the
/// generated secret and keys on disk, or that loses deliveries: both runs
/// deliver everything, the secure one over https://, and the ratio is
/// secure ÷ plain.
#[tokio::test]
async fn bench_compare_secure_runs_with_identity_and_without() {
    let mut args = vec!["--json", "bench", "relay", "--compare-secure"];
    args.extend(RELAY_WORKLOAD.split(' '));
    let child = gsctl_at("unused:1").args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id().expect("pid");
    let output = tokio::time::timeout(WAIT * 3, child.wait_with_output()).await.expect("in time").expect("run");
    let report = json(&success(&output, &args));
    for (name, scheme) in [("secure", "https://"), ("plain", "http://")] {
        let figures = &report["servers"][name];
        assert_all_delivered(figures);
        assert!(figures["address"].as_str().is_some_and(|a| a.starts_with(scheme)), "{name}: {figures}");
        assert!(figures["server_cpu_seconds"].as_f64().is_some_and(|s| s > 0.0), "{name}: {figures}");
    }
    let cpu = |name: &str| report["servers"][name]["server_cpu_seconds"].as_f64().expect("cpu");
    let ratio = report["ratio"]["server_cpu_seconds"].as_f64().expect("ratio");
    // serde_json parses floats to within one unit in the last place.
    assert!((ratio - cpu("secure") / cpu("plain")).abs() < 1e-12, "{report}");
    let prefix = format!("gsctl-bench-{pid}-");
    let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the secret and keys are removed");
}

/// Catches a bench that cannot load a server with auth on: with the
/// server's secret it mints a token per player (a shared or missing one
/// would be refused) and an admin token, over TLS; without it, it fails
/// saying what to pass.
#[tokio::test]
async fn bench_mints_a_token_per_player_for_a_secure_server() {
    let secrets = Secrets::new();
    let server = TestServer::start_with(secrets.config()).await;
    let secret = secrets.path("secret");
    let args = [
        "--json",
        "bench",
        "churn",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--lifetime",
        "200ms",
        "--connections",
        "2",
        "--secret-file",
        secret.to_str().expect("utf-8"),
    ];
    let report = json(&success(&output(secrets.gsctl(server.addr), &args).await, &args));
    let figures = &report["servers"]["server"];
    assert_eq!((figures["joins"].as_f64(), figures["leaves"].as_f64()), (Some(50.0), Some(50.0)), "{figures}");
    assert_eq!(figures["failures"].as_f64(), Some(0.0), "{figures}");
    assert_eq!(figures["sessions_left_after_end"].as_f64(), Some(0.0), "{figures}");
    assert_eq!(figures["address"], format!("https://{}", server.addr).as_str());

    let args = ["bench", "relay", "--sessions", "1", "--players", "2", "--duration", "1s", "--token", API_KEY];
    let refused = failure(&output(secrets.gsctl(server.addr), &args).await);
    assert_eq!(
        refused,
        "error: UNAUTHENTICATED: authorization: missing; send `authorization: Bearer <token>`; against a server \
         with auth on, give bench its HS256 secret (--secret-file) to mint a token per player and an admin token, \
         or --token with an admin credential for SessionService calls\n"
    );
    server.shutdown().await;
}
