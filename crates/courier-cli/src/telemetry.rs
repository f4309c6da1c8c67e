//! Logs through `tracing` to stderr (human or JSON), and with the `otel` feature, spans exported
//! over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OpenTelemetry variables
//! configure the exporter).

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::config::LogFormat;

/// Keeps the span exporter alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: flushing OpenTelemetry spans failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Call before the tokio runtime starts: the OTLP exporter's
/// blocking HTTP client must not be created inside it. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(without_credentials()).with(fmt);
    #[cfg(feature = "otel")]
    {
        let provider = otlp_provider()?;
        let layer = provider.as_ref().map(|p| {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer().with_tracer(p.tracer("courier"))
        });
        registry.with(layer).init();
        Ok(Telemetry { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        Ok(Telemetry {})
    }
}

/// Drops async-nats' TRACE events of its connection's protocol operations: they include the
/// CONNECT it sends, password, token and JWT in clear. Whatever level is asked for, no credential
/// reaches the logs.
fn without_credentials() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target() == "async_nats::connection" && *meta.level() == tracing::Level::TRACE)
    })
}

#[cfg(feature = "otel")]
fn otlp_provider() -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry_otlp::WithExportConfig as _;
    let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot create the OTLP exporter for {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("courier").build();
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
