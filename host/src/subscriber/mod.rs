//! The seed's Subscriber: delivery semantics, written once for every backend.
//!
//! One [`Subscriber`] consumes a plugin's streams through its consumer group
//! and owns everything between "an entry arrived" and "it is acknowledged":
//! decoding, the name filter, counting attempts, retries with backoff, the
//! error handler, dead-lettering, publishing what a handler emitted, and
//! batched acks. An entry is acknowledged only after its final outcome (done,
//! dead-lettered or skipped), so a process that dies leaves it pending for
//! another consumer to reclaim: at-least-once.
//!
//! One read loop takes entries from the broker and queues them for a few
//! long-lived *lanes*, one per call the handler may run at once: no task per
//! entry, and no lane waits for a permit that another holds.

mod acks;
pub mod breaker;
mod budget;
mod custody;
mod delivery;
mod groups;
mod health;
mod in_flight;
mod queue;
mod throttle;

pub use breaker::Breaker;
use budget::Budget;
pub use delivery::decode;
pub use groups::ensure_group;
use groups::{Positions, TrimWatch};
pub use health::ReadHealth;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Delivery, MissingGroup, StartFrom};
use crate::config::Backoff;
use crate::dead_letter::replay_stream;
use crate::handler::Handler;
use crate::publisher::Publisher;
use crate::routes::name_matches;
use crate::stats::Stats;

/// What a subscriber may hold of entries taken and not finished, in bytes:
/// 16 MiB, about 15 events of 1 MiB, while small events stay bounded by
/// count ([`Subscription::max_in_flight_bytes`]). With 1 MiB events on
/// Redis, 4, 8 and 16 MiB drained equally fast (550-610 MiB/s on the
/// project's machine), 64 MiB 20% slower for twice the memory, no bound
/// 2.8x slower for 15x the memory (BENCHMARKS.md, session 11).
pub const DEFAULT_IN_FLIGHT_BYTES: usize = 16 << 20;

/// What one subscriber consumes and how it treats failures.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Names the subscriber in logs and dead letters (the plugin's name).
    pub plugin: String,
    pub group: String,
    /// Where the group starts when the subscriber has to create it.
    pub start: StartFrom,
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
    /// Events further down a causal chain than this are dead-lettered
    /// without a call (see [`crate::publisher::DEPTH_FIELD`]).
    pub max_chain_depth: u32,
    /// Entries whose envelope is larger than this many bytes are not decoded.
    pub max_envelope_bytes: usize,
    /// Bytes of entries taken and not finished, at most (beyond the few a
    /// read brings at once): large events take more of the in-flight room
    /// than small ones, so that their read-ahead cannot fill the memory
    /// ([`DEFAULT_IN_FLIGHT_BYTES`] unless a caller knows better).
    pub max_in_flight_bytes: usize,
    /// Consumers of the group idle longer than this and holding nothing are
    /// removed when the subscriber starts. `None`: never.
    pub forget_consumers_after: Option<Duration>,
    /// How long a successfully handled event id is remembered, so that a
    /// redelivery of it is acknowledged without a call. `None`: off.
    pub dedup_window: Option<Duration>,
}

impl Subscription {
    /// The group's replay streams, one per source stream: where
    /// `runnel dlq replay` puts back what this group dead-lettered.
    pub fn replay_streams(&self) -> Vec<String> {
        self.streams
            .iter()
            .map(|s| replay_stream(s, &self.group))
            .collect()
    }

    /// The source stream of an entry's stream: itself, or the source whose
    /// replay stream it is.
    fn source_of<'a>(&'a self, stream: &'a str) -> &'a str {
        self.streams
            .iter()
            .find(|s| stream.len() > s.len() && replay_stream(s, &self.group) == stream)
            .map_or(stream, |s| s.as_str())
    }

    fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| name_matches(p, name))
    }

    /// Entries taken but not finished: queued, running, or waiting out a
    /// backoff. Bounded so that retries cannot pile up, and large enough for
    /// two full reads on top of the calls running, so that the next read is
    /// on its way while the lanes work through the last one (with room for
    /// one read only, a lane that ran dry waited for a round trip: measured
    /// ~10-20% slower on Redis).
    fn max_in_flight(&self) -> usize {
        self.read_count * 2 + self.concurrency * 2
    }

    /// Lanes to run. One per call at once; with a dedup window each entry
    /// waits a round trip to the backend before its call, so more lanes keep
    /// the calls busy meanwhile (calls stay bounded by `concurrency`).
    fn lanes(&self) -> usize {
        let per_call = if self.dedup_window.is_some() { 8 } else { 1 };
        self.concurrency.max(1) * per_call
    }
}

/// Consumes one subscription with one handler.
pub struct Subscriber {
    broker: Arc<dyn Broker>,
    publisher: Publisher,
    kv: Arc<crate::kv::Store>,
    sub: Subscription,
    stats: Arc<Stats>,
    abandon: CancellationToken,
    breaker: Arc<Breaker>,
    health: Arc<ReadHealth>,
}

/// How a backend that fails (does not answer, refuses a write) is retried:
/// soon at first, then every couple of seconds, so that consuming resumes
/// within moments of the backend coming back. Not the plugin's backoff,
/// which paces a handler's retries.
pub(crate) const BACKEND_RETRY: Backoff = Backoff {
    initial_ms: 100,
    max_ms: 2_000,
    multiplier: 2.0,
};

/// Waits out the pause after the `failures`-th failure in a row of the
/// backend ([`BACKEND_RETRY`]), unless `stop` is cancelled first; returns
/// whether it waited the pause out. The subscriber's retries of the backend
/// (reads, publishes, dead letters, commits) all pause here, so that they
/// recover at one pace.
pub(crate) async fn backend_pause(failures: u32, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(BACKEND_RETRY.delay(failures)) => true,
    }
}

/// How often a subscriber looks for replayed dead letters (one read that
/// does not wait, per plugin).
const REPLAYS_EVERY: Duration = Duration::from_secs(1);

use in_flight::{EntryRef, InFlight};

struct Shared {
    broker: Arc<dyn Broker>,
    publisher: Publisher,
    /// Where successful calls that used key-value state commit.
    kv: Arc<crate::kv::Store>,
    sub: Subscription,
    stats: Arc<Stats>,
    handler: Arc<dyn Handler>,
    breaker: Arc<Breaker>,
    /// Permits to call the handler, taken before an instance is.
    calls: Semaphore,
    acks: mpsc::UnboundedSender<EntryRef>,
    in_flight: Arc<InFlight>,
    /// Entries read and waiting for a lane.
    queue: queue::JobQueue<delivery::Job>,
    /// Backoff waits and publish round trips, running beside the lanes.
    waits: TaskTracker,
    /// Commits queued and not yet settled (each holds a token).
    commits: TaskTracker,
    shutdown: CancellationToken,
    abandon: CancellationToken,
    health: Arc<ReadHealth>,
    /// Bounds the failure lines this plugin writes to the log.
    log_throttle: throttle::LogThrottle,
}

impl Subscriber {
    pub fn new(
        broker: Arc<dyn Broker>,
        publisher: Publisher,
        sub: Subscription,
        stats: Arc<Stats>,
    ) -> Self {
        Subscriber {
            kv: crate::kv::Store::new(broker.clone()),
            broker,
            publisher,
            sub,
            stats,
            abandon: CancellationToken::new(),
            breaker: Arc::new(Breaker::never()),
            health: Arc::default(),
        }
    }

    /// Commits calls that used key-value state through `kv` (the store
    /// their plugin read from); a store of its own otherwise.
    pub fn with_kv(mut self, kv: Arc<crate::kv::Store>) -> Self {
        self.kv = kv;
        self
    }

    /// Reports whether it reads, and why not, to `health`.
    pub fn with_health(mut self, health: Arc<ReadHealth>) -> Self {
        self.health = health;
        self
    }

