//! A plugin slot whose version can change under load.
//!
//! A [`LivePlugin`] is what a subscriber calls. It forwards every call to the
//! version installed at that moment, so a swap is one pointer store: a call
//! already running finishes on the version it started on, and every later
//! call goes to the new one. No event is dropped or handed to two versions.
//!
//! A freshly installed version is *on probation* until its first call
//! returns: if that call traps, the version is refused, the last proven one
//! is put back, and the same call is made on it — a broken build costs one
//! wasted call, never an event.
//!
//! A slot may also carry a *shadow*: another plugin that gets a dry-run copy
//! of every event after the live call, whose output is compared with the
//! live output and then thrown away (see [`crate::service::shadow`]).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;

use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, Handled, Handler, Verdict};
use crate::service::shadow::Shadow;

/// One version of a plugin: its code and where it came from.
pub struct Version {
    pub handler: Arc<dyn Handler>,
    /// SHA-256 of the component file (`native` for a handler in Rust).
    pub sha256: String,
    pub loaded_at: SystemTime,
    /// Set until the first call returns without trapping.
    probation: AtomicBool,
    /// The last proven version, kept while this one is on probation.
    fallback: Mutex<Option<Arc<Version>>>,
}

impl Version {
    pub fn new(handler: Arc<dyn Handler>, sha256: impl Into<String>) -> Arc<Version> {
        Arc::new(Version {
            handler,
            sha256: sha256.into(),
            loaded_at: SystemTime::now(),
            probation: AtomicBool::new(false),
            fallback: Mutex::new(None),
        })
    }

    /// The first 12 hex digits of the hash: enough to tell versions apart.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }

    /// Whether it is on probation: installed, its first call not yet back.
    pub fn on_probation(&self) -> bool {
        self.probation.load(Relaxed)
    }

    fn take_fallback(&self) -> Option<Arc<Version>> {
        self.fallback.lock().take()
    }
}

/// How a plugin's reloads went, for the admin API and metrics.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// Versions installed after the first.
    pub reloads: u64,
    /// Versions refused: did not compile, did not fit the world, trapped.
    pub refused: u64,
    pub last_reload_at: Option<SystemTime>,
    /// Why the last refused version was refused, until a reload succeeds.
    pub last_error: Option<String>,
}

/// A named plugin slot: the version serving now, its reload history and an
/// optional shadow.
pub struct LivePlugin {
    name: String,
    current: ArcSwap<Version>,
    status: Mutex<ReloadStatus>,
    shadow: ArcSwapOption<Shadow>,
    /// Calls whose version trapped on probation and were made again on the
    /// proven version.
    rescued_calls: AtomicU64,
}

impl LivePlugin {
    /// Calls whose version trapped on probation and were made again on the
    /// proven version, since the plugin started.
    pub fn rescued_calls(&self) -> u64 {
        self.rescued_calls.load(Relaxed)
    }

