//! `GET /metrics`: the runtime's counters in the Prometheus text format.
//!
//! Counters live where they are bumped ([`crate::stats`], the plugin slots,
//! the broker); a scrape takes a [`Scrape`] of them, including the backlog
//! that needs a round trip to the backend, and encodes that. Nothing here is
//! on the event path.

use std::time::UNIX_EPOCH;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::handler::{FailureKind, Handler as _};
use crate::runtime::Runtime;
use crate::service::live::ReloadStatus;
use crate::service::shadow::Agreement;
use crate::stats::Snapshot;
use crate::subscriber::breaker::Position;

/// One plugin's figures at scrape time.
#[derive(Debug)]
struct PluginFigures {
    name: String,
    counters: Snapshot,
    latency: Histogram,
    instances_alive: usize,
    fast_path_left: u64,
    reloads: ReloadStatus,
    rescued_calls: u64,
    shadow: Option<Agreement>,
    breaker_trips: u64,
    breaker_open: bool,
    /// Whether its subscriber reads (shadows: whether their live one does).
    reading: bool,
}

/// Everything one scrape reports.
#[derive(Debug)]
pub struct Scrape {
    plugins: Vec<PluginFigures>,
    /// (plugin, stream, entries not yet finished by the plugin's group).
    backlog: Vec<(String, String, u64)>,
    backend_up: bool,
    reconnects: u64,
}

impl Scrape {
    /// Reads the runtime's counters and asks the backend for backlogs.
    pub async fn take(runtime: &Runtime) -> Scrape {
        let mut backlog = Vec::new();
        let backend_up = runtime.broker.ping().await.is_ok();
        for p in runtime.plugins.iter().filter(|p| !p.is_shadow()) {
            for stream in runtime.streams_read_by(&p.config) {
                let group = runtime.config.group_of(&p.config);
                if let Ok(n) = runtime.broker.backlog(&stream, &group).await {
                    backlog.push((p.config.name.clone(), stream, n));
                }
            }
        }
        let plugins = runtime
            .plugins
            .iter()
            .map(|p| PluginFigures {
                name: p.config.name.clone(),
                counters: p.stats.snapshot(),
                latency: p.stats.latency.clone(),
                instances_alive: p.live.instances_alive(),
                fast_path_left: p.live.fast_path_left(),
                reloads: p.live.status(),
                breaker_trips: p.breaker.trips(),
                breaker_open: p.breaker.position() != Position::Closed,
                reading: p.is_shadow() || p.health.problem().is_none(),
                rescued_calls: p.live.rescued_calls(),
                shadow: p.live.shadow().map(|s| s.stats.agreement()),
            })
            .collect();
        Scrape {
            plugins,
            backlog,
            backend_up,
            reconnects: runtime.broker.reconnects(),
        }
    }

    /// The Prometheus text exposition of this scrape.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A per-plugin counter: name, help, and where its value is in a snapshot.
type CounterSpec = (&'static str, &'static str, fn(&Snapshot) -> u64);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one metric family, a sample per label set.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn by_plugin(p: &PluginFigures) -> Labels<'_> {
    vec![("plugin", p.name.as_str())]
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters: [CounterSpec; 10] = [
            (
                "runnel_events_handled",
                "Events handled successfully.",
                |s| s.handled,
            ),
            (
                "runnel_events_retried",
                "Failed attempts scheduled for another try.",
                |s| s.retried,
            ),
            (
                "runnel_events_dead_lettered",
                "Events moved to a dead-letter stream.",
                |s| s.dead_lettered,
            ),
            (
                "runnel_events_skipped",
                "Events whose name the plugin does not handle.",
                |s| s.skipped,
            ),
            (
                "runnel_events_deduplicated",
                "Redeliveries acked without a call (dedup window).",
                |s| s.deduplicated,
            ),
            (
                "runnel_plugin_traps",
                "Traps in handle or handle-error.",
                |s| s.traps,
            ),
            (
                "runnel_groups_recreated",
                "Consumer groups created again after they vanished (stream deleted, group destroyed, Redis restarted empty).",
                |s| s.groups_recreated,
            ),
            (
                "runnel_entries_lost_to_trimming",
                "Entries trimmed (MAXLEN) or deleted from the plugin's streams before its group read them.",
                |s| s.removed_unread,
            ),
            (
                "runnel_kv_commits",
                "Successful calls whose key-value writes, emitted events and ack were committed in one atomic step.",
                |s| s.kv_commits,
            ),
            (
                "runnel_kv_conflicts",
                "Calls run again because a key they read changed before they committed (not counted as attempts).",
                |s| s.kv_conflicts,
            ),
        ];

