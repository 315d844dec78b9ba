//! Custody of entries on a shared group: keeping this consumer's in-flight
//! entries fresh, and taking over those a dead consumer left behind.

use super::Shared;
use crate::broker::Delivery;

impl Shared {
    /// Keeps this consumer's in-flight entries from looking abandoned.
    pub(super) async fn keep_in_flight_alive(&self) {
        for (stream, ids) in self.in_flight.by_stream() {
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
    pub(super) async fn reclaim(&self, count: usize) -> Vec<Delivery> {
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
        claimed.retain(|d| !self.in_flight.contains(&d.stream, &d.entry.id));
        if !claimed.is_empty() {
            tracing::info!(plugin = %self.sub.plugin, count = claimed.len(), "reclaimed entries abandoned by another consumer");
        }
        claimed
    }
}
