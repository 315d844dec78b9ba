//! One entry from arrival to final outcome: decode, filter, deduplicate,
//! attempts with backoff, the error handler, publish or dead-letter.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::{EntryRef, Shared};
use crate::broker::{Delivery, Entry, EVENT_FIELD};
use crate::config::Backoff;
use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::handler::{Failure, FailureKind, Verdict};
use crate::stats::Stats;

impl Shared {
    pub(super) async fn deliver(self: Arc<Self>, delivery: Delivery, _slot: OwnedSemaphorePermit) {
        let key = (delivery.stream.clone(), delivery.entry.id.clone());
        self.lock_in_flight().insert(key.clone(), ());
        let finished = self.deliver_inner(&delivery).await;
        self.lock_in_flight().remove(&key);
        if finished {
            let _ = self.acks.send(key);
        }
    }

    pub(super) fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<EntryRef, ()>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs an entry to its final outcome. Returns whether it may be acked;
    /// `false` leaves it pending (shutdown mid-way).
    async fn deliver_inner(&self, delivery: &Delivery) -> bool {
        let stats = &self.stats;
        let decoded = match delivery.entry.fields.first() {
            Some((_, value)) if value.len() > self.sub.max_envelope_bytes => Err(format!(
                "entry {}: envelope of {} bytes is larger than the limit of {} (max_payload_bytes)",
                delivery.entry.id,
                value.len(),
                self.sub.max_envelope_bytes
            )),
            _ => decode(&delivery.entry),
        };
        let mut event = match decoded {
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
                    .dead_letter(
                        delivery,
                        None,
                        FailureKind::Decode,
                        &reason,
                        delivery.deliveries,
                    )
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
                .dead_letter(
                    delivery,
                    Some(&event),
                    FailureKind::HandlerError,
                    &reason,
                    attempts,
                )
                .await;
        }

        loop {
            attempts += 1;
            event.meta.attempts = attempts;
            let handled = {
                // While the breaker is open the event waits here, in flight
                // and pending, its attempts untouched.
                // Biased: a closed breaker admits at once, and an event must
                // not be abandoned at shutdown just because both were ready.
                tokio::select! {
                    biased;
                    _ = self.breaker.admit() => {}
                    _ = self.shutdown.cancelled() => return false,
                }
                let _call = self.calls.acquire().await.expect("never closed");
                let started = std::time::Instant::now();
                let handled = self.handler.handle(&event).await;
                stats.latency.observe(started.elapsed().as_secs_f64());
                handled
            };
            let speaks_of_the_plugin = match handled.verdict {
                Verdict::Done => Some(true),
                Verdict::Reject(_) => None,
                _ => Some(false),
            };
            self.breaker.record(&self.sub.plugin, speaks_of_the_plugin);
            let (kind, message) = match handled.verdict.failure_kind() {
                None => {
                    if !self.publish(&handled.emitted, &event).await {
                        return false;
                    }
                    if let (Some(key), Some(window)) = (&dedup_key, self.sub.dedup_window) {
                        if let Err(e) = self.broker.mark(key, window).await {
                            tracing::warn!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, "recording the event as handled failed: {e:#}");
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
                return self
                    .dead_letter(delivery, Some(&event), kind, &message, attempts)
                    .await;
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
            tracing::warn!(plugin = %self.sub.plugin, event_id = %failure.event_id, correlation_id = %failure.correlation_id, "handle-error failed: {e}");
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
        event: Option<&Event>,
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
        let (event_id, correlation_id) = event.map_or(("", ""), |e| {
            (e.id.as_str(), e.meta.correlation_id.as_str())
        });
        tracing::info!(plugin = %self.sub.plugin, stream = %delivery.stream, entry = %delivery.entry.id, event_id, correlation_id, attempts, kind = kind.as_str(), "dead-lettered: {reason}");
        true
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
