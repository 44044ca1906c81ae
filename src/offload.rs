//! Blocking work handed off the async threads.
//!
//! Tearing a container down (kill, reap, cgroup drain and rmdir, bundle removal) can take
//! seconds when its cgroup is slow to empty; done on one of tokio's few worker threads it
//! would stall every accept and the control API meanwhile. `Drop` cannot await, so it
//! hands the work off with [`off_async`].

/// Runs `work` on tokio's blocking pool when called from a runtime, else right here. If
/// the runtime shuts down before running it, the work runs when tokio drops it: teardown
/// is never skipped.
pub fn off_async(work: impl FnOnce() + Send + 'static) {
    let job = RunOnDrop(Some(work));
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(job));
        }
        Err(_) => drop(job),
    }
}

struct RunOnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for RunOnDrop<F> {
    fn drop(&mut self) {
        if let Some(work) = self.0.take() {
            work();
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
