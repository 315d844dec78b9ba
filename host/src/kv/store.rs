//! The host's key-value store: committed state in the broker, the writes of
//! calls that succeeded but are not committed yet, and the one queue their
//! commits go through.
//!
//! Why the pending writes are readable: a commit is a round trip to the
//! backend (about 0.1-0.5 ms on Redis), far longer than a call. Without
//! them, every call that starts while an earlier call's commit is on its
//! way reads the old value, and conflicts. With them, it reads what the
//! store will hold once the earlier commit lands, and its own commit, which
//! is queued after that one, checks exactly that. If the earlier commit
//! does not land (a conflict, custody lost), the later one finds a value it
//! did not read and runs again: a pending write is a guess the commit
//! checks, never trusted.
//!
//! Commits go through one queue per host, in the order the calls finished,
//! and each batch is one script on the backend.
//!
//! Why the host remembers what it committed: the next call on a key would
//! otherwise wait a round trip for a value this host wrote itself (measured
//! on the hot-counter bench: one `HMGET` per event, under the key's lock,
//! held the Redis path to about 3 k events/s). Another host may have written
//! the key since, so a remembered value is a guess too: a commit that read
//! a stale one conflicts, the key is forgotten, and the call runs again on a
//! value read from the backend.
//!
//! Why keys are locked within the host: calls run at once on several
//! lanes, and two that read one key before either finished would conflict
//! at commit, one running again, and again while the key stays hot. So the
//! first read of a key takes the key's lock, held until the call's writes
//! are pending (or the call failed): the next call reads them. A call that
//! already holds a lock waits for another only briefly (two calls waiting
//! for each other's keys then go on without, and their commits check what
//! they read), so calls cannot deadlock. Conflicts are then left to what
//! one host cannot order: other hosts, and keys taken in opposite orders.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use tokio::sync::{mpsc, oneshot};

use super::{At, AtRef, Commit, Outcome};
use crate::broker::Broker;

/// Most commits sent to the backend as one batch (one script run on
/// Redis, which blocks the server while it runs: keep it short).
const MAX_BATCH: usize = 64;

/// Most bytes (values written, fields appended) in one batch; a commit
/// larger than this goes alone.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Most bytes of committed values remembered; past it the memory starts
/// over (a forgotten value costs one round trip to read again).
const MAX_REMEMBERED_BYTES: usize = 64 << 20;

/// Largest value remembered: a counter or a small record is worth keeping,
/// a large document is read again.
const MAX_REMEMBERED_VALUE: usize = 4 << 10;

/// What the host knows of key-value state beyond the backend.
#[derive(Default)]
struct Known {
    /// Writes of queued commits: the sequence number of the commit that
    /// wrote the key last, and the value (`None`: deleted).
    pending: HashMap<At, (u64, Option<Vec<u8>>)>,
    /// Values this host committed (see the module's notes).
    committed: HashMap<At, Option<Vec<u8>>>,
    /// Bytes of keys and values in `committed`, counted as they go in.
    committed_bytes: usize,
}

impl Known {
    /// What the host guesses `key` of `bucket` holds, if anything.
    fn guess(&self, bucket: &str, key: &str) -> Option<&Option<Vec<u8>>> {
        let at = AtRef(bucket, key);
        self.pending
            .get(&at)
            .map(|(_, v)| v)
            .or_else(|| self.committed.get(&at))
    }

    /// Takes back a commit's pending writes, unless a later one overwrote
    /// them.
    fn unqueue(&mut self, seq: u64, commit: &Commit) {
        for w in &commit.effects.writes {
            let at = AtRef(&w.bucket, &w.key);
            if self.pending.get(&at).is_some_and(|(s, _)| *s == seq) {
                self.pending.remove(&at);
            }
        }
    }

