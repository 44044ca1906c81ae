//! The client side: one request to a function, and closed-loop load from N clients,
//! always bounded in count and in time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A client waits this long for an answer before calling the request failed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One `GET /bench` to the function at `ip`, port 80; Ok when the handler answered.
pub fn request(ip: Ipv4Addr) -> Result<(), String> {
    let mut s = TcpStream::connect((ip, 80)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| format!("set timeout: {e}"))?;
    s.write_all(b"GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.windows(24).any(|w| w == b"Hello from FaaS handler!") {
        Ok(())
    } else {
        Err(format!("answer: {:?}", String::from_utf8_lossy(&answer)))
    }
}

/// What a closed-loop run did.
#[derive(Default)]
pub struct Load {
    pub done: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub wall: Duration,
    pub latencies: Vec<Duration>,
}

impl Load {
    /// Adds another run's requests (its wall time too: the runs were one after the other).
    pub fn add(&mut self, other: Load) {
        self.done += other.done;
        self.failed += other.failed;
        self.first_error = self.first_error.take().or(other.first_error);
        self.wall += other.wall;
        self.latencies.extend(other.latencies);
    }

    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.wall.as_secs_f64()
    }
}

/// `clients` threads make `total` requests to `ip` between them, each back to back;
/// whatever is left when `limit` has passed is not started.
pub fn closed_loop(ip: Ipv4Addr, clients: usize, total: u64, limit: Duration) -> Load {
    let next = AtomicU64::new(0);
    let out = Mutex::new(Load::default());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut mine = Vec::new();
                let (mut failed, mut first_error) = (0, None);
                while next.fetch_add(1, Ordering::Relaxed) < total && start.elapsed() < limit {
                    let t = Instant::now();
                    match request(ip) {
                        Ok(()) => mine.push(t.elapsed()),
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                let mut out = out.lock().unwrap();
                out.done += mine.len() as u64;
                out.latencies.extend(mine);
                out.failed += failed;
                if out.first_error.is_none() {
                    out.first_error = first_error;
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.wall = start.elapsed();
    out
}
