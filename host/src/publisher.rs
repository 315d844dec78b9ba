//! The seed's Publisher: emits events onto the streams their names route to.

use std::sync::Arc;

use crate::broker::{Append, Broker, EVENT_FIELD};
use crate::event::Event;
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
            .map(|e| {
                let stream = self.routes.require(&e.name).map_err(anyhow::Error::msg)?;
                Ok((stream.to_string(), e.clone()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.publish(&routed).await
    }

    /// Appends already-routed events (from outside: depth 0).
    pub async fn publish(&self, routed: &[(String, Event)]) -> anyhow::Result<()> {
        self.publish_at_depth(routed, 0).await
    }

    /// Appends events emitted while handling an event at causal depth
    /// `depth - 1`: each entry carries `depth` after its `event` field.
    pub async fn publish_at_depth(
        &self,
        routed: &[(String, Event)],
        depth: u32,
    ) -> anyhow::Result<()> {
        if routed.is_empty() {
            return Ok(());
        }
        self.broker.append(entries_at_depth(routed, depth)).await?;
        Ok(())
    }
}

/// The entries of events emitted at causal depth `depth` (see
/// [`DEPTH_FIELD`]), for their routed streams.
pub fn entries_at_depth(routed: &[(String, Event)], depth: u32) -> Vec<Append> {
    routed
        .iter()
        .map(|(stream, event)| {
            let mut fields = event_fields(event);
            if depth > 0 {
                fields.push((DEPTH_FIELD.to_string(), depth.to_string().into_bytes()));
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