    /// Learns how a commit ended: its writes are the backend's values now,
    /// or what it read or wrote may not be known any more.
    fn settle(&mut self, seq: u64, commit: &Commit, outcome: Option<&Outcome>) {
        self.unqueue(seq, commit);
        match outcome {
            Some(Outcome::Committed) => {
                for w in &commit.effects.writes {
                    let size = w.value.as_ref().map_or(0, Vec::len);
                    if size > MAX_REMEMBERED_VALUE {
                        self.committed.remove(&AtRef(&w.bucket, &w.key));
                        continue;
                    }
                    if self.committed_bytes >= MAX_REMEMBERED_BYTES {
                        self.committed.clear();
                        self.committed_bytes = 0;
                    }
                    match self.committed.get_mut(&AtRef(&w.bucket, &w.key)) {
                        Some(value) => value.clone_from(&w.value),
                        None => {
                            self.committed_bytes += w.bucket.len() + w.key.len();
                            let at = (w.bucket.clone(), w.key.clone());
                            self.committed.insert(at, w.value.clone());
                        }
                    }
                    self.committed_bytes += size;
                }
            }
            Some(Outcome::Conflict { bucket, key }) => {
                // What this host guessed of the key is wrong, and so are
                // the writes queued after this commit that read the guess
                // (they will conflict too): the next read asks the backend.
                let at = AtRef(bucket, key);
                self.committed.remove(&at);
                self.pending.remove(&at);
            }
            // Not applied, or not known whether: forget everything it touched.
            _ => {
                let reads = commit.effects.reads.iter().map(|r| (&r.bucket, &r.key));
                let writes = commit.effects.writes.iter().map(|w| (&w.bucket, &w.key));
                for (bucket, key) in reads.chain(writes) {
                    self.committed.remove(&AtRef(bucket, key));
                }
            }
        }
    }
}

/// Key locks by bucket and key; an entry lives while a call holds or waits
/// for it.
type Locks = HashMap<At, Arc<tokio::sync::Mutex<()>>>;

/// A key locked by one call (see the module's notes); let go when dropped.
pub struct KeyLock {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    at: At,
    locks: Arc<Mutex<Locks>>,
}

impl KeyLock {
    /// Whether this is the lock of `key` in `bucket`.
    pub fn is(&self, bucket: &str, key: &str) -> bool {
        self.at.0 == bucket && self.at.1 == key
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let mut locks = self.locks.lock();
        self.guard = None;
        // Nobody else holds or waits for it: the map forgets the key.
        if locks
            .get(&self.at)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.at);
        }
    }
}

/// A commit waiting in the queue, and who learns its outcome.
struct Queued {
    seq: u64,
    commit: Commit,
    reply: OnOutcome,
}

/// What learns a queued commit's outcome: called once, on the task that
/// sends commits, so it must not block (see [`Store::enqueue_then`]).
/// Dropped uncalled only when the queue itself is dropped (the runtime is
/// stopping).
pub type OnOutcome = Box<dyn FnOnce(Result<Outcome, NotSent>) + Send>;

/// A commit the backend did not answer for: the reason, and the commit
/// itself, to be sent again (a commit that did apply then finds its entry
/// acknowledged).
pub struct NotSent {
    pub error: anyhow::Error,
    pub commit: Option<Box<Commit>>,
}

/// A queued commit's outcome, to be awaited.
pub type Receipt = oneshot::Receiver<Result<Outcome, NotSent>>;

/// Key-value state as the calls of one host see it. Cheap to share.
pub struct Store {
    broker: Arc<dyn Broker>,
    known: Arc<Mutex<Known>>,
    locks: Arc<Mutex<Locks>>,
    seq: AtomicU64,
    /// Started by the first commit (so that a store can be made outside a
    /// Tokio runtime).
    queue: OnceLock<mpsc::UnboundedSender<Queued>>,
}

impl Store {
    /// A store over `broker`'s buckets, committing through it.
    pub fn new(broker: Arc<dyn Broker>) -> Arc<Store> {
        Arc::new(Store {
            broker,
            known: Arc::default(),
            locks: Arc::default(),
            seq: AtomicU64::new(1),
            queue: OnceLock::new(),
        })
    }

