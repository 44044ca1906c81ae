//! Containers started before their request arrives (`--prewarm N` per function).
//!
//! Most of a cold start is the container's own setup and its handler's start (see the
//! cold_start bench's breakdown); a container whose handler already waits on
//! /control.sock when the connection arrives needs only the hand-over. Each is still used
//! for exactly one request and then torn down: it is made before its request instead of
//! after it. While it waits it holds its concurrency slots, so the limits still bound the
//! live containers; a redeploy discards the ones of the old image.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::function::{Function, Image};
use super::metrics::PrewarmMetrics;
use super::request::{self, Started};
use super::Daemon;

/// Pause before the next attempt after consecutive failures (a start that failed, or a
/// handler that exited while waiting): doubled from MIN_BACKOFF up to MAX_BACKOFF, reset
/// when a request takes a live container. A crash-looping handler must not make us spin.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Prewarmed {
    ready: Mutex<VecDeque<Started>>,
    /// Signalled when one was taken or discarded.
    wanted: Notify,
    /// Signalled by `clear` (a redeploy): the backoff of the old image is over.
    reset: Notify,
    /// Failures since the last container a request took.
    failures: AtomicU32,
    metrics: PrewarmMetrics,
}

impl Prewarmed {
    pub fn new(metrics: PrewarmMetrics) -> Self {
        Prewarmed {
            ready: Mutex::default(),
            wanted: Notify::new(),
            reset: Notify::new(),
            failures: AtomicU32::new(0),
            metrics,
        }
    }

    /// Runs `f` on the queue and publishes its new length.
    fn with_ready<T>(&self, f: impl FnOnce(&mut VecDeque<Started>) -> T) -> T {
        let mut ready = self.ready.lock().unwrap();
        let out = f(&mut ready);
        self.metrics.waiting.set(ready.len() as i64);
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
        let died = stale.iter().filter(|s| s.container.has_exited()).count();
        self.failed(died);
        if found.is_some() {
            self.failures.store(0, Ordering::Relaxed);
        }
        // Dropping tears the stale ones down; not under the lock.
        drop(stale);
        self.wanted.notify_one();
        found
    }

    /// Tears down every waiting container (redeploy, undeploy, shutdown).
    pub fn clear(&self) {
        let all: Vec<Started> = self.with_ready(|ready| ready.drain(..).collect());
        drop(all);
        self.failures.store(0, Ordering::Relaxed);
        self.reset.notify_one();
        self.wanted.notify_one();
    }

    /// Discards the containers whose handler exited while waiting.
    fn prune(&self) {
        let dead: VecDeque<Started> = self.with_ready(|ready| {
            let (alive, dead) = ready.drain(..).partition(|s| !s.container.has_exited());
            *ready = alive;
            dead
        });
        if !dead.is_empty() {
            tracing::warn!("{} prewarmed handlers exited while waiting", dead.len());
        }
        self.failed(dead.len());
    }

    fn failed(&self, n: usize) {
        if n > 0 {
            self.metrics.failures.inc_by(n as u64);
            self.failures.fetch_add(n as u32, Ordering::Relaxed);
        }
    }

    /// The pause the failures so far call for, if any.
    fn backoff(&self) -> Option<Duration> {
        let failures = self.failures.load(Ordering::Relaxed);
        let doublings = failures.checked_sub(1)?.min(16);
        Some((MIN_BACKOFF * (1 << doublings)).min(MAX_BACKOFF))
    }

    /// Process fds of the waiting containers, to notice at once when one exits.
    fn exit_watches(&self) -> Vec<OwnedFd> {
        let ready = self.ready.lock().unwrap();
        ready
            .iter()
            .filter_map(|s| s.container.pidfd().try_clone_to_owned().ok())
            .collect()
    }

    fn len(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

/// Resolves when one of `pidfds` reports its process's exit (never, when there are none
/// or the kernel cannot tell: then the next request's `take` finds the dead ones).
async fn any_exit(pidfds: Vec<OwnedFd>) {
    let exits: Vec<_> = pidfds
        .into_iter()
        .map(|fd| {
            Box::pin(async move {
                if !matches!(
                    crate::pidfd::exited(fd.as_fd(), Duration::MAX).await,
                    Ok(true)
                ) {
                    std::future::pending::<()>().await;
                }
            })
        })
        .collect();
    if exits.is_empty() {
        std::future::pending::<()>().await;
    }
    futures::future::select_all(exits).await;
}

/// Keeps `n` containers of `f` waiting until the function stops.
pub async fn keep_ready(d: Arc<Daemon>, f: Arc<Function>, n: usize) {
    let p = &f.prewarmed;
    loop {
        while p.len() >= n {
            tokio::select! {
                _ = p.wanted.notified() => {}
                _ = any_exit(p.exit_watches()) => {}
                _ = f.stop.cancelled() => return,
            }
            p.prune();
        }
        if let Some(backoff) = p.backoff() {
            p.metrics.backoff.set(backoff.as_secs_f64());
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = p.reset.notified() => {}
                _ = f.stop.cancelled() => return,
            }
            p.metrics.backoff.set(0.0);
        }
        let id = d.next_request_id(&f.name);
        let started = tokio::select! {
            r = request::start(&d, &f, &id, Instant::now()) => r,
            // Dropping the start tears down whatever it had made.
            _ = f.stop.cancelled() => return,
        };
        match started {
            Ok(s) if !f.stop.is_cancelled() => p.with_ready(|ready| ready.push_back(s)),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(function = %f.name, "prewarming failed: {e}");
                p.failed(1);
            }
        }
    }
}
