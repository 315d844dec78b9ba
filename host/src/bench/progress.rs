//! What `runnel bench` is measuring now, on stderr: a spinner on a
//! terminal, one plain line per measurement otherwise (logs and CI). The
//! report itself goes to stdout when everything is measured.

use std::sync::OnceLock;
use std::time::Duration;

/// The bench's one progress line.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        let style = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(Some(bar))
    }

    /// Says what is being measured now.
    pub fn say(&self, what: String) {
        match &self.0 {
            Some(bar) => bar.set_message(what),
            None => eprintln!("bench: {what}"),
        }
    }

    /// Clears the spinner before the report is printed.
    pub fn done(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The process's progress line, made on first use.
pub fn progress() -> &'static Progress {
    static PROGRESS: OnceLock<Progress> = OnceLock::new();
    PROGRESS.get_or_init(Progress::new)
}
