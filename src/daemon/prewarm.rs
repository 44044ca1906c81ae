//! Containers started before their request arrives (`--prewarm`, `auto` by default).
//!
//! Most of a cold start is the container's own setup and its handler's start (see the
//! cold_start bench's breakdown); a container whose handler already waits on
//! /control.sock when the connection arrives needs only the hand-over. Each is still used
//! for exactly one request and then torn down: it is made before its request instead of
//! after it. While it waits it holds its concurrency slots, so the limits still bound the
//! live containers; a redeploy discards the ones of the old image.
//!
//! How many wait, per function (`auto`): Little's law, arrivals per second x seconds to
//! start one, plus one standard deviation of the arrivals during a start (Poisson), so a
//! burst still finds one; at least one from the deploy until the function has had no
//! request for `--prewarm-idle`, then none; at most `--max-per-function`. All waiting
//! containers together hold at most `--prewarm-memory-mb`, as their cgroups measure it.
//!
//! Refilling stays off the request path: it starts when a request has ended (not when its
//! container was taken, which would put a container start beside the handler's work on
//! the CPU), and never while any request waits for a cold start of its own.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::config::Prewarm;
use super::function::{Function, Image};
use super::metrics::PrewarmMetrics;
use super::request::{self, Started};
use super::Daemon;

/// Pause before the next attempt after consecutive failures (a start that failed, or a
/// handler that exited while waiting): doubled from MIN_BACKOFF up to MAX_BACKOFF, reset
/// when a request takes a live container. A crash-looping handler must not make us spin.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The arrival rate is a count of arrivals decayed with this time constant, over it: it
/// follows a change of load within a few seconds and forgets a burst as fast.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Weight of the newest start in the average time to start one.
const START_SMOOTHING: f64 = 0.2;

/// What every function's prewarming shares: the policy, the memory budget and the count
/// of requests waiting for a cold start.
pub struct Pool {
    mode: Prewarm,
    idle: Duration,
    max_per_function: usize,
    memory: Arc<Budget>,
    cold_starts: watch::Sender<usize>,
}

