//! Whether a subscriber is reading, and if not, why: what `/readyz` and the
//! metrics report per plugin.

use parking_lot::Mutex;

/// A subscriber's read health, shared with the admin API.
#[derive(Debug)]
pub struct ReadHealth {
    /// Why the subscriber is not reading now; `None` while it reads.
    problem: Mutex<Option<String>>,
}

impl Default for ReadHealth {
    /// Not reading yet: a subscriber is ready once its groups exist.
    fn default() -> Self {
        ReadHealth {
            problem: Mutex::new(Some("starting".into())),
        }
    }
}

impl ReadHealth {
    /// Why the subscriber cannot read, or `None` while it reads.
    pub fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    pub(super) fn failing(&self, why: String) {
        *self.lock() = Some(why);
    }

    pub(super) fn reading(&self) {
        let mut problem = self.lock();
        if problem.is_some() {
            *problem = None;
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Option<String>> {
        self.problem.lock()
    }
}
