//! game-session: a game session microservice.
//!
//! Game clients open one bidirectional `Play` stream each; backend services
//! create, list, watch, message and end sessions over unary gRPC. Each
//! session is one task (an actor) that alone owns its players and its
//! sequence of messages.
//!
//! # Layout
//!
//! - [`config`]: the one [`Config`] (flags and `GAME_SESSION_*` env vars),
//!   each setting with its default, validated once.
//! - [`run`] (here): serves the APIs on the given listeners until the
//!   shutdown future resolves, then drains and exits. The binary and the tests
//!   share it.
//! - [`api`]: the gRPC edge. Decodes and validates requests, calls the session
//!   layer through its [`session::Directory`], encodes replies. `api::codec`
//!   is the Play stream's codec (pre-encoded responses, small buffers);
//!   `api::status` maps the typed errors to gRPC status codes.
//! - [`session`]: finding sessions ([`session::Directory`], implemented on
//!   one node by [`session::Registry`]), running them (one actor per session
//!   with a [`session::Room`] for the plumbing), and their rules
//!   ([`session::SessionLogic`], made by a [`session::Mode`]). Its module
//!   docs list one file per job.
//! - [`auth`]: who is calling: player tokens on Play (the player id is the
//!   token's `sub`), admin tokens or API keys on SessionService, and the keys
//!   that verify them (HS256 secret, PEM keys, JWKS).
//! - [`connections`]: accepting and serving the gRPC connections: the cap
//!   on connections, the first request's deadline, accept errors backed off,
//!   and the HTTP/2 limits (streams, headers, rapid reset).
//! - [`tls`]: rustls on the gRPC ports, certificates reloaded on change, and
//!   mutual TLS on the backend address.
//! - [`error`]: typed errors, with no gRPC in them.
//! - [`pb`]: the generated protobuf types, clients and servers.
//! - [`telemetry`]: logs and OpenTelemetry trace export.
//! - [`metrics`]: Prometheus metric names, the session layer's handles, and
//!   the /metrics endpoint.
//!
//! # Glossary
//!
//! - *session*: one game (a match, a room), run by one actor.
//! - *player*: one Play stream holding a seat in a session.
//! - *join* / *leave*: taking and freeing a seat on purpose. A *disconnect* is
//!   a seat freed because the connection broke.
//! - *relay*: a player's opaque payload, forwarded in the session's order.
//! - *sequence*: the session's strictly increasing message number.
//! - *mode*: the named kind of session; it makes each session's logic from
//!   the session's config (`relay` is built in).
//! - *room*: a session's plumbing (seats, queues, sequence), apart from its
//!   *logic* (the rules).

pub mod api;
pub mod auth;
pub mod config;
pub mod connections;
pub mod error;
pub mod metrics;
pub mod pb;
pub mod session;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tracing::{info, warn};

pub use config::Config;
pub use session::Modes;

use api::convert::Limits;
use auth::Auth;
use pb::play_server::player_service_server::PlayerServiceServer;
use pb::session_service_server::SessionServiceServer;
use session::{
    CreationLimits, EndReason, RateLimits, Registry, RegistryConfig, ReplayLimits, SessionConfig, TickPool,
    TickSettings,
};
use tls::Tls;

pub use error::BoxError;

/// The health service name that stays SERVING while the server drains, for
/// Kubernetes liveness probes. Readiness probes check the overall status
/// (`""`), which turns NOT_SERVING on drain.
pub const LIVENESS_SERVICE: &str = "liveness";

/// The sockets the server serves on.
pub struct Listeners {
    /// Serves PlayerService, and SessionService too unless `backend` is set.
    pub main: TcpListener,
    /// Serves SessionService apart from players.
    pub backend: Option<TcpListener>,
    /// Serves grpc.health.v1 alone, in plain text and without credentials,
    /// for probes.
    pub health: Option<TcpListener>,
}

/// Binds the configured addresses (and `/metrics`, installing the
/// Prometheus recorder), then [`run`]s `modes` until `shutdown` resolves:
/// what the `game-session` binary does, for a server of one's own modes
/// (see `examples/arena`).
pub async fn serve(config: Config, modes: Modes, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    // The metrics endpoint comes up first and stays up through the drain;
    // it stops with the process.
    if let Some(addr) = config.metrics_listen.0 {
        let listener = bind("--metrics-listen", addr).await?;
        let handle = metrics::install()?;
        tracing::info!(address = %listener.local_addr()?, "serving metrics");
        tokio::spawn(metrics::serve(listener, handle));
    }
    let main = bind("--listen", config.listen_addr()).await?;
    let backend = match config.backend_listen {
        Some(addr) => Some(bind("--backend-listen", addr).await?),
        None => None,
    };
    let health = match config.health_listen.0 {
        Some(addr) => Some(bind("--health-listen", addr).await?),
        None => None,
    };
    run(config, modes, Listeners { main, backend, health }, shutdown).await
}

