//! The seed's Subscriber: delivery semantics, written once for every backend.
//!
//! One [`Subscriber`] consumes a plugin's streams through its consumer group
//! and owns everything between "an entry arrived" and "it is acknowledged":
//! decoding, the name filter, counting attempts, retries with backoff, the
//! error handler, dead-lettering, publishing what a handler emitted, and
//! batched acks. An entry is acknowledged only after its final outcome (done,
//! dead-lettered or skipped), so a process that dies leaves it pending for
//! another consumer to reclaim: at-least-once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Delivery, Entry, EVENT_FIELD};
use crate::config::Backoff;
use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::handler::{Failure, FailureKind, Handler, Verdict};
use crate::publisher::Publisher;
use crate::routes::name_matches;
use crate::stats::Stats;

/// What one subscriber consumes and how it treats failures.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Names the subscriber in logs and dead letters (the plugin's name).
    pub plugin: String,
    pub group: String,
    pub consumer: String,
    pub streams: Vec<String>,
    /// Event-name patterns to handle; empty means every event.
    pub events: Vec<String>,
    /// Handler calls running at once.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Entries taken per read (Redis `COUNT`).
    pub read_count: usize,
    /// How long a read waits for entries (Redis `BLOCK`).
    pub block: Duration,
    /// Entries pending longer than this in the group are presumed abandoned
    /// by a dead consumer and reclaimed. Must exceed the longest handling
    /// (time limit × attempts + backoff), which [`Subscriber`] keeps fresh for
    /// its own in-flight entries anyway.
    pub claim_min_idle: Duration,
    /// Template of the dead-letter stream, `{stream}` being the source.
    pub dead_letter: String,
    /// How long a successfully handled event id is remembered, so that a
    /// redelivery of it is acknowledged without a call. `None`: off.
    pub dedup_window: Option<Duration>,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| name_matches(p, name))
    }

    /// Entries taken but not finished: running, waiting for a permit, or
    /// waiting out a backoff. Bounded so that retries cannot pile up, and
    /// large enough for a full read on top of the calls running.
    fn max_in_flight(&self) -> usize {
        self.read_count + self.concurrency * 2
    }
}

/// Consumes one subscription with one handler.
pub struct Subscriber {
    broker: Arc<dyn Broker>,
    publisher: Publisher,
    sub: Subscription,
    stats: Arc<Stats>,
}

/// Where an entry lives, for acks and keep-alives.
type EntryRef = (String, String);

struct Shared {
    broker: Arc<dyn Broker>,
    publisher: Publisher,
    sub: Subscription,
    stats: Arc<Stats>,
    handler: Arc<dyn Handler>,
    /// Permits to call the handler, taken before an instance is.
    calls: Semaphore,
    acks: mpsc::UnboundedSender<EntryRef>,
    in_flight: std::sync::Mutex<HashMap<EntryRef, ()>>,
    shutdown: CancellationToken,
}

impl Subscriber {
    pub fn new(
        broker: Arc<dyn Broker>,
        publisher: Publisher,
        sub: Subscription,
        stats: Arc<Stats>,
    ) -> Self {
        Subscriber {
            broker,
            publisher,
            sub,
            stats,
        }
    }

