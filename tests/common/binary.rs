//! The server binary as a child process, for what is process-wide: its
//! metrics, its log, its resident memory and its resource limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use game_session::pb;
use game_session::pb::session_service_client::SessionServiceClient;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::WAIT;

/// glibc settings for a child whose memory is measured: freed memory at the
/// top of a heap goes back to the kernel at once, and blocks of 32 KiB and
/// more (payloads, queues' buffers) are mapped on their own and unmapped
/// when freed.
pub const EAGER_TRIM: (&str, &str) =
    ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0:glibc.malloc.mmap_threshold=32768");

/// The example `name` as `cargo test` builds it: in `examples/` beside the
/// binaries.
pub fn example(name: &str) -> PathBuf {
    let binaries = Path::new(env!("CARGO_BIN_EXE_game-session")).parent().expect("the binaries' directory");
    binaries.join("examples").join(name)
}

/// `game-session` itself, serving players, health and metrics on ports of
/// its choosing; killed when dropped.
pub struct Binary {
    pub child: Child,
    /// Where it serves players (and SessionService).
    pub addr: SocketAddr,
    /// Where it serves `/metrics`.
    pub metrics: SocketAddr,
    /// Its log lines (stdout) after the "serving" ones.
    pub log: mpsc::UnboundedReceiver<String>,
}

impl Binary {
    /// The binary with the flags `extra` (after the test's own: ports of its
    /// choosing and a 100 ms drain unless `extra` says otherwise).
    pub async fn start(extra: &[&str]) -> Binary {
        Binary::start_with(extra, &[], |_| {}).await
    }

    /// As [`Binary::start`], with the environment variables `env`.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Binary {
        Binary::start_with(extra, env, |_| {}).await
    }

    /// As [`Binary::start_with_env`], with `configure` given the command last
    /// (e.g. to lower a resource limit for this child only).
    pub async fn start_with(extra: &[&str], env: &[(&str, &str)], configure: impl FnOnce(&mut Command)) -> Binary {
        Binary::start_program(Path::new(env!("CARGO_BIN_EXE_game-session")), extra, env, configure).await
    }

    /// The example server `name` (which `cargo test` builds beside the
    /// binaries), started as [`Binary::start`] starts the binary.
    pub async fn example(name: &str, extra: &[&str]) -> Binary {
        Binary::start_program(&example(name), extra, &[], |_| {}).await
    }

    /// `program` (the binary or an example server built on the library),
    /// started as [`Binary::start_with`] starts the binary.
    pub async fn start_program(
        program: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Binary {
        let mut command = Command::new(program);
        // Only the flags and variables here count, whatever the developer's
        // shell has set.
        for (name, _) in
            std::env::vars().filter(|(name, _)| name.starts_with("GAME_SESSION_") || name.starts_with("OTEL_"))
        {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        command.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"]);
        if !extra.contains(&"--drain-period") {
            command.args(["--drain-period", "100ms"]);
        }
        command
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        configure(&mut command);
        let mut child = command.spawn().expect("spawn the server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || metrics.is_none() {
            let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("log in time").expect("read");
            let line = line.expect("the server exited before serving");
            let address = || -> SocketAddr {
                let text = match serde_json::from_str::<Value>(&line) {
                    Ok(json) => json["address"].as_str().expect("an address field").to_owned(),
                    Err(_) => line.split("address=").nth(1).expect("an address").to_owned(),
                };
                text.split_whitespace().next().expect("address").parse().expect("a socket address")
            };
            if line.contains("serving metrics") {
                metrics = Some(address());
            } else if line.contains("serving players") {
                addr = Some(address());
            }
        }
        // Keep reading the log, so that the server never blocks on it.
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Binary { child, addr: addr.expect("addr"), metrics: metrics.expect("metrics"), log }
    }

    /// A new connection to the player port.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    /// A SessionService client on a new connection.
    pub async fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel().await)
    }

    /// Creates a relay session; returns its id.
    pub async fn create_session(&self) -> String {
        let request = pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
        let created = self.sessions().await.create_session(request).await.expect("create").into_inner();
        created.session.expect("a session").session_id
    }

    /// The next JSON log line with this message; every line on the way must
    /// be a JSON object with a level and a timestamp.
    pub async fn json_line(&mut self, message: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.log.recv())
                .await
                .unwrap_or_else(|_| panic!("no {message:?} line in time"))
                .expect("log");
            let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(json["level"].is_string() && json["timestamp"].is_string(), "{line}");
            if json["message"] == message {
                return json;
            }
        }
    }

    /// GETs `path` from the metrics port: (status line, headers, body).
    pub async fn get(&self, path: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(self.metrics).await.expect("connect to metrics");
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.expect("in time").expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a header and a body");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_owned(), headers.to_lowercase(), body.to_owned())
    }

    /// Every sample of a scrape, by `name{labels}`.
    pub async fn scrape(&self) -> HashMap<String, f64> {
        let (status, headers, body) = self.get("/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
        body.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// One sample, `name{labels}` as the exposition writes it; 0 when absent
    /// (a counter or gauge not yet touched).
    pub async fn sample(&self, series: &str) -> f64 {
        self.scrape().await.get(series).copied().unwrap_or(0.0)
    }

    /// Its resident set, in bytes. Start a server whose memory is measured
    /// with [`EAGER_TRIM`], so that the figure is what it holds, not what
    /// glibc kept after a free (calling `malloc_trim` through gdb fails in
    /// this sandbox: gdb cannot write the inferior's registers).
    pub fn rss(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }
}
