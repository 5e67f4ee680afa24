//! The server's one configuration: every setting is a flag with an env-var
//! twin (`GAME_SESSION_*`), documents its default, and is validated once at
//! start by [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Settings of the game-session server.
#[derive(Debug, Clone, Parser)]
#[command(name = "game-session", version, about)]
pub struct Config {
    /// Address serving PlayerService, and SessionService unless
    /// `--backend-listen` is set (and health and reflection). Default:
    /// `0.0.0.0:50051` with auth on; with auth off, `127.0.0.1:50051`, so that
    /// an unauthenticated server is not reachable from other machines unless
    /// this says so.
    #[arg(long, env = "GAME_SESSION_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Optional second address serving SessionService (and health and
    /// reflection) apart from players, so that the backend API can stay
    /// inside the cluster. When set, the main address serves PlayerService
    /// only. Default: unset.
    #[arg(long, env = "GAME_SESSION_BACKEND_LISTEN")]
    pub backend_listen: Option<SocketAddr>,

    /// Address serving grpc.health.v1 alone, in plain text and without
    /// credentials, for probes (the kubelet's gRPC probes speak neither TLS
    /// nor auth), or `off`.
    #[arg(long, env = "GAME_SESSION_HEALTH_LISTEN", default_value = "0.0.0.0:50053", value_parser = parse_optional_addr)]
    pub health_listen: MaybeAddr,

    /// Address of the Prometheus endpoint (`GET /metrics`), or `off`.
    /// Metric names and meanings: README, Observability.
    #[arg(long, env = "GAME_SESSION_METRICS_LISTEN", default_value = "0.0.0.0:9464", value_parser = parse_optional_addr)]
    pub metrics_listen: MaybeAddr,

    /// Log filter in `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    #[arg(long, env = "GAME_SESSION_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as human-readable `text`, or as `json` (one object per
    /// line: timestamp, level, message, the event's fields, the current
    /// span's fields such as `session.id` and `player.id` under `span`, and
    /// every span in scope under `spans`, an RPC's with `trace_id` and
    /// `span_id` when traces are exported).
    #[arg(long, env = "GAME_SESSION_LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Most sessions this server runs at once; CreateSession and
    /// join-or-create beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, env = "GAME_SESSION_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,

    /// How long GetSession still answers for a session after it ended, with
    /// its end reason and its logic's result (e.g. a match's outcome), so
    /// that a backend can record it; 0 keeps none. At most `--max-sessions`
    /// ended sessions are kept (the oldest go first).
    #[arg(long, env = "GAME_SESSION_ENDED_SESSION_RETENTION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub ended_session_retention: Duration,

    /// Sessions one caller may have running that it started by
    /// join-or-create, or 0 for no limit; past it, a join-or-create that
    /// would start another gets RESOURCE_EXHAUSTED (joins into open sessions
    /// go on). The caller is the token's `sub` with auth on, and the
    /// connection with auth off. CreateSession is held to `--max-sessions`
    /// only.
    #[arg(long, env = "GAME_SESSION_MAX_SESSIONS_PER_CALLER", default_value_t = 10)]
    pub max_sessions_per_caller: u32,

    /// Sessions a second one caller may start by join-or-create, on average,
    /// or 0 for no limit; past it, as `--max-sessions-per-caller`.
    #[arg(long, env = "GAME_SESSION_SESSION_CREATE_RATE", default_value_t = 1)]
    pub session_create_rate: u64,

    /// Sessions one caller may start at once above `--session-create-rate`.
    #[arg(long, env = "GAME_SESSION_SESSION_CREATE_BURST", default_value_t = 10)]
    pub session_create_burst: u64,

    /// Seats of a session whose creator did not choose (CreateSession with
    /// max_players 0, and sessions made by join-or-create).
    #[arg(long, env = "GAME_SESSION_DEFAULT_MAX_PLAYERS", default_value_t = 8)]
    pub default_max_players: u32,

    /// Most seats a CreateSession may ask for.
    #[arg(long, env = "GAME_SESSION_MAX_PLAYERS_LIMIT", default_value_t = 256)]
    pub max_players_limit: u32,

    /// Largest relay or backend payload, in bytes. tonic's decode limit is set
    /// from it (plus room for the envelope), so a larger frame is refused
    /// before it is buffered.
    #[arg(long, env = "GAME_SESSION_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_payload_bytes: usize,

