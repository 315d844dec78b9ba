//! A subscriber's consumer groups: created at start if missing, and created
//! again when they vanish under a running host (`DEL` of the stream,
//! `XGROUP DESTROY`, a Redis restarted without persistence).

use std::collections::HashMap;

use anyhow::Context as _;

use super::Shared;
use crate::broker::{parse_entry_id, Broker, Delivery, GroupCreated, GroupProgress, StartFrom};
use crate::stats::Stats;

/// Makes sure `group` exists on `stream`. A new group that starts after
/// entries already on the stream (`start = "new"`) skips them for good: that
/// is said once, with the count and the setting that includes them.
pub async fn ensure_group(
    broker: &dyn Broker,
    plugin: &str,
    stream: &str,
    group: &str,
    start: StartFrom,
) -> anyhow::Result<GroupCreated> {
    let created = broker
        .create_group(stream, group, start.clone())
        .await
        .with_context(|| format!("creating group {group:?} on {stream:?}"))?;
    if let (GroupCreated::Created { skipped }, StartFrom::New) = (created, &start) {
        if skipped > 0 {
            tracing::warn!(
                plugin,
                stream,
                group,
                "new group starts at the end of the stream (start = \"new\"): the {skipped} entries already on it will not be handled; start = \"beginning\" includes them"
            );
        }
    }
    Ok(created)
}

/// The last entry known to be delivered to the group, per source stream:
/// from this consumer's reads and, each maintenance round, from the backend
/// (the group's other consumers read too). Where a group that vanishes
/// starts again.
#[derive(Debug, Default)]
pub(super) struct Positions {
    last: HashMap<String, String>,
}

/// Counts, per stream, entries that left it (trimmed by `MAXLEN`, or
/// deleted) before the group read them.
///
/// The counters say it only while the group has not reached any entry still
/// on the stream: then the removed entries past the last one it read are
/// gone for it. Redis's read counter does not count the entries of such a
/// gap once the group reads past it (it goes up by one per entry read), so
/// what was counted is added back to it from then on. Looked at each
/// maintenance round: a gap the group reads past within one round is not
/// seen. Each host of a group counts the same losses.
#[derive(Debug, Default)]
pub(super) struct TrimWatch {
    streams: HashMap<String, Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    /// Entries removed from the stream at the last look; `None` before
    /// the first, which only sets this baseline (what was trimmed before
    /// this host watched, or before the group existed, is not counted).
    removed: Option<u64>,
    /// Losses counted so far: what Redis's read counter misses.
    counted: u64,
}

impl TrimWatch {
    /// Entries that left `stream` unread by the group since the last look.
    fn newly_lost(&mut self, stream: &str, progress: &GroupProgress) -> u64 {
        let Some(removed) = progress.removed() else {
            return 0;
        };
        let watched = self.streams.entry(stream.to_string()).or_default();
        let Some(seen) = watched.removed.replace(removed) else {
            return 0;
        };
        // A group that has read nothing has no count in Redis 7.0.
        let read = match (progress.entries_read, &progress.last_delivered) {
            (Some(read), _) => read + watched.counted,
            (None, None) => 0,
            (None, Some(_)) => return 0,
        };
        if !progress.behind_what_is_left() {
            return 0;
        }
        // Of the entries removed since the last look, those past the last
        // one the group read.
        let lost = removed.saturating_sub(seen.max(read));
        watched.counted += lost;
        lost
    }
}

impl Positions {
    /// Records `id` on `stream` unless a later entry is known already.
    fn note(&mut self, stream: &str, id: &str) {
        let later = |known: &String| parse_entry_id(known).ok() >= parse_entry_id(id).ok();
        if !self.last.get(stream).is_some_and(later) {
            self.last.insert(stream.to_string(), id.to_string());
        }
    }

    /// Records the last entry of each stream in a read (a read holds each
    /// stream's entries together, in id order).
    pub(super) fn note_read(&mut self, deliveries: &[Delivery]) {
        for (i, d) in deliveries.iter().enumerate() {
            let last_of_stream = deliveries
                .get(i + 1)
                .is_none_or(|next| next.stream != d.stream);
            if last_of_stream {
                self.note(&d.stream, &d.entry.id);
            }
        }
    }
}

impl Shared {
    /// Learns how far the group has read each source stream, whoever read
    /// it. A failure leaves what was known.
    pub(super) async fn refresh_positions(&self, positions: &mut Positions) {
        for stream in &self.sub.streams {
            let progress = self.broker.group_progress(stream, &self.sub.group).await;
            if let Ok(GroupProgress {
                last_delivered: Some(id),
                ..
            }) = progress
            {
                positions.note(stream, &id);
            }
        }
    }

