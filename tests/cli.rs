//! gsctl, the command-line client, against the real server: the backend
//! commands in both output formats, health for probes, watch, and play.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Player, TestServer, WAIT};
use game_session::pb::{ListSessionsRequest, PresenceKind};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn gsctl(server: &TestServer) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gsctl"));
    command.env("GSCTL_ADDR", format!("http://{}", server.addr)).env_remove("GSCTL_JSON").kill_on_drop(true);
    command
}

async fn run(server: &TestServer, args: &[&str]) -> Output {
    tokio::time::timeout(WAIT, gsctl(server).args(args).output()).await.expect("in time").expect("run")
}

/// Runs gsctl and returns its stdout; panics unless it exits 0.
async fn ok(server: &TestServer, args: &[&str]) -> String {
    let output = run(server, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "gsctl {args:?}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
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
    assert!(ok(&server, &["get", &id]).await.contains("p1"));

    assert_eq!(ok(&server, &["send", &id, "hello"]).await.trim(), "sent at sequence 2");
    assert_eq!(json(&ok(&server, &["end", "--json", &id, "--message", "bye"]).await)["sequence"], "3");

    let missing = run(&server, &["get", &id]).await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("NotFound") && stderr.contains(&id), "{stderr}");
    server.shutdown().await;
}

/// Catches a health command that exits 0 on anything but SERVING, which
/// would make it useless as a probe.
#[tokio::test]
async fn health_exits_zero_only_when_serving() {
    let mut server = TestServer::start().await;
    assert_eq!(ok(&server, &["health"]).await.trim(), "SERVING");
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
    let created = server.create_session(3).await;
    let event = next().await;
    assert_eq!(event["event"]["kind"], "SESSION_EVENT_KIND_CREATED");
    assert_eq!(event["event"]["session"]["sessionId"], created.as_str());
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
    assert_eq!(report["ratio"]["delivered"].as_f64(), Some(delivered), "{report}");
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