    /// Most target player ids on one relay or SendToSession message.
    #[arg(long, env = "GAME_SESSION_MAX_TARGETS", default_value_t = 64)]
    pub max_targets: usize,

    /// Most labels on a session (and metadata entries on a player).
    #[arg(long, env = "GAME_SESSION_MAX_LABELS", default_value_t = 16)]
    pub max_labels: usize,

    /// Capacity of each player's outbound queue, in messages. Droppable
    /// messages are dropped (counted, and the player told) once the queue is
    /// half full; a non-droppable message that finds it full disconnects the
    /// player with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GAME_SESSION_OUTBOUND_QUEUE", default_value_t = 512)]
    pub outbound_queue: usize,

    /// Capacity of each player's outbound queue, in bytes of the messages
    /// it holds (payloads and texts, plus 64 bytes each): the same policy as
    /// `--outbound-queue` applies at half and at all of it. The default holds
    /// about three seconds of 64 KiB messages at 20 Hz.
    #[arg(long, env = "GAME_SESSION_OUTBOUND_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub outbound_queue_bytes: usize,

    /// The server's budget, in bytes, for the messages waiting in all its
    /// players' queues (as `game_session_queued_event_bytes` counts them).
    /// Past it, players holding more than their share of it, or behind, are
    /// removed at their next non-droppable message instead of after
    /// `--slow-player-grace`, and droppable messages are dropped for them.
    /// Default: half the container's memory limit (cgroup v2 `memory.max`),
    /// or 1 GiB without one.
    #[arg(long, env = "GAME_SESSION_QUEUED_BYTES_BUDGET")]
    pub queued_bytes_budget: Option<usize>,

    /// How long a player's queue may stay at least half full ("behind") before
    /// the player is disconnected with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GAME_SESSION_SLOW_PLAYER_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_player_grace: Duration,

    /// How long a player's seat is held after its stream drops without a
    /// leave (its connection lost, or removed for falling behind), so that
    /// it can resume; the others see it HELD meanwhile, and a held seat
    /// counts as taken. 0: seats are not held, and a drop frees the seat.
    /// CreateSession's `seat_hold_millis` overrides it per session.
    #[arg(long, env = "GAME_SESSION_SEAT_HOLD", default_value = "30s", value_parser = humantime::parse_duration)]
    pub seat_hold: Duration,

    /// Most events each session keeps for resumes (relays, backend messages
    /// and presence, each with its recipients), so that a player who
    /// resumes misses nothing. The oldest go first. 0 turns the replay
    /// buffer off (a resume then works only if the player missed nothing);
    /// CreateSession's `replay_buffer` turns it off per session. Capped at
    /// half of `--outbound-queue`: a resume queues its replay at once.
    #[arg(long, env = "GAME_SESSION_REPLAY_BUFFER_MESSAGES", default_value_t = 256)]
    pub replay_buffer_messages: usize,

    /// Most bytes of events each session's replay buffer keeps (weighed as
    /// the outbound queues weigh them). Capped at half of
    /// `--outbound-queue-bytes`. All sessions' buffers together keep at most
    /// half of `--queued-bytes-budget`, and past that budget a session
    /// empties its buffer before any player is shed.
    #[arg(long, env = "GAME_SESSION_REPLAY_BUFFER_BYTES", default_value_t = 1 << 20)]
    pub replay_buffer_bytes: usize,

    /// How long an event stays in a replay buffer.
    #[arg(long, env = "GAME_SESSION_REPLAY_BUFFER_AGE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub replay_buffer_age: Duration,

    /// A file holding the key that signs resume tokens (at least 32 bytes;
    /// one trailing newline is ignored). Every replica behind one address
    /// must share it, so that any of them can verify a token. Default:
    /// unset: a random key at start (with a warning), whose tokens no other
    /// process accepts.
    #[arg(long, env = "GAME_SESSION_RESUME_KEY_FILE")]
    pub resume_key_file: Option<PathBuf>,

    /// The resume key as a value (at least 32 bytes). Prefer
    /// `--resume-key-file`, or the env var: a flag's value shows in the
    /// process list. Default: unset.
    #[arg(long, env = "GAME_SESSION_RESUME_KEY", hide_env_values = true, conflicts_with = "resume_key_file")]
    pub resume_key: Option<String>,