/// Binds `addr`; a failure names the flag and the address.
async fn bind(flag: &str, addr: std::net::SocketAddr) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} ({flag}): {e}").into())
}

/// Serves until `shutdown` resolves, then shuts down gracefully:
///
/// 1. health turns NOT_SERVING (overall and per service; `liveness` stays
///    SERVING), and new sessions and joins are refused;
/// 2. running sessions go on for up to the drain period, and the server moves
///    on as soon as none is left;
/// 3. every remaining session ends with reason SERVER_SHUTDOWN;
/// 4. players' queued messages are flushed while connections close, for up
///    to the shutdown grace;
/// 5. returns `Ok`.
pub async fn run(
    config: Config,
    modes: Modes,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    config.validate()?;
    tls::install_default_provider();
    let auth = Auth::from_config(&config.auth).await?;
    let tls = Tls::from_config(&config.tls)?;
    let registry = Registry::new(registry_config(&config), modes);
    let limits = Limits::new(&config);
    let decode_limit = config.max_decoding_message_size();

    let player_api = PlayerServiceServer::new(api::PlayerApi::new(
        registry.clone(),
        limits.clone(),
        config.join_timeout,
        auth.clone(),
        resume_key(&config)?,
    ))
    .max_decoding_message_size(decode_limit);
    // CreateSession carries up to 64 KiB of config whatever the payload limit.
    let backend_decode_limit = decode_limit.max(api::convert::MAX_CONFIG_LEN + 16 * 1024);
    let session_api = SessionServiceServer::new(api::SessionApi::new(registry.clone(), limits, auth.clone()))
        .max_decoding_message_size(backend_decode_limit);

    let (health, health_service) = tonic_health::server::health_reporter();
    let services = [
        "",
        LIVENESS_SERVICE,
        <PlayerServiceServer<api::PlayerApi<Registry>> as NamedService>::NAME,
        <SessionServiceServer<api::SessionApi<Registry>> as NamedService>::NAME,
    ];
    for name in services {
        health.set_service_status(name, ServingStatus::Serving).await;
    }

    let stop = CancellationToken::new();
    let settings = connections::Settings::from_config(&config);
    // Both reflection versions (grpcurl 1.8 speaks only v1alpha), each also
    // listing the other, so that every client sees every service.
    let reflection = || -> Result<_, BoxError> {
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = builder().register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
        let v1alpha = builder().register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
        Ok((v1.build_v1()?, v1alpha.build_v1alpha()?))
    };

    let main_addr = listeners.main.local_addr()?;
    let (v1, v1alpha) = reflection()?;
    let mut main_routes =
        Routes::new(health_service.clone()).add_service(v1).add_service(v1alpha).add_service(player_api);
    if listeners.backend.is_none() {
        main_routes = main_routes.add_service(session_api.clone());
    }
    let backend_api_here = listeners.backend.is_none();
    let main_tls = tls.clone().map(|tls| (tls, false));
    let mut servers = vec![serve_routes(main_routes, listeners.main, "main", main_tls, &settings, &stop)];
    info!(address = %main_addr, backend_api = backend_api_here, tls = tls.is_some(), auth = auth.is_on(), "serving players");
    if !auth.is_on() {
        warn!(
            address = %main_addr,
            "auth is off: whoever reaches this address can play as any player id and create, end and message any \
             session; set a JWT key source (README, Security) before exposing it"
        );
    }
    if let Some(backend) = listeners.backend {
        let backend_addr = backend.local_addr()?;
        let (v1, v1alpha) = reflection()?;
        let routes = Routes::new(health_service.clone()).add_service(v1).add_service(v1alpha).add_service(session_api);
        let backend_tls = tls.clone().map(|tls| (tls, true));
        servers.push(serve_routes(routes, backend, "backend", backend_tls, &settings, &stop));
        let mtls = config.tls.tls_client_ca_file.is_some();
        info!(address = %backend_addr, tls = tls.is_some(), mtls, "serving the backend API");
    }
    if let Some(health) = listeners.health {
        let health_addr = health.local_addr()?;
        servers.push(serve_routes(Routes::new(health_service), health, "health", None, &settings, &stop));
        info!(address = %health_addr, "serving health checks (plain text)");
    }
    tokio::spawn(auth.refresh(stop.clone()));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().reload(stop.clone()));
    }

    // Run until told to stop, or until a server fails.
    let failed = tokio::select! {
        () = shutdown => None,
        (result, _, _) = futures_util::future::select_all(servers.iter_mut()) => Some(result),
    };
    if let Some(result) = failed {
        stop.cancel();
        return match result {
            Ok(()) => Err("a server stopped unexpectedly".into()),
            Err(err) => Err(err.into()),
        };
    }

    // 1. Readiness off, no new sessions or joins.
    info!(sessions = registry.len(), drain_period = ?config.drain_period, "shutting down: draining");
    for name in services.into_iter().filter(|name| *name != LIVENESS_SERVICE) {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    registry.start_drain();
    // 2. Let running sessions finish, up to the drain period.
    if tokio::time::timeout(config.drain_period, registry.wait_empty()).await.is_err() {
        info!(sessions = registry.len(), "drain period over; ending the remaining sessions");
    }
    // 3. End what is left; each actor queues its players' last messages.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    let ended =
        tokio::time::timeout_at(deadline, registry.end_all(EndReason::ServerShutdown, session::SHUTDOWN_MESSAGE)).await;
    // 4. Close the servers gracefully: streams finish writing their queues.
    stop.cancel();
    let flushed = tokio::time::timeout_at(deadline, futures_util::future::join_all(servers)).await;
    if ended.is_err() || flushed.is_err() {
        warn!(grace = ?config.shutdown_grace, "shutdown grace over; closing the remaining connections");
    }
    info!("shut down");
    Ok(())
}

