//! Logs and traces: `tracing` with an `EnvFilter`, written as text or JSON
//! lines, and exported to OpenTelemetry over OTLP when configured.
//!
//! Trace export is configured by the standard variables only:
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`:
//!   where to send spans (gRPC: `http://host:4317`; http/protobuf: the base
//!   URL, to which `/v1/traces` is added, or the full traces URL);
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`:
//!   `grpc` (the default) or `http/protobuf`;
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`; the resource also
//!   carries `service.version` and a `service.instance.id` per process;
//! - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
//!   `parentbased_always_on`);
//! - `OTEL_TRACES_EXPORTER` (`otlp` or `none`) and `OTEL_SDK_DISABLED`;
//! - for an `https://` endpoint (either protocol): the system's roots plus
//!   `OTEL_EXPORTER_OTLP_CERTIFICATE` (CA certificates, PEM), and
//!   `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` with `OTEL_EXPORTER_OTLP_CLIENT_KEY`
//!   for mutual TLS (each also as `OTEL_EXPORTER_OTLP_TRACES_*`).
//!
//! Unlike the spec's default (export to `localhost:4317` always), spans are
//! exported only when an endpoint is set or `OTEL_TRACES_EXPORTER=otlp`: a
//! server started on a laptop with no collector then does no export work and
//! logs no connection errors. With export off no OpenTelemetry layer is
//! installed at all, so nothing on the hot path is slowed.
//!
//! Spans go through a batch processor on tokio with a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 spans; more are dropped, never waited
//! for), so a collector that is down or slow never blocks the service.
//! Dropped spans, and the spans of failed exports, are counted in
//! `game_session_trace_spans_dropped_total`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// What [`init`] set up, to be flushed at shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber, with trace export if configured (see the
/// module docs). `RUST_LOG` wins over `default_filter`. Call it inside the
/// tokio runtime: the span exporter runs on it.
pub fn init(default_filter: &str, format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a terminal: a log collector gets plain text.
    let ansi = std::io::stdout().is_terminal();
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).with_ansi(ansi).boxed(),
        // The event's fields at the top level; the current span's (with
        // `session.id` and `player.id`) under "span", and every span in scope
        // under "spans" (outermost first: an RPC's carries `trace_id` and
        // `span_id`).
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let (provider, export_error) = match tracer_provider() {
        Ok(provider) => (provider, None),
        Err(err) => (None, Some(err)),
    };
    // The log filter applies to the log lines only: spans are exported at
    // INFO and above whatever the logs show (`--log warn` keeps the traces).
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("game-session")).with_filter(LevelFilter::INFO));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init();
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    if let Some(err) = export_error {
        tracing::error!(error = %err, "trace export is off: its configuration failed");
    }
    Telemetry { provider }
}

impl Telemetry {
    /// Flushes the spans still queued, waiting at most `within` (a collector
    /// that is down must not hold up the exit).
    pub async fn shutdown(self, within: Duration) {
        let Some(provider) = self.provider else { return };
        // shutdown() blocks until the exporter is done.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "flushing spans at shutdown failed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "flushing spans at shutdown failed"),
            Err(_) => tracing::warn!(?within, "flushing spans at shutdown timed out; the rest are lost"),
        }
    }
}

/// The tracer provider the `OTEL_*` variables ask for, if any.
fn tracer_provider() -> Result<Option<SdkTracerProvider>, crate::error::BoxError> {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let exporter = var("OTEL_TRACES_EXPORTER");
    let endpoint_set =
        var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    match exporter.as_deref() {
        Some("none") => return Ok(None),
        Some("otlp") => {}
        Some(other) => return Err(format!("OTEL_TRACES_EXPORTER={other}: only otlp and none are supported").into()),
        None if !endpoint_set => return Ok(None),
        None => {}
    }
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    let signal_or_all = |name: &str| {
        var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}")).or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
    };
    let https = signal_or_all("ENDPOINT").is_some_and(|endpoint| endpoint.starts_with("https://"));
    let tls = if https { Some(CollectorTls::from_env(signal_or_all)?) } else { None };
    let exporter = match protocol.as_deref().unwrap_or("grpc") {
        "grpc" => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match tls {
                Some(tls) => builder.with_tls_config(tls.tonic()).build()?,
                None => builder.build()?,
            }
        }
        "http/protobuf" => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
            match tls {
                Some(tls) => {
                    let timeout = signal_or_all("TIMEOUT")
                        .and_then(|ms| ms.parse().ok())
                        .map_or(Duration::from_secs(10), Duration::from_millis);
                    builder
                        .with_http_client(opentelemetry_http::hyper::HyperClient::new(tls.https()?, timeout, None))
                        .build()?
                }
                None => builder.build()?,
            }
        }
        other => {
            return Err(
                format!("OTEL_EXPORTER_OTLP_PROTOCOL={other}: only grpc and http/protobuf are supported").into()
            );
        }
    };
    let mut resource = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
    ]);
    let named = var("OTEL_SERVICE_NAME").is_some()
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| attributes.contains("service.name="));
    if !named {
        resource = resource.with_service_name("game-session");
    }
    // The bound is ours, so that what is dropped is counted: spans ended and
    // not yet through an export call stay below it, which keeps the batch
    // processor's own queue (as large) from ever dropping silently.
    let limit = var("OTEL_BSP_MAX_QUEUE_SIZE").and_then(|v| v.parse().ok()).unwrap_or(2048);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let exporter = Counted { inner: exporter, in_flight: in_flight.clone() };
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let processor = Bounded { inner: processor, in_flight, limit };
    Ok(Some(SdkTracerProvider::builder().with_resource(resource.build()).with_span_processor(processor).build()))
}

