//! A deadline for container setup, which the spawning thread cannot enforce itself.
//!
//! With CLONE_VFORK the spawning thread sits in clone until the child execs or exits, so
//! a child stuck before its exec (a frozen cgroup, a hung FUSE or NFS path) would hold
//! that thread and the request's slots forever. One watchdog thread per process keeps the
//! armed deadlines and SIGKILLs a child through its pidfd once its deadline passes. The
//! kernel stores the pidfd into the armed slot during clone, before the child runs; the
//! child cannot be reaped while its parent is still in clone, so the pidfd always names
//! it. Firing and disarming both hold the watchdog's lock, so once `disarm` returns the
//! watchdog never touches that pidfd again.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Armed {
    deadline: Instant,
    /// Written by the kernel (CLONE_PIDFD) during clone; -1 until then.
    pidfd: AtomicI32,
    fired: AtomicBool,
}

#[derive(Default)]
struct Watchdog {
    armed: Mutex<Vec<Arc<Armed>>>,
    wake: Condvar,
}

/// One spawn's deadline; disarm it once clone has returned.
pub struct Deadline {
    armed: Arc<Armed>,
}

fn watchdog() -> &'static Watchdog {
    static W: OnceLock<&'static Watchdog> = OnceLock::new();
    W.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("faasd-setup-watchdog".into())
            .spawn(move || w.run())
            .expect("spawning the setup watchdog thread");
        w
    })
}

impl Watchdog {
    fn run(&self) {
        let mut armed = self.armed.lock().unwrap();
        loop {
            let now = Instant::now();
            armed.retain(|a| {
                if a.deadline > now {
                    return true;
                }
                let pidfd = a.pidfd.load(Ordering::Acquire);
                if pidfd >= 0 {
                    // SAFETY: a pidfd the kernel installed during the clone that is still
                    // in progress (the entry is armed, see the module comment).
                    unsafe {
                        libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, 0, 0)
                    };
                }
                a.fired.store(true, Ordering::Release);
                false
            });
            armed = match armed.iter().map(|a| a.deadline).min() {
                Some(next) => {
                    let wait = next.saturating_duration_since(Instant::now());
                    self.wake.wait_timeout(armed, wait).unwrap().0
                }
                None => self.wake.wait(armed).unwrap(),
            };
        }
    }
}

impl Deadline {
    /// Arms a deadline `after` from now.
    pub fn arm(after: Duration) -> Deadline {
        let armed = Arc::new(Armed {
            deadline: Instant::now() + after,
            pidfd: AtomicI32::new(-1),
            fired: AtomicBool::new(false),
        });
        let w = watchdog();
        let mut list = w.armed.lock().unwrap();
        // Deadlines are all "now + the same timeout", so only an idle watchdog needs waking.
        if list.is_empty() {
            w.wake.notify_one();
        }
        list.push(armed.clone());
        Deadline { armed }
    }

    /// Where clone stores the pidfd (its parent_tid argument with CLONE_PIDFD).
    pub fn pidfd_slot(&self) -> *mut libc::c_int {
        self.armed.pidfd.as_ptr()
    }

    /// Call once clone has returned: the pidfd clone stored, and whether the watchdog
    /// killed the child.
    pub fn disarm(self) -> (libc::c_int, bool) {
        let mut list = watchdog().armed.lock().unwrap();
        list.retain(|a| !Arc::ptr_eq(a, &self.armed));
        (
            self.armed.pidfd.load(Ordering::Acquire),
            self.armed.fired.load(Ordering::Acquire),
        )
    }
}
