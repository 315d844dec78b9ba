//! The swap pause: how long event handling stalls while a new plugin version
//! is compiled and swapped in under load.
//!
//! A subscriber drains a pre-filled in-memory stream through a plugin slot
//! while the plugin's file is replaced and reloaded several times, through
//! the same [`Reloader`] the service uses. Each version differs by a custom
//! section, so each one really is compiled. Every handled event's completion
//! time is recorded; the report compares the longest gap between two
//! completions around a swap with the longest gap elsewhere in the same run.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{measure, Backend, Case};
use crate::config::Config;
use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, Handled, Handler};
use crate::plugin::PluginSettings;
use crate::plugin::{Links, PluginEngine, WasmPlugin};
use crate::routes::Routes;
use crate::service::live::{LivePlugin, Version};
use crate::service::reload::{Reloaded, Reloader};

/// Load on the slot while it is swapped: enough to outlast every swap.
const EVENTS: usize = 400_000;
/// Time between swaps.
const BETWEEN_SWAPS: Duration = Duration::from_millis(50);
/// How long after a swap its effects count (the new version's first calls
/// instantiate).
const AFTERMATH: Duration = Duration::from_millis(50);

/// Records when each call finished.
struct Timed {
    inner: Arc<dyn Handler>,
    finished: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Handler for Timed {
    async fn handle(&self, event: &Event) -> Handled {
        let handled = self.inner.handle(event).await;
        self.finished.lock().push(Instant::now());
        handled
    }
    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled {
        self.inner.handle_error(failure, event).await
    }
}

/// The component with a custom section appended: a new file, a new hash,
/// the same behaviour.
fn variant(component: &[u8], n: usize, run: &uuid::Uuid) -> Vec<u8> {
    let name = b"runnel-bench-version";
    // Unique per run too, so the artifact cache never has it: each swap
    // really compiles.
    let mut data = run.as_bytes().to_vec();
    data.extend_from_slice(&n.to_le_bytes());
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&data);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // fits one LEB128 byte
    out.extend_from_slice(&section);
    out
}

/// Runs the swap measurement and returns its part of the report.
pub(super) async fn pause_report(
    engine: Arc<PluginEngine>,
    args: &super::BenchArgs,
) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!(
        "runnel-bench-swap-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("noop.wasm");
    let original = std::fs::read(&args.plugin)?;
    std::fs::write(&file, &original)?;
    let config = Config::parse(
        &format!("[[plugin]]\nname = \"noop\"\npath = {file:?}\nstreams = [\"bench\"]\n"),
        Path::new("bench.toml"),
    )?;
    let plugin = config.plugins[0].clone();
    let routes = Arc::new(Routes::default());
    let first = WasmPlugin::load(
        &engine,
        "noop",
        &file,
        PluginSettings::of(&plugin, crate::config::DEFAULT_MAX_PAYLOAD_BYTES),
        Links::routes_only(routes.clone()),
    )?;
    let sha256 = first.sha256().to_string();
    let live = LivePlugin::new("noop", Version::new(Arc::new(first), sha256));
    let reloader = Reloader::new(
        engine,
        Links::routes_only(routes),
        crate::config::DEFAULT_MAX_PAYLOAD_BYTES,
        [(plugin, live.clone())],
    );
    let timed = Arc::new(Timed {
        inner: live.clone(),
        finished: Mutex::new(Vec::with_capacity(EVENTS)),
    });

    let swapper = tokio::spawn({
        let (file, swaps, timed) = (file.clone(), args.swaps, timed.clone());
        let run = uuid::Uuid::new_v4();
        async move {
            // Swaps count only under load: wait for the first handled event
            // (the stream is being filled until then).
            let deadline = Instant::now() + Duration::from_secs(120);
            while timed.finished.lock().is_empty() {
                anyhow::ensure!(Instant::now() < deadline, "no event was handled");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut windows = Vec::new();
            for n in 1..=swaps {
                tokio::time::sleep(BETWEEN_SWAPS).await;
                std::fs::write(&file, variant(&original, n, &run))?;
                let started = Instant::now();
                let outcome = reloader.reload("noop").await?;
                anyhow::ensure!(
                    matches!(outcome, Reloaded::Swapped { .. }),
                    "swap {n} did not swap: {outcome:?}"
                );
                windows.push((started, Instant::now(), started.elapsed()));
            }
            anyhow::Ok(windows)
        }
    });
    let rate = measure(
        &Case::new("swap", timed.clone()),
        &Backend::Memory,
        EVENTS,
        args.concurrency,
        super::ORDER,
    )
    .await?
    .rate;
    let windows = swapper.await??;
    let _ = std::fs::remove_dir_all(&dir);

    let mut finished = std::mem::take(&mut *timed.finished.lock());
    finished.sort();
    let last = *finished.last().expect("events were handled");
    let under_load: Vec<_> = windows
        .iter()
        .filter(|(_, installed, _)| *installed + AFTERMATH < last)
        .collect();
    let in_window = |t: Instant| {
        under_load
            .iter()
            .any(|(start, installed, _)| t >= *start && t <= *installed + AFTERMATH)
    };
    let (mut during, mut elsewhere) = (Duration::ZERO, Duration::ZERO);
    for pair in finished.windows(2) {
        let gap = pair[1] - pair[0];
        if in_window(pair[1]) {
            during = during.max(gap);
        } else {
            elsewhere = elsewhere.max(gap);
        }
    }
    let reload_times: Vec<Duration> = under_load.iter().map(|w| w.2).collect();
    let slowest_reload = reload_times.iter().max().copied().unwrap_or_default();
    Ok(format!(
        "\nhot swap under load: {} of {} swaps while {EVENTS} events flowed ({rate:.0} events/s), each a new file compiled off the serving path\n\n\
         {:<52} {:>10}\n\
         {:<52} {:>10.2?}\n\
         {:<52} {:>10.2?}\n\
         {:<52} {:>10.2?}\n\
         {:<52} {:>10.2}\n",
        under_load.len(),
        windows.len(),
        "measure",
        "value",
        "longest reload (read, compile, instantiate, swap)",
        slowest_reload,
        "longest gap between handled events during a swap",
        during,
        "longest gap between handled events otherwise",
        elsewhere,
        "ratio (during / otherwise)",
        during.as_secs_f64() / elsewhere.as_secs_f64().max(1e-9),
    ))
}
