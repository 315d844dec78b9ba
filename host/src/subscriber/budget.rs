//! The in-flight budget: how much a subscriber may have taken and not
//! finished, in entries and in bytes.
//!
//! Entries are counted in slots of a semaphore. A small entry takes one
//! slot; an entry larger than a slot's share of the byte budget
//! ([`Budget::unit`]) takes one slot per share, so that 1 MiB events cannot
//! fill the room meant for a few hundred small ones: what a subscriber
//! holds stays within `max(capacity entries, max_bytes)` (plus the one read
//! in progress), however large the events, and the reads ask for fewer
//! entries once they have seen large ones. Kafka's consumers bound their
//! fetches by bytes for the same reason (`fetch.max.bytes`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::broker::Delivery;

/// Entries the first read asks for at most, before any entry's size is
/// known; later reads ask for as many as the room holds at the size seen.
const FIRST_READ: usize = 8;

/// The slots of one subscriber's entries in flight.
pub(super) struct Budget {
    slots: Arc<Semaphore>,
    /// Slots in all.
    capacity: usize,
    /// Bytes per slot: an entry takes one slot per `unit` bytes, at least one.
    unit: usize,
    /// Slots per entry that the next read is expected to bring: the heaviest
    /// entry of the last read that brought any; `None` before the first.
    expected: Option<usize>,
}

impl Budget {
    /// Room for `entries` small entries, or for `max_bytes` of large ones.
    pub fn new(entries: usize, max_bytes: usize) -> Budget {
        let capacity = entries.max(1);
        Budget {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            unit: (max_bytes / capacity).max(1),
            expected: None,
        }
    }

    /// Slots an entry of `bytes` takes: one per [`Budget::unit`], at least
    /// one, at most all of them (so that even an entry larger than the whole
    /// budget is taken, alone).
    pub fn weight(&self, bytes: usize) -> usize {
        bytes.div_ceil(self.unit).clamp(1, self.capacity)
    }

    /// Waits for at least one free slot, then takes as many more as are free
    /// now, up to what `read_count` entries of the expected size take.
    pub async fn room(&self, read_count: usize) -> OwnedSemaphorePermit {
        let mut room = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let want = read_count.saturating_mul(self.expected.unwrap_or(1));
        while room.num_permits() < want {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => room.merge(p),
                Err(_) => break,
            }
        }
        room
    }

    /// Entries to ask the backend for with `room`: as many as fit at the
    /// size the last read brought, at least one, and no more than
    /// [`FIRST_READ`] before any size is known.
    pub fn count(&self, room: &OwnedSemaphorePermit) -> usize {
        match self.expected {
            Some(per_entry) => (room.num_permits() / per_entry).max(1),
            None => room.num_permits().clamp(1, FIRST_READ),
        }
    }

    /// Learns the size of entries to expect from what a read brought.
    pub fn note(&mut self, deliveries: &[Delivery]) {
        if let Some(heaviest) = deliveries.iter().map(|d| self.weight(bytes_of(d))).max() {
            self.expected = Some(heaviest);
        }
    }

    /// The slots for `delivery`: from `room` if it holds enough, else what
    /// it holds plus the rest as other entries finish. `before_waiting` runs
    /// first when it must wait (to hand over the jobs made so far, whose
    /// finishing frees the slots waited for).
    pub async fn slot_for(
        &self,
        delivery: &Delivery,
        room: &mut OwnedSemaphorePermit,
        before_waiting: impl FnOnce(),
    ) -> OwnedSemaphorePermit {
        let weight = self.weight(bytes_of(delivery));
        if let Some(slot) = room.split(weight) {
            return slot;
        }
        before_waiting();
        let short = weight - room.num_permits();
        let mut slot = self
            .slots
            .clone()
            .acquire_many_owned(short as u32)
            .await
            .expect("never closed");
        if let Some(rest) = room.split(room.num_permits()) {
            slot.merge(rest);
        }
        slot
    }
}

/// An entry's size: its fields' names and values.
fn bytes_of(delivery: &Delivery) -> usize {
    delivery
        .entry
        .fields
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Entry;
    use futures_util::FutureExt as _;

    fn delivery(bytes: usize) -> Delivery {
        Delivery {
            stream: "s".into(),
            entry: Entry {
                id: "1-0".into(),
                fields: Arc::new(vec![("event".into(), vec![b'x'; bytes - 5])]),
            },
            deliveries: 1,
        }
    }

    #[tokio::test]
    async fn small_entries_take_a_slot_each_and_reads_fill_the_room() {
        let mut budget = Budget::new(100, 1 << 20); // a slot per 10 KiB
        assert_eq!(budget.weight(100), 1);
        assert_eq!(budget.weight(10_485), 1);
        assert_eq!(budget.weight(10_486), 2);
        let room = budget.room(40).await;
        assert_eq!(room.num_permits(), 40);
        assert_eq!(budget.count(&room), FIRST_READ, "size unknown yet");
        budget.note(&[delivery(200), delivery(300)]);
        assert_eq!(budget.count(&room), 40);
    }

    #[tokio::test]
    async fn large_entries_shrink_the_reads_and_wait_for_room() {
        let mut budget = Budget::new(100, 1 << 20);
        budget.note(&[delivery(100), delivery(100_000)]);
        // 100 000 bytes take 10 slots of 10 485: a read of 40 entries
        // asks for 400 slots, gets the 100 there are, and asks for 10.
        let mut room = budget.room(40).await;
        assert_eq!(room.num_permits(), 100);
        assert_eq!(budget.count(&room), 10);
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(budget.slot_for(&delivery(100_000), &mut room, || {}).await);
        }
        assert_eq!(room.num_permits(), 0);
        // The eleventh waits until one of the ten is finished.
        let waited = std::cell::Cell::new(false);
        let big = delivery(100_000);
        let eleventh = budget.slot_for(&big, &mut room, || waited.set(true));
        tokio::pin!(eleventh);
        assert!((&mut eleventh).now_or_never().is_none());
        assert!(waited.get());
        held.pop();
        let slot = eleventh.await;
        assert_eq!(slot.num_permits(), 10);
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_budget_is_taken_alone() {
        let budget = Budget::new(10, 1000);
        assert_eq!(budget.weight(50_000), 10);
        let mut room = budget.room(1).await;
        assert_eq!(room.num_permits(), 1, "the room of a read of one entry");
        let slot = budget.slot_for(&delivery(50_000), &mut room, || {}).await;
        assert_eq!(slot.num_permits(), 10);
        assert_eq!(room.num_permits(), 0);
    }
}
