//! One entry from arrival to final outcome: decode, filter, deduplicate,
//! attempts with backoff, the error handler, publish or dead-letter.
//!
//! A lane runs an entry through its calls; what only waits (a backoff, a
//! publish round trip) is handed to a task of its own so that the lane goes
//! on calling the handler.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

use super::in_flight::InFlightEntry;
use super::throttle::left_out_note;
use super::{backend_pause, Shared};
use crate::broker::{Delivery, Entry, EVENT_FIELD};
use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::handler::{Failure, FailureKind, Routed, Verdict};
use crate::kv::{Commit, KvEffects, Mark, NotSent, Outcome, Source};
use crate::publisher::{causal_depth, emitted_entries, Lineage};
use crate::stats::Stats;

/// An entry this consumer took, on its way to its final outcome.
pub(super) struct Job {
    pub delivery: Delivery,
    /// Its place in the in-flight ledger, from the read until the job ends
    /// (kept alive meanwhile, even while it waits for a lane).
    pub in_flight: InFlightEntry,
    /// Its share of the in-flight budget, given back when the job is dropped.
    pub _slot: OwnedSemaphorePermit,
    /// Set when it comes back to a lane after a wait: what to do next.
    pub resume: Option<Resume>,
    /// Times its calls were run again after a key-value conflict.
    pub reruns: u32,
    /// Times its commit found a stream it emits to full.
    pub busy: u32,
    /// Its trace span (`process <stream>`), ended when the job is;
    /// [`tracing::Span::none`] unless traces are exported.
    pub span: tracing::Span,
}

/// Where a job that left its lane to wait picks up again.
pub(super) enum Resume {
    /// Call the handler: the event as decoded, and the attempts made so
    /// far (after a backoff, or a conflict that does not count as one).
    Call(Event, u32),
    /// The attempt that succeeded could not be committed: it counts as a
    /// failed one (`retry`), with this reason.
    Failed(Event, u32, String),
}

/// Times a call is run again after key-value conflicts before the conflict
/// counts as a failed attempt. Within a host, calls on one key take turns
/// and rarely conflict; across hosts, two that hammer one key conflict
/// often (measured: about 250 reruns per 600 events with two hosts, and
/// with 10 as the bound about one event in 1800 ran out of reruns). The
/// pauses between reruns grow to 16 ms, so 30 reruns wait at most about
/// 0.4 s before the plugin's backoff takes over.
const MAX_CONFLICT_RERUNS: u32 = 30;

/// Where a job goes next.
enum Step {
    /// Another attempt: call the handler.
    Call(Event, u32),
    /// The call succeeded and left work that waits on the backend: publish
    /// what it emitted (with where it comes from), record the event id in
    /// the dedup window.
    Publish(Event, Vec<Routed>, Lineage),
    /// The call succeeded and used key-value state: queue its writes, its
    /// emits and the ack to commit in one step (attempts made, including
    /// this one).
    Commit(Event, u32, Commit),
    /// Call again after the backoff.
    Retry(Event, u32),
    /// Final: acknowledge (`true`) or leave pending (`false`, shutdown).
    Finished(bool),
}

impl Shared {
    /// Takes a job as far as a lane should: through its calls, but not
    /// through waits. A backoff or a publish round trip goes on in a task of
    /// its own, so that the lane can call the handler for the next entry.
    pub(super) async fn run(self: &Arc<Self>, mut job: Job) {
        let mut step = match job.resume.take() {
            Some(Resume::Call(event, attempts)) => Step::Call(event, attempts),
            Some(Resume::Failed(event, attempts, reason)) => {
                self.failed(&job.delivery, event, attempts, Verdict::Retry(reason))
                    .instrument(job.span.clone())
                    .await
            }
            None => self.start(&job.delivery).instrument(job.span.clone()).await,
        };
        loop {
            step = match step {
                Step::Call(event, attempts) => {
                    self.attempt(&job.delivery, &job.span, event, attempts)
                        .instrument(job.span.clone())
                        .await
                }
                Step::Finished(ack) => return self.finish(job, ack),
                Step::Publish(event, emitted, lineage) => {
                    let shared = self.clone();
                    return self.spawn_wait(async move {
                        let published = shared.publish(&emitted, &event, &lineage).await;
                        if published {
                            shared.remember_handled(&job.delivery.stream, &event).await;
                        }
                        shared.finish(job, published);
                    });
                }
                Step::Commit(event, attempts, commit) => {
                    return self.queue_commit(job, event, attempts, commit);
                }
                Step::Retry(event, attempts) => {
                    if self.shutdown.is_cancelled() {
                        return self.finish(job, false);
                    }
                    let (shared, delay) = (self.clone(), self.sub.backoff.delay(attempts));
                    return self.spawn_wait(async move {
                        tokio::select! {
                            biased;
                            _ = shared.shutdown.cancelled() => shared.finish(job, false),
                            _ = tokio::time::sleep(delay) => {
                                job.resume = Some(Resume::Call(event, attempts));
                                shared.enqueue(vec![job]);
                            }
                        }
                    });
                }
            };
        }
    }