    /// Consumes until `shutdown` is cancelled, then stops reading, lets
    /// in-flight events finish, flushes acks and returns. An event caught in
    /// a backoff wait at shutdown stays pending, to be delivered again.
    pub async fn consume(
        self,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(ack_loop(
            self.broker.clone(),
            self.sub.group.clone(),
            ack_rx,
        ));
        let shared = Arc::new(Shared {
            broker: self.broker,
            publisher: self.publisher,
            calls: Semaphore::new(self.sub.concurrency),
            sub: self.sub,
            stats: self.stats,
            handler,
            acks: ack_tx,
            in_flight: Default::default(),
            shutdown: shutdown.clone(),
        });
        let slots = Arc::new(Semaphore::new(shared.sub.max_in_flight()));
        let batch = (shared.sub.read_count / 2).clamp(1, shared.sub.max_in_flight()) as u32;
        let mut tasks = JoinSet::new();
        let mut read_failures = 0u32;
        let mut last_maintenance = Instant::now();
        let maintenance_every = (shared.sub.claim_min_idle / 3).max(Duration::from_millis(10));
        // Keep-alives run on their own, not in the read loop: when every slot
        // is taken by long handlers the loop waits for room, and that is
        // exactly when in-flight entries must not look abandoned. They go on
        // while draining, and stop once the last delivery has finished.
        let drained = CancellationToken::new();
        let keep_alive = tokio::spawn({
            let (shared, drained) = (shared.clone(), drained.clone());
            async move {
                let mut tick = tokio::time::interval(maintenance_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = drained.cancelled() => return,
                        _ = tick.tick() => shared.keep_in_flight_alive().await,
                    }
                }
            }
        });

        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(plugin = %shared.sub.plugin, "delivery task failed: {e}");
                }
            }
            // Read in batches: wait until a good part of a batch has room
            // (at once when idle), so that a busy consumer makes a few large
            // reads rather than many reads of one entry.
            let mut room = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_many_owned(batch) => permit.expect("never closed"),
            };
            while room.num_permits() < shared.sub.read_count {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => room.merge(p),
                    Err(_) => break,
                }
            }

            let mut deliveries = Vec::new();
            if last_maintenance.elapsed() >= maintenance_every {
                last_maintenance = Instant::now();
                deliveries = shared.reclaim(room.num_permits()).await;
            }
            if deliveries.is_empty() {
                let read = shared.broker.read(
                    &shared.sub.group,
                    &shared.sub.consumer,
                    &shared.sub.streams,
                    room.num_permits(),
                    shared.sub.block.min(maintenance_every),
                );
                let result = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = read => r,
                };
                match result {
                    Ok(d) => {
                        if read_failures > 0 {
                            tracing::info!(plugin = %shared.sub.plugin, "reading again after {read_failures} failures");
                        }
                        read_failures = 0;
                        deliveries = d;
                    }
                    Err(e) => {
                        read_failures += 1;
                        let wait = Backoff::default().delay(read_failures.min(8));
                        tracing::warn!(plugin = %shared.sub.plugin, "read failed (retrying in {wait:?}): {e:#}");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                }
            }
            for delivery in deliveries {
                // A backend may hand over more than asked (Redis applies
                // COUNT per stream): those entries are ours now, so wait for
                // room rather than drop them.
                let permit = match room.split(1) {
                    Some(p) => p,
                    None => slots.clone().acquire_owned().await.expect("never closed"),
                };
                let shared = shared.clone();
                tasks.spawn(async move { shared.deliver(delivery, permit).await });
            }
        }

        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(plugin = %shared.sub.plugin, "delivery task failed: {e}");
            }
        }
        drained.cancel();
        keep_alive.await?;
        drop(shared);
        acker.await?;
        Ok(())
    }
}

