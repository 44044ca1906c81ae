//! The background thread of a pool of objects made ahead of use (netns_pool.rs,
//! fresh_pool.rs): starting it, and waiting for its first fill.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::error::{Result, RuntimeError};

/// How long starting a pool waits for it to fill.
const FIRST_FILL: Duration = Duration::from_secs(5);

/// The calling thread's namespace of `kind` ("net", "ipc"), which a filler goes back to
/// after making each new one, so that it never lingers in one a container uses; `what`
/// names it in the error.
pub fn home_namespace(kind: &str, what: &'static str) -> Result<OwnedFd> {
    File::open(format!("/proc/thread-self/ns/{kind}"))
        .map(OwnedFd::from)
        .map_err(|source| RuntimeError::Sys { op: what, source })
}

/// Starts the thread `name` running `fill`; `what` names it in the error.
pub fn start(name: &str, what: &'static str, fill: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(fill)
        .map(drop)
        .map_err(|source| RuntimeError::Sys { op: what, source })
}

/// Waits, at most a few seconds, until `filled` holds of the pool's state (the filler
/// signals `made_one` after each object and when it gives up): the first containers
/// then find the pool full.
pub fn await_first_fill<S>(state: &Mutex<S>, made_one: &Condvar, filled: impl Fn(&S) -> bool) {
    let st = state.lock().unwrap();
    let (st, _) = made_one
        .wait_timeout_while(st, FIRST_FILL, |st| !filled(st))
        .unwrap();
    drop(st);
}