    /// Messages a second each player may send on average (relays, pings and
    /// refused messages alike; a leave is not counted), or 0 for no limit.
    /// Messages over it are dropped and counted
    /// (`game_session_messages_rate_limited_total`), and the player is told
    /// with a RESOURCE_EXHAUSTED `error` at most once a second. The default
    /// is ten times a 20 Hz game's rate.
    #[arg(long, env = "GAME_SESSION_PLAYER_MESSAGE_RATE", default_value_t = 200)]
    pub player_message_rate: u64,

    /// Messages a player may send at once above `--player-message-rate`
    /// (the token bucket's size).
    #[arg(long, env = "GAME_SESSION_PLAYER_MESSAGE_BURST", default_value_t = 400)]
    pub player_message_burst: u64,

    /// Bytes a second each player may send on average (relay payloads and
    /// target ids), or 0 for no limit; as `--player-message-rate` over it.
    #[arg(long, env = "GAME_SESSION_PLAYER_BYTE_RATE", default_value_t = 1 << 20)]
    pub player_byte_rate: u64,

    /// Bytes a player may send at once above `--player-byte-rate`; at least
    /// one largest message (`--max-payload-bytes` plus its target ids).
    #[arg(long, env = "GAME_SESSION_PLAYER_BYTE_BURST", default_value_t = 2 << 20)]
    pub player_byte_burst: u64,

    /// Threads that run the ticks of server-authoritative sessions, apart
    /// from the async I/O workers, so that a heavy tick cannot stall other
    /// sessions' I/O. 0 runs each tick on its session's own task instead
    /// (no watchdog). Default: the number of CPUs.
    #[arg(long, env = "GAME_SESSION_TICK_THREADS")]
    pub tick_threads: Option<usize>,

    /// A tick that has not returned within this time ends its session with
    /// SESSION_END_REASON_INTERNAL_ERROR; its thread is counted as lost
    /// (`game_session_tick_threads_lost_total`) and replaced.
    #[arg(long, env = "GAME_SESSION_TICK_WATCHDOG", default_value = "1s", value_parser = humantime::parse_duration)]
    pub tick_watchdog: Duration,

    /// Inputs each player may have waiting for one tick; past it the
    /// player's oldest is dropped (`game_session_inputs_dropped_total`).
    #[arg(long, env = "GAME_SESSION_MAX_INPUTS_PER_TICK", default_value_t = 8)]
    pub max_inputs_per_tick: usize,

    /// A player that stays over its rate limits this long (a run of dropped
    /// messages with no quiet second) is removed with RESOURCE_EXHAUSTED;
    /// the players it sent to are untouched.
    #[arg(long, env = "GAME_SESSION_FLOOD_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub flood_grace: Duration,

    /// Capacity of each session's command inbox (joins, backend messages,
    /// EndSession). When full, the call fails at once with UNAVAILABLE so the
    /// caller can retry; player relay traffic does not pass through it.
    #[arg(long, env = "GAME_SESSION_SESSION_INBOX", default_value_t = 1024)]
    pub session_inbox: usize,

    /// A session with no players for this long ends (reason IDLE). It counts
    /// from creation too, so a session nobody joins does not live forever.
    #[arg(long, env = "GAME_SESSION_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A Play stream must send its join within this time, or it ends with
    /// DEADLINE_EXCEEDED.
    #[arg(long, env = "GAME_SESSION_JOIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub join_timeout: Duration,

    /// Events a WatchSessions stream may fall behind by before it is ended
    /// with ABORTED (the watcher then watches or lists again).
    #[arg(long, env = "GAME_SESSION_WATCH_BUFFER", default_value_t = 1024)]
    pub watch_buffer: usize,

    /// Most WatchSessions streams open at once on the server; more are
    /// refused with RESOURCE_EXHAUSTED. Each costs a pointer per listed
    /// session until its listing is read, and up to hyper's send buffer.
    #[arg(long, env = "GAME_SESSION_MAX_WATCHERS", default_value_t = 1000)]
    pub max_watchers: usize,

    /// Most WatchSessions streams open at once on one connection, so that
    /// one client cannot take every watcher slot.
    #[arg(long, env = "GAME_SESSION_MAX_WATCHERS_PER_CONNECTION", default_value_t = 16)]
    pub max_watchers_per_connection: usize,