impl Shared {
    async fn deliver(self: Arc<Self>, delivery: Delivery, _slot: OwnedSemaphorePermit) {
        let key = (delivery.stream.clone(), delivery.entry.id.clone());
        self.lock_in_flight().insert(key.clone(), ());
        let finished = self.deliver_inner(&delivery).await;
        self.lock_in_flight().remove(&key);
        if finished {
            let _ = self.acks.send(key);
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<EntryRef, ()>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs an entry to its final outcome. Returns whether it may be acked;
    /// `false` leaves it pending (shutdown mid-way).
    async fn deliver_inner(&self, delivery: &Delivery) -> bool {
        let stats = &self.stats;
        let mut event = match decode(&delivery.entry) {
            Ok(event) => event,
            Err(reason) => {
                let failure = Failure {
                    message: reason.clone(),
                    kind: FailureKind::Decode,
                    attempt: delivery.deliveries,
                    is_last_attempt: true,
                    event_id: String::new(),
                    correlation_id: String::new(),
                };
                tracing::warn!(plugin = %self.sub.plugin, stream = %delivery.stream, entry = %delivery.entry.id, "{reason}");
                Stats::bump(&stats.failed);
                self.report(&failure, None).await;
                return self
                    .dead_letter(delivery, FailureKind::Decode, &reason, delivery.deliveries)
                    .await;
            }
        };
        if !self.sub.wants(&event.name) {
            Stats::bump(&stats.skipped);
            return true;
        }
        let dedup_key = self
            .sub
            .dedup_window
            .map(|_| format!("runnel:handled:{}:{}", self.sub.group, event.id));
        if let Some(key) = &dedup_key {
            match self.broker.is_marked(key).await {
                Ok(true) => {
                    Stats::bump(&stats.deduplicated);
                    tracing::debug!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, "already handled within the dedup window: acked without a call");
                    return true;
                }
                Ok(false) => {}
                // Better a possible duplicate than a stalled stream.
                Err(e) => {
                    tracing::warn!(plugin = %self.sub.plugin, "dedup check failed, handling anyway: {e:#}")
                }
            }
        }
        // Deliveries beyond the first are attempts a dead consumer made but
        // could not record: count them, so a poison event that kills its
        // process still reaches its last attempt.
        let mut attempts = event.meta.attempts.saturating_add(delivery.deliveries - 1);
        if attempts >= self.sub.max_attempts {
            let reason = format!(
                "already attempted {attempts} times (max {}): delivered {} times, its consumers likely died handling it",
                self.sub.max_attempts, delivery.deliveries
            );
            let failure = Failure {
                message: reason.clone(),
                kind: FailureKind::HandlerError,
                attempt: attempts,
                is_last_attempt: true,
                event_id: event.id.clone(),
                correlation_id: event.meta.correlation_id.clone(),
            };
            Stats::bump(&stats.failed);
            self.report(&failure, Some(&event)).await;
            return self
                .dead_letter(delivery, FailureKind::HandlerError, &reason, attempts)
                .await;
        }

        loop {
            attempts += 1;
            event.meta.attempts = attempts;
            let handled = {
                let _call = self.calls.acquire().await.expect("never closed");
                self.handler.handle(&event).await
            };
            let (kind, message) = match handled.verdict.failure_kind() {
                None => {
                    if !self.publish(&handled.emitted, &event).await {
                        return false;
                    }
                    if let (Some(key), Some(window)) = (&dedup_key, self.sub.dedup_window) {
                        if let Err(e) = self.broker.mark(key, window).await {
                            tracing::warn!(plugin = %self.sub.plugin, event_id = %event.id, "recording the event as handled failed: {e:#}");
                        }
                    }
                    Stats::bump(&stats.handled);
                    return true;
                }
                Some((kind, message)) => (kind, message.to_string()),
            };
            Stats::bump(&stats.failed);
            if matches!(handled.verdict, Verdict::Trap(_)) {
                Stats::bump(&stats.traps);
            }
            let last = kind == FailureKind::Rejected || attempts >= self.sub.max_attempts;
            tracing::debug!(
                plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id,
                attempt = attempts, last, kind = kind.as_str(), "attempt failed: {message}"
            );
            let failure = Failure {
                message: message.clone(),
                kind,
                attempt: attempts,
                is_last_attempt: last,
                event_id: event.id.clone(),
                correlation_id: event.meta.correlation_id.clone(),
            };
            self.report(&failure, last.then_some(&event)).await;
            if last {
                return self.dead_letter(delivery, kind, &message, attempts).await;
            }
            Stats::bump(&stats.retried);
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.sub.backoff.delay(attempts)) => {}
            }
        }
    }

    async fn report(&self, failure: &Failure, event: Option<&Event>) {
        let _call = self.calls.acquire().await.expect("never closed");
        if let Err(e) = self.handler.handle_error(failure, event).await {
            Stats::bump(&self.stats.error_handler_failures);
            Stats::bump(&self.stats.traps);
            tracing::warn!(plugin = %self.sub.plugin, "handle-error failed: {e}");
        }
    }

    /// Publishes what a successful call emitted, retrying a failing backend.
    async fn publish(&self, emitted: &[(String, Event)], cause: &Event) -> bool {
        let mut failures = 0;
        loop {
            match self.publisher.publish(emitted).await {
                Ok(()) => return true,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(plugin = %self.sub.plugin, event_id = %cause.id, correlation_id = %cause.meta.correlation_id, "publishing emitted events failed: {e:#}");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Backoff::default().delay(failures.min(8))) => {}
            }
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        kind: FailureKind,
        reason: &str,
        attempts: u32,
    ) -> bool {
        let letter = DeadLetter {
            source_stream: &delivery.stream,
            entry: &delivery.entry,
            plugin: &self.sub.plugin,
            kind,
            reason,
            attempts,
        };
        let append = crate::broker::Append {
            stream: self.sub.dead_letter.replace("{stream}", &delivery.stream),
            fields: letter.fields(),
        };
        let mut failures = 0;
        loop {
            match self.broker.append(vec![append.clone()]).await {
                Ok(_) => break,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(plugin = %self.sub.plugin, "dead-lettering failed: {e:#}");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Backoff::default().delay(failures.min(8))) => {}
            }
        }
        Stats::bump(&self.stats.dead_lettered);
        tracing::info!(plugin = %self.sub.plugin, stream = %delivery.stream, entry = %delivery.entry.id, attempts, kind = kind.as_str(), "dead-lettered: {reason}");
        true
    }

    /// Keeps this consumer's in-flight entries from looking abandoned.
    async fn keep_in_flight_alive(&self) {
        if self.lock_in_flight().is_empty() {
            return;
        }
        let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
        for (stream, id) in self.lock_in_flight().keys() {
            by_stream
                .entry(stream.clone())
                .or_default()
                .push(id.clone());
        }
        for (stream, ids) in by_stream {
            let touched = self
                .broker
                .touch(&stream, &self.sub.group, &self.sub.consumer, &ids)
                .await;
            if let Err(e) = touched {
                tracing::warn!(plugin = %self.sub.plugin, "keeping in-flight entries: {e:#}");
            }
        }
    }

    /// Takes over entries abandoned by dead consumers of the group.
    async fn reclaim(&self, count: usize) -> Vec<Delivery> {
        let mut claimed = Vec::new();
        for stream in &self.sub.streams {
            let left = count - claimed.len();
            if left == 0 {
                break;
            }
            match self
                .broker
                .claim_idle(
                    stream,
                    &self.sub.group,
                    &self.sub.consumer,
                    self.sub.claim_min_idle,
                    left,
                )
                .await
            {
                Ok(d) => claimed.extend(d),
                Err(e) => {
                    tracing::warn!(plugin = %self.sub.plugin, "reclaiming from {stream}: {e:#}")
                }
            }
        }
        let busy = self.lock_in_flight();
        claimed.retain(|d| !busy.contains_key(&(d.stream.clone(), d.entry.id.clone())));
        if !claimed.is_empty() {
            tracing::info!(plugin = %self.sub.plugin, count = claimed.len(), "reclaimed entries abandoned by another consumer");
        }
        claimed
    }
}