        for (name, help, read) in counters {
            family(
                &mut encoder,
                name,
                help,
                MetricType::Counter,
                self.plugins
                    .iter()
                    .map(|p| (by_plugin(p), ConstCounter::new(read(&p.counters)))),
            )?;
        }
        family(
            &mut encoder,
            "runnel_events_failed",
            "Failed attempts, by kind: handler-error (retry), rejected, trap, timeout, decode, memory (past memory_mb), fuel (past fuel_per_call), chain-depth.",
            MetricType::Counter,
            self.plugins.iter().flat_map(|p| {
                FailureKind::ALL.iter().enumerate().map(|(i, kind)| {
                    (
                        vec![("plugin", p.name.as_str()), ("kind", kind.as_str())],
                        ConstCounter::new(p.counters.failed_by_kind[i]),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            "runnel_handler_duration_seconds",
            "Time of one call to handle, from taking an instance to its verdict.",
            MetricType::Histogram,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), p.latency.clone())),
        )?;
        family(
            &mut encoder,
            "runnel_breaker_trips",
            "Times the plugin's circuit breaker opened.",
            MetricType::Counter,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstCounter::new(p.breaker_trips))),
        )?;
        family(
            &mut encoder,
            "runnel_plugin_reading",
            "1 while the plugin's subscriber reads its streams; 0 while it cannot (see /readyz for why).",
            MetricType::Gauge,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstGauge::new(i64::from(p.reading)))),
        )?;
        family(
            &mut encoder,
            "runnel_breaker_open",
            "1 while the plugin's circuit breaker holds its events back.",
            MetricType::Gauge,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstGauge::new(i64::from(p.breaker_open)))),
        )?;
        family(
            &mut encoder,
            "runnel_instances_alive",
            "Instances alive, warm or running.",
            MetricType::Gauge,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstGauge::new(p.instances_alive as i64))),
        )?;
        family(
            &mut encoder,
            "runnel_fast_path_left",
            "Calls begun on the synchronous fast path and run again on a fiber (they waited on I/O or ran past an epoch tick); resets when a new version is installed.",
            MetricType::Counter,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstCounter::new(p.fast_path_left))),
        )?;
        family(
            &mut encoder,
            "runnel_plugin_reloads",
            "New versions installed.",
            MetricType::Counter,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstCounter::new(p.reloads.reloads))),
        )?;
        family(
            &mut encoder,
            "runnel_plugin_reloads_refused",
            "New versions refused (did not compile, did not fit the world, trapped at once).",
            MetricType::Counter,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstCounter::new(p.reloads.refused))),
        )?;
        family(
            &mut encoder,
            "runnel_plugin_rescued_calls",
            "Calls remade on the proven version after a new one trapped on probation.",
            MetricType::Counter,
            self.plugins
                .iter()
                .map(|p| (by_plugin(p), ConstCounter::new(p.rescued_calls))),
        )?;
        family(
            &mut encoder,
            "runnel_plugin_last_reload_timestamp_seconds",
            "When the serving version was installed (0: never reloaded).",
            MetricType::Gauge,
            self.plugins.iter().map(|p| {
                let at = p
                    .reloads
                    .last_reload_at
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                (by_plugin(p), ConstGauge::new(at))
            }),
        )?;
        let shadows: Vec<_> = self
            .plugins
            .iter()
            .filter_map(|p| p.shadow.map(|s| (p, s)))
            .collect();
        for (name, help, pick) in [
            (
                "runnel_shadow_agreed",
                "Events where the shadow's verdict and output matched the live ones.",
                0,
            ),
            ("runnel_shadow_disagreed", "Events where they differed.", 1),
            (
                "runnel_shadow_skipped",
                "Events not shadowed because the shadow was busy.",
                2,
            ),
        ] {
            family(
                &mut encoder,
                name,
                help,
                MetricType::Counter,
                shadows.iter().map(|(p, s)| {
                    let v = [s.agreed, s.disagreed, s.skipped][pick];
                    (by_plugin(p), ConstCounter::new(v))
                }),
            )?;
        }
        family(
            &mut encoder,
            "runnel_backlog_entries",
            "Entries of a stream the plugin's group has not finished (pending or unread).",
            MetricType::Gauge,
            self.backlog.iter().map(|(plugin, stream, n)| {
                (
                    vec![("plugin", plugin.as_str()), ("stream", stream.as_str())],
                    ConstGauge::new(*n as i64),
                )
            }),
        )?;
        family(
            &mut encoder,
            "runnel_backend_up",
            "1 when the backend answered the scrape's ping.",
            MetricType::Gauge,
            [(Vec::new(), ConstGauge::new(i64::from(self.backend_up)))],
        )?;
        family(
            &mut encoder,
            "runnel_backend_reconnects",
            "Times the backend connection was lost and made again.",
            MetricType::Counter,
            [(Vec::new(), ConstCounter::new(self.reconnects))],
        )?;
        Ok(())
    }
}