    /// Most streams (Play streams and calls) open at once on one HTTP/2
    /// connection. It bounds what one connection can make the server hold;
    /// a client that multiplexes more players than this on one connection
    /// (a load generator: `gsctl bench connections` passes what it needs
    /// to a server it starts) must raise it.
    #[arg(long, env = "GAME_SESSION_MAX_STREAMS_PER_CONNECTION", default_value_t = 1_000)]
    pub max_streams_per_connection: u32,

    /// Most connections open at once on each gRPC address (main, backend,
    /// health, counted apart). A connection over it is closed as soon as it
    /// is accepted, and counted in `game_session_connections_refused_total`,
    /// so that a flood of connections cannot take every file descriptor.
    /// Keep the process's open-files limit above the sum.
    #[arg(long, env = "GAME_SESSION_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A connection must send its first request (a call or a Play stream)
    /// within this time of being accepted (after the TLS handshake, with
    /// TLS on), or it is closed: a client that connects and sends nothing,
    /// or only the HTTP/2 preface, holds nothing for longer. Later idleness
    /// is left to the keepalive.
    #[arg(long, env = "GAME_SESSION_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub first_request_timeout: Duration,

    /// Largest request header block (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`,
    /// decoded size), in bytes; a larger one is refused before it is
    /// buffered. A bearer token and gRPC's own headers fit many times over.
    #[arg(long, env = "GAME_SESSION_MAX_HEADER_LIST_SIZE", default_value_t = 16 * 1024)]
    pub max_header_list_size: u32,

    /// HTTP/2 rapid-reset protection (CVE-2023-44487): most streams a
    /// client may open and reset before the server has taken them up, on
    /// one connection; past it the connection is closed with GOAWAY
    /// (ENHANCE_YOUR_CALM). An honest client resets streams it has used,
    /// which do not count.
    #[arg(long, env = "GAME_SESSION_MAX_PENDING_ACCEPT_RESET_STREAMS", default_value_t = 20)]
    pub max_pending_accept_reset_streams: usize,

    /// HTTP/2 protection against clients that make the server reset streams
    /// (malformed frames and the like, "MadeYouReset"): most such resets on
    /// one connection before it is closed with GOAWAY (ENHANCE_YOUR_CALM).
    #[arg(long, env = "GAME_SESSION_MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = 1024)]
    pub max_local_error_reset_streams: usize,

    /// Interval of HTTP/2 keepalive pings on every connection.
    #[arg(long, env = "GAME_SESSION_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// A connection whose keepalive ping is not answered within this time is
    /// closed, and its players are disconnected.
    #[arg(long, env = "GAME_SESSION_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// On SIGTERM/SIGINT, how long running sessions may go on before they are
    /// ended with reason SERVER_SHUTDOWN. The server exits as soon as no
    /// session is left. Keep it shorter than the pod's grace period.
    #[arg(long, env = "GAME_SESSION_DRAIN_PERIOD", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,

    /// After the drain period, how long to flush queued messages to players
    /// before connections are closed regardless. The process exits within
    /// drain period + this of the signal, exporting the last spans included.
    #[arg(long, env = "GAME_SESSION_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Player and admin authentication (README, "Security").
    #[command(flatten)]
    pub auth: AuthConfig,

    /// TLS on the gRPC addresses (README, "Security").
    #[command(flatten)]
    pub tls: TlsConfig,
}

