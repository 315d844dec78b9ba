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
        // wasi:keyvalue is not in the `wasi` crate: generate it here.
        generate_all,
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
        http::set_event_id(&event.id);
        let outcome = <T as Plugin>::handle(event);
        http::set_event_id("");
        outcome
    }

    fn handle_error(failure: Failure, event: Option<Event>) {
        http::set_event_id(event.as_ref().map_or("", |e| &e.id));
        <T as Plugin>::handle_error(failure, event);
        http::set_event_id("");
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

/// Key-value state (`wasi:keyvalue`), committed exactly once with the
/// event.
///
/// A plugin opens the buckets its config grants (`kv = ["counts"]` under
/// `[plugin.grants]`). Within a call, reads see the committed state plus
/// the call's own writes; the writes take effect only if `handle` returns
/// `Ok`, in one step with the events it emitted and the acknowledgement of
/// the event. A failed, trapped or retried attempt leaves nothing behind,
/// and if another call changed a key this call read, the host runs this
/// call again on fresh state (not counted as an attempt). Dry runs never
/// write.
///
/// ```ignore
/// let counts = runnel_guest::kv::open("counts")?;
/// let n = counts.increment(&format!("count:{}", event.name), 1)?;
/// ```
pub mod kv {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::bindings::wasi::keyvalue::{atomics, batch, store};
    use super::Refusal;

    /// Why a key-value operation failed: the bucket, and the host's reason.
    /// With `?` in `handle` it becomes a retry.
    #[derive(Debug, Clone)]
    pub struct Error {
        bucket: String,
        reason: String,
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "key-value bucket {:?}: {}", self.bucket, self.reason)
        }
    }

    impl std::error::Error for Error {}

    impl From<Error> for Refusal {
        fn from(e: Error) -> Self {
            Refusal::retry(e)
        }
    }

    fn error(bucket: &str, e: store::Error) -> Error {
        let reason = match e {
            store::Error::NoSuchStore => "no such store".to_string(),
            store::Error::AccessDenied => {
                format!("not granted: add kv = [{bucket:?}] under the plugin's [plugin.grants]")
            }
            store::Error::Other(m) => m,
        };
        Error {
            bucket: bucket.to_string(),
            reason,
        }
    }

    /// An open bucket.
    pub struct Bucket {
        name: String,
        inner: Rc<store::Bucket>,
    }

    thread_local! {
        /// Buckets opened by earlier calls of this instance. A handle stays
        /// valid for the instance's life, so a call that opens a bucket
        /// another call opened costs no host call (and none to drop it):
        /// two of a counter's five host calls per event.
        static OPENED: RefCell<Vec<(String, Rc<store::Bucket>)>> = const { RefCell::new(Vec::new()) };
    }

    /// Opens a bucket the plugin's config grants. A refusal is not
    /// remembered: the next call asks again.
    pub fn open(name: &str) -> Result<Bucket, Error> {
        let known = OPENED.with_borrow(|opened| {
            opened
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone())
        });
        let inner = match known {
            Some(inner) => inner,
            None => {
                let inner = Rc::new(store::open(name).map_err(|e| error(name, e))?);
                OPENED.with_borrow_mut(|opened| opened.push((name.to_string(), inner.clone())));
                inner
            }
        };
        Ok(Bucket {
            name: name.to_string(),
            inner,
        })
    }

    impl Bucket {
        /// The value of `key` (`None`: not set).
        pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
            self.inner.get(key).map_err(|e| error(&self.name, e))
        }

        /// Sets `key` to `value` when the call succeeds.
        pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
            self.inner.set(key, value).map_err(|e| error(&self.name, e))
        }

        /// Removes `key` when the call succeeds.
        pub fn delete(&self, key: &str) -> Result<(), Error> {
            self.inner.delete(key).map_err(|e| error(&self.name, e))
        }

        /// Whether `key` is set.
        pub fn exists(&self, key: &str) -> Result<bool, Error> {
            self.inner.exists(key).map_err(|e| error(&self.name, e))
        }

        /// Adds `delta` to the integer at `key` (0 when not set) and
        /// returns the sum; stored as decimal text.
        pub fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
            atomics::increment(&self.inner, key, delta).map_err(|e| error(&self.name, e))
        }

        /// The values of `keys`, in order.
        pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
            let pairs = batch::get_many(&self.inner, keys).map_err(|e| error(&self.name, e))?;
            Ok(pairs.into_iter().map(|(_, v)| v).collect())
        }

        /// Every key of the bucket (a page at a time underneath).
        pub fn keys(&self) -> Result<Vec<String>, Error> {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = self
                    .inner
                    .list_keys(cursor.as_deref())
                    .map_err(|e| error(&self.name, e))?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(keys),
                }
            }
        }

        /// The value of `key` decoded from JSON (`None`: not set).
        pub fn get_json<T: serde::de::DeserializeOwned>(
            &self,
            key: &str,
        ) -> Result<Option<T>, Error> {
            match self.get(key)? {
                None => Ok(None),
                Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error {
                    bucket: self.name.clone(),
                    reason: format!("value of key {key:?} is not the expected JSON: {e}"),
                }),
            }
        }

        /// Sets `key` to `value` as JSON when the call succeeds.
        pub fn set_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
            let bytes = serde_json::to_vec(value).map_err(|e| Error {
                bucket: self.name.clone(),
                reason: format!("cannot encode the value of key {key:?}: {e}"),
            })?;
            self.set(key, &bytes)
        }
    }
}

pub mod http;

/// The plugin's configuration (`wasi:config/store`): its `[plugin.config]`
/// table, plain values and secrets the host read from the environment or
/// files when it loaded the plugin.
///
/// ```ignore
/// let endpoint = runnel_guest::config::require("endpoint")?;
/// ```
pub mod config {
    use super::bindings::wasi::config::store;
    use super::Refusal;

    /// The value of `key`, `None` when the config does not set it.
    pub fn get(key: &str) -> Option<String> {
        store::get(key).ok().flatten()
    }

    /// The value of `key`; a retry naming the key when it is not set (the
    /// config can be fixed and reloaded before the attempts run out).
    pub fn require(key: &str) -> Result<String, Refusal> {
        get(key).ok_or_else(|| {
            Refusal::retry(format!(
                "config key {key:?} is not set: add it under the plugin's [plugin.config]"
            ))
        })
    }

    /// Every key and value.
    pub fn all() -> Vec<(String, String)> {
        store::get_all().unwrap_or_default()
    }
}
