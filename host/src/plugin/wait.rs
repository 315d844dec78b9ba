//! Waiting with a time limit, without paying for a timer when the wait is
//! over at once.

use std::future::Future;
use std::task::Poll;
use std::time::Instant;

/// The limit ran out before the wait ended.
#[derive(Debug)]
pub(super) struct Elapsed;

/// Awaits `wait`, or gives up once `limit()` has passed (`None`: no limit).
///
/// Most of a plugin's waits are over in their first poll: a warm call with
/// no host wait and no epoch tick, a key-value read the host can answer.
/// So `wait` is polled once before the limit is read and a timer set, for
/// the few that are not: a clock reading and a timer per call or per store
/// operation were a measurable share of both (BENCHMARKS.md, sessions 12
/// and 14).
pub(super) async fn bounded<T>(
    wait: impl Future<Output = T>,
    limit: impl FnOnce() -> Option<Instant>,
) -> Result<T, Elapsed> {
    let mut wait = std::pin::pin!(wait);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await
    {
        return Ok(done);
    }
    match limit() {
        Some(at) => tokio::time::timeout_at(at.into(), wait)
            .await
            .map_err(|_| Elapsed),
        None => Ok(wait.await),
    }
}