/// Who may call: bearer JWTs on `Play` (the player id is the token's `sub`),
/// and an admin JWT or API key on SessionService. Auth is on when a JWT key
/// source is set (`--jwt-hs256-secret*`, `--jwt-public-key-file`,
/// `--jwks-file` or `--jwks-url`), and off otherwise.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthConfig {
    /// The HS256 shared secret, as a value (at least 32 bytes). Prefer
    /// `--jwt-hs256-secret-file`, or the env var: a flag's value shows in
    /// the process list. Default: unset.
    #[arg(long, env = "GAME_SESSION_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,

    /// A file holding the HS256 shared secret (at least 32 bytes; one
    /// trailing newline is ignored). Default: unset.
    #[arg(long, env = "GAME_SESSION_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// PEM files of RSA or EC (P-256, P-384) public keys that verify RS*/PS*
    /// and ES* tokens; repeat the flag, or separate with commas in the env
    /// var. Read at start. Default: none.
    #[arg(long, env = "GAME_SESSION_JWT_PUBLIC_KEY_FILES", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PathBuf>,

    /// A JWKS document (RFC 7517) on disk; read at start and again every
    /// `--jwks-refresh-interval`. Default: unset.
    #[arg(long, env = "GAME_SESSION_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// An `https://` URL serving a JWKS document; fetched at start and every
    /// `--jwks-refresh-interval`, and again (at most once per
    /// `--jwks-refetch-min-interval`) when a token names a key id it does not
    /// hold. Default: unset.
    #[arg(long, env = "GAME_SESSION_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Extra CA certificates (PEM) trusted for `--jwks-url`, besides the
    /// system's. Default: unset.
    #[arg(long, env = "GAME_SESSION_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,

    /// How often the JWKS (URL or file) is read again.
    #[arg(long, env = "GAME_SESSION_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwks_refresh_interval: Duration,

    /// The least time between two fetches of `--jwks-url` caused by tokens
    /// naming unknown key ids, so that made-up key ids cannot flood the
    /// identity provider.
    #[arg(long, env = "GAME_SESSION_JWKS_REFETCH_MIN_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwks_refetch_min_interval: Duration,

    /// The `iss` every token must carry. Default: unset (not checked).
    #[arg(long, env = "GAME_SESSION_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// An `aud` every token must carry. Default: unset (not checked).
    #[arg(long, env = "GAME_SESSION_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, env = "GAME_SESSION_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// The claim that grants admin rights (SessionService): a string of
    /// space-separated scopes (as OAuth's `scope`) or an array of strings
    /// (as `roles`).
    #[arg(long, env = "GAME_SESSION_ADMIN_CLAIM", default_value = "scope")]
    pub admin_claim: String,

    /// The value of `--admin-claim` that grants admin rights.
    #[arg(long, env = "GAME_SESSION_ADMIN_CLAIM_VALUE", default_value = "game-session:admin")]
    pub admin_claim_value: String,

    /// A file of admin API keys, one per line (at least 16 bytes each; blank
    /// lines ignored), accepted as `authorization: Bearer <key>` on
    /// SessionService. Read at start. Default: unset.
    #[arg(long, env = "GAME_SESSION_ADMIN_API_KEY_FILE")]
    pub admin_api_key_file: Option<PathBuf>,
}

impl AuthConfig {
    /// True when a JWT key source is configured, which turns auth on.
    pub fn enabled(&self) -> bool {
        self.jwt_hs256_secret.is_some()
            || self.jwt_hs256_secret_file.is_some()
            || !self.jwt_public_key_file.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }
}

/// TLS (rustls) on the gRPC addresses; the health address stays plain text.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsConfig {
    /// PEM certificate chain served on `--listen` and `--backend-listen`;
    /// needs `--tls-key-file`. Default: unset (plain text).
    #[arg(long, env = "GAME_SESSION_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert-file`.
    #[arg(long, env = "GAME_SESSION_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// CA certificates (PEM) that backend clients' certificates must chain
    /// to: mutual TLS on `--backend-listen`, which it needs. Default: unset.
    #[arg(long, env = "GAME_SESSION_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// How often the certificate, key and client CA files are checked for
    /// changes; a change is served to new connections without a restart.
    #[arg(long, env = "GAME_SESSION_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
}

impl TlsConfig {
    /// True when the gRPC addresses serve TLS.
    pub fn enabled(&self) -> bool {
        self.tls_cert_file.is_some()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeAddr(pub Option<SocketAddr>);

fn parse_optional_addr(text: &str) -> Result<MaybeAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(MaybeAddr(None));
    }
    text.parse()
        .map(|addr| MaybeAddr(Some(addr)))
        .map_err(|e| format!("{text:?}: {e}; give an address like 0.0.0.0:9464, or off"))
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["game-session"])
    }
}

/// True when binding both addresses would collide: the same fixed port on
/// the same address, or on any address when one is a wildcard.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The largest id (session or player) and the characters it may use.
pub const MAX_ID_LEN: usize = 64;

/// `--tick-threads`' default: the number of CPUs the process may use.
pub fn default_tick_threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The default of `--queued-bytes-budget`: half of cgroup v2's
/// `memory.max`, or 1 GiB when there is no limit.
/// The longest seat hold, for the flag and per session.
pub const MAX_SEAT_HOLD: Duration = Duration::from_secs(3600);