impl Pool {
    pub fn new(mode: Prewarm, idle: Duration, max_per_function: usize, memory_bytes: u64) -> Self {
        Pool {
            mode,
            idle,
            max_per_function,
            memory: Arc::new(Budget {
                limit: memory_bytes,
                used: AtomicU64::new(0),
                freed: Notify::new(),
            }),
            cold_starts: watch::Sender::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.mode != Prewarm::Fixed(0)
    }

    /// Resolves when no request waits for a cold start.
    async fn no_cold_starts(&self) {
        let mut rx = self.cold_starts.subscribe();
        // The sender lives as long as the pool, which outlives this borrow.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One request waiting for a cold start (see `Prewarmed::cold_start`).
pub struct ColdStart<'a>(&'a watch::Sender<usize>);

impl Drop for ColdStart<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Memory held by all waiting containers, within `limit`.
struct Budget {
    limit: u64,
    used: AtomicU64,
    /// Signalled when a waiting container has gone.
    freed: Notify,
}

impl Budget {
    fn fits(&self, bytes: u64) -> bool {
        self.used.load(Ordering::Relaxed).saturating_add(bytes) <= self.limit
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.freed.notify_waiters();
    }
}

/// A container waiting for its request, with the memory its cgroup held once its handler
/// had connected (reserved in the budget until it goes).
struct Waiting {
    started: Option<Started>,
    memory: u64,
    budget: Arc<Budget>,
}

impl Waiting {
    fn alive(&self) -> bool {
        self.started
            .as_ref()
            .is_some_and(|s| !s.container.has_exited())
    }

    fn into_started(mut self) -> Started {
        self.started.take().expect("present until taken")
    }
}

impl Drop for Waiting {
    /// Dropping the `Started` tears the container down (off the async threads).
    fn drop(&mut self) {
        self.budget.release(self.memory);
    }
}

/// Recent demand of one function.
struct Demand {
    /// Arrivals decayed with RATE_WINDOW up to `at`: the rate is this over RATE_WINDOW.
    decayed: f64,
    at: Instant,
    /// The last request, deploy or redeploy: the idle time counts from here.
    active: Instant,
    /// Average seconds from starting a container to its handler waiting.
    start_secs: Option<f64>,
}

impl Demand {
    fn new(now: Instant) -> Self {
        Demand {
            decayed: 0.0,
            at: now,
            active: now,
            start_secs: None,
        }
    }

    fn decayed_at(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.decayed * (-dt / RATE_WINDOW.as_secs_f64()).exp()
    }

    fn arrival(&mut self, now: Instant) {
        self.decayed = self.decayed_at(now) + 1.0;
        self.at = now;
        self.active = now;
    }

    /// Arrivals per second.
    fn rate(&self, now: Instant) -> f64 {
        self.decayed_at(now) / RATE_WINDOW.as_secs_f64()
    }

    fn started_one(&mut self, took: Duration) {
        let t = took.as_secs_f64();
        self.start_secs = Some(match self.start_secs {
            None => t,
            Some(avg) => avg + START_SMOOTHING * (t - avg),
        });
    }
}

/// How many containers should wait for a function that gets `rate` requests per second
/// and takes `start_secs` to start one: Little's law (the requests that arrive while one
/// starts) plus a standard deviation of that Poisson count, and at least one.
fn auto_target(rate: f64, start_secs: f64) -> usize {
    let during_a_start = rate * start_secs;
    ((during_a_start + during_a_start.sqrt()).ceil() as usize).max(1)
}

/// One function's waiting containers and what decides their number.
pub struct Prewarmed {
    pool: Arc<Pool>,
    ready: Mutex<VecDeque<Waiting>>,
    demand: Mutex<Demand>,
    /// Signalled when a request has ended, or containers were discarded.
    wanted: Notify,
    /// Signalled by `clear` (a redeploy): the backoff of the old image is over.
    reset: Notify,
    /// Failures since the last container a request took.
    failures: AtomicU32,
    /// Bumped by `clear`: a start begun before it is of the old image.
    epoch: AtomicU64,
    /// The last epoch in which the first attempt has been made (or none is to be made):
    /// what a deploy waits for, so that its first request is served warm.
    settled: watch::Sender<u64>,
    /// Bytes the last container held once waiting: what the next one is expected to.
    last_memory: AtomicU64,
    metrics: PrewarmMetrics,
}

impl Prewarmed {
    pub fn new(pool: Arc<Pool>, metrics: PrewarmMetrics) -> Self {
        Prewarmed {
            pool,
            ready: Mutex::default(),
            demand: Mutex::new(Demand::new(Instant::now())),
            wanted: Notify::new(),
            reset: Notify::new(),
            failures: AtomicU32::new(0),
            epoch: AtomicU64::new(1),
            settled: watch::Sender::new(0),
            last_memory: AtomicU64::new(0),
            metrics,
        }
    }

    /// Runs `f` on the queue and publishes its length and memory.
    fn with_ready<T>(&self, f: impl FnOnce(&mut VecDeque<Waiting>) -> T) -> T {
        let mut ready = self.ready.lock().unwrap();
        let out = f(&mut ready);
        self.metrics.waiting.set(ready.len() as i64);
        self.metrics
            .memory
            .set(ready.iter().map(|w| w.memory as i64).sum());
        out
    }

    /// A request has arrived: a waiting container of the `current` image whose handler is
    /// still alive, if there is one (counted as a hit or a miss).
    pub fn take(&self, current: &Arc<Image>) -> Option<Started> {
        self.demand.lock().unwrap().arrival(Instant::now());
        let (found, stale) = self.with_ready(|ready| {
            let mut stale = Vec::new();
            let found = loop {
                match ready.pop_front() {
                    None => break None,
                    Some(w)
                        if w.alive()
                            && w.started
                                .as_ref()
                                .is_some_and(|s| Arc::ptr_eq(&s.image, current)) =>
                    {
                        break Some(w)
                    }
                    Some(w) => stale.push(w),
                }
            };
            (found, stale)
        });
        self.failed(stale.iter().filter(|w| !w.alive()).count());
        // Dropping tears the stale ones down; not under the lock. No refill is asked for
        // here: that waits until the request has ended (`request_done`).
        drop(stale);
        found.map(Waiting::into_started)
    }

    /// A request has been handed to a waiting container (a warm hit).
    pub fn hit(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.metrics.hits.inc();
    }

    /// A request has ended: time to refill, off its path.
    pub fn request_done(&self) {
        self.wanted.notify_one();
    }

    /// Tears down every waiting container (redeploy, undeploy, shutdown); a redeploy
    /// counts as activity, so a new image gets its waiting container at once.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.demand.lock().unwrap().active = Instant::now();
        let all: Vec<Waiting> = self.with_ready(|ready| ready.drain(..).collect());
        drop(all);
        self.failures.store(0, Ordering::Relaxed);
        self.reset.notify_one();
        self.wanted.notify_one();
    }

    /// Waits (at most `bound`) until the first container of the current image waits, or
    /// its start failed, or none is to be made: a deploy returns after this, so that its
    /// first request finds one.
    pub async fn settled(&self, bound: Duration) {
        if !self.pool.enabled() {
            return;
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut rx = self.settled.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|&s| s >= epoch)).await;
    }

