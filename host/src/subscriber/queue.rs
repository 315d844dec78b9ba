//! The queue between the read loop and the delivery lanes.
//!
//! The read loop pushes a whole read at once; each lane pops one entry at a
//! time, so a slow entry holds up only its own lane. A lane that finds the
//! queue empty sleeps until the next push: lanes are woken once per read,
//! not once per entry.

use parking_lot::Mutex;
use std::collections::VecDeque;

use tokio::sync::Notify;

/// A multi-consumer queue that can be closed: once closed and empty, every
/// pop returns `None`.
pub(super) struct JobQueue<T> {
    state: Mutex<State<T>>,
    pushed: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> JobQueue<T> {
    pub fn new() -> Self {
        JobQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            pushed: Notify::new(),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State<T>> {
        self.state.lock()
    }

    /// Queues `items`; once closed, hands them back instead.
    pub fn push_all(&self, items: impl IntoIterator<Item = T>) -> Result<(), Vec<T>> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(items.into_iter().collect());
            }
            state.items.extend(items);
        }
        self.pushed.notify_waiters();
        Ok(())
    }

    /// The oldest item, waiting for one; `None` once closed and drained.
    pub async fn pop(&self) -> Option<T> {
        loop {
            // Registered before looking, so that a push between the look and
            // the wait still wakes this caller.
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(item) = state.items.pop_front() {
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            pushed.await;
        }
    }

    /// No more pushes; what is queued is still popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.pushed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_item_reaches_exactly_one_popper_and_close_ends_them_after_the_rest() {
        let queue = Arc::new(JobQueue::new());
        let poppers: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while let Some(n) = queue.pop().await {
                        got.push(n);
                    }
                    got
                })
            })
            .collect();
        for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(97) {
            queue.push_all(chunk.iter().copied()).expect("open");
            tokio::task::yield_now().await;
        }
        queue.close();
        assert_eq!(queue.push_all([1]), Err(vec![1]), "closed: handed back");
        let mut all = Vec::new();
        for popper in poppers {
            all.extend(popper.await.expect("popper"));
        }
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }
}
