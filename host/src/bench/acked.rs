//! Time to the ack, for the latency mode: a broker that passes everything
//! through to the real one, noting the stamp of each entry it reads and,
//! once an ack of that entry has returned, how long after the event was
//! due that was. That is when the event is finished for its group (the
//! issue's "from XADD to the ack"), which the handler cannot see: acks go
//! out in batches from a task of their own after the call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::latency::Stamp;
use crate::broker::{Append, Broker, Delivery, Entry, GroupCreated, GroupProgress, StartFrom};

/// The entry field the latency producer writes its stamp to (beside the
/// event, which the host decodes; a reader ignores fields it does not know).
pub(super) const STAMP_FIELD: &str = "runnel-bench-stamp";

/// A [`Broker`] that records, per acknowledged entry, the µs from its due
/// time to the ack's return.
pub(super) struct AckTimed {
    inner: std::sync::Arc<dyn Broker>,
    base: Instant,
    /// Due times (ns since `base`) of entries read and not yet acked, by
    /// entry id (a latency run has one stream).
    due: Mutex<HashMap<String, u64>>,
    acked: Mutex<Histogram<u64>>,
}

impl AckTimed {
    pub(super) fn new(inner: std::sync::Arc<dyn Broker>, base: Instant) -> anyhow::Result<Self> {
        Ok(AckTimed {
            inner,
            base,
            due: Mutex::new(HashMap::new()),
            acked: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        })
    }

    /// µs from due to ack of every stamped entry acked so far.
    pub(super) fn acked(&self) -> Histogram<u64> {
        self.acked.lock().clone()
    }

    fn note(&self, deliveries: &[Delivery]) {
        let mut due = self.due.lock();
        for delivery in deliveries {
            let stamp = delivery
                .entry
                .fields
                .iter()
                .find(|(name, _)| name == STAMP_FIELD)
                .and_then(|(_, value)| Stamp::read(value));
            if let Some(stamp) = stamp {
                due.insert(delivery.entry.id.clone(), stamp.due);
            }
        }
    }
}

#[async_trait]
impl Broker for AckTimed {
    async fn append(&self, entries: Vec<Append>) -> anyhow::Result<Vec<String>> {
        self.inner.append(entries).await
    }

    async fn create_group(
        &self,
        stream: &str,
        group: &str,
        start: StartFrom,
    ) -> anyhow::Result<GroupCreated> {
        self.inner.create_group(stream, group, start).await
    }

    async fn read(
        &self,
        group: &str,
        consumer: &str,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<Delivery>> {
        let deliveries = self
            .inner
            .read(group, consumer, streams, count, block)
            .await?;
        self.note(&deliveries);
        Ok(deliveries)
    }

    async fn ack(&self, group: &str, stream: &str, ids: &[String]) -> anyhow::Result<()> {
        self.inner.ack(group, stream, ids).await?;
        let now = self.base.elapsed().as_nanos() as u64;
        let mut due = self.due.lock();
        let mut acked = self.acked.lock();
        for id in ids {
            if let Some(at) = due.remove(id) {
                acked.saturating_record((now.saturating_sub(at) / 1000).max(1));
            }
        }
        Ok(())
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> anyhow::Result<Vec<Delivery>> {
        let deliveries = self
            .inner
            .claim_idle(stream, group, consumer, min_idle, count)
            .await?;
        self.note(&deliveries);
        Ok(deliveries)
    }

    async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> anyhow::Result<()> {
        self.inner.touch(stream, group, consumer, ids).await
    }

    async fn range(
        &self,
        stream: &str,
        from: Option<&str>,
        to: Option<&str>,
        count: usize,
    ) -> anyhow::Result<Vec<Entry>> {
        self.inner.range(stream, from, to, count).await
    }

    async fn is_marked(&self, key: &str) -> anyhow::Result<bool> {
        self.inner.is_marked(key).await
    }

    async fn mark(&self, key: &str, ttl: Duration) -> anyhow::Result<()> {
        self.inner.mark(key, ttl).await
    }

    async fn delete(&self, stream: &str, ids: &[String]) -> anyhow::Result<()> {
        self.inner.delete(stream, ids).await
    }

    async fn backlog(&self, stream: &str, group: &str) -> anyhow::Result<u64> {
        self.inner.backlog(stream, group).await
    }

    async fn group_progress(&self, stream: &str, group: &str) -> anyhow::Result<GroupProgress> {
        self.inner.group_progress(stream, group).await
    }

    async fn forget_idle_consumers(
        &self,
        stream: &str,
        group: &str,
        idle: Duration,
        keep: &str,
    ) -> anyhow::Result<Vec<String>> {
        self.inner
            .forget_idle_consumers(stream, group, idle, keep)
            .await
    }

    async fn wake_reader(&self, group: &str, consumer: &str) {
        self.inner.wake_reader(group, consumer).await
    }

    async fn kv_get(&self, bucket: &str, keys: &[String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        self.inner.kv_get(bucket, keys).await
    }

    async fn kv_scan(
        &self,
        bucket: &str,
        cursor: Option<&str>,
        count: usize,
    ) -> anyhow::Result<(Vec<String>, Option<String>)> {
        self.inner.kv_scan(bucket, cursor, count).await
    }

    async fn commit(
        &self,
        commits: &[crate::kv::Commit],
    ) -> anyhow::Result<Vec<crate::kv::Outcome>> {
        self.inner.commit(commits).await
    }

    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.inner.ping().await
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use std::sync::Arc;

    #[tokio::test]
    async fn an_acked_stamped_entry_is_timed_once_and_others_not_at_all() {
        let memory: Arc<dyn Broker> = MemoryBroker::new(16);
        let base = Instant::now();
        let timed = AckTimed::new(memory.clone(), base).unwrap();
        timed
            .create_group("s", "g", StartFrom::Beginning)
            .await
            .unwrap();
        let stamp = Stamp {
            due: 0,
            appended: 0,
        };
        let stamped = vec![
            ("event".to_string(), b"{}".to_vec()),
            (STAMP_FIELD.to_string(), stamp.write()),
        ];
        let plain = vec![("event".to_string(), b"{}".to_vec())];
        memory
            .append(vec![
                Append {
                    stream: "s".into(),
                    fields: stamped,
                },
                Append {
                    stream: "s".into(),
                    fields: plain,
                },
            ])
            .await
            .unwrap();
        let read = timed
            .read("g", "c", &["s".to_string()], 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(read.len(), 2);
        let ids: Vec<String> = read.iter().map(|d| d.entry.id.clone()).collect();
        timed.ack("g", "s", &ids).await.unwrap();
        // Acked twice: the second finds nothing to time.
        timed.ack("g", "s", &ids).await.unwrap();
        let acked = timed.acked();
        assert_eq!(acked.len(), 1);
        assert!(acked.max() <= base.elapsed().as_micros() as u64 + 1);
        assert_eq!(memory.backlog("s", "g").await.unwrap(), 0);
    }
}