    fn settle(&self, epoch: u64) {
        self.settled.send_if_modified(|s| {
            let newer = epoch > *s;
            if newer {
                *s = epoch;
            }
            newer
        });
    }

    /// How many should wait now.
    fn target(&self, now: Instant) -> usize {
        let n = match self.pool.mode {
            Prewarm::Fixed(n) => n,
            Prewarm::Auto => {
                let demand = self.demand.lock().unwrap();
                if now.saturating_duration_since(demand.active) >= self.pool.idle {
                    0
                } else {
                    auto_target(demand.rate(now), demand.start_secs.unwrap_or(0.0))
                }
            }
        };
        n.min(self.pool.max_per_function)
    }

    /// When the function will have been idle for `--prewarm-idle` (auto only).
    fn idle_at(&self) -> Option<Instant> {
        (self.pool.mode == Prewarm::Auto)
            .then(|| self.demand.lock().unwrap().active + self.pool.idle)
    }

    /// Discards the containers whose handler exited while waiting, and those past `keep`.
    fn prune(&self, keep: usize) {
        let (dead, surplus) = self.with_ready(|ready| {
            let (alive, dead): (VecDeque<Waiting>, VecDeque<Waiting>) =
                ready.drain(..).partition(|w| w.alive());
            *ready = alive;
            let surplus: Vec<Waiting> = ready.drain(keep.min(ready.len())..).collect();
            (dead, surplus)
        });
        if !dead.is_empty() {
            tracing::warn!("{} prewarmed handlers exited while waiting", dead.len());
        }
        self.failed(dead.len());
        drop(surplus);
    }

    /// Gives up one waiting container (for a request that needs its slots, or another
    /// function's first within the memory budget).
    fn evict(&self) -> bool {
        let one = self.with_ready(|ready| ready.pop_back());
        let evicted = one.is_some();
        drop(one);
        if evicted {
            self.wanted.notify_one();
        }
        evicted
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
            .filter_map(|w| w.started.as_ref())
            .filter_map(|s| s.container.pidfd().try_clone_to_owned().ok())
            .collect()
    }

    /// The memory the next container will likely hold: what the last one held.
    fn expected_memory(&self) -> u64 {
        self.last_memory.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

/// A request of `f` found no waiting container (a warm miss) and starts its own: no
/// container is started ahead, for any function, until the guard is dropped. When every
/// container slot is taken, a waiting container gives its slots up: one of `f` (which
/// missed it: it came after the request looked), else of the function with the most.
pub fn cold_start<'a>(d: &Daemon, f: &'a Function) -> ColdStart<'a> {
    let p = &f.prewarmed;
    p.metrics.misses.inc();
    p.pool.cold_starts.send_modify(|n| *n += 1);
    if f.live().slots.available_permits() == 0 {
        p.evict();
    } else if d.global_slots.available_permits() == 0 && !p.evict() {
        evict_one(&d.functions(), 0);
    }
    ColdStart(&p.pool.cold_starts)
}