    /// Calls go through `breaker`, which stops them while the plugin keeps
    /// failing.
    pub fn with_breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = breaker;
        self
    }

    /// Once `abandon` is cancelled while draining, calls still running are
    /// dropped: their entries stay pending for another consumer, and the
    /// acks of everything finished are still flushed.
    pub fn abandon_on(mut self, abandon: CancellationToken) -> Self {
        self.abandon = abandon;
        self
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
        let acker = tokio::spawn(acks::ack_loop(
            self.broker.clone(),
            self.sub.group.clone(),
            ack_rx,
        ));
        let shared = Arc::new(Shared {
            broker: self.broker,
            publisher: self.publisher,
            kv: self.kv,
            calls: Semaphore::new(self.sub.concurrency),
            sub: self.sub,
            stats: self.stats,
            handler,
            breaker: self.breaker,
            acks: ack_tx,
            in_flight: Default::default(),
            queue: queue::JobQueue::new(),
            waits: TaskTracker::new(),
            commits: TaskTracker::new(),
            shutdown,
            abandon: self.abandon,
            health: self.health,
            log_throttle: Default::default(),
        });
        let lanes = shared.start_lanes();
        let (failures, positions) = shared.wait_for_groups().await;
        let maintenance_every = (shared.sub.claim_min_idle / 3).max(Duration::from_millis(10));
        let drained = CancellationToken::new();
        let keep_alive = shared.start_keep_alive(maintenance_every, drained.clone());
        shared
            .read_loop(maintenance_every, failures, positions)
            .await;
        shared.drain(lanes).await;
        // Keep-alives go on while draining, and stop once the last delivery
        // has finished.
        drained.cancel();
        keep_alive.await?;
        drop(shared);
        acker.await?;
        Ok(())
    }
}

impl Shared {
    /// The lanes: one task per call that may run at once, each taking jobs
    /// from the queue until it is closed and empty.
    fn start_lanes(self: &Arc<Self>) -> JoinSet<()> {
        let mut lanes = JoinSet::new();
        for _ in 0..self.sub.lanes() {
            let shared = self.clone();
            lanes.spawn(async move {
                while let Some(job) = shared.queue.pop().await {
                    shared.run(job).await;
                }
            });
        }
        lanes
    }

    /// Waits until the groups exist, creating them: they may be missing
    /// (never created, since the backend did not answer at start, or gone
    /// since), and nothing is read before they exist. Returns early at
    /// shutdown; returns how many times the backend failed meanwhile, and
    /// how far the groups had read.
    async fn wait_for_groups(&self) -> (u32, Positions) {
        let mut failures = 0;
        let mut positions = Positions::default();
        while !self.shutdown.is_cancelled() {
            match self.ensure_groups().await {
                Ok(()) => {
                    // Before saying ready: a group destroyed right after
                    // `/readyz` said so must be created again where it was,
                    // not from the stream's first entry.
                    self.refresh_positions(&mut positions).await;
                    // Ready now, not once the first read returns: on a quiet
                    // stream that read waits out its whole BLOCK (2 s by
                    // default), and `/readyz` said 503 all that while.
                    self.health.reading();
                    self.forget_idle_consumers().await;
                    return (failures, positions);
                }
                Err(e) => {
                    failures += 1;
                    self.cannot_read(&e, failures, BACKEND_RETRY.delay(failures));
                    backend_pause(failures, &self.shutdown).await;
                }
            }
        }
        (failures, positions)
    }