/// The event of an entry, read the way the Go library reads it: the first
/// field's value, whatever its name.
pub fn decode(entry: &Entry) -> Result<Event, String> {
    let Some((name, value)) = entry.fields.first() else {
        return Err(format!("entry {} has no fields", entry.id));
    };
    Event::from_json(value).map_err(|e| {
        let field = if name == EVENT_FIELD {
            String::new()
        } else {
            format!(" (field {name:?})")
        };
        format!("entry {}{field}: {e}", entry.id)
    })
}

/// Sends acks in batches: whatever has queued up goes in one call per stream.
async fn ack_loop(
    broker: Arc<dyn Broker>,
    group: String,
    mut rx: mpsc::UnboundedReceiver<EntryRef>,
) {
    const BATCH: usize = 512;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
        for (stream, id) in batch.drain(..) {
            by_stream.entry(stream).or_default().push(id);
        }
        for (stream, ids) in by_stream {
            let mut failures = 0;
            while let Err(e) = broker.ack(&group, &stream, &ids).await {
                failures += 1;
                tracing::warn!(%group, %stream, "ack failed, retrying: {e:#}");
                if failures >= 10 {
                    // The entries stay pending and will be delivered again:
                    // duplicates, never losses.
                    tracing::error!(%group, %stream, count = ids.len(), "giving up acking; entries will be redelivered");
                    break;
                }
                tokio::time::sleep(Backoff::default().delay(failures)).await;
            }
        }
    }
}
