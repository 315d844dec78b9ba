//! Errors as one line for people: each cause once.
//!
//! `{:#}` on an `anyhow::Error` joins its chain with ": ", but many library
//! errors repeat their source in their own text (an I/O error wrapped by a
//! client error, a path added by two layers), which printed
//! "Connection refused (os error 111): Connection refused (os error 111)".

/// The error and its causes on one line, leaving out a cause that its
/// wrapper's text already ends with (the wrapper quoted it). A cause that
/// only appears elsewhere in the line (a short word inside a path, say)
/// is kept.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.ends_with(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_repeated_by_its_wrapper_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let repeated = anyhow::Error::new(io)
            .context(format!(
                "connecting: {}",
                std::io::ErrorKind::ConnectionRefused
            ))
            .context("XADD on redis at redis://127.0.0.1:1");
        assert_eq!(
            one_line(&repeated),
            "XADD on redis at redis://127.0.0.1:1: connecting: connection refused"
        );
        let distinct = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(one_line(&distinct), "top: middle: root");
        let inside = anyhow::anyhow!("timeout").context("reading /etc/timeout.toml");
        assert_eq!(one_line(&inside), "reading /etc/timeout.toml: timeout");
    }
}
