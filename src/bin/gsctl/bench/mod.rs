//! `gsctl bench`: load scenarios and what they cost the server.
//!
//! - `relay`: S sessions × P players relaying at R Hz; latency, loss and the
//!   server's CPU per delivery. `--find-max` raises R to the highest rate
//!   that holds a p99 bound.
//! - `connections`: N idle players, joined and pinging; connect time and the
//!   server's memory per stream.
//! - `churn`: players joining and leaving at a fixed rate; the registry
//!   empties and the server's memory does not grow.
//!
//! A scenario runs against `--addr` (with `--server-pid` for the server's CPU
//! and memory), against a game-session it starts itself (`--spawn`), or
//! against game-session and then the baseline, a bare tonic relay with the
//! same proto shape (`--compare`); the table then shows both and their ratio.
//! `--before-bin` adds a third server to the comparison, an earlier
//! game-session binary, and `--repeats` runs the servers several times in a
//! rotating order and reports each figure's median (`repeated`): one run of
//! each is at the mercy of a shared machine's drifting load.
//!
//! Identity: `--spawn --secure` starts game-session with auth and TLS on
//! (`secure`); every player then joins over TLS with a token of its own,
//! and SessionService calls carry an admin token. `--compare-secure` runs
//! the scenario with both on and then with both off, on the same binary,
//! and reports what they cost. Against a server at `--addr`, the global
//! `--token` and TLS flags apply, and `--secret-file` lets the bench mint
//! the players' tokens.

mod churn;
mod connections;
mod relay;
mod repeated;
mod secure;
mod tick;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use tokio::process::{Child, Command};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{Bearer, Failure, Remote};
use crate::token::{Secret, Signer};

/// `gsctl bench`'s scenario and the server it runs against.
#[derive(Debug, Args)]
pub struct Bench {
    /// Worker threads of the load client's runtime. Default: one per core,
    /// so that the client is not what limits the figures; the report says
    /// when it may have been (its CPU near one core per thread).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    client_threads: Option<u16>,
    #[command(subcommand)]
    scenario: Scenario,
}

/// The load client's worker threads, once its runtime is built.
static CLIENT_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The load client's worker threads (1 before [`Bench::runtime`]).
pub fn client_threads() -> usize {
    CLIENT_THREADS.get().copied().unwrap_or(1)
}

impl Bench {
    /// The multi-threaded runtime the scenarios run on.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = self.client_threads.map_or(cores, usize::from);
        let _ = CLIENT_THREADS.set(threads);
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S sessions x P players relaying at R Hz: latency, loss and server cost.
    Relay(relay::Relay),
    /// N idle players, joined and pinging: connect time and server memory per stream.
    Connections(connections::Connections),
    /// Players joining and leaving at a fixed rate: the registry empties and memory stays flat.
    Churn(churn::Churn),
    /// S sessions of a ticking mode x P players sending inputs at R Hz: missed ticks, input-to-state latency, cost.
    Tick(tick::TickBench),
}