    /// The broker the state lives in.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The values of `keys` in `bucket`: the pending write when there is
    /// one, else the value this host last committed, else the backend's.
    pub async fn get(&self, bucket: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let mut values = vec![None; keys.len()];
        let mut unknown = Vec::new();
        {
            let known = self.lock_known();
            for (i, key) in keys.iter().enumerate() {
                match known.guess(bucket, key) {
                    Some(value) => values[i] = value.clone(),
                    None => unknown.push(i),
                }
            }
        }
        if !unknown.is_empty() {
            let wanted: Vec<String> = unknown.iter().map(|&i| keys[i].clone()).collect();
            let committed = self.broker.kv_get(bucket, &wanted).await?;
            for (i, value) in unknown.into_iter().zip(committed) {
                values[i] = value;
            }
        }
        Ok(values)
    }

    /// [`Store::get`] of one key, without allocating when the host knows
    /// its value.
    pub async fn get_one(&self, bucket: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(value) = self.lock_known().guess(bucket, key) {
            return Ok(value.clone());
        }
        let mut committed = self.broker.kv_get(bucket, &[key.to_string()]).await?;
        Ok(committed.pop().flatten())
    }

    /// Takes `key`'s lock in this host, waiting for it at most `wait`;
    /// `None` when another call still holds it then. Also returns how long
    /// it waited (zero, without reading the clock, when the key was free).
    pub async fn lock_key(
        &self,
        bucket: &str,
        key: &str,
        wait: Duration,
    ) -> (Option<KeyLock>, Duration) {
        let at = (bucket.to_string(), key.to_string());
        let mutex = {
            let mut locks = self.locks.lock();
            match locks.get(&AtRef(bucket, key)) {
                Some(mutex) => mutex.clone(),
                None => locks.entry(at.clone()).or_default().clone(),
            }
        };
        let (guard, waited) = match mutex.clone().try_lock_owned() {
            Ok(guard) => (Some(guard), Duration::ZERO),
            Err(_) => {
                let started = Instant::now();
                let guard = tokio::time::timeout(wait, mutex.clone().lock_owned())
                    .await
                    .ok();
                (guard, started.elapsed())
            }
        };
        // Before a lock not taken is dropped: its drop forgets the key when
        // nobody else holds or waits for it.
        drop(mutex);
        let lock = KeyLock {
            guard,
            at,
            locks: self.locks.clone(),
        };
        (lock.guard.is_some().then_some(lock), waited)
    }

    /// Queues one successful call's commit (see [`Broker::commit`]) after
    /// every call that finished before it, and returns where its outcome
    /// will come. Its writes are readable by other calls from now until the
    /// outcome is known, and its key locks are let go now: not awaiting
    /// anything here is what lets the next call on a key start at once.
    pub fn enqueue(&self, commit: Commit) -> Receipt {
        let (reply, outcome) = oneshot::channel();
        self.enqueue_then(
            commit,
            Box::new(move |result| {
                let _ = reply.send(result);
            }),
        );
        outcome
    }

    /// [`Store::enqueue`], with `then` called with the outcome on the task
    /// that sends commits. Why not always a [`Receipt`]: a task per commit
    /// to await it, woken once per commit, was a share of the host's CPU on
    /// the counter bench that a subscriber settling most outcomes in place
    /// does without.
    pub fn enqueue_then(&self, mut commit: Commit, then: OnOutcome) {
        let locks = std::mem::take(&mut commit.effects.locks);
        let refused = {
            // Under the lock: the queue's order is the order in which
            // writes became readable.
            let mut known = self.lock_known();
            let seq = self.seq.fetch_add(1, Relaxed);
            for w in &commit.effects.writes {
                let written = (seq, w.value.clone());
                match known.pending.get_mut(&AtRef(&w.bucket, &w.key)) {
                    Some(pending) => *pending = written,
                    None => {
                        let at = (w.bucket.clone(), w.key.clone());
                        known.pending.insert(at, written);
                    }
                }
            }
            let queued = Queued {
                seq,
                commit,
                reply: then,
            };
            match self.queue().send(queued) {
                Ok(()) => None,
                Err(refused) => {
                    let Queued { seq, commit, reply } = refused.0;
                    known.unqueue(seq, &commit);
                    Some((reply, commit))
                }
            }
        };
        drop(locks);
        // Outside the lock: `then` may queue again.
        if let Some((reply, commit)) = refused {
            reply(Err(NotSent {
                error: anyhow::anyhow!("the commit queue is closed"),
                commit: Some(Box::new(commit)),
            }));
        }
    }

