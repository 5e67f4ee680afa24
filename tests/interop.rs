//! Third-party clients against the real server: a Python grpcio game client
//! with stubs generated from `proto/` at test time, and the grpcurl binary
//! driving the APIs through server reflection.
//!
//! The tools come from `.ci/install-test-tools` (into `target/test-tools/`);
//! each test runs it first, once per process, and fails if it fails.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{Player, TestServer};
use game_session::pb::{self, PresenceKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long one external process may run before the test gives up on it.
/// Longer than `play.py`'s own 20 s deadline, so that it reports first.
const PROCESS_DEADLINE: Duration = Duration::from_secs(25);

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tools_dir() -> PathBuf {
    repo_root().join("target/test-tools")
}

/// Runs `.ci/install-test-tools` once per test process; panics if it fails.
fn ensure_tools() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let script = repo_root().join(".ci/install-test-tools");
        let output = std::process::Command::new(&script)
            .current_dir(repo_root())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\nstdout:\n{}\nstderr:\n{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = result {
        panic!("the interop test tools are missing: {message}");
    }
}

// ---------------------------------------------------------------------------
// Python
// ---------------------------------------------------------------------------

/// `tests/python/play.py` running as player "python".
struct PythonPlayer {
    /// Killed on drop, so a failing test leaves no process behind.
    child: Child,
    /// Each stdout line as it is printed; closed when stdout closes.
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line so far, for failure messages.
    stdout: Vec<String>,
    /// All of stderr, once the process has closed it.
    stderr: JoinHandle<String>,
}

impl PythonPlayer {
    fn spawn(addr: SocketAddr, session_id: &str) -> Self {
        let python = tools_dir().join("venv/bin/python");
        let mut child = Command::new(&python)
            .arg(repo_root().join("tests/python/play.py"))
            .arg(addr.to_string())
            .arg(session_id)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", python.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        PythonPlayer { child, lines, stdout: Vec::new(), stderr }
    }

    /// Waits for a stdout line starting with `step`; on exit or timeout,
    /// kills the process and panics with its output.
    async fn wait_for(&mut self, step: &str) {
        let found = tokio::time::timeout(PROCESS_DEADLINE, async {
            while let Some(line) = self.lines.recv().await {
                let matches = line.starts_with(step);
                self.stdout.push(line);
                if matches {
                    return true;
                }
            }
            false
        })
        .await;
        if found != Ok(true) {
            let why = if found.is_err() { "timed out" } else { "exited" };
            let report = self.kill().await;
            panic!("play.py {why} before printing {step:?}\n{report}");
        }
    }

    /// Waits for the process to exit (killing it after the deadline) and
    /// returns its status and a report of its output.
    async fn finish(mut self) -> (Option<ExitStatus>, String) {
        let status = match tokio::time::timeout(PROCESS_DEADLINE, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => None,
        };
        let report = self.kill().await;
        (status, report)
    }

    /// Kills the process if it still runs and returns its output.
    async fn kill(&mut self) -> String {
        let _ = self.child.start_kill();
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(err)) => format!("unknown ({err})"),
            Err(_) => "still running after a kill".into(),
        };
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), self.lines.recv()).await {
            self.stdout.push(line);
        }
        let stderr = match tokio::time::timeout(Duration::from_secs(5), &mut self.stderr).await {
            Ok(Ok(text)) => text,
            _ => "<stderr unavailable>".into(),
        };
        format!("play.py {status}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}", self.stdout.join("\n"))
    }
}

/// The text of a panic caught from a task.
fn panic_text(err: tokio::task::JoinError) -> String {
    if !err.is_panic() {
        return err.to_string();
    }
    let payload = err.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "<non-text panic>".into()
    }
}

