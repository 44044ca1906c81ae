//! Containers started before their request arrives (`--prewarm N` per function).
//!
//! Most of a cold start is the container's own setup and its handler's start (see the
//! cold_start bench's breakdown); a container whose handler already waits on
//! /control.sock when the connection arrives needs only the hand-over. Each is still used
//! for exactly one request and then torn down: it is made before its request instead of
//! after it. While it waits it holds its concurrency slots, so the limits still bound the
//! live containers; a redeploy discards the ones of the old image.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::function::{Function, Image};
use super::request::{self, Started};
use super::Daemon;

/// Pause after a failed prewarm, doubled up to MAX_BACKOFF while failures go on (a
/// handler that crashes must not make us spin).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often waiting containers are checked for handlers that exited on their own.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

pub struct Prewarmed {
    ready: Mutex<VecDeque<Started>>,
    /// Signalled when one was taken or discarded.
    wanted: Notify,
    /// How many are waiting, for /metrics.
    gauge: Gauge,
}

impl Prewarmed {
    pub fn new(gauge: Gauge) -> Self {
        Prewarmed {
            ready: Mutex::default(),
            wanted: Notify::new(),
            gauge,
        }
    }

    /// Runs `f` on the queue and publishes its new length.
    fn with_ready<T>(&self, f: impl FnOnce(&mut VecDeque<Started>) -> T) -> T {
        let mut ready = self.ready.lock().unwrap();
        let out = f(&mut ready);
        self.gauge.set(ready.len() as i64);
        out
    }

    /// A waiting container of the `current` image whose handler is still alive.
    pub fn take(&self, current: &Arc<Image>) -> Option<Started> {
        let (found, stale) = self.with_ready(|ready| {
            let mut stale = Vec::new();
            let found = loop {
                match ready.pop_front() {
                    None => break None,
                    Some(s) if Arc::ptr_eq(&s.image, current) && !s.container.has_exited() => {
                        break Some(s)
                    }
                    Some(s) => stale.push(s),
                }
            };
            (found, stale)
        });
        // Dropping tears the stale ones down; not under the lock.
        drop(stale);
        self.wanted.notify_one();
        found
    }

    /// Tears down every waiting container (redeploy, undeploy, shutdown).
    pub fn clear(&self) {
        let all: Vec<Started> = self.with_ready(|ready| ready.drain(..).collect());
        drop(all);
        self.wanted.notify_one();
    }

    fn prune(&self) {
        let dead: VecDeque<Started> = self.with_ready(|ready| {
            let (alive, dead) = ready.drain(..).partition(|s| !s.container.has_exited());
            *ready = alive;
            dead
        });
        if !dead.is_empty() {
            tracing::warn!("{} prewarmed handlers exited while waiting", dead.len());
        }
    }

    fn len(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

/// Keeps `n` containers of `f` waiting until the function stops.
pub async fn keep_ready(d: Arc<Daemon>, f: Arc<Function>, n: usize) {
    let mut backoff = MIN_BACKOFF;
    loop {
        while f.prewarmed.len() >= n {
            tokio::select! {
                _ = f.prewarmed.wanted.notified() => {}
                _ = tokio::time::sleep(PRUNE_EVERY) => f.prewarmed.prune(),
                _ = f.stop.cancelled() => return,
            }
        }
        let id = d.next_request_id();
        let started = tokio::select! {
            r = request::start(&d, &f, &id, Instant::now()) => r,
            // Dropping the start tears down whatever it had made.
            _ = f.stop.cancelled() => return,
        };
        match started {
            Ok(s) if !f.stop.is_cancelled() => {
                f.prewarmed.with_ready(|ready| ready.push_back(s));
                backoff = MIN_BACKOFF;
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(function = %f.name, "prewarming failed, retrying in {backoff:?}: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = f.stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
