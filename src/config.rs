//! The server's one configuration: every setting is a flag with an env-var
//! twin (`GAME_SESSION_*`), documents its default, and is validated once at
//! start by [`Config::validate`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Settings of the game-session server.
#[derive(Debug, Clone, Parser)]
#[command(name = "game-session", version, about)]
pub struct Config {
    /// Address serving both PlayerService and SessionService (and health and
    /// reflection).
    #[arg(long, env = "GAME_SESSION_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Optional second address serving SessionService (and health and
    /// reflection) apart from players, so that the backend API can stay
    /// inside the cluster. When set, the main address serves PlayerService
    /// only. Default: unset.
    #[arg(long, env = "GAME_SESSION_BACKEND_LISTEN")]
    pub backend_listen: Option<SocketAddr>,

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

    /// How long a player's queue may stay at least half full ("behind") before
    /// the player is disconnected with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GAME_SESSION_SLOW_PLAYER_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_player_grace: Duration,

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

    /// Most streams (Play streams and calls) open at once on one HTTP/2
    /// connection; a client that multiplexes many players on one connection
    /// needs this many.
    #[arg(long, env = "GAME_SESSION_MAX_STREAMS_PER_CONNECTION", default_value_t = 10_000)]
    pub max_streams_per_connection: u32,

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

/// The largest id (session or player) and the characters it may use.
pub const MAX_ID_LEN: usize = 64;

impl Config {
    /// A config for tests: every default, listening on `127.0.0.1:0`, and
    /// untouched by the environment.
    pub fn for_tests() -> Self {
        Config { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() }
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
            ("max-streams-per-connection", self.max_streams_per_connection as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        if self.outbound_queue < 2 {
            return Err("--outbound-queue must be at least 2".into());
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
        if self.idle_timeout.is_zero() {
            return Err("--idle-timeout must be positive".into());
        }
        if self.slow_player_grace.is_zero() {
            return Err("--slow-player-grace must be positive".into());
        }
        if self.backend_listen.is_some_and(|b| b == self.listen && b.port() != 0) {
            return Err("--backend-listen must differ from --listen".into());
        }
        let grpc = [Some(self.listen), self.backend_listen];
        if let Some(metrics) = self.metrics_listen.0.filter(|m| m.port() != 0 && grpc.contains(&Some(*m))) {
            return Err(format!("--metrics-listen ({metrics}) is also a gRPC address; give it a port of its own"));
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
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 50051)));
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
        assert!(bad(&["--listen", "127.0.0.1:7000", "--backend-listen", "127.0.0.1:7000"]).is_err());
        assert!(Config::try_parse_from(["game-session", "--drain-period", "soon"]).is_err());
    }
}