    /// Keep-alives, every `every` until `drained`. They run on their own,
    /// not in the read loop: when every slot is taken by long handlers the
    /// loop waits for room, and that is exactly when in-flight entries must
    /// not look abandoned.
    fn start_keep_alive(
        self: &Arc<Self>,
        every: Duration,
        drained: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut trimming = TrimWatch::default();
            loop {
                tokio::select! {
                    _ = drained.cancelled() => return,
                    _ = tick.tick() => {
                        shared.keep_in_flight_alive().await;
                        // Here, not in the read loop: a group falls
                        // behind exactly when its slots are full and
                        // the read loop waits.
                        shared.watch_trimming(&mut trimming).await;
                    }
                }
            }
        })
    }

    /// Reads until shutdown, as much as there is room for in flight: every
    /// `maintenance_every` the entries dead consumers left behind first,
    /// then replayed dead letters, then the streams; each read becomes jobs
    /// for the lanes. `failures`: the backend's failures in a row so far.
    async fn read_loop(
        &self,
        maintenance_every: Duration,
        mut failures: u32,
        mut positions: Positions,
    ) {
        let mut budget = Budget::new(self.sub.max_in_flight(), self.sub.max_in_flight_bytes);
        let mut last_maintenance = Instant::now();
        let mut last_replay_check = Instant::now();
        let replays = self.sub.replay_streams();
        // `positions`: how far the group has read, where a group that
        // vanishes is created again (see `recreate_groups`).
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            // Room for at least one entry, then as much more as is free now.
            // (Waiting for room for a whole batch was measured: slower.)
            let room = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                room = budget.room(self.sub.read_count) => room,
            };
            let count = budget.count(&room);

            let mut deliveries = Vec::new();
            if last_maintenance.elapsed() >= maintenance_every {
                last_maintenance = Instant::now();
                self.refresh_positions(&mut positions).await;
                deliveries = self.reclaim(count).await;
            }
            if deliveries.is_empty() && last_replay_check.elapsed() >= REPLAYS_EVERY {
                last_replay_check = Instant::now();
                deliveries = self.read_replays(&replays, count).await;
            }
            if deliveries.is_empty() {
                let block = self.sub.block.min(maintenance_every);
                let streams = &self.sub.streams;
                match self.read(streams, count, block).await {
                    Ok(d) => {
                        if failures > 0 {
                            tracing::info!(plugin = %self.sub.plugin, "reading again after {failures} failures");
                        }
                        failures = 0;
                        self.health.reading();
                        positions.note_read(&d);
                        deliveries = d;
                    }
                    Err(e) => {
                        failures += 1;
                        let recovered = match MissingGroup::in_error(&e) {
                            true => match self.recreate_groups(&positions).await {
                                Ok(true) => Ok(()),
                                // Told the group is missing, found it there:
                                // wait like any failure rather than spin.
                                Ok(false) => Err(e),
                                Err(e) => Err(e),
                            },
                            false => Err(e),
                        };
                        if let Err(e) = recovered {
                            self.cannot_read(&e, failures, BACKEND_RETRY.delay(failures));
                            if !backend_pause(failures, &self.shutdown).await {
                                break;
                            }
                        }
                        continue;
                    }
                }
            }
            budget.note(&deliveries);
            self.take(deliveries, room, &budget).await;
        }
    }

    /// Makes jobs of what a read took, each with its slots of the in-flight
    /// budget (from `room`, then more as others finish if the read brought
    /// more), and hands them to the lanes.
    async fn take(
        &self,
        deliveries: Vec<Delivery>,
        mut room: OwnedSemaphorePermit,
        budget: &Budget,
    ) {
        let mut jobs = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            // A backend may hand over more than asked (Redis applies
            // COUNT per stream), or larger entries than the last read's:
            // those entries are ours now, so wait for room rather than drop
            // them, after queueing the rest (their slots are the room being
            // waited for).
            let slot = budget
                .slot_for(&delivery, &mut room, || {
                    self.enqueue(std::mem::take(&mut jobs))
                })
                .await;
            let span = crate::telemetry::delivery_span(
                &delivery,
                &self.sub.group,
                &self.sub.plugin,
                self.broker.system(),
            );
            jobs.push(delivery::Job {
                in_flight: self
                    .in_flight
                    .register(&delivery.stream, &delivery.entry.id),
                delivery,
                _slot: slot,
                resume: None,
                reruns: 0,
                busy: 0,
                span,
            });
        }
        self.enqueue(jobs);
    }

    /// Drain: the lanes finish what is queued, then what waits beside them
    /// (a backoff wait ends at once: shutdown leaves it pending). Once
    /// `abandon` is cancelled, calls still running are dropped.
    async fn drain(&self, mut lanes: JoinSet<()>) {
        self.queue.close();
        let mut abandoned = false;
        loop {
            tokio::select! {
                done = lanes.join_next() => match done {
                    None => break,
                    Some(Err(e)) if !e.is_cancelled() => {
                        tracing::error!(plugin = %self.sub.plugin, "delivery lane failed: {e}");
                    }
                    Some(_) => {}
                },
                _ = self.abandon.cancelled(), if !abandoned => {
                    abandoned = true;
                    tracing::warn!(plugin = %self.sub.plugin, "shutdown deadline: {} unfinished events stay pending", self.in_flight.len());
                    lanes.abort_all();
                }
            }
        }
        // Commits on their way settle within a round trip (and may leave a
        // wait behind); the shutdown deadline stops waiting for them.
        self.commits.close();
        tokio::select! {
            _ = self.commits.wait() => {}
            _ = self.abandon.cancelled() => {}
        }
        self.waits.close();
        self.waits.wait().await;
    }
}