    pub fn new(name: impl Into<String>, first: Arc<Version>) -> Arc<LivePlugin> {
        Arc::new(LivePlugin {
            name: name.into(),
            current: ArcSwap::new(first),
            status: Mutex::default(),
            shadow: ArcSwapOption::empty(),
            rescued_calls: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version serving now.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Puts `next` in service at once, on probation until its first call.
    pub fn install(&self, next: Arc<Version>) {
        let previous = self.current.load_full();
        // If the version being replaced is itself unproven, the one to fall
        // back on is still the proven one behind it.
        let proven = match previous.probation.load(Relaxed) {
            true => previous.take_fallback().unwrap_or(previous),
            false => previous,
        };
        *next.fallback.lock() = Some(proven);
        next.probation.store(true, Relaxed);
        self.current.store(next.clone());
        let mut status = self.lock_status();
        status.reloads += 1;
        status.last_reload_at = Some(next.loaded_at);
        status.last_error = None;
        tracing::info!(plugin = %self.name, version = %next.short_hash(), "new version serving");
    }

    /// Records that a candidate version was not installed, and why.
    pub fn refuse(&self, reason: String) {
        tracing::error!(plugin = %self.name, "new version refused, the old one keeps serving: {reason}");
        let mut status = self.lock_status();
        status.refused += 1;
        status.last_error = Some(reason);
    }

    pub fn status(&self) -> ReloadStatus {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> parking_lot::MutexGuard<'_, ReloadStatus> {
        self.status.lock()
    }

    /// Attaches (or with `None` detaches) a shadow.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) {
        self.shadow.store(shadow);
    }

    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.load_full()
    }

    /// Judges a version on probation by the call it just made. Returns the
    /// proven version to call instead when it trapped.
    fn judge(&self, version: &Arc<Version>, handled: &Handled) -> Option<Arc<Version>> {
        if !version.probation.load(Relaxed) {
            return None;
        }
        let (Verdict::Trap(reason) | Verdict::OutOfMemory(reason)) = &handled.verdict else {
            if version.probation.swap(false, Relaxed) {
                version.take_fallback();
            }
            return None;
        };
        let proven = version.fallback.lock().clone()?;
        // Only the first call to see the trap puts the proven one back;
        // concurrent calls of the refused version just retry on it.
        let still_current = Arc::ptr_eq(&self.current.load(), version);
        if still_current && version.probation.swap(false, Relaxed) {
            self.current.store(proven.clone());
            self.refuse(format!(
                "version {} trapped on its first call ({reason}); back to {}",
                version.short_hash(),
                proven.short_hash()
            ));
        }
        Some(proven)
    }
}

#[async_trait]
impl Handler for LivePlugin {
    async fn handle(&self, event: &Event) -> Handled {
        let version = self.current.load_full();
        let mut handled = version.handler.handle(event).await;
        if let Some(proven) = self.judge(&version, &handled) {
            self.rescued_calls.fetch_add(1, Relaxed);
            handled = proven.handler.handle(event).await;
        }
        if let Some(shadow) = self.shadow.load_full() {
            shadow.follow(event, &handled);
        }
        handled
    }

    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled {
        self.current
            .load_full()
            .handler
            .handle_error(failure, event)
            .await
    }

    fn instances_alive(&self) -> usize {
        self.current.load().handler.instances_alive()
    }

    fn fast_path_left(&self) -> u64 {
        self.current.load().handler.fast_path_left()
    }

    fn version(&self) -> Option<String> {
        self.current.load().handler.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a fixed verdict and counts its calls.
    struct Fixed(Verdict, AtomicU64);

    #[async_trait]
    impl Handler for Fixed {
        async fn handle(&self, _: &Event) -> Handled {
            self.1.fetch_add(1, Relaxed);
            Handled::verdict(self.0.clone())
        }
        async fn handle_error(&self, _: &Failure, _: Option<&Event>) -> ErrorHandled {
            Ok(Vec::new())
        }
    }

    fn fixed(v: Verdict) -> Arc<Fixed> {
        Arc::new(Fixed(v, AtomicU64::new(0)))
    }

    fn event() -> Event {
        Event::new("e", Vec::new())
    }

    #[tokio::test]
    async fn a_version_that_traps_on_its_first_call_is_replaced_by_the_proven_one() {
        let good = fixed(Verdict::Done);
        let bad = fixed(Verdict::Trap("boom".into()));
        let live = LivePlugin::new("p", Version::new(good.clone(), "aaa"));
        live.install(Version::new(bad.clone(), "bbb"));
        let handled = live.handle(&event()).await;
        assert_eq!(handled.verdict, Verdict::Done, "the call is made again");
        assert_eq!(live.current().sha256, "aaa");
        assert_eq!(bad.1.load(Relaxed), 1);
        assert_eq!(good.1.load(Relaxed), 1);
        let status = live.status();
        assert_eq!(status.refused, 1);
        assert!(status.last_error.unwrap().contains("bbb"));
    }

    #[tokio::test]
    async fn a_version_proven_by_its_first_call_stays_even_if_it_traps_later() {
        let good = fixed(Verdict::Done);
        let live = LivePlugin::new("p", Version::new(fixed(Verdict::Done), "aaa"));
        live.install(Version::new(good.clone(), "bbb"));
        live.handle(&event()).await;
        assert_eq!(live.current().sha256, "bbb");
        assert!(live.current().take_fallback().is_none(), "nothing kept");
    }

    #[tokio::test]
    async fn an_unproven_version_replaced_again_falls_back_to_the_proven_one() {
        let proven = fixed(Verdict::Done);
        let live = LivePlugin::new("p", Version::new(proven.clone(), "aaa"));
        live.install(Version::new(fixed(Verdict::Done), "bbb"));
        live.install(Version::new(fixed(Verdict::Trap("x".into())), "ccc"));
        live.handle(&event()).await;
        assert_eq!(live.current().sha256, "aaa");
        assert_eq!(proven.1.load(Relaxed), 1);
    }
}