/// Which server a scenario runs against.
#[derive(Debug, Args)]
pub struct Target {
    /// The pid of the server at --addr, if it runs on this machine: its CPU
    /// time and memory are then read from /proc.
    #[arg(long, conflicts_with_all = ["spawn", "compare"])]
    server_pid: Option<u32>,
    /// The `/metrics` address (host:port) of the server at --addr, for the
    /// figures only the server knows (the tick scenario's overruns and tick
    /// times). A server the bench starts is read anyway. Default: none.
    #[arg(long)]
    server_metrics: Option<String>,
    /// Start game-session (--server-bin) on a free local port with its
    /// defaults, run against it, and stop it afterwards.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: turn auth and TLS on, as deployed. An HS256 secret and
    /// a certificate (ECDSA P-256, signed by a CA made for the run) are
    /// generated in a temporary directory; each player joins over TLS with a
    /// token of its own (`sub` = its id), and SessionService calls carry an
    /// admin token.
    #[arg(long, requires = "spawn", conflicts_with = "compare")]
    secure: bool,
    /// Run against game-session and then the baseline (--baseline-bin), both
    /// started here one after the other, and report them side by side with
    /// their ratio.
    #[arg(long)]
    compare: bool,
    /// With --compare: a third server, labelled "before": a game-session
    /// binary built from an earlier commit, started exactly like
    /// game-session. The table then shows game-session, before and baseline,
    /// and the ratios game-session/baseline, before/baseline and
    /// game-session/before. Default: none.
    #[arg(long, requires = "compare")]
    before_bin: Option<PathBuf>,
    /// Run the scenario N times on each server, rotating the order of the
    /// servers by one each repeat (with --compare: game-session then
    /// baseline, then baseline then game-session, ...), so that a drift in
    /// the machine's load favours none of them. The report gives each
    /// figure's median over the repeats (the table adds min–max, --json every
    /// repeat's figures), and ratios of the medians. Default: 1.
    #[arg(long, default_value_t = 1, hide_default_value = true, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// What identity costs: run against game-session with auth and TLS on
    /// (as --spawn --secure), then with both off, and report them side by
    /// side with their ratio (secure ÷ plain).
    #[arg(long, conflicts_with_all = ["spawn", "compare", "server_pid"])]
    compare_secure: bool,
    /// Against --addr with auth on: the server's HS256 secret, to mint a
    /// token per player (`sub` = its id) and, without --token, an admin token
    /// for SessionService calls. Ignored by --spawn and the comparisons.
    #[command(flatten)]
    secret: Secret,
    /// The game-session binary for --spawn and --compare. Default: the one
    /// beside gsctl.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The baseline binary for --compare. Default: examples/bare_relay beside
    /// gsctl (`cargo build --release --examples`).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

/// A server a scenario runs against.
pub struct Server {
    /// "game-session", "before", "baseline", "secure", "plain", or "server"
    /// (the one at --addr).
    name: &'static str,
    addr: String,
    /// How to connect: the address, with TLS when it serves TLS.
    endpoint: Endpoint,
    /// Its pid, when its CPU and memory can be read from /proc.
    pid: Option<u32>,
    /// Its `/metrics` address, when the bench started it (game-session).
    metrics: Option<String>,
    /// What the calls carry when it checks who calls.
    credentials: Credentials,
}

/// What the bench's calls carry when the server checks who calls.
pub struct Credentials {
    /// `authorization` of SessionService calls (none: auth is off).
    admin: Bearer,
    /// Signs each player's own token (none: players send no token).
    players: Option<Signer>,
}

impl Credentials {
    /// Nothing: for a server with auth off.
    fn none() -> Self {
        Credentials { admin: Bearer(None), players: None }
    }

    /// A SessionService client on `channel`, carrying the admin credential.
    fn sessions(&self, channel: Channel) -> SessionClient {
        game_session::pb::session_service_client::SessionServiceClient::with_interceptor(channel, self.admin.clone())
    }

    /// The `authorization` value of `player_id`'s Play calls: a token of
    /// its own, when tokens are minted. Minting costs the client a few
    /// microseconds: callers that time the join mint first.
    fn player_token(&self, player_id: &str) -> Result<Option<MetadataValue<Ascii>>, Failure> {
        let Some(signer) = &self.players else { return Ok(None) };
        Ok(Some(format!("Bearer {}", signer.player(player_id)?).parse()?))
    }
}

/// A Play request carrying `token`, if any, without a deadline (the
/// streams are long-lived).
fn play_request<T>(token: Option<MetadataValue<Ascii>>, body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(24 * 3600));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token);
    }
    request
}

/// A SessionService client whose calls carry the admin credential.
type SessionClient = game_session::pb::session_service_client::SessionServiceClient<crate::Authed>;

/// How long the bench's tokens are valid: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

impl Server {
    /// The server at --addr, reached as the global flags say.
    fn remote(remote: &Remote, target: &Target) -> Result<Server, Failure> {
        let mut endpoint = Endpoint::from_shared(remote.uri.clone())?.tcp_nodelay(true);
        if let Some(tls) = &remote.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let players = target.secret.bytes()?.map(|secret| Signer::new(&secret, TOKEN_TTL));
        let admin = match (&players, remote.bearer.is_some()) {
            (Some(signer), false) => Bearer::new(Some(&signer.admin("gsctl-bench")?))?,
            _ => remote.bearer.clone(),
        };
        Ok(Server {
            name: "server",
            addr: remote.uri.clone(),
            endpoint,
            pid: target.server_pid,
            metrics: target.server_metrics.clone(),
            credentials: Credentials { admin, players },
        })
    }

