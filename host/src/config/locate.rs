//! Where in the config text a deserializing error belongs, and what to say
//! when serde's own words leave the reader guessing.
//!
//! The backend is an internally tagged enum (`kind = "redis"` beside its
//! settings), which serde reads by buffering the whole table: its errors
//! carry the span of the `[backend]` header, not of the key at fault, and a
//! misspelt `kind` reads as "missing field `kind`" without saying what it
//! may be.

/// The 1-based line of the byte offset `at` in `text`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// For an "unknown field `KEY`" error reported at `line` (a table's header,
/// say): the line of that table where `KEY` is set, if there is one.
/// Looks from `line` to the next table header.
pub(super) fn unknown_key_line(text: &str, line: usize, reason: &str) -> Option<usize> {
    let key = reason
        .strip_prefix("unknown field `")?
        .split('`')
        .next()
        .filter(|k| !k.is_empty())?;
    for (i, row) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let row = row.trim_start();
        if i + 1 > line && row.starts_with('[') {
            return None;
        }
        let rest = row
            .strip_prefix(key)
            .or_else(|| row.strip_prefix(&format!("\"{key}\"")));
        if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
            return Some(i + 1);
        }
    }
    None
}

/// serde's reason, with what a missing `kind` of the backend may be.
pub(super) fn explain(key: &str, reason: String) -> String {
    if key == "backend" && reason == "missing field `kind`" {
        return format!("{reason}: kind = \"memory\" or kind = \"redis\"");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[backend]\nkind = \"redis\"\n  urll = \"x\"\n\n[[plugin]]\nurll = 1\n";

    #[test]
    fn an_unknown_key_is_found_below_its_table_header() {
        assert_eq!(
            unknown_key_line(TEXT, 1, "unknown field `urll`, expected one of `url`"),
            Some(3)
        );
    }

    #[test]
    fn the_search_stops_at_the_next_table() {
        assert_eq!(
            unknown_key_line(TEXT, 1, "unknown field `name`, expected `x`"),
            None
        );
        // Found in the second table only when the error points there.
        assert_eq!(unknown_key_line(TEXT, 5, "unknown field `urll`"), Some(6));
    }

    #[test]
    fn other_errors_are_left_where_they_are() {
        assert_eq!(unknown_key_line(TEXT, 1, "missing field `kind`"), None);
        assert_eq!(
            explain("plugin[0]", "missing field `kind`".into()),
            "missing field `kind`"
        );
        assert!(explain("backend", "missing field `kind`".into()).contains("\"redis\""));
    }
}
