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

    /// Appends already-routed events.
    pub async fn publish(&self, routed: &[(String, Event)]) -> anyhow::Result<()> {
        if routed.is_empty() {
            return Ok(());
        }
        let entries = routed
            .iter()
            .map(|(stream, event)| Append {
                stream: stream.clone(),
                fields: event_fields(event),
            })
            .collect();
        self.broker.append(entries).await?;
        Ok(())
    }
}

/// The fields of an event entry: exactly one, `event`, as the Go library
/// writes it (its reader takes the first field whatever its name).
pub fn event_fields(event: &Event) -> Vec<crate::broker::Field> {
    vec![(EVENT_FIELD.to_string(), event.to_json())]
}
