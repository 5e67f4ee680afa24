//! Accepting and serving the gRPC connections: the accept loop, the cap on
//! connections, TLS handshakes, and HTTP/2 through hyper's server builder
//! with tonic's routes, because tonic's `Server` has no deadline for a
//! connection's first request and no cap on connections, and spins on a
//! failed accept.
//!
//! One loop per address accepts, refuses what is over the cap, and hands
//! each connection to a task of its own, so that nothing one client does (a
//! slow handshake, silence) holds the loop. On `stop` the loop closes the
//! listener at once, each connection is shut down gracefully (GOAWAY, and
//! open streams finish writing), and [`serve`] returns once the last one has
//! closed: the shutdown sequence in [`crate::run`] bounds that wait.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;
use tracing::{debug, warn};

use crate::config::Config;
use crate::telemetry::Throttle;
use crate::tls::Tls;

/// The first pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
pub(crate) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause after failed accepts: long enough not to spin while
/// file descriptors are out, short enough to serve again soon after.
pub(crate) const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How one address serves its connections; the same for every address.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `--max-connections`: open connections per address.
    max_connections: usize,
    /// `--first-request-timeout`.
    first_request_timeout: Duration,
    /// The HTTP/2 settings (streams, keepalive, headers, resets), cloned
    /// into each connection.
    http2: http2::Builder<TokioExecutor>,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_streams_per_connection)
            .keep_alive_interval(config.keepalive_interval)
            .keep_alive_timeout(config.keepalive_timeout)
            .max_header_list_size(config.max_header_list_size)
            .max_pending_accept_reset_streams(config.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(config.max_local_error_reset_streams);
        Settings { max_connections: config.max_connections, first_request_timeout: config.first_request_timeout, http2 }
    }
}

/// Serves `routes` on `listener` (named `name` in metrics and logs) until
/// `stop`, over TLS when `tls` is set (with the backend's settings when
/// `backend`), then waits for its connections to close.
pub(crate) async fn serve(
    routes: Routes,
    listener: TcpListener,
    name: &'static str,
    tls: Option<(Arc<Tls>, bool)>,
    settings: Settings,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let handshakes = Arc::new(Semaphore::new(crate::tls::HANDSHAKES_IN_FLIGHT));
    let connections = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            // Out of file descriptors and the like: the pending connection
            // stays queued, so retrying at once would spin a core.
            Err(err) => {
                accept_failed(name, &err, backoff);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: the client sees the connection end rather
            // than wait, and its descriptor is back before the next accept.
            drop(stream);
            crate::metrics::connection_refused(name, "limit");
            refused(name, peer);
            continue;
        };
        let open = Open::new(name, slot);
        // A game's small messages must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: Some(peer) };
        let connection =
            Connection { name, info, routes: routes.clone(), settings: settings.clone(), stop: stop.clone() };
        let Some((tls, backend)) = &tls else {
            connections.spawn(connection.serve(stream, open));
            continue;
        };
        // Handshakes run in their tasks, a bounded number at once: past
        // that the loop waits, as the kernel's backlog does.
        let handshake = tokio::select! {
            () = stop.cancelled() => break,
            permit = handshakes.clone().acquire_owned() => permit,
        };
        let Ok(handshake) = handshake else { break };
        let acceptor = tls.acceptor(*backend);
        connections.spawn(async move {
            let secured = tokio::select! {
                () = connection.stop.cancelled() => return,
                secured = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => secured,
            };
            drop(handshake);
            match secured {
                Ok(Ok(stream)) => connection.serve(stream, open).await,
                Ok(Err(err)) => crate::tls::handshake_failed("error", peer, &err.to_string()),
                Err(_) => crate::tls::handshake_failed("timeout", peer, "no handshake within the deadline"),
            }
        });
    }
    // Closes the socket now, so that new clients are refused by the kernel
    // rather than queued until the drain ends.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One accepted connection, before it is served.
struct Connection {
    name: &'static str,
    /// The addresses, for `Request::remote_addr` (auth logs the peer).
    info: TcpConnectInfo,
    routes: Routes,
    settings: Settings,
    stop: CancellationToken,
}

impl Connection {
    /// Serves HTTP/2 on `io` until the client closes, the first request
    /// misses its deadline, or a graceful shutdown on `stop` completes.
    async fn serve<I>(self, io: I, open: Open)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = open;
        let requested = Arc::new(AtomicBool::new(false));
        let service = {
            let requested = requested.clone();
            let info = self.info;
            let routes = self.routes;
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                requested.store(true, Ordering::Relaxed);
                request.extensions_mut().insert(info.clone());
                routes.clone().call(request)
            })
        };
        let mut connection = pin!(self.settings.http2.serve_connection(TokioIo::new(io), service));
        let mut deadline = pin!(tokio::time::sleep(self.settings.first_request_timeout));
        let mut deadline_armed = true;
        let mut stopping = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(listener = self.name, error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = &mut deadline, if deadline_armed => {
                    deadline_armed = false;
                    if !requested.load(Ordering::Relaxed) {
                        // Dropped, not shut down gracefully: a client that
                        // sent nothing has nothing to finish.
                        crate::metrics::connection_timed_out(self.name);
                        return;
                    }
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection counted open: holds its slot under the cap, and takes
/// itself off the gauge when dropped, however the connection ended.
struct Open {
    gauge: metrics::Gauge,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(name: &'static str, slot: OwnedSemaphorePermit) -> Self {
        let gauge = crate::metrics::connections_open(name);
        gauge.increment(1.0);
        Open { gauge, _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Counts a failed accept, and logs it at most once a second per address.
pub(crate) fn accept_failed(name: &'static str, err: &std::io::Error, backoff: Duration) {
    static LOG: std::sync::LazyLock<Throttle<&'static str>> = std::sync::LazyLock::new(Throttle::default);
    crate::metrics::accept_failed(name);
    if let Some(suppressed) = LOG.admit(name) {
        warn!(listener = name, error = %err, ?backoff, suppressed, "accept failed; pausing before the next");
    }
}

/// Logs a connection refused at the cap, at most once a second per address.
fn refused(name: &'static str, peer: SocketAddr) {
    static LOG: std::sync::LazyLock<Throttle<&'static str>> = std::sync::LazyLock::new(Throttle::default);
    if let Some(suppressed) = LOG.admit(name) {
        warn!(listener = name, %peer, suppressed, "connection refused: --max-connections are open");
    }
}
