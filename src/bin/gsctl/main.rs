//! gsctl: a command-line client for game-session.
//!
//! Backend calls (`create`, `get`, `list`, `end`, `send`, `watch`), a health
//! check for probes and scripts (`health`), and an interactive player
//! (`play`). Output is a readable table by default, and JSON (the canonical
//! proto3 mapping, one object per line for streams) with `--json`.
//!
//! # Layout
//!
//! - here: the flags, the commands, and how the server is reached
//!   ([`Remote`]: the address, TLS and the bearer token);
//! - `explain`: a failure as one line that names its cause;
//! - `render`: tables and JSON;
//! - `token`: development HS256 tokens;
//! - `bench`: the load scenarios.

mod bench;
mod explain;
mod play;
mod render;
mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use game_session::pb;
use game_session::pb::session_service_client::SessionServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// gsctl, the command-line client of game-session.
///
/// Backend calls (create, get, list, end, send, watch), a player in the
/// terminal (play), a health check (health), load scenarios (bench) and
/// development tokens (token). A server with auth on wants --token; one with
/// TLS wants an https:// address, or --ca-file, --tls or --cert-file.
#[derive(Debug, Parser)]
#[command(name = "gsctl", version)]
struct Cli {
    /// The server's address: `host:port` as grpcurl takes it, in plain text
    /// unless a TLS flag is given (--tls, --ca-file, --cert-file or
    /// --tls-server-name), or a URL: `http://host:port` (plain text) or
    /// `https://host:port` (TLS).
    #[arg(long, env = "GSCTL_ADDR", default_value = "127.0.0.1:50051", global = true)]
    addr: String,

    /// Timeout of connecting, and of each unary call.
    #[arg(long, env = "GSCTL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,

    /// Print JSON (one object per line for streams) instead of tables.
    #[arg(long, env = "GSCTL_JSON", global = true)]
    json: bool,

    /// A bearer token (JWT or admin API key) sent as `authorization` on every
    /// call; `gsctl token` mints one for development.
    #[arg(long, env = "GSCTL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// Use TLS, trusting the system's CA certificates (and --ca-file's), for
    /// a `host:port` address; an `https://` address needs no flag.
    #[arg(long, env = "GSCTL_TLS", global = true)]
    tls: bool,

    /// CA certificates (PEM) to trust besides the system's; implies TLS.
    #[arg(long, env = "GSCTL_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs `--key-file`; implies
    /// TLS.
    #[arg(long, env = "GSCTL_CERT_FILE", global = true, requires = "key_file")]
    cert_file: Option<PathBuf>,

    /// Private key (PEM) of `--cert-file`.
    #[arg(long, env = "GSCTL_KEY_FILE", global = true, requires = "cert_file")]
    key_file: Option<PathBuf>,

