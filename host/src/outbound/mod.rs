//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`): what may go
//! out (the allowlist), how much (limits), what went out (exchanges, for
//! `runnel test`'s report) and canned answers for testing without servers.
//! The `wasi:http` implementation itself is wasmtime's; the plugin module
//! plugs these rules into its `send_request` hook.

mod allow;
mod canned;

pub use allow::{is_internal, Allowed, Allowlist, HttpGrant, NotGranted};
pub use canned::{CannedResponse, CannedResponses};
use serde::Deserialize;

/// Bounds on a call's outbound HTTP (`[plugin.http_limits]`). Every wait
/// also ends at the call's deadline (`timeout_ms`), whatever these say.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Requests one call may send; the next one fails with
    /// `connection-limit-reached`.
    pub max_requests_per_call: u32,
    /// Largest response body, in bytes; reading past it fails with
    /// `HTTP-response-body-size`.
    pub max_response_bytes: u64,
    /// Largest request body, in bytes; sending more fails with
    /// `HTTP-request-body-size`.
    pub max_request_bytes: u64,
    /// Longest wait for a TCP connection, in milliseconds (the TLS
    /// handshake and everything after it are bounded by the call's
    /// deadline).
    pub connect_timeout_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_requests_per_call: 16,
            max_response_bytes: 4 << 20,
            max_request_bytes: 4 << 20,
            connect_timeout_ms: 5_000,
        }
    }
}

/// One request a call sent or tried to send, as `runnel test` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The full URL, `scheme://authority/path?query`.
    pub url: String,
    /// The response status (`200`), or why there was none
    /// (`refused: not granted (to allow: grants.http = ["http://x:81"])`,
    /// `timed out`, `failed: connection refused`).
    pub outcome: String,
}