    /// Every sample of the server's `/metrics`, by `name{labels}`, when its
    /// address is known and it answers.
    async fn scrape(&self) -> Option<HashMap<String, f64>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.metrics.as_deref()?;
        let read = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").await?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await?;
            Ok::<_, std::io::Error>(text)
        };
        let text = tokio::time::timeout(Duration::from_secs(5), read).await.ok()?.ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        Some(
            body.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Runs `scenario` against the server; the report gives its address too
    /// (`https://` when it served TLS).
    async fn run(&self, scenario: &impl Run) -> Result<Measured, Failure> {
        let mut measured = scenario.run(self).await?;
        measured.details.insert("address".into(), json!(self.addr));
        Ok(measured)
    }

    /// Opens `count` HTTP/2 connections to the server, at most 64 at a time.
    async fn connect(&self, count: usize) -> Result<Vec<Channel>, Failure> {
        use futures_util::{StreamExt, stream};
        let endpoint = &self.endpoint;
        // `connect` (not `connect_lazy`) opens one connection per channel.
        let connects = (0..count.max(1)).map(|_| endpoint.connect());
        let channels: Result<Vec<Channel>, _> =
            stream::iter(connects).buffered(64).collect::<Vec<_>>().await.into_iter().collect();
        Ok(channels.map_err(|e| crate::explain::explain(&e, crate::explain::Context::Remote(&self.addr)))?)
    }

    fn cpu_time(&self) -> Option<Duration> {
        self.pid.and_then(process_cpu_time)
    }

    fn rss(&self) -> Option<u64> {
        self.pid.and_then(process_rss)
    }
}

/// What a scenario measured on one server.
#[derive(Default)]
pub struct Measured {
    metrics: Vec<Metric>,
    /// Lines printed under the table (per server).
    notes: Vec<String>,
    /// Extra JSON, e.g. the steps of `--find-max`.
    details: Map<String, Value>,
    /// The load client's CPU over the measured window, when the scenario
    /// measured it: the repeated report says from it when the client may
    /// have been the limit.
    client: Option<ClientCpu>,
}

/// The load client's CPU over a measured window.
#[derive(Debug, Clone, Copy)]
pub struct ClientCpu {
    /// Cores used: CPU time over the window's length.
    cores: f64,
    /// Worker threads of the client's runtime.
    threads: usize,
}

impl ClientCpu {
    /// Cores per thread at and above which a thread had little time to
    /// spare, so the client, not the server, may have set the pace.
    const LIMIT_PER_THREAD: f64 = 0.9;

    fn per_thread(&self) -> f64 {
        self.cores / self.threads.max(1) as f64
    }

    fn may_have_been_the_limit(&self) -> bool {
        self.per_thread() >= Self::LIMIT_PER_THREAD
    }

    /// The report's note when the client may have been the limit.
    fn note(&self) -> String {
        format!(
            "the client used {:.2} cores on {} thread(s): it may have been the limit; \
             give it more (--client-threads) or run it on another machine",
            self.cores, self.threads
        )
    }
}

impl Measured {
    /// Adds a figure; `None` when it could not be measured (e.g. no pid).
    fn add(&mut self, key: impl Into<String>, label: impl Into<String>, value: Option<f64>, decimals: usize) {
        self.metrics.push(Metric { key: key.into(), label: label.into(), value, decimals });
    }
}

/// One figure of a report.
#[derive(Clone)]
pub struct Metric {
    /// Its JSON key, e.g. `latency_p99_ms`.
    key: String,
    /// Its table label.
    label: String,
    value: Option<f64>,
    /// Decimals shown in the table.
    decimals: usize,
}

/// Creates `count` relay sessions of `max_players` seats with `labels`,
/// round robin over `channels`, 64 at a time; returns their ids.
async fn create_sessions(
    server: &Server,
    channels: &[Channel],
    count: usize,
    max_players: u32,
    labels: &HashMap<String, String>,
) -> Result<Vec<String>, Failure> {
    create_sessions_of(server, channels, "relay", b"", count, max_players, labels).await
}