    /// The name to verify the server's certificate against, when it differs
    /// from the address's host; implies TLS.
    #[arg(long, env = "GSCTL_TLS_SERVER_NAME", global = true)]
    tls_server_name: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a session (SessionService.CreateSession).
    Create {
        /// The session's mode.
        #[arg(long, default_value = "relay")]
        mode: String,
        /// Seats; 0 takes the server's default.
        #[arg(long, default_value_t = 0)]
        max_players: u32,
        /// A label, as key=value; repeat for more.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Let join-or-create place players in it.
        #[arg(long)]
        open: bool,
        /// Makes retries return the first call's session.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// A file whose bytes are the session's opaque config.
        #[arg(long)]
        config_file: Option<PathBuf>,
        /// How long a dropped player's seat is held for a resume (e.g. 30s;
        /// 0s: not held). Default: the server's --seat-hold.
        #[arg(long, value_parser = humantime::parse_duration)]
        seat_hold: Option<Duration>,
        /// Keep no replay buffer: a resume then works only if the player
        /// missed nothing.
        #[arg(long)]
        no_replay: bool,
    },
    /// Show one session and its players (SessionService.GetSession).
    Get {
        /// The session's id.
        session_id: String,
    },
    /// List sessions, every page (SessionService.ListSessions).
    List(Filter),
    /// End a session; its players receive the message (SessionService.EndSession).
    End {
        /// The session's id.
        session_id: String,
        /// What the players are told.
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Remove (kick) a player; it is told the reason, the others see it removed (SessionService.RemovePlayer).
    Kick {
        /// The session's id.
        session_id: String,
        /// The player to remove.
        player_id: String,
        /// Why, for the removed player and the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lock a session to new joins; its players stay (SessionService.LockSession).
    Lock {
        /// The session's id.
        session_id: String,
    },
    /// Unlock a session locked to new joins (SessionService.LockSession).
    Unlock {
        /// The session's id.
        session_id: String,
    },
    /// Push a payload into a session (SessionService.SendToSession).
    Send {
        /// The session's id.
        session_id: String,
        /// The payload, as text.
        payload: String,
        /// A player to send to; repeat for more. None: every player.
        #[arg(long = "to")]
        players: Vec<String>,
    },
    /// Follow sessions live: the current ones, then every change (SessionService.WatchSessions).
    Watch(Filter),
    /// Load scenarios (relay, connections, churn) and what they cost the server.
    Bench(bench::Bench),
    /// Print a development HS256 token for `--token` (see the README, Security).
    Token(token::Token),
    /// Check grpc.health.v1; exits 0 only when SERVING.
    Health {
        /// The health service name: "" for overall readiness, "liveness", or a gRPC service.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Join a session and relay the lines typed on stdin; prints what arrives.
    ///
    /// Lines starting with `/` are commands: `/ping`, `/leave`, and
    /// `/to ID[,ID...] TEXT` to relay to some players only. End of input
    /// leaves the session.
    ///
    /// When the connection drops (or the server sheds it for reading too
    /// slowly), it says so on stderr and resumes its seat on a new
    /// connection, missing no message; it retries for up to 30 s.
    ///
    /// It exits when the session ends (0), when the server ends the stream
    /// (0 if with OK), or on an error (1).
    Play {
        #[command(flatten)]
        target: PlayTarget,
        /// The player's id; without it, the server uses the token's `sub`
        /// (auth on) or assigns one (auth off).
        #[arg(long, default_value = "")]
        player_id: String,
        /// The name shown to other players.
        #[arg(long, default_value = "")]
        name: String,
    },
}

/// Where `play` joins: exactly one of `--session` and `--mode`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct PlayTarget {
    /// Join this session.
    #[arg(long)]
    session: Option<String>,
    /// Join-or-create a session of this mode.
    #[arg(long)]
    mode: Option<String>,
}

/// Which sessions `list` and `watch` show.
#[derive(Debug, Args)]
struct Filter {
    /// Only this mode.
    #[arg(long)]
    mode: Option<String>,
    /// Only sessions with this label (key=value); repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Only sessions with a free seat a join may take (not full, not locked).
    #[arg(long)]
    open_seats: bool,
    /// Only sessions locked to new joins.
    #[arg(long, conflicts_with = "unlocked")]
    locked: bool,
    /// Only sessions not locked.
    #[arg(long)]
    unlocked: bool,
}

impl Filter {
    fn to_pb(&self) -> pb::SessionFilter {
        pb::SessionFilter {
            mode: self.mode.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect(),
            has_open_seats: self.open_seats,
            locked: match (self.locked, self.unlocked) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        }
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{text:?} is not key=value"))
}

/// What went wrong, for the exit message.
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// One thread serves a command; a bench gets a multi-threaded runtime so
/// that the load client is not the limit (`--client-threads`).
fn main() -> ExitCode {
    game_session::tls::install_default_provider();
    let cli = Cli::parse();
    let runtime = match &cli.command {
        Command::Bench(bench) => bench.runtime(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run_cli(cli)),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run_cli(cli: Cli) -> ExitCode {
    // A failure names the address it could not reach; bench talks to the
    // servers it starts as well, so its failures name their own.
    let uri = match &cli.command {
        Command::Bench(_) | Command::Token(_) => None,
        _ => Remote::uri(&cli).ok(),
    };
    let context = uri.as_deref().map_or(explain::Context::Bench, explain::Context::Remote);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // The server's status message may carry what a client chose.
            eprintln!("error: {}", render::printable(&explain::explain(err.as_ref(), context)));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Token(args) = &cli.command {
        println!("{}", token::mint(args)?);
        return Ok(ExitCode::SUCCESS);
    }
    let remote = Remote::from_cli(&cli)?;
    if let Command::Bench(bench) = cli.command {
        // It opens its own connections, possibly to servers it starts.
        return bench::run(&remote, bench, cli.json).await.map(|()| ExitCode::SUCCESS);
    }
    let channel = remote.endpoint.connect().await?;
    let out = render::Output { json: cli.json };
    let mut sessions = SessionServiceClient::with_interceptor(channel.clone(), remote.bearer.clone());
    match cli.command {
        Command::Create { mode, max_players, labels, open, idempotency_key, config_file, seat_hold, no_replay } => {
            let config = match config_file {
                Some(path) => std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
                None => Vec::new(),
            };
            let request = pb::CreateSessionRequest {
                mode,
                max_players,
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
                config: config.into(),
                open_to_join_or_create: open,
                idempotency_key: idempotency_key.unwrap_or_default(),
                seat_hold_millis: seat_hold.map(|hold| u32::try_from(hold.as_millis()).unwrap_or(u32::MAX)),
                replay_buffer: no_replay.then_some(false),
            };
            let response = sessions.create_session(request).await?.into_inner();
            out.created(&response)?;
        }
        Command::Get { session_id } => {
            let response = sessions.get_session(pb::GetSessionRequest { session_id }).await?.into_inner();
            out.session(&response.session.unwrap_or_default())?;
        }
        Command::List(filter) => {
            out.sessions(&list_all(&mut sessions, filter.to_pb()).await?)?;
        }
        Command::End { session_id, message } => {
            let response = sessions.end_session(pb::EndSessionRequest { session_id, message }).await?.into_inner();
            out.sequence("ended", &response, response.sequence)?;
        }
        Command::Kick { session_id, player_id, reason } => {
            let request = pb::RemovePlayerRequest { session_id, player_id: player_id.clone(), reason };
            let response = sessions.remove_player(request).await?.into_inner();
            out.done(&format!("removed {player_id}"), &response)?;
        }
        Command::Lock { session_id } => {
            let response = sessions.lock_session(pb::LockSessionRequest { session_id, locked: true }).await?;
            out.session(&response.into_inner().session.unwrap_or_default())?;
        }
        Command::Unlock { session_id } => {
            let response = sessions.lock_session(pb::LockSessionRequest { session_id, locked: false }).await?;
            out.session(&response.into_inner().session.unwrap_or_default())?;
        }
        Command::Send { session_id, payload, players } => {
            let request =
                pb::SendToSessionRequest { session_id, payload: payload.into_bytes().into(), player_ids: players };
            let response = sessions.send_to_session(request).await?.into_inner();
            out.sequence("sent", &response, response.sequence)?;
        }
        Command::Watch(filter) => {
            let mut stream = sessions.watch_sessions(pb::WatchSessionsRequest { filter: Some(filter.to_pb()) }).await?;
            out.watch_header();
            while let Some(message) = stream.get_mut().message().await? {
                out.watch(&message)?;
            }
        }
        Command::Bench(_) | Command::Token(_) => unreachable!("handled above"),
        Command::Health { service } => {
            let response =
                HealthClient::new(channel).check(tonic_health::pb::HealthCheckRequest { service }).await?.into_inner();
            let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
            println!("{}", status.as_str_name());
            return Ok(if status == ServingStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Play { target, player_id, name } => {
            let target = match (target.session, target.mode) {
                (Some(id), _) => pb::join::Target::SessionId(id),
                (None, Some(mode)) => pb::join::Target::Mode(mode),
                // clap's group requires one of them.
                (None, None) => return Err("give --session or --mode".into()),
            };
            let join = pb::Join { target: Some(target), player_id, display_name: name, ..pb::Join::default() };
            return play::play(remote.endpoint, remote.bearer, join, out).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How the server at `--addr` is reached, as the global flags say.
pub struct Remote {
    /// `--addr` as a URL: `http://` (plain text) or `https://` (TLS).
    pub uri: String,
    /// The TLS settings of an `https://` address.
    pub tls: Option<ClientTlsConfig>,
    /// The URL with the TLS settings and `--timeout`.
    endpoint: Endpoint,
    /// `--token`, for every call.
    pub bearer: Bearer,
}

impl Remote {
    /// `--addr` as a URL. `host:port` is plain text (`http://`) unless a TLS
    /// flag is given, as grpcurl's `-plaintext` is the exception there.
    fn uri(cli: &Cli) -> Result<String, Failure> {
        let tls_flag = cli.tls || cli.ca_file.is_some() || cli.cert_file.is_some() || cli.tls_server_name.is_some();
        match cli.addr.split_once("://") {
            None => Ok(format!("{}://{}", if tls_flag { "https" } else { "http" }, cli.addr)),
            Some(("https", _)) => Ok(cli.addr.clone()),
            Some(("http", _)) if tls_flag => Err(format!(
                "--addr {}: an http:// address is plain text, but a TLS flag is given (--tls, --ca-file, \
                 --cert-file or --tls-server-name); use https:// or host:port",
                cli.addr
            )
            .into()),
            Some(("http", _)) => Ok(cli.addr.clone()),
            Some((scheme, _)) => {
                Err(format!("--addr {}: {scheme}:// is neither http:// nor https://; or give host:port", cli.addr)
                    .into())
            }
        }
    }

    fn from_cli(cli: &Cli) -> Result<Self, Failure> {
        let uri = Self::uri(cli)?;
        let endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| format!("--addr {}: {e}", cli.addr))?;
        let mut endpoint = endpoint.connect_timeout(cli.timeout).timeout(cli.timeout);
        let tls = if uri.starts_with("https://") { Some(tls_config(cli)?) } else { None };
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(Remote { uri, tls, endpoint, bearer: Bearer::new(cli.token.as_deref())? })
    }
}

/// A channel whose calls carry the bearer token.
type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: Option<&str>) -> Result<Self, Failure> {
        let value = token
            .map(|token| format!("Bearer {}", token.trim()).parse())
            .transpose()
            .map_err(|_| "--token: not a valid header value (printable ASCII only)")?;
        Ok(Bearer(value))
    }

    /// True when there is a token.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Every session matching `filter`, over all pages.
async fn list_all(
    sessions: &mut SessionServiceClient<Authed>,
    filter: pb::SessionFilter,
) -> Result<Vec<pb::SessionInfo>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListSessionsRequest { filter: Some(filter.clone()), page_size: 1000, page_token };
        let page = sessions.list_sessions(request).await?.into_inner();
        all.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// TLS with the system's roots (when it has any), `--ca-file`, and
/// `--cert-file` for mutual TLS.
fn tls_config(cli: &Cli) -> Result<ClientTlsConfig, Failure> {
    let read = |flag: &str, path: &PathBuf| std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()));
    let mut config = ClientTlsConfig::new();
    // tonic refuses to connect when asked for the system's roots and there
    // are none (a distroless image), even with --ca-file.
    if !rustls_native_certs::load_native_certs().certs.is_empty() {
        config = config.with_native_roots();
    }
    if let Some(path) = &cli.ca_file {
        config = config.ca_certificate(Certificate::from_pem(read("--ca-file", path)?));
    }
    if let (Some(cert), Some(key)) = (&cli.cert_file, &cli.key_file) {
        config = config.identity(Identity::from_pem(read("--cert-file", cert)?, read("--key-file", key)?));
    }
    if let Some(name) = &cli.tls_server_name {
        config = config.domain_name(name);
    }
    Ok(config)
}
