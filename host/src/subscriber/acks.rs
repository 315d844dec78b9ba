//! Acknowledgements, batched: one call per stream for whatever has queued up.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::EntryRef;
use crate::broker::Broker;

/// Sends acks in batches: whatever has queued up goes in one call per stream.
pub(super) async fn ack_loop(
    broker: Arc<dyn Broker>,
    group: String,
    mut rx: mpsc::UnboundedReceiver<EntryRef>,
) {
    const BATCH: usize = 512;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Hashed once per entry: the fast hash (stream names are ours).
        let mut by_stream: HashMap<String, Vec<String>, foldhash::fast::RandomState> =
            HashMap::default();
        for (stream, id) in batch.drain(..) {
            by_stream.entry(stream).or_default().push(id);
        }
        for (stream, ids) in by_stream {
            let mut failures = 0;
            while let Err(e) = broker.ack(&group, &stream, &ids).await {
                failures += 1;
                tracing::warn!(%group, %stream, "ack failed, retrying: {e:#}");
                // About a minute of the backend's retry pace (2 s apart
                // once it has backed off): a restart is ridden out.
                if failures >= 30 {
                    // The entries stay pending and will be delivered again:
                    // duplicates, never losses.
                    tracing::error!(%group, %stream, count = ids.len(), "giving up acking; entries will be redelivered");
                    break;
                }
                tokio::time::sleep(super::BACKEND_RETRY.delay(failures)).await;
            }
        }
    }
}
