//! The seed's Publisher: emits events onto the streams their names route to.

use std::sync::Arc;

use crate::broker::{Append, Broker, EVENT_FIELD};
use crate::event::Event;
use crate::handler::Routed;
use crate::routes::Routes;

/// Routes events by name and appends them in one round trip.
#[derive(Clone)]
pub struct Publisher {
    broker: Arc<dyn Broker>,
    routes: Arc<Routes>,
}

impl Publisher {
    pub fn new(broker: Arc<dyn Broker>, routes: Arc<Routes>) -> Self {
        Publisher { broker, routes }
    }

    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Emits events to their routed streams. Nothing is published if one
    /// event has no route: the error names it.
    pub async fn emit(&self, events: &[Event]) -> anyhow::Result<()> {
        let routed = events
            .iter()
            .map(|e| self.routes.send(e.clone()).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.publish(&routed).await
    }

    /// Appends already-routed events (from outside: depth 0, no trace).
    pub async fn publish(&self, routed: &[Routed]) -> anyhow::Result<()> {
        self.publish_emitted(routed, &Lineage::default()).await
    }

    /// Appends events emitted by a call: each entry carries what
    /// `lineage` says after its `event` field.
    pub async fn publish_emitted(
        &self,
        routed: &[Routed],
        lineage: &Lineage,
    ) -> anyhow::Result<()> {
        if routed.is_empty() {
            return Ok(());
        }
        self.broker.append(emitted_entries(routed, lineage)).await?;
        Ok(())
    }
}

/// Where emitted events come from, written into their entries after the
/// `event` field (which Go readers never look past).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// How far down a causal chain they are ([`DEPTH_FIELD`]): one more
    /// than the event whose call emitted them.
    pub depth: u32,
    /// The trace context of that call, when traces are exported
    /// ([`crate::telemetry::TRACE_FIELD`]).
    pub traceparent: Option<String>,
}

/// The entries of events emitted with `lineage`, for their routed streams.
pub fn emitted_entries(routed: &[Routed], lineage: &Lineage) -> Vec<Append> {
    routed
        .iter()
        .map(|Routed { stream, event }| {
            let mut fields = event_fields(event);
            if lineage.depth > 0 {
                fields.push((
                    DEPTH_FIELD.to_string(),
                    lineage.depth.to_string().into_bytes(),
                ));
            }
            if let Some(traceparent) = &lineage.traceparent {
                fields.push((
                    crate::telemetry::TRACE_FIELD.to_string(),
                    traceparent.clone().into_bytes(),
                ));
            }
            Append {
                stream: stream.clone(),
                fields,
            }
        })
        .collect()
}

/// The entry field that counts how far down a causal chain an event is: 1
/// for an event a plugin emitted while handling an event from outside, 2
/// for one emitted while handling that, and so on. Absent means 0. It comes
/// after `event`, so Go readers (who read the first field) never see it.
pub const DEPTH_FIELD: &str = "runnel-depth";

/// The causal depth an entry carries ([`DEPTH_FIELD`]); 0 when it has none
/// or it does not parse (an entry written by someone else).
pub fn causal_depth(entry: &crate::broker::Entry) -> u32 {
    entry
        .fields
        .iter()
        .skip(1)
        .find(|(name, _)| name == DEPTH_FIELD)
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The fields of an event entry: exactly one, `event`, as the Go library
/// writes it (its reader takes the first field whatever its name).
pub fn event_fields(event: &Event) -> Vec<crate::broker::Field> {
    vec![(EVENT_FIELD.to_string(), event.to_json())]
}