/// Creates `count` sessions of `mode` with `config`, `max_players` seats
/// and `labels`, round robin over `channels`, 64 at a time; returns their
/// ids.
async fn create_sessions_of(
    server: &Server,
    channels: &[Channel],
    mode: &str,
    config: &[u8],
    count: usize,
    max_players: u32,
    labels: &HashMap<String, String>,
) -> Result<Vec<String>, Failure> {
    use futures_util::{StreamExt, stream};
    use game_session::pb;
    let creates = (0..count).map(|i| {
        let mut client = server.credentials.sessions(channels[i % channels.len()].clone());
        let request = pb::CreateSessionRequest {
            mode: mode.into(),
            max_players,
            labels: labels.clone(),
            config: bytes::Bytes::copy_from_slice(config),
            ..Default::default()
        };
        async move {
            let session = client.create_session(request).await?.into_inner().session;
            Ok::<_, Failure>(session.ok_or("CreateSession returned no session")?.session_id)
        }
    });
    stream::iter(creates).buffered(64).collect::<Vec<_>>().await.into_iter().collect()
}

/// Ends the sessions a run created, so that runs do not pile up; a server
/// without EndSession (the baseline) keeps them.
async fn end_sessions(server: &Server, channel: &Channel, sessions: Vec<String>) {
    use futures_util::{StreamExt, stream};
    use game_session::pb;
    let ends = sessions.into_iter().map(|session_id| {
        let mut client = server.credentials.sessions(channel.clone());
        async move { client.end_session(pb::EndSessionRequest { session_id, message: String::new() }).await }
    });
    let results: Vec<_> = stream::iter(ends).buffer_unordered(64).collect().await;
    drop(results);
}

