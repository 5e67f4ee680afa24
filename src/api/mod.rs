//! The gRPC edge: decode, validate, call the session layer, encode. Besides
//! `pb`, the only place prost types appear.

/// The span of one RPC, as the OpenTelemetry RPC conventions name it
/// (`package.Service/Method`, kind SERVER, `rpc.*` attributes), continuing the
/// caller's trace and recording the address the call came in on. Made before
/// the handler runs, since a span's parent is fixed once it is entered.
macro_rules! rpc_span {
    ($service:literal, $method:literal, $request:expr) => {{
        let span = tracing::info_span!(
            concat!("gamesession.v1.", $service, "/", $method),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = concat!("gamesession.v1.", $service),
            rpc.method = $method,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            session.id = tracing::field::Empty,
            session.mode = tracing::field::Empty,
            player.id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        $crate::api::continue_trace(&span, $request);
        span
    }};
}
pub(crate) use rpc_span;

pub mod codec;
pub mod convert;
pub mod player;
pub mod session;
pub mod status;

pub use player::PlayerApi;
pub use session::SessionApi;

use opentelemetry::propagation::Extractor;
use tonic::metadata::{KeyRef, MetadataMap};
use tonic::{Code, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Continues the caller's trace in an RPC's span (W3C `traceparent`,
/// `tracestate` and `baggage` from the request's metadata), and records the
/// address the call came in on (`server.address`, `server.port`) and, when
/// traces are exported, the span's `trace_id` and `span_id` for the logs.
pub(crate) fn continue_trace<T>(span: &tracing::Span, request: &tonic::Request<T>) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Metadata(request.metadata())));
    // Fails only when the span is already closed or not exported.
    let _ = span.set_parent(parent);
    crate::telemetry::record_ids(span);
    if let Some(addr) = request.local_addr() {
        span.record("server.address", addr.ip().to_string());
        span.record("server.port", i64::from(addr.port()));
    }
}

/// Runs a unary RPC in its span: its duration goes to the metrics, its gRPC
/// status code to the span (`rpc.grpc.status_code`, and `otel.status_code` =
/// `ERROR` for the codes that are the server's fault, as the OpenTelemetry
/// RPC conventions say).
pub(crate) async fn rpc<T>(
    method: &'static str,
    span: tracing::Span,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let result = crate::metrics::timed(method, call).instrument(span.clone()).await;
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    span.record("rpc.grpc.status_code", code as i64);
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// Reads W3C trace context from gRPC metadata.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