pub fn default_queued_bytes_budget() -> usize {
    std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|max| max.trim().parse::<usize>().ok())
        .map_or(1 << 30, |max| max / 2)
}

impl Config {
    /// A config for tests: every default, listening on `127.0.0.1:0`, and
    /// untouched by the environment.
    pub fn for_tests() -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        // Every flag's env var unset, so that a GAME_SESSION_* variable in
        // the test's environment changes nothing.
        let command = Config::command().mut_args(|arg| arg.env(None));
        let defaults = command
            .try_get_matches_from(["game-session"])
            .and_then(|matches| Config::from_arg_matches(&matches))
            .unwrap_or_else(|e| panic!("the defaults parse: {e}"));
        Config {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            health_listen: MaybeAddr(None),
            metrics_listen: MaybeAddr(None),
            ..defaults
        }
    }

    /// The address to serve players on: `--listen`, or port 50051 on every
    /// interface with auth on and on loopback with auth off.
    pub fn listen_addr(&self) -> SocketAddr {
        let host = if self.auth.enabled() { [0, 0, 0, 0] } else { [127, 0, 0, 1] };
        self.listen.unwrap_or(SocketAddr::from((host, 50051)))
    }

    /// Checks the settings against each other; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max-sessions", self.max_sessions),
            ("default-max-players", self.default_max_players as usize),
            ("max-players-limit", self.max_players_limit as usize),
            ("max-payload-bytes", self.max_payload_bytes),
            ("max-targets", self.max_targets),
            ("session-inbox", self.session_inbox),
            ("watch-buffer", self.watch_buffer),
            ("max-watchers", self.max_watchers),
            ("max-inputs-per-tick", self.max_inputs_per_tick),
            ("max-watchers-per-connection", self.max_watchers_per_connection),
            ("max-streams-per-connection", self.max_streams_per_connection as usize),
            ("max-connections", self.max_connections),
            ("max-pending-accept-reset-streams", self.max_pending_accept_reset_streams),
            ("max-local-error-reset-streams", self.max_local_error_reset_streams),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        if self.outbound_queue < 2 {
            return Err("--outbound-queue must be at least 2".into());
        }
        if self.outbound_queue_bytes < 2 * self.max_payload_bytes {
            return Err(format!(
                "--outbound-queue-bytes ({}) must hold at least two messages of --max-payload-bytes ({})",
                self.outbound_queue_bytes, self.max_payload_bytes
            ));
        }
        if self.seat_hold > MAX_SEAT_HOLD {
            return Err("--seat-hold must be at most 1h".into());
        }
        if self.default_max_players > self.max_players_limit {
            return Err(format!(
                "--default-max-players ({}) exceeds --max-players-limit ({})",
                self.default_max_players, self.max_players_limit
            ));
        }
        if self.max_payload_bytes > 16 * 1024 * 1024 {
            return Err("--max-payload-bytes must be at most 16 MiB".into());
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return Err("--keepalive-interval and --keepalive-timeout must be positive".into());
        }
        if self.join_timeout.is_zero() {
            return Err("--join-timeout must be positive".into());
        }
        if self.first_request_timeout.is_zero() {
            return Err("--first-request-timeout must be positive".into());
        }
        if self.max_header_list_size < 1024 {
            return Err("--max-header-list-size must be at least 1024 bytes".into());
        }
        if self.idle_timeout.is_zero() {
            return Err("--idle-timeout must be positive".into());
        }
        if self.session_create_rate > 0 && self.session_create_burst == 0 {
            return Err("--session-create-burst must be at least 1".into());
        }
        if self.player_message_rate > 0 && self.player_message_burst == 0 {
            return Err("--player-message-burst must be at least 1".into());
        }
        let largest = (self.max_payload_bytes + self.max_targets * MAX_ID_LEN) as u64;
        if self.player_byte_rate > 0 && self.player_byte_burst < largest {
            return Err(format!(
                "--player-byte-burst ({}) must hold the largest message ({largest} bytes: --max-payload-bytes and \
                 --max-targets ids)",
                self.player_byte_burst
            ));
        }
        if self.tick_watchdog.is_zero() {
            return Err("--tick-watchdog must be positive".into());
        }
        if self.flood_grace.is_zero() {
            return Err("--flood-grace must be positive".into());
        }
        if self.slow_player_grace.is_zero() {
            return Err("--slow-player-grace must be positive".into());
        }
        let listen = self.listen_addr();
        if self.backend_listen.is_some_and(|b| clash(b, listen)) {
            return Err("--backend-listen must differ from --listen".into());
        }
        let grpc = [Some(listen), self.backend_listen];
        if let Some(metrics) = self.metrics_listen.0.filter(|m| grpc.iter().flatten().any(|g| clash(*m, *g))) {
            return Err(format!("--metrics-listen ({metrics}) is also a gRPC address; give it a port of its own"));
        }
        let taken = [Some(listen), self.backend_listen, self.metrics_listen.0];
        if let Some(health) = self.health_listen.0.filter(|h| taken.iter().flatten().any(|t| clash(*h, *t))) {
            return Err(format!("--health-listen ({health}) is also another address; give it a port of its own"));
        }
        if self.auth.jwt_hs256_secret.is_some() && self.auth.jwt_hs256_secret_file.is_some() {
            return Err("give the HS256 secret once: --jwt-hs256-secret or --jwt-hs256-secret-file".into());
        }
        if self.auth.admin_api_key_file.is_some() && !self.auth.enabled() {
            return Err("--admin-api-key-file needs auth on: set a JWT key source for players too".into());
        }
        if self.auth.jwks_url.as_deref().is_some_and(|url| !url.starts_with("https://")) {
            return Err("--jwks-url must be an https:// URL".into());
        }
        if self.auth.jwks_ca_file.is_some() && self.auth.jwks_url.is_none() {
            return Err("--jwks-ca-file needs --jwks-url".into());
        }
        if self.auth.admin_claim.is_empty() || self.auth.admin_claim_value.is_empty() {
            return Err("--admin-claim and --admin-claim-value must not be empty".into());
        }
        if self.auth.jwks_refresh_interval.is_zero() || self.tls.tls_reload_interval.is_zero() {
            return Err("--jwks-refresh-interval and --tls-reload-interval must be positive".into());
        }
        if self.tls.tls_cert_file.is_some() != self.tls.tls_key_file.is_some() {
            return Err("--tls-cert-file and --tls-key-file go together".into());
        }
        if self.tls.tls_client_ca_file.is_some() && !self.tls.enabled() {
            return Err("--tls-client-ca-file needs --tls-cert-file and --tls-key-file".into());
        }
        if self.tls.tls_client_ca_file.is_some() && self.backend_listen.is_none() {
            return Err("--tls-client-ca-file verifies backend clients: it needs --backend-listen".into());
        }
        Ok(())
    }

    /// tonic's decode limit for a client message: the payload plus room for
    /// the envelope (targets, ids, flags).
    pub fn max_decoding_message_size(&self) -> usize {
        self.max_payload_bytes + self.max_targets * (MAX_ID_LEN + 4) + 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a default that moves the server off the documented port, or
    /// a default config that fails its own validation.
    #[test]
    fn defaults_serve_on_50051_and_validate() {
        let config = Config::try_parse_from(["game-session"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen, None);
        assert_eq!(config.listen_addr(), SocketAddr::from(([127, 0, 0, 1], 50051)));
        assert_eq!(config.health_listen, MaybeAddr(Some(SocketAddr::from(([0, 0, 0, 0], 50053)))));
        let with_auth = Config::try_parse_from(["game-session", "--jwt-hs256-secret-file", "/run/secret"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(with_auth.auth.enabled());
        assert_eq!(with_auth.listen_addr(), SocketAddr::from(([0, 0, 0, 0], 50051)));
        assert_eq!(config.backend_listen, None);
        assert_eq!(config.metrics_listen, MaybeAddr(Some(SocketAddr::from(([0, 0, 0, 0], 9464)))));
        assert_eq!(config.validate(), Ok(()));
        let off = Config::try_parse_from(["game-session", "--metrics-listen", "off"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(off.metrics_listen, MaybeAddr(None));
        assert!(Config::try_parse_from(["game-session", "--metrics-listen", "9464"]).is_err());
        let clash = Config::try_parse_from(["game-session", "--metrics-listen", "0.0.0.0:50051"])
            .unwrap_or_else(|e| panic!("{e}"))
            .validate();
        assert_eq!(
            clash,
            Err("--metrics-listen (0.0.0.0:50051) is also a gRPC address; give it a port of its own".into())
        );
        let json = Config::try_parse_from(["game-session", "--log-format", "JSON"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json.log_format, LogFormat::Json);
    }

    /// Catches a connection limit whose default drifts from the one README
    /// and the chart document (or is lifted altogether).
    #[test]
    fn connection_limits_have_their_documented_defaults() {
        let config = Config::default();
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(config.first_request_timeout, Duration::from_secs(10));
        assert_eq!(config.max_streams_per_connection, 1_000);
        assert_eq!(config.max_header_list_size, 16 * 1024);
        assert_eq!(config.max_pending_accept_reset_streams, 20);
        assert_eq!(config.max_local_error_reset_streams, 1024);
    }

    /// Catches a player rate limit whose default drifts from the one README
    /// and the chart document, or comes near what a real game sends (the
    /// benchmarks' 100 Hz of 64 B).
    #[test]
    fn player_limits_have_their_documented_defaults() {
        let config = Config::default();
        assert_eq!((config.player_message_rate, config.player_message_burst), (200, 400));
        assert_eq!((config.player_byte_rate, config.player_byte_burst), (1 << 20, 2 << 20));
        assert_eq!(config.flood_grace, Duration::from_secs(5));
        assert!(config.player_message_rate >= 2 * 100 && config.player_byte_rate >= 100 * 100 * 64);
    }

    /// Catches settings that contradict each other being accepted.
    #[test]
    fn validation_rejects_contradictions() {
        let bad = |args: &[&str]| {
            let mut argv = vec!["game-session"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")).validate()
        };
        assert_eq!(
            bad(&["--default-max-players", "300"]),
            Err("--default-max-players (300) exceeds --max-players-limit (256)".into())
        );
        assert_eq!(bad(&["--outbound-queue", "1"]), Err("--outbound-queue must be at least 2".into()));
        assert_eq!(bad(&["--max-sessions", "0"]), Err("--max-sessions must be at least 1".into()));
        assert_eq!(bad(&["--idle-timeout", "0s"]), Err("--idle-timeout must be positive".into()));
        assert_eq!(bad(&["--flood-grace", "0s"]), Err("--flood-grace must be positive".into()));
        assert_eq!(bad(&["--player-message-burst", "0"]), Err("--player-message-burst must be at least 1".into()));
        assert!(bad(&["--player-byte-burst", "1000"]).is_err_and(|e| e.contains("must hold the largest message")));
        assert_eq!(bad(&["--player-message-rate", "0", "--player-message-burst", "0"]), Ok(()));
        assert_eq!(bad(&["--max-connections", "0"]), Err("--max-connections must be at least 1".into()));
        assert_eq!(bad(&["--first-request-timeout", "0s"]), Err("--first-request-timeout must be positive".into()));
        assert_eq!(
            bad(&["--max-header-list-size", "100"]),
            Err("--max-header-list-size must be at least 1024 bytes".into())
        );
        assert!(bad(&["--listen", "127.0.0.1:7000", "--backend-listen", "127.0.0.1:7000"]).is_err());
        assert!(Config::try_parse_from(["game-session", "--drain-period", "soon"]).is_err());
        assert_eq!(
            bad(&["--admin-api-key-file", "/keys"]),
            Err("--admin-api-key-file needs auth on: set a JWT key source for players too".into())
        );
        assert_eq!(
            bad(&["--jwks-url", "http://idp.example/jwks.json"]),
            Err("--jwks-url must be an https:// URL".into())
        );
        let mut half_tls = Config::for_tests();
        half_tls.tls.tls_cert_file = Some("/tls.crt".into());
        assert_eq!(half_tls.validate(), Err("--tls-cert-file and --tls-key-file go together".into()));
        assert_eq!(
            bad(&["--tls-cert-file", "/c", "--tls-key-file", "/k", "--tls-client-ca-file", "/ca"]),
            Err("--tls-client-ca-file verifies backend clients: it needs --backend-listen".into())
        );
        assert_eq!(
            bad(&["--health-listen", "0.0.0.0:50051"]),
            Err("--health-listen (0.0.0.0:50051) is also another address; give it a port of its own".into())
        );
    }
}
