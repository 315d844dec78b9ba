//! Write Runnel event handlers in Rust.
//!
//! A plugin is a type that implements [`Plugin`], exported with
//! [`export_plugin!`], built with `cargo build --target wasm32-wasip2`:
//!
//! ```ignore
//! use runnel_guest::{export_plugin, log, Event, Outcome, Plugin, Refusal};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: String, total_cents: u64 }
//!
//! struct Enricher;
//!
//! impl Plugin for Enricher {
//!     fn handle(event: Event) -> Outcome {
//!         let order: Order = event.json()?;           // bad JSON: reject
//!         log::info(&format!("order {}", order.id));
//!         runnel_guest::emit_json("order.enriched", &serde_json::json!({
//!             "id": order.id, "large": order.total_cents > 100_00,
//!         }))?;                                        // no route: retry
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Enricher);
//! ```
//!
//! Everything here is a thin layer over the bindings generated from the WIT
//! contract (`wit/`), which stay available in [`bindings`].

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "runnel_guest::bindings",
    });
}

pub use bindings::runnel::plugin::types::{
    Event, Failure, FailureKind, Level, Meta, NewEvent, Refusal,
};

/// What `handle` returns: `Ok(())`, or a [`Refusal`] saying whether to try
/// again later (`Refusal::Retry`) or never (`Refusal::Reject`).
pub type Outcome = Result<(), Refusal>;

/// An event handler. Both functions are associated functions (no `self`)
/// because the host may run each call in a fresh instance: keep no state that
/// must survive between events.
pub trait Plugin {
    /// Handles one event.
    fn handle(event: Event) -> Outcome;

    /// Told about each failed attempt; `event` is present only on the last
    /// one, when the host gives up on the event. Does nothing by default.
    fn handle_error(failure: Failure, event: Option<Event>) {
        let _ = (failure, event);
    }
}

impl<T: Plugin> bindings::Guest for T {
    fn handle(event: Event) -> Result<(), Refusal> {
        <T as Plugin>::handle(event)
    }

    fn handle_error(failure: Failure, event: Option<Event>) {
        <T as Plugin>::handle_error(failure, event)
    }
}

/// Exports a [`Plugin`] type as the component's `handle` and `handle-error`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        $crate::bindings::__export_handler_world!($plugin with_types_in $crate::bindings);
    };
}

impl Refusal {
    /// A transient failure: the host retries after backoff.
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        Refusal::Retry(reason.to_string())
    }

    /// A permanent failure: the host dead-letters the event now.
    pub fn reject(reason: impl std::fmt::Display) -> Self {
        Refusal::Reject(reason.to_string())
    }
}

/// A payload that does not parse will never parse: reject.
impl From<serde_json::Error> for Refusal {
    fn from(e: serde_json::Error) -> Self {
        Refusal::reject(format!("payload is not the expected JSON: {e}"))
    }
}

impl Event {
    /// Decodes the payload as JSON into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// Emits one event with raw bytes as payload. It is published only if this
/// call to `handle` succeeds. An error (no route for the name, too many
/// events) becomes a retry when returned with `?`.
pub fn emit(name: &str, payload: impl Into<Vec<u8>>) -> Result<(), Refusal> {
    emit_all(vec![NewEvent {
        name: name.to_string(),
        payload: payload.into(),
    }])
}

/// Emits one event with `value` serialised as its JSON payload.
pub fn emit_json<T: serde::Serialize>(name: &str, value: &T) -> Result<(), Refusal> {
    let payload = serde_json::to_vec(value)
        .map_err(|e| Refusal::reject(format!("cannot encode {name}: {e}")))?;
    emit(name, payload)
}

/// Emits several events at once: all of them, or none if one fails.
pub fn emit_all(events: Vec<NewEvent>) -> Result<(), Refusal> {
    bindings::runnel::plugin::host::emit(&events).map_err(Refusal::Retry)
}

/// Logging to the host's log, tagged with the plugin and the event.
pub mod log {
    use super::{bindings::runnel::plugin::host, Level};

    pub fn trace(message: &str) {
        host::log(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        host::log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        host::log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        host::log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        host::log(Level::Error, message)
    }
}
