//! What `describe` tells about a function's requests since the daemon started: served,
//! failures by reason, the last failure.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::api::LastFailure;

#[derive(Default)]
pub struct Stats {
    inner: Mutex<Counts>,
}

#[derive(Default, Clone)]
pub struct Counts {
    pub served: u64,
    pub failures: BTreeMap<String, u64>,
    pub last_failure: Option<LastFailure>,
}

impl Stats {
    pub fn served(&self) {
        self.inner.lock().unwrap().served += 1;
    }

    /// A request that failed for `reason` (the metrics' reason label).
    pub fn failed(&self, request: &str, reason: &str, message: String) {
        let mut c = self.inner.lock().unwrap();
        *c.failures.entry(reason.to_string()).or_default() += 1;
        c.last_failure = Some(LastFailure {
            at: super::unix_now(),
            request: request.to_string(),
            reason: reason.to_string(),
            message,
        });
    }

    pub fn snapshot(&self) -> Counts {
        self.inner.lock().unwrap().clone()
    }
}