    /// Hands jobs to the lanes. Once the lanes are closed (shutdown), a job
    /// is left pending, to be delivered again.
    pub(super) fn enqueue(&self, jobs: Vec<Job>) {
        if let Err(refused) = self.queue.push_all(jobs) {
            for job in refused {
                self.finish(job, false);
            }
        }
    }

    /// Runs `work` beside the lanes; dropped once the subscriber abandons
    /// what is unfinished.
    fn spawn_wait(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let abandon = self.abandon.clone();
        self.waits.spawn(async move {
            tokio::select! {
                biased;
                _ = abandon.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// The job is over: it is no longer in flight, and if it reached a final
    /// outcome it is acknowledged. Its slot is given back.
    fn finish(&self, job: Job, ack: bool) {
        crate::telemetry::end_delivery(&job.span, ack);
        let key = job.in_flight.release();
        if ack {
            let _ = self.acks.send(key);
        }
    }

    /// Queues the commit of a successful call that used key-value state,
    /// and settles the job when its outcome comes. Here on the lane, not in
    /// a wait: queueing lets go of the call's key locks, and the next call
    /// on those keys is waiting for them.
    fn queue_commit(self: &Arc<Self>, job: Job, event: Event, attempts: u32, commit: Commit) {
        let (shared, awaited) = (self.clone(), self.commits.token());
        self.kv.enqueue_then(
            commit,
            Box::new(move |result| {
                let _awaited = awaited;
                shared.settled(job, event, attempts, result);
            }),
        );
    }

    /// The commit of a successful call that used key-value state: its
    /// writes, its emits and the ack of its entry, as one step.
    fn commit_of(
        &self,
        delivery: &Delivery,
        event: &Event,
        emitted: Vec<Routed>,
        lineage: &Lineage,
        effects: KvEffects,
    ) -> Commit {
        // The dedup mark commits with the writes: set after them, a crash
        // or a duplicate handled meanwhile could apply the event twice.
        let mark = match (
            self.dedup_key(&delivery.stream, event),
            self.sub.dedup_window,
        ) {
            (Some(key), Some(ttl)) => Some(Mark { key, ttl }),
            _ => None,
        };
        Commit {
            source: Some(Source {
                stream: delivery.stream.clone(),
                group: self.sub.group.clone(),
                consumer: self.sub.consumer.clone(),
                id: delivery.entry.id.clone(),
            }),
            effects,
            appends: emitted_entries(&emitted, lineage),
            mark,
        }
    }

    /// A queued commit's outcome, on the task that sends commits: the
    /// usual ones (committed, a duplicate, custody lost) end the job here;
    /// the rest wait (a backend that did not answer, a conflict's pause)
    /// in a task of their own.
    fn settled(
        self: &Arc<Self>,
        job: Job,
        event: Event,
        attempts: u32,
        result: Result<Outcome, NotSent>,
    ) {
        if let Ok(outcome @ (Outcome::Committed | Outcome::Duplicate | Outcome::NotHeld)) = result {
            return self.concluded(job, &event, outcome);
        }
        let shared = self.clone();
        self.spawn_wait(async move { shared.settle(job, event, attempts, result).await });
    }

    /// The job ends with its commit's outcome: committed (acknowledged and,
    /// with a dedup window, marked by the commit itself), a duplicate
    /// (acknowledged only), or not held (another consumer's now).
    fn concluded(&self, job: Job, event: &Event, outcome: Outcome) {
        match outcome {
            Outcome::Committed => {
                Stats::bump(&self.stats.kv_commits);
                Stats::bump(&self.stats.handled);
                self.finish(job, false);
            }
            Outcome::Duplicate => {
                Stats::bump(&self.stats.deduplicated);
                tracing::debug!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, "handled already within the dedup window: acknowledged, nothing committed");
                self.finish(job, false);
            }
            Outcome::NotHeld => {
                tracing::info!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, entry = %job.delivery.entry.id, "not committed: the entry is no longer this consumer's (another consumer took it over, or it is acknowledged already)");
                self.finish(job, false);
            }
            // Callers settle these themselves.
            Outcome::Conflict { .. } | Outcome::Failed(_) | Outcome::Busy => {
                unreachable!("not a final outcome: {outcome:?}")
            }
        }
    }

    /// Settles a commit's outcome, sending the commit again while the
    /// backend does not answer (a commit applied whose answer was lost
    /// finds its entry acknowledged). A conflict runs the call again on
    /// fresh state.
    async fn settle(
        self: &Arc<Self>,
        mut job: Job,
        event: Event,
        attempts: u32,
        first: Result<Outcome, NotSent>,
    ) {
        let mut result = Ok(first);
        let mut failures = 0;
        let outcome = loop {
            // Not given up at shutdown: a commit on its way is applied or
            // not whatever this task does, and its outcome comes within a
            // round trip (draining waits for it; the shutdown deadline
            // abandons it).
            let commit = match result {
                Ok(Ok(outcome)) => break outcome,
                Ok(Err(NotSent { error, commit })) => {
                    tracing::warn!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, "committing key-value writes failed, retrying: {error:#}");
                    commit
                }
                Err(_) => None,
            };
            let Some(commit) = commit else {
                // The queue is gone (the runtime is stopping): the entry
                // stays pending, to be delivered again.
                return self.finish(job, false);
            };
            failures += 1;
            if !backend_pause(failures, &self.shutdown).await {
                return self.finish(job, false);
            }
            result = self.kv.enqueue(*commit).await;
        };
        match outcome {
            Outcome::Committed | Outcome::Duplicate | Outcome::NotHeld => {
                self.concluded(job, &event, outcome)
            }
            Outcome::Conflict { bucket, key } => {
                Stats::bump(&self.stats.kv_conflicts);
                job.reruns += 1;
                if job.reruns > MAX_CONFLICT_RERUNS {
                    let reason = format!("key {key:?} of {bucket} kept changing under the call: {MAX_CONFLICT_RERUNS} runs in a row lost to a concurrent commit");
                    job.reruns = 0;
                    job.resume = Some(Resume::Failed(event, attempts, reason));
                    return self.enqueue(vec![job]);
                }
                tracing::debug!(plugin = %self.sub.plugin, event_id = %event.id, %bucket, key, "key-value conflict: running the call again on fresh state");
                // A short random pause spreads out calls racing for one key.
                let pause = std::time::Duration::from_micros(fastrand::u64(
                    0..(250u64 << job.reruns.min(6)),
                ));
                tokio::select! {
                    _ = self.shutdown.cancelled() => return self.finish(job, false),
                    _ = tokio::time::sleep(pause) => {}
                }
                job.resume = Some(Resume::Call(event, attempts - 1));
                self.enqueue(vec![job]);
            }
            Outcome::Failed(reason) => {
                job.resume = Some(Resume::Failed(
                    event,
                    attempts,
                    format!("committing key-value writes failed: {reason}"),
                ));
                self.enqueue(vec![job]);
            }
            Outcome::Busy => {
                // Backpressure: a stream the call emits to is full. Wait
                // (pending, in flight) and run the call again; not an
                // attempt, and not a conflict either.
                let pauses = job.busy;
                job.busy += 1;
                if !backend_pause(pauses, &self.shutdown).await {
                    return self.finish(job, false);
                }
                job.resume = Some(Resume::Call(event, attempts - 1));
                self.enqueue(vec![job]);
            }
        }
    }

    /// The idempotency key of an event read from `stream`, when this
    /// subscription keeps a dedup window: `runnel:handled:<group>:<id>`,
    /// with the stream's Redis Cluster hash tag, if it has one, before the
    /// group (`runnel:handled:{orders}:<group>:<id>`), so that the mark
    /// lives in the stream's slot and commits with its ack.
    fn dedup_key(&self, stream: &str, event: &Event) -> Option<String> {
        let tag = match crate::broker::redis::slots::tag_prefix(stream) {
            t if t.is_empty() => t,
            t => format!("{t}:"),
        };
        self.sub
            .dedup_window
            .map(|_| format!("runnel:handled:{tag}{}:{}", self.sub.group, event.id))
    }

    /// From arrival to the first call: decode, filter, deduplicate, and
    /// count the deliveries a dead consumer could not record.
    async fn start(&self, delivery: &Delivery) -> Step {
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
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => {
                tracing::warn!(plugin = %self.sub.plugin, stream = %delivery.stream, entry = %delivery.entry.id, "{reason}");
                let attempt = delivery.deliveries;
                return self
                    .give_up(delivery, None, FailureKind::Decode, reason, attempt)
                    .await;
            }
        };
        if !self.sub.wants(&event.name) {
            Stats::bump(&stats.skipped);
            return Step::Finished(true);
        }
        let depth = causal_depth(&delivery.entry);
        if depth > self.sub.max_chain_depth {
            let reason = format!(
                "causal chain too deep: this event is {depth} emits away from the event that started the chain (correlation id {:?}), past max_chain_depth = {}; plugins emitting in a cycle?",
                event.meta.correlation_id, self.sub.max_chain_depth
            );
            return self
                .give_up(delivery, Some(&event), FailureKind::ChainDepth, reason, 0)
                .await;
        }
        if let Some(key) = self.dedup_key(&delivery.stream, &event) {
            match self.broker.is_marked(&key).await {
                Ok(true) => {
                    Stats::bump(&stats.deduplicated);
                    tracing::debug!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, "already handled within the dedup window: acked without a call");
                    return Step::Finished(true);
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
        let attempts = event.meta.attempts.saturating_add(delivery.deliveries - 1);
        if attempts >= self.sub.max_attempts {
            let reason = format!(
                "already attempted {attempts} times (max {}): delivered {} times, its consumers likely died handling it",
                self.sub.max_attempts, delivery.deliveries
            );
            return self
                .give_up(
                    delivery,
                    Some(&event),
                    FailureKind::HandlerError,
                    reason,
                    attempts,
                )
                .await;
        }
        Step::Call(event, attempts)
    }

    /// Gives up on an entry before any call: reports the failure to the
    /// error handler as the last attempt, then dead-letters it.
    async fn give_up(
        &self,
        delivery: &Delivery,
        event: Option<&Event>,
        kind: FailureKind,
        reason: String,
        attempts: u32,
    ) -> Step {
        let failure = Failure::before_call(kind, reason.clone(), attempts, event);
        self.stats.failed(kind);
        self.report(&failure, event).await;
        Step::Finished(
            self.dead_letter(delivery, event, kind, &reason, attempts)
                .await,
        )
    }

    /// One call of the handler and what its verdict leads to; `span` is
    /// the delivery's trace span, the parent of the call's.
    async fn attempt(
        &self,
        delivery: &Delivery,
        span: &tracing::Span,
        mut event: Event,
        attempts: u32,
    ) -> Step {
        let stats = &self.stats;
        let attempts = attempts + 1;
        event.meta.attempts = attempts;
        crate::telemetry::identify(span, &event);
        let call_span = crate::telemetry::call_span(
            span,
            crate::telemetry::Export::Handle,
            &self.sub.plugin,
            &*self.handler,
            attempts,
        );
        let handled = {
            // While the breaker is open the event waits here, in flight
            // and pending, its attempts untouched.
            // Biased: a closed breaker admits at once, and an event must
            // not be abandoned at shutdown just because both were ready.
            tokio::select! {
                biased;
                _ = self.breaker.admit() => {}
                _ = self.shutdown.cancelled() => return Step::Finished(false),
            }
            let _call = self.calls.acquire().await.expect("never closed");
            let started = std::time::Instant::now();
            let handled = {
                self.handler
                    .handle(&event)
                    .instrument(call_span.clone())
                    .await
            };
            stats.call_took(started.elapsed());
            handled
        };
        crate::telemetry::record_verdict(&call_span, &handled.verdict);
        let speaks_of_the_plugin = match handled.verdict {
            Verdict::Done => Some(true),
            Verdict::Reject(_) => None,
            _ => Some(false),
        };
        self.breaker.record(&self.sub.plugin, speaks_of_the_plugin);
        if handled.verdict != Verdict::Done {
            return self
                .failed(delivery, event, attempts, handled.verdict)
                .await;
        }
        let lineage = Lineage {
            depth: causal_depth(&delivery.entry) + 1,
            traceparent: crate::telemetry::traceparent(&call_span),
        };
        // A dry run's writes are never committed (nor checked).
        if !handled.kv.is_empty() && !event.meta.is_dry_run {
            let commit = self.commit_of(delivery, &event, handled.emitted, &lineage, handled.kv);
            return Step::Commit(event, attempts, commit);
        }
        if handled.emitted.is_empty() && self.sub.dedup_window.is_none() {
            Stats::bump(&stats.handled);
            return Step::Finished(true);
        }
        Step::Publish(event, handled.emitted, lineage)
    }

    /// What a failed attempt leads to: the error handler, then another
    /// attempt after the backoff, or the dead-letter stream after the last.
    async fn failed(
        &self,
        delivery: &Delivery,
        event: Event,
        attempts: u32,
        verdict: Verdict,
    ) -> Step {
        let stats = &self.stats;
        let Some(failure) = Failure::of_attempt(&verdict, &event, attempts, self.sub.max_attempts)
        else {
            unreachable!("called for failed attempts only");
        };
        let (kind, last) = (failure.kind, failure.is_last_attempt);
        stats.failed(kind);
        if matches!(verdict, Verdict::Trap(_) | Verdict::OutOfMemory(_)) {
            Stats::bump(&stats.traps);
        }
        // The last attempt's line is the dead letter's.
        if !last {
            if let Some(left_out) = self.log_throttle.admit() {
                tracing::warn!(
                    plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id,
                    attempt = attempts, max_attempts = self.sub.max_attempts, kind = kind.as_str(),
                    "attempt {attempts} of {} failed, retrying in {:?}: {}{}",
                    self.sub.max_attempts, self.sub.backoff.delay(attempts), failure.message, left_out_note(left_out)
                );
            }
        }
        self.report(&failure, last.then_some(&event)).await;
        if last {
            return Step::Finished(
                self.dead_letter(delivery, Some(&event), kind, &failure.message, attempts)
                    .await,
            );
        }
        Stats::bump(&stats.retried);
        Step::Retry(event, attempts)
    }

    /// Records a successfully handled event in the dedup window, and counts
    /// it as handled.
    async fn remember_handled(&self, stream: &str, event: &Event) {
        if let (Some(key), Some(window)) = (self.dedup_key(stream, event), self.sub.dedup_window) {
            if let Err(e) = self.broker.mark(&key, window).await {
                tracing::warn!(plugin = %self.sub.plugin, event_id = %event.id, correlation_id = %event.meta.correlation_id, "recording the event as handled failed: {e:#}");
            }
        }
        Stats::bump(&self.stats.handled);
    }

    /// Tells the plugin's error handler, in a `handle-error` span under
    /// the delivery's (the current span, when traces are on).
    async fn report(&self, failure: &Failure, event: Option<&Event>) {
        let _call = self.calls.acquire().await.expect("never closed");
        let span = crate::telemetry::call_span(
            &tracing::Span::current(),
            crate::telemetry::Export::HandleError,
            &self.sub.plugin,
            &*self.handler,
            failure.attempt,
        );
        let reported = self
            .handler
            .handle_error(failure, event)
            .instrument(span.clone())
            .await;
        if let Err(e) = reported {
            crate::telemetry::record_error_handler_failure(&span);
            Stats::bump(&self.stats.error_handler_failures);
            Stats::bump(&self.stats.traps);
            tracing::warn!(plugin = %self.sub.plugin, event_id = %failure.event_id, correlation_id = %failure.correlation_id, "handle-error failed: {e}");
        }
    }

    /// Publishes what a successful call emitted, `depth` down the causal
    /// chain, retrying a failing backend.
    async fn publish(&self, emitted: &[Routed], cause: &Event, lineage: &Lineage) -> bool {
        let mut failures = 0;
        loop {
            match self.publisher.publish_emitted(emitted, lineage).await {
                Ok(()) => return true,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(plugin = %self.sub.plugin, event_id = %cause.id, correlation_id = %cause.meta.correlation_id, "publishing emitted events failed: {e:#}");
                }
            }
            if !backend_pause(failures, &self.shutdown).await {
                return false;
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
        let source = self.sub.source_of(&delivery.stream);
        let letter = DeadLetter {
            source_stream: source,
            entry: &delivery.entry,
            plugin: &self.sub.plugin,
            group: &self.sub.group,
            kind,
            reason,
            attempts,
        };
        let append = crate::broker::Append {
            stream: self.sub.dead_letter.replace("{stream}", source),
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
            if !backend_pause(failures, &self.shutdown).await {
                return false;
            }
        }
        Stats::bump(&self.stats.dead_lettered);
        let (event_id, correlation_id) = event.map_or(("", ""), |e| {
            (e.id.as_str(), e.meta.correlation_id.as_str())
        });
        if let Some(left_out) = self.log_throttle.admit() {
            tracing::info!(plugin = %self.sub.plugin, stream = %delivery.stream, entry = %delivery.entry.id, event_id, correlation_id, attempts, kind = kind.as_str(), "dead-lettered: {reason}{}", left_out_note(left_out));
        }
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