/// Takes one waiting container from the function that has the most, if it has more than
/// `keep`; whether one went.
fn evict_one(functions: &[Arc<Function>], keep: usize) -> bool {
    functions
        .iter()
        .map(|f| (f.prewarmed.len(), f))
        .filter(|(n, _)| *n > keep)
        .max_by_key(|(n, _)| *n)
        .is_some_and(|(_, f)| f.prewarmed.evict())
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

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Keeps as many containers of `f` waiting as its demand calls for, until it stops.
pub async fn keep_ready(d: Arc<Daemon>, f: Arc<Function>) {
    let p = &f.prewarmed;
    let budget = &p.pool.memory;
    loop {
        let epoch = p.epoch.load(Ordering::Relaxed);
        let target = p.target(Instant::now());
        p.metrics.target.set(target as i64);
        p.prune(target);
        if p.len() >= target {
            p.settle(epoch);
            tokio::select! {
                _ = p.wanted.notified() => {}
                _ = any_exit(p.exit_watches()) => {}
                // The idle time may have run out: then the target is 0.
                _ = sleep_until(p.idle_at().filter(|_| target > 0)) => {}
                _ = f.stop.cancelled() => return,
            }
            continue;
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
        tokio::select! {
            _ = p.pool.no_cold_starts() => {}
            _ = f.stop.cancelled() => return,
        }
        if !budget.fits(p.expected_memory()) {
            // A function's first one may take the place of another's surplus.
            if p.len() == 0 && evict_one(&d.functions(), 1) {
                continue;
            }
            p.settle(epoch);
            tokio::select! {
                _ = budget.freed.notified() => {}
                _ = p.wanted.notified() => {}
                _ = f.stop.cancelled() => return,
            }
            continue;
        }
        let id = d.next_request_id();
        let began = Instant::now();
        p.metrics.starting.set(1);
        let started = tokio::select! {
            r = request::start(&d, &f, &id, began) => Some(r),
            // Dropping the start tears down whatever it had made.
            _ = f.stop.cancelled() => None,
        };
        p.metrics.starting.set(0);
        let Some(started) = started else { return };
        match started {
            Ok(_) if f.stop.is_cancelled() => return,
            // Cleared meanwhile (a redeploy): it may run the old image.
            Ok(_) if p.epoch.load(Ordering::Relaxed) != epoch => continue,
            Ok(s) => {
                p.demand.lock().unwrap().started_one(began.elapsed());
                keep_within_budget(p, s);
                p.settle(epoch);
            }
            Err(e) => {
                tracing::warn!(function = %f.name, "prewarming failed: {e}");
                p.failed(1);
                p.settle(epoch);
            }
        }
    }
}

/// Measures a container whose handler now waits and queues it, or tears it down if its
/// memory does not fit in the budget.
fn keep_within_budget(p: &Prewarmed, s: Started) {
    let memory = match s.container.memory_usage() {
        Ok(bytes) => bytes,
        Err(e) => {
            // Unmeasured, it would escape the bound: not kept, and retried with backoff.
            tracing::warn!(request = %s.id, "measuring a prewarmed container's memory failed: {e}");
            p.failed(1);
            return;
        }
    };
    p.last_memory.store(memory, Ordering::Relaxed);
    if !p.pool.memory.try_reserve(memory) {
        tracing::debug!(
            request = %s.id,
            memory,
            "a prewarmed container does not fit in --prewarm-memory-mb: torn down"
        );
        return;
    }
    let w = Waiting {
        started: Some(s),
        memory,
        budget: p.pool.memory.clone(),
    };
    p.with_ready(|ready| ready.push_back(w));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_law_with_a_margin_and_at_least_one() {
        assert_eq!(auto_target(0.0, 0.0), 1, "an active function keeps one");
        assert_eq!(auto_target(10.0, 0.013), 1, "10/s x 13 ms: 0.13 + 0.36");
        assert_eq!(auto_target(100.0, 0.013), 3, "1.3 + 1.14");
        assert_eq!(auto_target(1000.0, 0.013), 17, "13 + 3.6");
    }

    #[test]
    fn the_rate_follows_arrivals_and_decays() {
        let t0 = Instant::now();
        let mut d = Demand::new(t0);
        for i in 0..50 {
            d.arrival(t0 + Duration::from_millis(100 * i));
        }
        // 10/s for 5 s, one time constant: 10 x (1 - 1/e).
        let now = t0 + Duration::from_secs(5);
        assert!((6.0..7.0).contains(&d.rate(now)), "{}", d.rate(now));
        let later = now + RATE_WINDOW * 4;
        assert!(d.rate(later) < 0.2, "{}", d.rate(later));
        assert_eq!(d.active, t0 + Duration::from_millis(4900));
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit() {
        let b = Budget {
            limit: 100,
            used: AtomicU64::new(0),
            freed: Notify::new(),
        };
        assert!(b.try_reserve(60));
        assert!(!b.fits(41) && !b.try_reserve(41));
        assert!(b.try_reserve(40));
        b.release(60);
        assert!(b.fits(60) && !b.fits(61));
    }
}