/// Serves `routes` on `listener` (named `name` in metrics and logs) until
/// `stop`, over TLS when `tls` is set, with the connection limits and HTTP/2
/// settings of [`connections`].
fn serve_routes(
    routes: Routes,
    listener: TcpListener,
    name: &'static str,
    tls: Option<(Arc<Tls>, bool)>,
    settings: &connections::Settings,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(connections::serve(routes.prepare(), listener, name, tls, settings.clone(), stop.clone()))
}

/// The key that signs resume tokens: the configured one, or a random one
/// (with a warning) when none is.
fn resume_key(config: &Config) -> Result<auth::ResumeKey, BoxError> {
    let secret = match (&config.resume_key, &config.resume_key_file) {
        (Some(key), _) => key.as_bytes().to_vec(),
        (None, Some(path)) => auth::read_secret_file(path)
            .map_err(|e| format!("cannot read {} (--resume-key-file): {e}", path.display()))?,
        (None, None) => {
            if !config.seat_hold.is_zero() {
                tracing::warn!(
                    "no --resume-key-file: resume tokens are signed with a random key, which no other replica \
                     (and no later run of this one) accepts; set one key on every replica"
                );
            }
            return auth::ResumeKey::generate();
        }
    };
    auth::ResumeKey::new(&secret).map_err(|e| format!("--resume-key-file or GAME_SESSION_RESUME_KEY: {e}").into())
}

fn registry_config(config: &Config) -> RegistryConfig {
    RegistryConfig {
        max_sessions: config.max_sessions,
        default_max_players: config.default_max_players,
        max_players_limit: config.max_players_limit,
        watch_buffer: config.watch_buffer,
        ended_retention: config.ended_session_retention,
        creation: CreationLimits {
            live_per_caller: config.max_sessions_per_caller,
            per_second: config.session_create_rate,
            burst: config.session_create_burst,
        },
        session: SessionConfig {
            outbound_queue: config.outbound_queue,
            outbound_queue_bytes: config.outbound_queue_bytes,
            queued_bytes_budget: config.queued_bytes_budget.unwrap_or_else(config::default_queued_bytes_budget),
            slow_player_grace: config.slow_player_grace,
            inbox: config.session_inbox,
            idle_timeout: config.idle_timeout,
            rates: RateLimits {
                messages_per_second: config.player_message_rate,
                message_burst: config.player_message_burst,
                bytes_per_second: config.player_byte_rate,
                byte_burst: config.player_byte_burst,
                flood_grace: config.flood_grace,
            },
            seat_hold: config.seat_hold,
            // A resume queues its replay past the queue's policy: half the
            // queue leaves room for what comes live meanwhile.
            replay: ReplayLimits {
                messages: config.replay_buffer_messages.min(config.outbound_queue / 2),
                bytes: config.replay_buffer_bytes.min(config.outbound_queue_bytes / 2),
                age: config.replay_buffer_age,
            },
            ticks: TickSettings {
                pool: match config.tick_threads.unwrap_or_else(config::default_tick_threads) {
                    0 => None,
                    threads => Some(TickPool::new(threads)),
                },
                watchdog: config.tick_watchdog,
                max_inputs_per_tick: config.max_inputs_per_tick,
            },
        },
    }
}

/// A tick every period, the first one period from now, until a stop; a
/// tick handled late delays the next one rather than bunching them.
pub(crate) struct Ticks {
    interval: tokio::time::Interval,
    stop: CancellationToken,
}

impl Ticks {
    pub(crate) fn new(period: std::time::Duration, stop: CancellationToken) -> Self {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { interval, stop }
    }

    /// Waits for the next tick: `false` once stopped.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => info!("received SIGINT"),
            _ = terminate.recv() => info!("received SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