/// Catches a wire format or contract that only the Rust client gets right:
/// stubs generated from `proto/` by grpcio-tools join, see the Rust player
/// in their welcome, relay both ways with exact payloads, and leave with OK,
/// while the Rust player sees the Python player join, relay and leave.
#[tokio::test]
async fn python_client_plays_with_a_rust_client() {
    ensure_tools();
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let mut rust = Player::join_as(server.addr, &session, "rust").await;

    let mut python = PythonPlayer::spawn(server.addr, &session);
    // Python starts and generates its stubs at its own pace; once it is
    // welcomed, its join is already in the Rust player's queue.
    python.wait_for("welcomed").await;

    let rust_side = tokio::spawn(async move {
        let joined = rust.next_presence().await;
        assert_eq!(joined.kind, PresenceKind::Joined as i32, "{joined:?}");
        let player = joined.player.as_ref().expect("presence names its player");
        assert_eq!((player.player_id.as_str(), player.display_name.as_str()), ("python", "Python Player"));

        let relayed = rust.next_relayed().await;
        assert_eq!(relayed.sender_id, "python");
        assert_eq!(relayed.payload, bytes::Bytes::from_static(b"hello from python"));
        assert!(relayed.sequence > joined.sequence, "{relayed:?} after {joined:?}");

        rust.relay(b"hello from rust", &["python"]).await;

        let left = rust.next_presence().await;
        assert_eq!(left.kind, PresenceKind::Left as i32, "{left:?}");
        assert_eq!(left.player.as_ref().map(|p| p.player_id.as_str()), Some("python"));
    });
    match rust_side.await {
        Ok(()) => {
            let (status, report) = python.finish().await;
            assert!(status.is_some_and(|s| s.success()), "play.py failed\n{report}");
        }
        Err(err) => {
            let report = python.kill().await;
            panic!("the Rust player failed: {}\n{report}", panic_text(err));
        }
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// grpcurl
// ---------------------------------------------------------------------------

/// What one grpcurl run printed.
struct Grpcurl {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Grpcurl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "grpcurl {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `grpcurl -plaintext <args...> <addr> <rest...>` with `stdin`.
async fn grpcurl(addr: SocketAddr, args: &[&str], rest: &[&str], stdin: Option<&str>) -> Grpcurl {
    grpcurl_with(&["-plaintext"], addr, args, rest, stdin).await
}

/// Runs `grpcurl <transport...> <args...> <addr> <rest...>` with `stdin`.
async fn grpcurl_with(
    transport: &[&str],
    addr: SocketAddr,
    args: &[&str],
    rest: &[&str],
    stdin: Option<&str>,
) -> Grpcurl {
    let binary = tools_dir().join("grpcurl");
    let mut command = Command::new(&binary);
    command
        .args(transport)
        .args(["-connect-timeout", "5", "-max-time", "15"])
        .args(args)
        .arg(addr.to_string())
        .args(rest)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|err| panic!("cannot run {}: {err}", binary.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).await.expect("write grpcurl's stdin");
        // Dropping the pipe closes it: grpcurl half-closes the request stream.
    }
    let output = tokio::time::timeout(PROCESS_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("grpcurl {args:?} {rest:?} did not finish within {PROCESS_DEADLINE:?}"))
        .expect("grpcurl's output");
    Grpcurl {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs grpcurl and panics unless it succeeds; returns its stdout.
async fn grpcurl_ok(addr: SocketAddr, args: &[&str], rest: &[&str], stdin: Option<&str>) -> String {
    let run = grpcurl(addr, args, rest, stdin).await;
    assert!(run.status.success(), "grpcurl {args:?} {rest:?} failed\n{run}");
    run.stdout
}

/// The string value of `"field": "..."` in grpcurl's JSON (no escapes in
/// the values this test reads).
fn json_string<'a>(json: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\": \"");
    let start = json.find(&key)? + key.len();
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

/// Catches a reflection service that is missing, lists the wrong services,
/// or speaks only the v1 protocol older clients such as grpcurl 1.8 lack.
#[tokio::test]
async fn grpcurl_lists_services_through_reflection() {
    ensure_tools();
    let server = TestServer::start().await;
    let stdout = grpcurl_ok(server.addr, &[], &["list"], None).await;
    let listed: BTreeSet<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let expected = BTreeSet::from([
        "gamesession.v1.PlayerService",
        "gamesession.v1.SessionService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    assert_eq!(listed, expected, "grpcurl list printed:\n{stdout}");
    server.shutdown().await;
}

/// Catches a descriptor set without some RPCs or without source info, which
/// would leave `grpcurl describe` without the proto comments.
#[tokio::test]
async fn grpcurl_describes_services_with_their_comments() {
    ensure_tools();
    let server = TestServer::start().await;
    let service = grpcurl_ok(server.addr, &[], &["describe", "gamesession.v1.SessionService"], None).await;
    assert!(service.contains("gamesession.v1.SessionService is a service:"), "{service}");
    for rpc in [
        "CreateSession",
        "GetSession",
        "ListSessions",
        "WatchSessions",
        "EndSession",
        "SendToSession",
        "SignalSession",
        "RemovePlayer",
        "LockSession",
    ] {
        assert!(service.contains(&format!("rpc {rpc} (")), "describe lacks {rpc}:\n{service}");
    }
    assert!(service.contains("returns ( stream .gamesession.v1.WatchSessionsResponse )"), "{service}");
    assert!(service.contains("// SessionService lets other backend services"), "no comments:\n{service}");

    let relay = grpcurl_ok(server.addr, &[], &["describe", "gamesession.v1.Relay"], None).await;
    assert!(relay.contains("gamesession.v1.Relay is a message:"), "{relay}");
    assert!(relay.contains("bool droppable = 3;"), "describe lacks droppable:\n{relay}");
    assert!(
        relay.contains("// Data that a newer message replaces (positions, for example)."),
        "describe lacks droppable's comment:\n{relay}"
    );
    server.shutdown().await;
}

/// Catches JSON mapping or reflection problems in the unary backend API:
/// a session created through grpcurl comes back through grpcurl with the
/// same id, mode and labels, and EndSession removes it.
#[tokio::test]
async fn grpcurl_creates_gets_and_ends_a_session() {
    ensure_tools();
    let server = TestServer::start().await;
    let service = "gamesession.v1.SessionService";

    let created = grpcurl_ok(
        server.addr,
        &["-d", r#"{"mode":"relay","labels":{"region":"eu"}}"#],
        &[&format!("{service}/CreateSession")],
        None,
    )
    .await;
    assert_eq!(json_string(&created, "mode"), Some("relay"), "{created}");
    assert!(created.contains(r#""created": true"#), "{created}");
    let id = json_string(&created, "sessionId").unwrap_or_else(|| panic!("no sessionId in\n{created}")).to_string();
    assert_eq!(id.len(), 32, "{created}");

    let get = format!(r#"{{"sessionId":"{id}"}}"#);
    let got = grpcurl_ok(server.addr, &["-d", &get], &[&format!("{service}/GetSession")], None).await;
    assert_eq!(json_string(&got, "sessionId"), Some(id.as_str()), "{got}");
    assert_eq!(json_string(&got, "mode"), Some("relay"), "{got}");
    assert_eq!(json_string(&got, "region"), Some("eu"), "{got}");

    let end = format!(r#"{{"sessionId":"{id}","message":"bye"}}"#);
    let ended = grpcurl_ok(server.addr, &["-d", &end], &[&format!("{service}/EndSession")], None).await;
    assert!(json_string(&ended, "sequence").is_some(), "{ended}");

    // Ended: GetSession shows how, for the retention period.
    let ended = grpcurl_ok(server.addr, &["-d", &get], &[&format!("{service}/GetSession")], None).await;
    assert_eq!(json_string(&ended, "reason"), Some("SESSION_END_REASON_ENDED_BY_BACKEND"), "{ended}");
    assert_eq!(json_string(&ended, "message"), Some("bye"), "{ended}");

    let missing = r#"{"sessionId":"no-such-session"}"#;
    let gone = grpcurl(server.addr, &["-d", missing], &[&format!("{service}/GetSession")], None).await;
    // grpcurl exits with 64 + the status code: 64 + NOT_FOUND (5).
    assert_eq!(gone.status.code(), Some(69), "{gone}");
    assert!(gone.stderr.contains("Code: NotFound"), "{gone}");
    server.shutdown().await;
}

/// Catches health statuses that are not SERVING on a running server: the
/// overall one (readiness), `liveness`, and the per-service ones.
#[tokio::test]
async fn grpcurl_health_checks_are_serving() {
    ensure_tools();
    let server = TestServer::start().await;
    for service in [None, Some("liveness"), Some("gamesession.v1.PlayerService"), Some("gamesession.v1.SessionService")]
    {
        let request = service.map(|s| format!(r#"{{"service":"{s}"}}"#));
        let args: Vec<&str> = request.as_deref().map(|r| vec!["-d", r]).unwrap_or_default();
        let stdout = grpcurl_ok(server.addr, &args, &["grpc.health.v1.Health/Check"], None).await;
        assert_eq!(json_string(&stdout, "status"), Some("SERVING"), "service {service:?}:\n{stdout}");
    }
    server.shutdown().await;
}

/// Catches an unknown mode that is accepted, mapped to the wrong status, or
/// refused without naming the modes that exist.
#[tokio::test]
async fn grpcurl_unknown_mode_is_invalid_argument() {
    ensure_tools();
    let server = TestServer::start().await;
    let run =
        grpcurl(server.addr, &["-d", r#"{"mode":"chess"}"#], &["gamesession.v1.SessionService/CreateSession"], None)
            .await;
    // grpcurl exits with 64 + the status code: 64 + INVALID_ARGUMENT (3).
    assert_eq!(run.status.code(), Some(67), "{run}");
    assert!(run.stderr.contains("Code: InvalidArgument"), "{run}");
    assert!(run.stderr.contains("chess") && run.stderr.contains("relay"), "{run}");
    assert!(run.stdout.trim().is_empty(), "{run}");
    server.shutdown().await;
}

/// Catches a Play stream that only tonic clients can drive: grpcurl joins
/// by session id from JSON, gets the welcome listing the Rust player, and
/// its leave ends the stream with OK and is a LEFT for the others.
#[tokio::test]
async fn grpcurl_plays_a_bidi_session() {
    ensure_tools();
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let mut rust = Player::join_as(server.addr, &session, "rust").await;

    let stdin = format!(
        "{}\n{}\n",
        format_args!(r#"{{"join":{{"sessionId":"{session}","playerId":"curl","displayName":"Curl"}}}}"#),
        r#"{"leave":{}}"#
    );
    let stdout =
        grpcurl_ok(server.addr, &["-d", "@"], &["gamesession.v1.PlayerService/Play"], Some(stdin.as_str())).await;
    assert!(stdout.contains(r#""welcome": {"#), "{stdout}");
    assert_eq!(json_string(&stdout, "sessionId"), Some(session.as_str()), "{stdout}");
    assert_eq!(json_string(&stdout, "mode"), Some("relay"), "{stdout}");
    // The welcome's own player comes first, then the players present.
    let ids: Vec<&str> =
        stdout.match_indices(r#""playerId""#).filter_map(|(at, _)| json_string(&stdout[at..], "playerId")).collect();
    assert_eq!(ids, ["curl", "rust"], "{stdout}");

    let joined = rust.next_presence().await;
    assert_eq!(joined.kind, PresenceKind::Joined as i32, "{joined:?}");
    assert_eq!(joined.player.map(|p| p.player_id).as_deref(), Some("curl"));
    let left = rust.next_presence().await;
    assert_eq!(left.kind, PresenceKind::Left as i32, "{left:?}");
    assert_eq!(left.player.map(|p| p.player_id).as_deref(), Some("curl"));

    let info = server
        .sessions()
        .await
        .get_session(pb::GetSessionRequest { session_id: session })
        .await
        .expect("get session")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(info.player_count, 1, "grpcurl's seat was not freed: {info:?}");
    server.shutdown().await;
}

/// Catches a resume that only tonic clients can drive: the resume token is
/// a plain string, so grpcurl resumes a Rust player's dropped seat from
/// JSON, gets `resumed` and exactly the two messages the player missed
/// (bob's join and his relay), and its leave frees the seat.
#[tokio::test]
async fn grpcurl_resumes_a_dropped_seat() {
    ensure_tools();
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let (alice, mut bob) = common::alice_held(server.addr, &session).await;
    bob.relay(b"while away", &[]).await;

    let (token, last) = (&alice.welcome.resume_token, alice.welcome.sequence);
    let stdin = format!(
        "{}\n{}\n",
        format_args!(r#"{{"resume":{{"token":"{token}","lastSequence":"{last}"}}}}"#),
        r#"{"leave":{}}"#
    );
    let stdout =
        grpcurl_ok(server.addr, &["-d", "@"], &["gamesession.v1.PlayerService/Play"], Some(stdin.as_str())).await;
    assert!(stdout.contains(r#""resumed": {"#), "{stdout}");
    assert_eq!(json_string(&stdout, "replayed"), Some("2"), "{stdout}");
    // "while away", base64 as proto3 JSON writes bytes.
    assert!(stdout.contains(r#""payload": "d2hpbGUgYXdheQ==""#), "{stdout}");
    let back = bob.next_presence().await;
    assert_eq!(back.kind, PresenceKind::Reconnected as i32, "{back:?}");
    let left = bob.next_presence().await;
    assert_eq!((left.kind, left.player.map(|p| p.player_id)), (PresenceKind::Left as i32, Some("alice".into())));
    server.shutdown().await;
}

/// Catches a server that a third-party client cannot reach with auth and
/// TLS on: grpcurl, trusting the test CA, lists the services through
/// reflection (open), creates a session with an admin token, and without a
/// token or over plain text is refused.
#[tokio::test]
async fn grpcurl_calls_an_auth_and_tls_server_with_a_bearer_token() {
    use common::certs::{self, Ca};
    use common::jwt;

    ensure_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let leaf = ca.server();
    let mut config = common::config();
    config.auth.jwt_hs256_secret = Some(jwt::SECRET.into());
    config.tls.tls_cert_file = Some(certs::write(dir.path(), "tls.crt", &leaf.cert_pem));
    config.tls.tls_key_file = Some(certs::write(dir.path(), "tls.key", &leaf.key_pem));
    let server = TestServer::start_with(config).await;
    let ca_file = certs::write(dir.path(), "ca.pem", &ca.pem());
    let tls = ["-cacert", ca_file.to_str().expect("utf-8 path")];
    let create = "gamesession.v1.SessionService/CreateSession";
    let request = r#"{"mode":"relay"}"#;

    let listed = grpcurl_with(&tls, server.addr, &[], &["list"], None).await;
    assert!(listed.status.success() && listed.stdout.contains("gamesession.v1.SessionService"), "{listed}");
    let header = format!("authorization: Bearer {}", jwt::admin("grpcurl"));
    let created = grpcurl_with(&tls, server.addr, &["-H", &header, "-d", request], &[create], None).await;
    assert!(created.status.success(), "{created}");
    assert!(created.stdout.contains(r#""created": true"#), "{created}");

    let anonymous = grpcurl_with(&tls, server.addr, &["-d", request], &[create], None).await;
    // grpcurl exits with 64 + the status code: 64 + UNAUTHENTICATED (16).
    assert_eq!(anonymous.status.code(), Some(80), "{anonymous}");
    assert!(anonymous.stderr.contains("Code: Unauthenticated"), "{anonymous}");
    let player = format!("authorization: Bearer {}", jwt::hs256(&jwt::claims("alice")));
    let denied = grpcurl_with(&tls, server.addr, &["-H", &player, "-d", request], &[create], None).await;
    assert_eq!(denied.status.code(), Some(71), "64 + PERMISSION_DENIED (7): {denied}");
    let plain = grpcurl(server.addr, &["-H", &header, "-d", request], &[create], None).await;
    assert!(!plain.status.success(), "plain text against TLS: {plain}");
    server.shutdown().await;
}