    /// [`Store::enqueue`], then its outcome.
    pub async fn commit(&self, commit: Commit) -> Result<Outcome, NotSent> {
        self.enqueue(commit).await.unwrap_or_else(|_| {
            Err(NotSent {
                error: anyhow::anyhow!("the commit queue stopped"),
                commit: None,
            })
        })
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Queued> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_loop(self.broker.clone(), self.known.clone(), rx));
            tx
        })
    }

    fn lock_known(&self) -> parking_lot::MutexGuard<'_, Known> {
        self.known.lock()
    }
}

/// Sends whatever commits have queued up as one batch, in order, and hands
/// out their outcomes. A backend that does not answer fails the batch: each
/// caller retries (a commit that did apply then finds its entry
/// acknowledged).
async fn commit_loop(
    broker: Arc<dyn Broker>,
    known: Arc<Mutex<Known>>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Several scripts when the batch is large in bytes: one script
        // blocks Redis while it runs.
        while !batch.is_empty() {
            let mut bytes = 0;
            let take = batch
                .iter()
                .take_while(|q| {
                    bytes += q.commit.size();
                    bytes <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            let chunk: Vec<Queued> = batch.drain(..take).collect();
            send(&*broker, &known, chunk).await;
        }
    }
}

/// Sends one batch and hands out its outcomes. When the backend refuses
/// the batch (rather than not answering), each commit is sent again on its
/// own, so that one the backend cannot take fails alone instead of taking
/// its neighbours with it every time it is retried.
async fn send(broker: &dyn Broker, known: &Mutex<Known>, batch: Vec<Queued>) {
    let mut commits = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for q in batch {
        commits.push(q.commit);
        waiting.push((q.seq, q.reply));
    }
    let mut results: Vec<Result<Outcome, anyhow::Error>> = match broker.commit(&commits).await {
        Ok(outcomes) if outcomes.len() == commits.len() => outcomes.into_iter().map(Ok).collect(),
        Ok(outcomes) => {
            let line = format!(
                "the backend answered {} outcomes for {} commits",
                outcomes.len(),
                commits.len()
            );
            commits
                .iter()
                .map(|_| Err(anyhow::anyhow!(line.clone())))
                .collect()
        }
        Err(e) if commits.len() > 1 => {
            tracing::debug!(
                "a batch of {} commits failed, sending each alone: {e:#}",
                commits.len()
            );
            let mut alone = Vec::with_capacity(commits.len());
            for c in &commits {
                alone.push(match broker.commit(std::slice::from_ref(c)).await {
                    Ok(mut o) if o.len() == 1 => Ok(o.remove(0)),
                    Ok(_) => Err(anyhow::anyhow!(
                        "the backend answered no outcome for a commit"
                    )),
                    Err(e) => Err(e),
                });
            }
            alone
        }
        Err(e) => vec![Err(e)],
    };
    // The outcome is known (or the commit is abandoned): the backend now
    // holds what the writes were a guess of, or never will.
    {
        let mut known = known.lock();
        for (((seq, _), commit), result) in waiting.iter().zip(&commits).zip(&results) {
            known.settle(*seq, commit, result.as_ref().ok());
        }
    }
    for (((_, reply), commit), result) in waiting.into_iter().zip(commits).zip(results.drain(..)) {
        reply(result.map_err(|error| NotSent {
            error,
            commit: Some(Box::new(commit)),
        }));
    }
}