/// A load scenario.
trait Run {
    /// What the scenario runs, for the report.
    fn workload(&self) -> Value;
    /// One line saying the same for the table.
    fn describe(&self) -> String;
    /// Runs the scenario against `server`.
    async fn run(&self, server: &Server) -> Result<Measured, Failure>;
    /// Flags a game-session server started for the scenario needs beyond
    /// its defaults (a server given with `--addr` must be started with them).
    fn server_args(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Runs the scenario against the target, then prints the report.
pub async fn run(remote: &Remote, bench: Bench, json_output: bool) -> Result<(), Failure> {
    raise_open_files_limit();
    match bench.scenario {
        Scenario::Relay(scenario) => execute(&scenario, remote, &scenario.target, json_output).await,
        Scenario::Connections(scenario) => execute(&scenario, remote, &scenario.target, json_output).await,
        Scenario::Churn(scenario) => execute(&scenario, remote, &scenario.target, json_output).await,
        Scenario::Tick(scenario) => execute(&scenario, remote, &scenario.target, json_output).await,
    }
}

async fn execute(scenario: &impl Run, remote: &Remote, target: &Target, json_output: bool) -> Result<(), Failure> {
    let contenders = contenders(remote, target)?;
    let repeats = target.repeats as usize;
    let mut runs: Vec<Vec<repeated::Repeat>> = contenders.iter().map(|_| Vec::with_capacity(repeats)).collect();
    for repeat in 1..=repeats {
        // Rotated by one each repeat: each server runs in each place in turn.
        for position in 1..=contenders.len() {
            let index = (repeat - 1 + position - 1) % contenders.len();
            let contender = &contenders[index];
            if repeats > 1 {
                eprintln!("repeat {repeat}/{repeats}: {}", contender.name());
            }
            let measured = contender.run(scenario).await?;
            runs[index].push(repeated::Repeat { repeat, position, measured });
        }
    }
    let names = contenders.iter().map(Contender::name);
    if repeats == 1 && contenders.len() <= 2 {
        let results: Vec<(&str, Measured)> =
            names.zip(runs).filter_map(|(name, runs)| Some((name, runs.into_iter().next()?.measured))).collect();
        let report = report(scenario, &results);
        if json_output {
            println!("{report}");
        } else {
            print_table(&scenario.describe(), &results);
        }
    } else {
        let servers: Vec<repeated::Server> =
            names.zip(runs).map(|(name, runs)| repeated::Server::new(name, runs)).collect();
        if json_output {
            println!("{}", repeated::report(scenario.workload(), &servers, repeats));
        } else {
            repeated::print_table(&scenario.describe(), &servers, repeats);
        }
    }
    Ok(())
}

/// A server of the report.
enum Contender {
    /// Started here for each run and stopped after it.
    Spawned { name: &'static str, kind: Spawn, bin: PathBuf },
    /// The server at --addr (boxed: it is much larger than the other, and
    /// there is one).
    Remote(Box<Server>),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Spawned { name, .. } => name,
            Contender::Remote(server) => server.name,
        }
    }

    async fn run(&self, scenario: &impl Run) -> Result<Measured, Failure> {
        match self {
            Contender::Spawned { name, kind, bin } => on_spawned(scenario, *kind, name, bin).await,
            Contender::Remote(server) => server.run(scenario).await,
        }
    }
}

/// The servers the target names, in the report's order (and the first
/// repeat's): ours first, the baseline last.
fn contenders(remote: &Remote, target: &Target) -> Result<Vec<Contender>, Failure> {
    let game_session = || target.server_bin.clone().map_or_else(|| beside_gsctl("game-session"), Ok);
    let spawned = |name, kind, bin| Contender::Spawned { name, kind, bin };
    if target.compare_secure {
        let bin = game_session()?;
        return Ok(vec![
            spawned("secure", Spawn::GameSession { secure: true }, bin.clone()),
            spawned("plain", Spawn::GameSession { secure: false }, bin),
        ]);
    }
    if !(target.spawn || target.compare) {
        return Ok(vec![Contender::Remote(Box::new(Server::remote(remote, target)?))]);
    }
    let ours = Spawn::GameSession { secure: target.secure };
    let mut contenders = vec![spawned("game-session", ours, game_session()?)];
    if target.compare {
        if let Some(bin) = &target.before_bin {
            contenders.push(spawned("before", ours, bin.clone()));
        }
        let bin = target.baseline_bin.clone().map_or_else(|| beside_gsctl("examples/bare_relay"), Ok)?;
        contenders.push(spawned("baseline", Spawn::Baseline, bin));
    }
    Ok(contenders)
}

/// The JSON report: the workload, each server's figures, and their ratio.
fn report(scenario: &impl Run, results: &[(&str, Measured)]) -> Value {
    let mut servers = Map::new();
    for (name, measured) in results {
        let mut figures: Map<String, Value> =
            measured.metrics.iter().map(|m| (m.key.clone(), m.value.map_or(Value::Null, |v| json!(v)))).collect();
        figures.insert("notes".into(), json!(measured.notes));
        figures.extend(measured.details.clone());
        servers.insert((*name).into(), Value::Object(figures));
    }
    let mut report = json!({ "workload": scenario.workload(), "servers": servers });
    if let [(_, ours), (_, baseline)] = results {
        let ratios: Map<String, Value> = ours
            .metrics
            .iter()
            .map(|m| (m.key.clone(), ratio(m, baseline).map_or(Value::Null, |r| json!(r))))
            .collect();
        report["ratio"] = Value::Object(ratios);
    }
    report
}

/// `ours / baseline` for one figure, when both exist and the baseline's is
/// not zero.
fn ratio(ours: &Metric, baseline: &Measured) -> Option<f64> {
    let theirs = baseline.metrics.iter().find(|m| m.key == ours.key)?.value?;
    (theirs != 0.0).then_some(ours.value? / theirs)
}

fn print_table(describe: &str, results: &[(&str, Measured)]) {
    println!("{describe}");
    let Some((_, first)) = results.first() else { return };
    let width = first.metrics.iter().map(|m| m.label.len()).max().unwrap_or(0);
    let mut header = format!("{:width$}", "");
    for (name, _) in results {
        header.push_str(&format!("  {name:>14}"));
    }
    if results.len() == 2 {
        header.push_str(&format!("  {:>8}", "ratio"));
    }
    println!("{header}");
    for metric in &first.metrics {
        let mut line = format!("{:width$}", metric.label);
        for (_, measured) in results {
            let value = measured.metrics.iter().find(|m| m.key == metric.key).and_then(|m| m.value);
            let shown = value.map_or_else(|| "-".to_owned(), |v| format!("{v:.*}", metric.decimals));
            line.push_str(&format!("  {shown:>14}"));
        }
        if let [_, (_, baseline)] = results {
            let shown = ratio(metric, baseline).map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
            line.push_str(&format!("  {shown:>8}"));
        }
        println!("{line}");
    }
    for (name, measured) in results {
        for note in &measured.notes {
            println!("{name}: {note}");
        }
    }
}

/// The servers `--spawn` and the comparisons start.
#[derive(Clone, Copy)]
enum Spawn {
    /// game-session, with auth and TLS on when `secure`.
    GameSession {
        secure: bool,
    },
    Baseline,
}

/// Starts the server, runs the scenario against it, and stops it.
async fn on_spawned(scenario: &impl Run, kind: Spawn, name: &'static str, bin: &Path) -> Result<Measured, Failure> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(bin);
    command.arg("--listen").arg(&listen).kill_on_drop(true).stdout(std::process::Stdio::null());
    // Kept until the server has stopped; dropping it removes the files.
    let mut secure_files = None;
    let mut metrics = None;
    if let Spawn::GameSession { secure } = kind {
        // Its defaults, with quiet logs, a short drain at the end, and
        // its metrics endpoint on a free port (metrics on, as deployed).
        command.args(["--log", "warn", "--drain-period", "1s", "--shutdown-grace", "1s"]);
        metrics = Some(format!("127.0.0.1:{}", free_port()?));
        command.args(["--metrics-listen", metrics.as_deref().unwrap_or_default(), "--health-listen", "127.0.0.1:0"]);
        command.args(scenario.server_args());
        if secure {
            let files = secure::SecureFiles::create()?;
            command.args(files.server_args());
            secure_files = Some(files);
        }
    }
    let (addr, endpoint, credentials) = match &secure_files {
        None => {
            let addr = format!("http://{listen}");
            let endpoint = Endpoint::from_shared(addr.clone())?.tcp_nodelay(true);
            (addr, endpoint, Credentials::none())
        }
        Some(files) => {
            let addr = format!("https://{listen}");
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&files.ca_pem));
            let endpoint = Endpoint::from_shared(addr.clone())?.tcp_nodelay(true).tls_config(tls)?;
            let signer = Signer::new(&files.secret, TOKEN_TTL);
            let admin = Bearer::new(Some(&signer.admin("gsctl-bench")?))?;
            (addr, endpoint, Credentials { admin, players: Some(signer) })
        }
    };
    let mut child = command.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let server = Server { name, addr, endpoint, pid: child.id(), metrics, credentials };
    wait_until_serving(&server, &mut child).await?;
    let measured = server.run(scenario).await;
    let stopped = stop(&mut child).await.map_err(|e| format!("stopping {name}: {e}"));
    // The run's own error first; then a server that failed on the way out.
    let measured = measured?;
    stopped?;
    drop(secure_files);
    Ok(measured)
}