    /// Says when entries were trimmed before the group read them (`MAXLEN`
    /// dropping what a slow group had not reached): logged and counted.
    pub(super) async fn watch_trimming(&self, watch: &mut TrimWatch) {
        for stream in &self.sub.streams {
            let Ok(progress) = self.broker.group_progress(stream, &self.sub.group).await else {
                continue;
            };
            let lost = watch.newly_lost(stream, &progress);
            if lost > 0 {
                self.stats
                    .removed_unread
                    .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    plugin = %self.sub.plugin,
                    stream = %stream,
                    "{lost} entries left the stream (trimmed by MAXLEN, or deleted) before group {:?} read them: they will never be handled by it; raise max_len for the stream or make the group faster",
                    self.sub.group
                );
            }
        }
    }

    /// Creates the subscription's groups that are missing, each as
    /// configured, and those of its replay streams. A replay group that
    /// cannot be created (a Redis at maxmemory refuses the new stream) does
    /// not hold up reading the sources: replay reads create it later.
    pub(super) async fn ensure_groups(&self) -> anyhow::Result<()> {
        for stream in &self.sub.streams {
            ensure_group(
                &*self.broker,
                &self.sub.plugin,
                stream,
                &self.sub.group,
                self.sub.start.clone(),
            )
            .await?;
        }
        if let Err(e) = self.ensure_replay_groups().await {
            tracing::warn!(plugin = %self.sub.plugin, "replayed dead letters cannot be read yet: {e:#}");
        }
        Ok(())
    }

    /// Creates the groups of the replay streams that are missing, from
    /// their first entry: everything on them is for this group.
    pub(super) async fn ensure_replay_groups(&self) -> anyhow::Result<()> {
        for stream in self.sub.replay_streams() {
            ensure_group(
                &*self.broker,
                &self.sub.plugin,
                &stream,
                &self.sub.group,
                StartFrom::Beginning,
            )
            .await?;
        }
        Ok(())
    }

    /// Creates again the groups that vanished; returns whether one had.
    /// Where the stream still holds the last entry known delivered to the
    /// group, only the group was lost: it starts after that entry, so that
    /// what was handled is not handled again (at most what the group read
    /// since the last maintenance round comes twice). Otherwise the stream
    /// itself is new (deleted, or lost in a restart; or trimmed past that
    /// entry, when the two starts are the same) and every entry on it is new
    /// to the group: it starts from the first.
    pub(super) async fn recreate_groups(&self, positions: &Positions) -> anyhow::Result<bool> {
        let mut recreated = false;
        for stream in &self.sub.streams {
            let start = match positions.last.get(stream) {
                Some(id) if self.holds(stream, id).await? => StartFrom::After(id.clone()),
                _ => StartFrom::Beginning,
            };
            let from = match &start {
                StartFrom::After(id) => format!("after {id}, the last entry it had read"),
                _ => "from its first entry: the stream is new".to_string(),
            };
            let created = ensure_group(
                &*self.broker,
                &self.sub.plugin,
                stream,
                &self.sub.group,
                start,
            )
            .await?;
            if created != GroupCreated::Existed {
                recreated = true;
                Stats::bump(&self.stats.groups_recreated);
                tracing::warn!(
                    stream = %stream,
                    "consumer group {:?} had vanished (stream deleted, group destroyed or Redis restarted empty): created it again, reading {from}",
                    self.sub.group
                );
            }
        }
        Ok(recreated)
    }

    /// Removes the group's consumers that other processes left behind (see
    /// [`Broker::forget_idle_consumers`]); a failure only costs a warning.
    pub(super) async fn forget_idle_consumers(&self) {
        let Some(idle) = self.sub.forget_consumers_after else {
            return;
        };
        for stream in &self.sub.streams {
            let forgotten = self
                .broker
                .forget_idle_consumers(stream, &self.sub.group, idle, &self.sub.consumer)
                .await;
            match forgotten {
                Ok(names) if names.is_empty() => {}
                Ok(names) => tracing::info!(
                    plugin = %self.sub.plugin,
                    stream = %stream,
                    "removed {} consumers of group {:?} idle for over {idle:?} and holding nothing: {}",
                    names.len(),
                    self.sub.group,
                    names.join(", ")
                ),
                Err(e) => {
                    tracing::warn!(plugin = %self.sub.plugin, "removing idle consumers: {e:#}")
                }
            }
        }
    }

    /// Whether `stream` still holds the entry `id`.
    async fn holds(&self, stream: &str, id: &str) -> anyhow::Result<bool> {
        Ok(!self
            .broker
            .range(stream, Some(id), Some(id), 1)
            .await?
            .is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entry N of the stream is `0-N`.
    fn look(added: u64, length: u64, read: u64) -> GroupProgress {
        GroupProgress {
            last_delivered: (read > 0).then(|| format!("0-{read}")),
            entries_read: Some(read),
            entries_added: Some(added),
            length,
            first_entry: (length > 0).then(|| format!("0-{}", added - length + 1)),
            last_generated: Some(format!("0-{added}")),
        }
    }

    #[test]
    fn losses_are_counted_once_and_a_read_past_a_gap_counts_nothing() {
        let mut watch = TrimWatch::default();
        assert_eq!(watch.newly_lost("s", &look(10, 10, 2)), 0, "baseline");
        // Trimmed to 3 while the group had read 2: 3..=7 are lost.
        assert_eq!(watch.newly_lost("s", &look(10, 3, 2)), 5);
        assert_eq!(watch.newly_lost("s", &look(10, 3, 2)), 0, "counted once");
        // It reads the 3 left: Redis's counter says 5 (it misses the gap).
        let mut past = look(10, 3, 5);
        past.last_delivered = Some("0-10".into());
        assert_eq!(watch.newly_lost("s", &past), 0);
        // 10 more, all read, then trimmed: nothing unread was removed.
        let mut caught_up = look(20, 3, 15);
        caught_up.last_delivered = Some("0-20".into());
        assert_eq!(watch.newly_lost("s", &caught_up), 0, "no phantom loss");
        // Stalled again while 10 more come and all but 3 go: 21..=27.
        let mut stalled = look(30, 3, 15);
        stalled.last_delivered = Some("0-20".into());
        assert_eq!(watch.newly_lost("s", &stalled), 7);
    }
}
