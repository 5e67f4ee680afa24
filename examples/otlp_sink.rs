//! An OTLP/gRPC trace sink for benchmarks: accepts every export, counts the
//! spans, and prints the count every few seconds. It lets a benchmark run
//! with trace export on against a receiver on this machine, so that the cost
//! of exporting is measured without a collector.
//!
//! ```sh
//! cargo run --release --example otlp_sink -- --listen 127.0.0.1:4317 &
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 target/release/gsctl bench relay --compare
//! # or, to see each span (name, trace, parent, kind, attributes): otlp_sink --verbose
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::{Request, Response, Status};

/// The sink's settings.
#[derive(Debug, Parser)]
struct Args {
    /// Address to accept OTLP/gRPC exports on.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// Print each span: its name, trace id, parent span id, kind and
    /// attributes.
    #[arg(long)]
    verbose: bool,
}

struct Sink {
    spans: Arc<AtomicU64>,
    verbose: bool,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        let spans: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        if self.verbose {
            let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
            for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                let attributes: Vec<String> = span
                    .attributes
                    .iter()
                    .map(|kv| format!("{}={:?}", kv.key, kv.value.as_ref().and_then(|v| v.value.as_ref())))
                    .collect();
                println!(
                    "{} trace={} parent={} kind={} {}",
                    span.name,
                    hex(&span.trace_id),
                    hex(&span.parent_span_id),
                    span.kind,
                    attributes.join(" ")
                );
            }
        }
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let spans = Arc::new(AtomicU64::new(0));
    let counter = spans.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = counter.load(Ordering::Relaxed);
            if now != last {
                eprintln!("otlp_sink: {now} spans received");
                last = now;
            }
        }
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink { spans: spans.clone(), verbose: args.verbose }))
        .serve_with_shutdown(args.listen, shutdown)
        .await?;
    eprintln!("otlp_sink: {} spans received in all", spans.load(Ordering::Relaxed));
    Ok(())
}
