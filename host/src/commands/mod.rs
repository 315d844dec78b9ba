//! The commands for plugin authors and operators, beside the service:
//! `runnel test` ([`harness`]), `runnel new` ([`scaffold`]), `emit`, `dlq`
//! and `replay` ([`tools`]), and the NDJSON events they and `runnel run
//! --input` read ([`input`]).

pub mod harness;
pub mod input;
pub mod scaffold;
pub mod tools;
