//! A trapped call in words: which limit it hit, or where it trapped.

use super::PluginSettings;
use crate::handler::Verdict;

/// What a trapped call's verdict says: the limit it hit, if the host
/// refused it something (memory, a table) during the call, and what the
/// guest last wrote to stderr (a panic message, say) even without the
/// `stdio` grant.
pub(super) fn trap_verdict(
    error: &wasmtime::Error,
    settings: &PluginSettings,
    refused: Option<String>,
    stderr: &str,
) -> Verdict {
    let with_stderr = |text: String| match stderr.trim() {
        "" => text,
        said => format!("{text}; stderr: {said}"),
    };
    match (error.downcast_ref::<wasmtime::Trap>(), refused) {
        (Some(wasmtime::Trap::Interrupt), _) => {
            Verdict::Timeout(format!("ran past its time limit of {:?}", settings.timeout))
        }
        (Some(wasmtime::Trap::OutOfFuel), _) => Verdict::OutOfFuel(format!(
            "used up its fuel budget of {}",
            settings.fuel.unwrap_or(u64::MAX)
        )),
        (_, Some(limit)) => Verdict::OutOfMemory(with_stderr(format!(
            "{limit}, then it {}",
            describe_trap(error)
        ))),
        _ => Verdict::Trap(with_stderr(describe_trap(error))),
    }
}

/// A trap in one line: its code and the innermost guest frame when known.
pub(super) fn describe_trap(error: &wasmtime::Error) -> String {
    let mut text = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "trapped: call stack exhausted (the stack limit)".to_string()
        }
        Some(trap) => format!("trapped: {trap}"),
        None if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some() =>
        {
            format!(
                "failed: {} (the instance pool: [engine] max_instances)",
                error.root_cause()
            )
        }
        None => format!("failed: {}", error.root_cause()),
    };
    if let Some(bt) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        if let Some(name) = bt.frames().first().and_then(|f| f.func_name()) {
            text.push_str(&format!(" in {name}"));
        }
    }
    text
}
