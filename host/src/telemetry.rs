//! OpenTelemetry traces: a span per delivery and per plugin call, exported
//! over OTLP (HTTP/protobuf), and the trace context carried from a call to
//! the events it emits.
//!
//! Off unless `[telemetry] otlp_endpoint` is set. While off, no span is
//! made at all ([`on`] is one atomic load on the delivery path), so a host
//! without a collector pays nothing. While on, spans are `tracing` spans of
//! target [`TARGET`], turned into OpenTelemetry spans by
//! `tracing-opentelemetry`; the log output leaves them out.
//!
//! Names and attributes follow OpenTelemetry's semantic conventions for
//! messaging (`messaging.system`, `messaging.destination.name`,
//! `messaging.consumer.group.name`, `messaging.message.id`,
//! `messaging.message.conversation_id` for the correlation id,
//! `messaging.operation.type`), with Runnel's own under `runnel.`.
//!
//! Across streams the context travels in the W3C `traceparent` format, in
//! an entry field after `event` ([`TRACE_FIELD`]), which Go readers of the
//! seed library never see: they read the first field.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Registry;

use crate::broker::Entry;

/// The `tracing` target of the spans exported as traces.
pub const TARGET: &str = "runnel::otel";

/// The entry field that carries the trace context of the call that emitted
/// the event (`00-<trace id>-<span id>-<flags>`).
pub const TRACE_FIELD: &str = "traceparent";

/// `[telemetry]`: where traces go, and how many.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint of a collector: a base URL
    /// (`http://127.0.0.1:4318`, to which `/v1/traces` is added) or the
    /// full traces URL. None: no traces (the default).
    pub otlp_endpoint: Option<String>,
    /// The share of traces recorded, 0.0 to 1.0, decided where a trace
    /// starts: an event that continues a trace follows that trace's
    /// decision (parent-based sampling).
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: "runnel".into(),
        }
    }
}

/// The layer that turns [`TARGET`] spans into exported OpenTelemetry spans,
/// to sit right on the registry.
pub type ExportLayer =
    tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer>;

/// Whether spans are made.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are being recorded: the delivery path asks before it
/// makes a span.
pub fn on() -> bool {
    ON.load(Relaxed)
}

/// Exporting traces while held: [`Exporting::shutdown`] (or dropping it)
/// sends what is buffered and stops making spans. Blocks: call it off the
/// async runtime.
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Sends the spans still buffered and stops exporting.
    pub fn shutdown(self) {
        ON.store(false, Relaxed);
        if let Err(e) = self.provider.force_flush() {
            eprintln!("warning: sending the last traces failed: {e}");
        }
        let _ = self.provider.shutdown();
    }
}

/// Starts exporting as `config` says, and returns the layer to put in the
/// process's subscriber; `None` when it names no endpoint. Fails on an
/// endpoint that is not a URL. Call it before the async runtime starts:
/// the exporter's HTTP client (reqwest's blocking one) runs a runtime of
/// its own.
///
/// Traces are a process-wide setting, like the log: `runnel run` reads
/// `[telemetry]` once at start (a config reload does not change it), and a
/// library user installs the layer in its own subscriber.
pub fn start(config: &TelemetryConfig) -> anyhow::Result<Option<(ExportLayer, Exporting)>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let url = traces_url(endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .with_context(|| format!("telemetry.otlp_endpoint {endpoint:?}"))?;
    let ratio = config.sample_ratio.clamp(0.0, 1.0);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    // Only the attributes above: not where in Runnel's code a span was
    // made, nor on which thread, nor its busy and idle time.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("runnel"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false);
    ON.store(true, Relaxed);
    Ok(Some((layer, Exporting { provider })))
}

/// `endpoint` with `/v1/traces` added when it names no path, as the OTLP
/// specification does for a base endpoint.
fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    match after_scheme.contains('/') {
        true => trimmed.to_string(),
        false => format!("{trimmed}/v1/traces"),
    }
}

/// The span of one delivery, `process <stream>` (a consumer span),
/// continuing the trace its entry carries; [`tracing::Span::none`] while
/// traces are off. It ends when the last clone is dropped: when the
/// delivery reaches its final outcome.
pub fn delivery_span(
    delivery: &crate::broker::Delivery,
    group: &str,
    plugin: &str,
    system: &'static str,
) -> tracing::Span {
    if !on() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "process",
        otel.name = format!("process {}", delivery.stream),
        otel.kind = "consumer",
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %delivery.stream,
        messaging.consumer.group.name = group,
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        runnel.plugin = plugin,
        runnel.entry.id = %delivery.entry.id,
        runnel.deliveries = delivery.deliveries,
        runnel.outcome = tracing::field::Empty,
    );
    continue_trace(&span, &delivery.entry);
    span
}

/// Names the event on its delivery's span once it is decoded: its id and
/// its correlation id (the messaging conventions' conversation id).
pub fn identify(span: &tracing::Span, event: &crate::event::Event) {
    if span.is_none() {
        return;
    }
    span.record("messaging.message.id", event.id.as_str());
    span.record(
        "messaging.message.conversation_id",
        event.meta.correlation_id.as_str(),
    );
}

/// Which export of the plugin a call enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    Handle,
    HandleError,
}

/// The span of one call of `handler` for `plugin`, a child of the
/// delivery's `span`: `handle <plugin>` (or `handle-error <plugin>`), with
/// the attempt, the version and (once recorded) the verdict.
pub fn call_span(
    span: &tracing::Span,
    export: Export,
    plugin: &str,
    handler: &dyn crate::handler::Handler,
    attempt: u32,
) -> tracing::Span {
    if span.is_none() {
        return tracing::Span::none();
    }
    let name = match export {
        Export::Handle => "handle",
        Export::HandleError => "handle-error",
    };
    tracing::info_span!(
        target: TARGET,
        parent: span,
        "call",
        otel.name = format!("{name} {plugin}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        runnel.plugin = plugin,
        runnel.plugin.version = handler.version().unwrap_or_else(|| "native".into()),
        runnel.attempt = attempt,
        runnel.verdict = tracing::field::Empty,
        runnel.failure.kind = tracing::field::Empty,
    )
}

/// Records a call's verdict on its span; a failed call's span is an error.
pub fn record_verdict(span: &tracing::Span, verdict: &crate::handler::Verdict) {
    if span.is_none() {
        return;
    }
    span.record("runnel.verdict", verdict.name());
    if let Some((kind, _)) = verdict.failure_kind() {
        span.record("runnel.failure.kind", kind.as_str());
        span.record("otel.status_code", "error");
    }
}

/// Records that an error handler failed (trapped) on its span.
pub fn record_error_handler_failure(span: &tracing::Span) {
    if span.is_none() {
        return;
    }
    span.record("runnel.verdict", "trap");
    span.record("otel.status_code", "error");
}

/// Records how a delivery ended: acknowledged, or left pending (to be
/// delivered again, as at shutdown).
pub fn end_delivery(span: &tracing::Span, acked: bool) {
    if span.is_none() {
        return;
    }
    span.record("runnel.outcome", if acked { "acked" } else { "settled" });
}

/// The `traceparent` of `span`, for the entries of the events emitted
/// within it; `None` when traces are off or the span is not recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !on() || span.is_none() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` continue the trace whose context `entry` carries, if any.
pub fn continue_trace(span: &tracing::Span, entry: &Entry) {
    let Some((_, value)) = entry.fields.iter().find(|(k, _)| k == TRACE_FIELD) else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), value.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/custom"), "http://c:4318/custom");
    }
}