impl Shared {
    /// One read for this consumer. Never dropped half-way, even at shutdown:
    /// Redis assigns entries to this consumer as it answers, so a dropped
    /// answer would strand them as pending until another consumer reclaims
    /// them. At shutdown the broker is asked to end the read's `BLOCK` now
    /// (again, until it does: the request may reach Redis before the read),
    /// so that stopping takes moments whatever `block_ms` is.
    async fn read(
        &self,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let (group, consumer) = (&self.sub.group, &self.sub.consumer);
        let read = self.broker.read(group, consumer, streams, count, block);
        tokio::pin!(read);
        tokio::select! {
            biased;
            done = &mut read => return done,
            _ = self.shutdown.cancelled() => {}
        }
        // Woken beside the read, which stays polled: a wake that is slow
        // (Redis not answering) must not hold up a reply that has come.
        let wake = async {
            loop {
                self.broker.wake_reader(group, consumer).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            done = &mut read => done,
            never = wake => never,
        }
    }

    /// Records why the subscriber cannot read, for `/readyz`, and says so:
    /// at the first failure and every thirtieth after (about once a minute
    /// at the longest wait), so that a long outage does not flood the log.
    fn cannot_read(&self, e: &anyhow::Error, failures: u32, wait: Duration) {
        let streams = self.sub.streams.join(", ");
        self.health.failing(format!("stream {streams}: {e:#}"));
        if failures == 1 || failures.is_multiple_of(30) {
            tracing::warn!(plugin = %self.sub.plugin, "cannot read {streams} (failure {failures}, retrying every {wait:?} at most): {e:#}");
        } else {
            tracing::debug!(plugin = %self.sub.plugin, "cannot read {streams}, retrying in {wait:?}: {e:#}");
        }
    }
}

impl Shared {
    /// What was replayed to this group, without waiting: a look at its
    /// replay streams beside the blocking read of its sources, rather than
    /// in it, so that the sources keep the whole read size. A missing
    /// replay group (the stream was deleted) is created again from the
    /// first entry: everything on a replay stream is for this group.
    async fn read_replays(&self, replays: &[String], count: usize) -> Vec<Delivery> {
        let read = self.read(replays, count, Duration::ZERO).await;
        match read {
            Ok(deliveries) => deliveries,
            Err(e) => {
                let recreated = match MissingGroup::in_error(&e) {
                    true => self.ensure_replay_groups().await,
                    false => Err(e),
                };
                if let Err(e) = recreated {
                    tracing::debug!(plugin = %self.sub.plugin, "reading replayed dead letters: {e:#}");
                }
                Vec::new()
            }
        }
    }
}
