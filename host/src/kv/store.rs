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
//! Why keys are locked within the host: calls run at once on several
//! lanes, and two that read one key before either finished would conflict
//! at commit, one running again, and again while the key stays hot. So the
//! first read of a key takes the key's lock, held until the call's writes
//! are pending (or the call failed): the next call reads them. A call that
//! already holds a lock waits for another only briefly (two calls waiting
//! for each other's keys then go on without, and their commits check what
//! they read), so calls cannot deadlock. Conflicts are then left to what
//! one host cannot order: other hosts, and keys taken in opposite orders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot};

use super::{Commit, Outcome};
use crate::broker::Broker;

/// Most commits sent to the backend as one batch (one script run on
/// Redis, which blocks the server while it runs: keep it short).
const MAX_BATCH: usize = 64;

/// Pending writes: bucket (storage name) and key, to the sequence number of
/// the commit that wrote it last and its value (`None`: deleted).
type Pending = HashMap<(String, String), (u64, Option<Vec<u8>>)>;

/// Key locks by bucket and key; an entry lives while a call holds or waits
/// for it.
type Locks = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// A key locked by one call (see the module's notes); let go when dropped.
pub struct KeyLock {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    at: (String, String),
    locks: Arc<Mutex<Locks>>,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
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

/// A commit waiting in the queue, and who waits for its outcome.
struct Queued {
    seq: u64,
    commit: Commit,
    reply: oneshot::Sender<anyhow::Result<Outcome>>,
}

/// Key-value state as the calls of one host see it. Cheap to share.
pub struct Store {
    broker: Arc<dyn Broker>,
    pending: Arc<Mutex<Pending>>,
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
            pending: Arc::default(),
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
    /// one, else the committed value.
    pub async fn get(&self, bucket: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let mut values = vec![None; keys.len()];
        let mut unknown = Vec::new();
        {
            let pending = self.lock_pending();
            for (i, key) in keys.iter().enumerate() {
                match pending.get(&(bucket.to_string(), key.clone())) {
                    Some((_, value)) => values[i] = value.clone(),
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

    /// Takes `key`'s lock in this host, waiting for it only if `wait`;
    /// `None` when it is taken and `wait` is false.
    pub async fn lock_key(&self, bucket: &str, key: &str, wait: bool) -> Option<KeyLock> {
        let at = (bucket.to_string(), key.to_string());
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(at.clone()).or_default().clone()
        };
        let guard = match mutex.clone().try_lock_owned() {
            Ok(guard) => Some(guard),
            Err(_) if wait => Some(mutex.lock_owned().await),
            Err(_) => None,
        };
        let lock = KeyLock {
            guard,
            at,
            locks: self.locks.clone(),
        };
        lock.guard.is_some().then_some(lock)
    }

    /// Commits one successful call (see [`Broker::commit`]), after every
    /// call that finished before it. Its writes are readable by other calls
    /// from now until its outcome is known; then its key locks are let go.
    pub async fn commit(&self, mut commit: Commit) -> anyhow::Result<Outcome> {
        let locks = std::mem::take(&mut commit.effects.locks);
        let (reply, outcome) = oneshot::channel();
        {
            // Under the lock: the queue's order is the order in which
            // writes became readable.
            let mut pending = self.lock_pending();
            let seq = self.seq.fetch_add(1, Relaxed);
            for w in &commit.effects.writes {
                pending.insert((w.bucket.clone(), w.key.clone()), (seq, w.value.clone()));
            }
            let queued = Queued { seq, commit, reply };
            if let Err(refused) = self.queue().send(queued) {
                forget(&mut pending, refused.0.seq, &refused.0.commit);
                anyhow::bail!("the commit queue is closed");
            }
        }
        drop(locks);
        outcome
            .await
            .map_err(|_| anyhow::anyhow!("the commit queue stopped"))?
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Queued> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_loop(self.broker.clone(), self.pending.clone(), rx));
            tx
        })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes back a commit's pending writes, unless a later one overwrote them.
fn forget(pending: &mut Pending, seq: u64, commit: &Commit) {
    for w in &commit.effects.writes {
        let at = (w.bucket.clone(), w.key.clone());
        if pending.get(&at).is_some_and(|(s, _)| *s == seq) {
            pending.remove(&at);
        }
    }
}

/// Sends whatever commits have queued up as one batch, in order, and hands
/// out their outcomes. A backend that does not answer fails the batch: each
/// caller retries (a commit that did apply then finds its entry
/// acknowledged).
async fn commit_loop(
    broker: Arc<dyn Broker>,
    pending: Arc<Mutex<Pending>>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut commits = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for q in batch.drain(..) {
            commits.push(q.commit);
            waiting.push((q.seq, q.reply));
        }
        let result = broker.commit(&commits).await;
        // The outcome is known (or the commit is abandoned): the store now
        // holds what the writes were a guess of, or never will.
        {
            let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
            for ((seq, _), commit) in waiting.iter().zip(&commits) {
                forget(&mut pending, *seq, commit);
            }
        }
        let result = match result {
            Ok(outcomes) if outcomes.len() != commits.len() => Err(anyhow::anyhow!(
                "the backend answered {} outcomes for {} commits",
                outcomes.len(),
                commits.len()
            )),
            other => other,
        };
        match result {
            Ok(outcomes) => {
                for ((_, reply), outcome) in waiting.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let line = format!("{e:#}");
                for (_, reply) in waiting {
                    let _ = reply.send(Err(anyhow::anyhow!(line.clone())));
                }
            }
        }
    }
}