/// TLS to an `https://` collector, from the standard variables (each also
/// as `OTEL_EXPORTER_OTLP_TRACES_*`): `OTEL_EXPORTER_OTLP_CERTIFICATE`, CA
/// certificates (PEM) trusted besides the system's; and
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` with `_CLIENT_KEY` for mutual TLS.
struct CollectorTls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl CollectorTls {
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, crate::error::BoxError> {
        let read = |name: &str| -> Result<Option<Vec<u8>>, crate::error::BoxError> {
            match var(name) {
                None => Ok(None),
                Some(path) => {
                    std::fs::read(&path).map(Some).map_err(|e| format!("OTEL_EXPORTER_OTLP_{name}={path}: {e}").into())
                }
            }
        };
        let identity = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY go together".into()),
        };
        Ok(CollectorTls { ca: read("CERTIFICATE")?, identity })
    }

    fn tonic(self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = self.ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }

    fn https(
        self,
    ) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, crate::error::BoxError>
    {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let roots = match &self.ca {
            Some(ca) => CertificateDer::pem_slice_iter(ca)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?,
            None => Vec::new(),
        };
        let identity = match self.identity {
            None => None,
            Some((cert, key)) => Some((
                CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: {e}"))?,
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_KEY: {e}"))?,
            )),
        };
        crate::tls::https_connector(roots, identity).map_err(|e| format!("OTLP over TLS: {e}").into())
    }
}

/// Drops (and counts) a span that would take the spans in flight past the
/// limit, instead of queueing it.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::SPANS_DROPPED).increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// One export's spans in the count in flight; on drop (the export finished
/// or was cancelled) they leave it, and count as dropped unless exported.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    spans: usize,
    exported: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(self.spans, Ordering::Relaxed);
        if !self.exported {
            metrics::counter!(crate::metrics::SPANS_DROPPED).increment(self.spans as u64);
        }
    }
}

/// Takes exported spans out of the count in flight, and counts the spans of
/// a failed or timed-out export (a collector down, refusing or slow) as
/// dropped.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    in_flight: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // The batch processor drops this future when its export timeout
        // fires first: the guard takes the spans out of the count however
        // the export ends, or every span would soon count as in flight and
        // be dropped.
        let mut guard = InFlight { count: &self.in_flight, spans: batch.len(), exported: false };
        let result = self.inner.export(batch).await;
        guard.exported = result.is_ok();
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A link to a span that will have closed by the time the link is made
/// (tracing's own `follows_from` needs the span still open): a seat keeps
/// one to its `player.join` span for its `player.leave` span. Empty, and
/// ignored, when traces are not exported.
#[derive(Debug, Clone)]
pub struct SpanLink(opentelemetry::trace::SpanContext);

impl SpanLink {
    /// A link to `span`.
    pub fn to(span: &tracing::Span) -> Self {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        SpanLink(span.context().span().span_context().clone())
    }

    /// Adds the link to `span`.
    pub fn add_to(&self, span: &tracing::Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        span.add_link(self.0.clone());
    }
}

/// Records a span's OpenTelemetry ids on its `trace_id` and `span_id`
/// fields (declared empty), so that its log lines lead to its trace. Does
/// nothing when traces are not exported.
pub(crate) fn record_ids(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
}

/// Rate-limits a kind of log line: at most one a second per key, each
/// saying how many were left out since the last, so that a flood of bad
/// input cannot flood the logs.
pub struct Throttle<K> {
    last: std::sync::Mutex<std::collections::HashMap<K, (std::time::Instant, u64)>>,
}

impl<K> Default for Throttle<K> {
    fn default() -> Self {
        Throttle { last: std::sync::Mutex::default() }
    }
}

impl<K: Eq + std::hash::Hash> Throttle<K> {
    /// `Some(suppressed)` when a line for `key` is to be logged now.
    pub fn admit(&self, key: K) -> Option<u64> {
        // Keys are a closed set of kinds, so the map stays small.
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        match last.get_mut(&key) {
            Some((at, suppressed)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exporter whose collector never answers.
    #[derive(Debug)]
    struct Stalled;

    impl SpanExporter for Stalled {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending().await
        }
    }

    fn span() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanKind, Status};
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    /// Catches an export that the batch processor's timeout cancels leaving
    /// its spans counted in flight: after a few such timeouts every new span
    /// would be dropped.
    #[tokio::test]
    async fn a_cancelled_export_leaves_the_count_in_flight() {
        let in_flight = Arc::new(AtomicUsize::new(3));
        let exporter = Counted { inner: Stalled, in_flight: in_flight.clone() };
        let export = exporter.export(vec![span(), span(), span()]);
        // What the processor's timeout does: give up on the export.
        assert!(tokio::time::timeout(Duration::from_millis(10), export).await.is_err());
        assert_eq!(in_flight.load(Ordering::Relaxed), 0);
    }
}
