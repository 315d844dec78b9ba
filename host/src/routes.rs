//! Which stream an emitted event goes to, by its name.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::event::Event;
use crate::handler::Routed;

/// Event name patterns → stream. A pattern may end in `*` to match a prefix;
/// the longest matching pattern wins, so specific routes override general ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Routes(BTreeMap<String, String>);

impl Routes {
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> Self {
        Routes(routes.into_iter().collect())
    }

    /// The stream for events of this name, if any route matches.
    pub fn route(&self, event_name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(pattern, _)| name_matches(pattern, event_name))
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, stream)| stream.as_str())
    }

    /// The stream for events of this name, or an error that names the event.
    pub fn require(&self, event_name: &str) -> Result<&str, String> {
        self.route(event_name)
            .ok_or_else(|| format!("no route for event {event_name:?}: add it to [routes]"))
    }

    /// `event` with the stream its name routes to; the error of
    /// [`Routes::require`] when none does. The one routing step of emitted
    /// and injected events alike.
    pub fn send(&self, event: Event) -> Result<Routed, String> {
        let stream = self.require(&event.name)?.to_string();
        Ok(Routed { stream, event })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

/// `order.*` matches `order.created`; anything else must match exactly.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}