/// Waits until the server accepts an HTTP/2 connection (at most 30 s).
async fn wait_until_serving(server: &Server, child: &mut Child) -> Result<(), Failure> {
    let endpoint = &server.endpoint;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Exited first: then whatever answers on the port is not our server.
        if let Some(status) = child.try_wait()? {
            return Err(format!("{} exited before serving: {status}", server.name).into());
        }
        if endpoint.connect().await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{} is not serving at {} after 30 s", server.name, server.addr).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a spawned server with SIGINT (both servers drain on it), and kills
/// it if it has not exited after 30 s.
async fn stop(child: &mut Child) -> Result<(), Failure> {
    if let Some(pid) = child.id() {
        // SAFETY: kill only sends a signal to our own child process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => match status? {
            status if status.success() => Ok(()),
            status => Err(format!("it exited with {status}").into()),
        },
        Err(_) => {
            child.kill().await?;
            Err("it did not exit within 30 s of SIGINT".into())
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, Failure> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A binary in gsctl's own directory (e.g. `target/release`).
fn beside_gsctl(name: &str) -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().ok_or("gsctl has no directory")?.join(name);
    if !path.exists() {
        return Err(format!(
            "{} not found: build it (`cargo build --release --bins --examples`) or pass its path",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// Raises this process's open-files limit to its hard limit, for scenarios
/// with a connection per player; servers started here inherit it.
fn raise_open_files_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// This process's CPU time (user + system).
fn own_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Another process's CPU time (user + system), from /proc/<pid>/stat.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses), utime and stime are the 12th
    // and 13th fields, in clock ticks.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Another process's resident memory in bytes, from /proc/<pid>/status.
fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as MiB, for the table.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
