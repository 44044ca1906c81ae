//! Blocking work handed off the async threads.
//!
//! Tearing a container down (kill, reap, cgroup drain and rmdir, bundle removal) can take
//! seconds when its cgroup is slow to empty; done on one of tokio's few worker threads it
//! would stall every accept and the control API meanwhile. `Drop` cannot await, so it
//! hands the work off with [`off_async`]. A container's wait hands off the part after the
//! reap (cgroup removal, the network namespace's check and return) the same way, so the
//! request does not wait for it either.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Jobs handed off and not yet finished, process-wide.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Runs `work` on tokio's blocking pool when called from a runtime, else right here. If
/// the runtime shuts down before running it, the work runs when tokio drops it: teardown
/// is never skipped.
pub fn off_async(work: impl FnOnce() + Send + 'static) {
    PENDING.fetch_add(1, Ordering::SeqCst);
    let job = RunOnDrop(Some(work));
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(job));
        }
        Err(_) => drop(job),
    }
}

/// Waits (up to `limit`) until every job handed off so far has finished: at shutdown, the
/// containers of killed requests must be gone before their addresses are removed, or
/// their clients never see the connection close. True if they all finished.
pub async fn finished(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while PENDING.load(Ordering::SeqCst) > 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

struct RunOnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for RunOnDrop<F> {
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            work();
            PENDING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_inline_without_a_runtime() {
        let (tx, rx) = mpsc::channel();
        off_async(move || tx.send(std::thread::current().id()).unwrap());
        assert_eq!(rx.try_recv().unwrap(), std::thread::current().id());
    }

    #[test]
    fn runs_off_the_async_thread_in_a_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let caller = rt.block_on(async move {
            off_async(move || tx.send(std::thread::current().id()).unwrap());
            std::thread::current().id()
        });
        drop(rt);
        assert_ne!(rx.recv().unwrap(), caller);
    }
}
