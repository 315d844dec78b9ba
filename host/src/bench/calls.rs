//! The cost of one handler call on its own, with no subscriber around it:
//! the native no-op against the wasm no-op, called back to back from one
//! task. The end-to-end cases say how fast events flow; this says how much
//! of each event's CPU is the wasm call itself.

use std::sync::Arc;
use std::time::Instant;

use crate::event::Event;
use crate::handler::{Handler, Verdict};

/// Calls per timed run.
const CALLS: usize = 200_000;

/// Nanoseconds per call of each case, median of `rounds` runs taken in
/// turns, as a table; the first case is the baseline of the ratios.
pub async fn report(cases: &[(String, Arc<dyn Handler>)], rounds: usize) -> anyhow::Result<String> {
    let event = Event::new(
        "order.created",
        br#"{"order_id":"o-1","sku":"A-1","quantity":2,"unit_cents":1999}"#.to_vec(),
    );
    for (_, handler) in cases {
        time_calls(handler.as_ref(), &event, CALLS / 10).await?;
    }
    let mut runs = vec![Vec::new(); cases.len()];
    for _ in 0..rounds.max(1) {
        for (i, (_, handler)) in cases.iter().enumerate() {
            runs[i].push(time_calls(handler.as_ref(), &event, CALLS).await?);
        }
    }
    let medians: Vec<f64> = runs
        .iter_mut()
        .map(|r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect();
    let mut out = format!(
        "\none call, no subscriber: {CALLS} calls back to back from one task, median of {} rounds\n\n{:<34} {:>10} {:>10}\n",
        rounds.max(1),
        "case",
        "ns/call",
        "vs native"
    );
    for ((name, _), ns) in cases.iter().zip(&medians) {
        out.push_str(&format!(
            "{name:<34} {ns:>10.0} {:>10.2}\n",
            ns / medians[0]
        ));
    }
    Ok(out)
}

/// Wall time per call over `calls` calls, in nanoseconds. Every call must
/// succeed, so that a broken plugin cannot look fast.
async fn time_calls(handler: &dyn Handler, event: &Event, calls: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..calls {
        let handled = handler.handle(event).await;
        anyhow::ensure!(
            handled.verdict == Verdict::Done,
            "benchmark call failed: {:?}",
            handled.verdict
        );
    }
    Ok(started.elapsed().as_nanos() as f64 / calls as f64)
}
