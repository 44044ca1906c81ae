//! One request: a fresh container that gets the client's TCP connection over SCM_RIGHTS.
//!
//! accept -> first byte -> slot -> spawn -> handler connects to /control.sock -> hand over
//! the fd -> wait for exit -> teardown. The native runtime's handlers connect to their
//! image's one control socket, which tells containers apart (control.rs); runc's to a
//! socket in the request's bundle directory. Every resource is owned by a guard
//! (`Registration` or `Bundle`, `Container`, the slot permits), so whatever path ends the
//! request (error, timeout, shutdown dropping the future), nothing is left behind.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::OwnedSemaphorePermit;

use super::admission::SourceSlot;
use super::control::Registration;
use super::function::{Function, Image};
use super::logs;
use super::metrics::Metrics;
use super::prewarm;
use super::settings::{self, Live};
use super::Daemon;
use crate::api::LogStream;
use crate::backend::{BackendError, Container};
use crate::fdpass;
use crate::runtime::{ContainerSpec, Exit, ExitStatus, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("all container slots busy for {0:?}")]
    Busy(Duration),
    #[error("creating the bundle {path} failed: {source}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the container failed: {0}")]
    Spawn(#[from] BackendError),
    #[error("the container's start task failed: {0}")]
    SpawnTask(#[source] tokio::task::JoinError),
    #[error("the handler did not connect to /control.sock within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the handler exited before connecting ({0:?})")]
    ExitedEarly(ExitStatus),
    #[error("accepting the handler's connection failed: {0}")]
    Accept(#[source] io::Error),
    #[error("handing the connection to the handler failed: {0}")]
    HandOver(#[source] io::Error),
    #[error("the daemon is shutting down")]
    Shutdown,
}

impl RequestError {
    fn reason(&self) -> &'static str {
        match self {
            RequestError::Busy(_) => "busy",
            RequestError::Bundle { .. } => "bundle",
            RequestError::Spawn(_) => "spawn",
            RequestError::SpawnTask(_) => "spawn_task",
            RequestError::ConnectTimeout(_) => "connect_timeout",
            RequestError::ExitedEarly(_) => "exited_early",
            RequestError::Accept(_) => "accept",
            RequestError::HandOver(_) => "hand_over",
            RequestError::Shutdown => "shutdown",
        }
    }

    /// The answer the client gets when we still hold its connection.
    fn http_response(&self) -> String {
        let (status, text) = match self {
            RequestError::Busy(_) | RequestError::Shutdown => {
                ("503 Service Unavailable", self.to_string())
            }
            RequestError::ConnectTimeout(_) => ("504 Gateway Timeout", self.to_string()),
            // Our own failure, not the handler's.
            RequestError::SpawnTask(_) | RequestError::Spawn(BackendError::TeardownTask(_)) => {
                ("500 Internal Server Error", self.to_string())
            }
            _ => ("502 Bad Gateway", self.to_string()),
        };
        format!(
            "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{text}\n",
            text.len() + 1
        )
    }
}

/// The per-request directory holding the control socket (runc backend); removed on drop.
/// Shared with the spawn: a request cancelled mid-spawn must not remove the directory
/// while the spawn still writes its config.json or mounts its secrets there.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn create(bundles: &Path, id: &str) -> Result<Self, RequestError> {
        let dir = bundles.join(id);
        std::fs::create_dir(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|source| RequestError::Bundle {
                path: dir.clone(),
                source,
            })?;
        Ok(Bundle { dir })
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        crate::offload::off_async(move || {
            if let Err(e) = crate::runc::remove_bundle(&dir) {
                tracing::error!(bundle = %dir.display(), "removing the bundle failed: {e}");
            }
        });
    }
}

struct Served {
    id: String,
    status: ExitStatus,
    cold_start: Duration,
}

/// Serves one accepted connection once its first byte has arrived; logs one line and
/// records metrics when done. `_source` holds its place in the per-source bound.
pub async fn serve(d: Arc<Daemon>, f: Arc<Function>, tcp: TcpStream, _source: SourceSlot) {
    let label = Metrics::label(&f.name);
    if !first_byte(&d, &f, &tcp).await {
        return;
    }
    let accepted = Instant::now();
    let id = d.next_request_id();
    d.metrics.requests.get_or_create(&label).inc();
    d.metrics.in_flight.get_or_create(&label).inc();
    let result = tokio::select! {
        r = handle(&d, &f, tcp, &id, accepted) => r,
        // Dropping `handle` tears its container and bundle down.
        _ = d.kill_requests.cancelled() => Err(RequestError::Shutdown),
    };
    f.prewarmed.request_done();
    d.metrics.in_flight.get_or_create(&label).dec();
    let total = accepted.elapsed();
    Metrics::observe(&d.metrics.duration, &f.name, total);
    match result {
        Ok(served) => {
            Metrics::observe(&d.metrics.cold_start, &f.name, served.cold_start);
            let ok = served.status.success();
            if ok {
                f.stats.served();
            } else {
                let reason = exit_reason(&served.status);
                d.metrics.failure(&f.name, reason);
                let status = format!("the handler ended with {:?}", served.status.exit);
                f.stats.failed(&served.id, reason, status);
            }
            tracing::info!(
                function = %f.name,
                request = %served.id,
                status = ?served.status.exit,
                oom_killed = served.status.oom_killed,
                cold_start_ms = ms(served.cold_start),
                total_ms = ms(total),
                "request served"
            );
        }
        Err(e) => {
            d.metrics.failure(&f.name, e.reason());
            f.stats.failed(&id, e.reason(), e.to_string());
            tracing::warn!(function = %f.name, request = %id, total_ms = ms(total), "request failed: {e}");
        }
    }
}

/// Waits for the connection's first byte, without taking a slot or a container: a client
/// that sends nothing within the header timeout is closed and counted; one that closes,
/// or a function being removed, ends it silently. True when a request is coming.
async fn first_byte(d: &Daemon, f: &Function, tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(d.cfg.header_timeout(), tcp.peek(&mut byte)) => match r {
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
            Err(_) => {
                d.metrics.idle_closed.get_or_create(&Metrics::label(&f.name)).inc();
                tracing::debug!(function = %f.name, "closing a connection idle for {:?}", d.cfg.header_timeout());
                false
            }
        },
        _ = f.stop.cancelled() => false,
    }
}

fn exit_reason(s: &ExitStatus) -> &'static str {
    match s.exit {
        _ if s.oom_killed => "oom_killed",
        Exit::TimedOut => "exec_timeout",
        Exit::Signal(_) => "killed_by_signal",
        _ => "exit_status",
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn handle(
    d: &Arc<Daemon>,
    f: &Arc<Function>,
    mut tcp: TcpStream,
    id: &str,
    accepted: Instant,
) -> Result<Served, RequestError> {
    // A prewarmed container whose handover fails (its handler died while waiting) is
    // discarded, and the request takes the cold path like any other.
    let mut started = None;
    // One started before a configuration update runs the old one: not for new requests.
    let ready = f
        .prewarmed
        .take(&f.current_image().await)
        .filter(|r| Arc::ptr_eq(&r.live, &f.live()));
    if let Some(ready) = ready {
        match hand_over(&ready.control, &tcp).await {
            Ok(()) => {
                f.prewarmed.hit();
                started = Some(Ok(ready));
            }
            Err(e) => {
                tracing::warn!(function = %f.name, request = %ready.id, "prewarmed container lost: {e}")
            }
        }
    }
    // A handler that died between its connect and the hand-over leaves us the connection,
    // so that failure too gets its answer below (the container is torn down on drop).
    let started = match started {
        Some(s) => s,
        None => {
            let _cold = prewarm::cold_start(d, f);
            match start(d, f, id, accepted).await {
                Ok(s) => hand_over(&s.control, &tcp).await.map(|()| s),
                Err(e) => Err(e),
            }
        }
    };
    match started {
        // The fields left in `started` (bundle, slots, image) are dropped when this
        // function returns, after the container is gone.
        Ok(Started {
            id,
            container,
            control,
            live,
            ..
        }) => {
            let cold_start = accepted.elapsed();
            // Formatting the phases costs more than the log line: only when it is wanted.
            if let Some(t) = container
                .timeline()
                .filter(|_| tracing::enabled!(tracing::Level::DEBUG))
            {
                let phases: Vec<String> = t
                    .phases()
                    .map(|(name, d)| format!("{name}: {:.3}", ms(d)))
                    .collect();
                tracing::debug!(function = %f.name, request = %id, "setup ms: {}", phases.join(", "));
            }
            drop(control);
            // The handler owns the connection now; our copy must not keep it open.
            drop(tcp);
            let budget = live.exec_timeout.saturating_sub(accepted.elapsed());
            let status = container.wait(budget).await?;
            Ok(Served {
                id,
                status,
                cold_start,
            })
        }
        Err(e) => {
            let _ = tcp.write_all(e.http_response().as_bytes()).await;
            let _ = tcp.shutdown().await;
            Err(e)
        }
    }
}

/// A container whose handler has connected to its control socket, ready for a
/// connection. Dropping it kills the container and removes its bundle.
pub struct Started {
    /// Names the bundle and the cgroup; the request's id in the logs.
    pub id: String,
    pub container: Container,
    pub control: tokio::net::UnixStream,
    /// The image it runs, kept alive (a redeploy's old rootfs stays until it ends).
    pub image: Arc<Image>,
    /// The configuration it was started with (its timeout applies to it to the end).
    pub live: Arc<Live>,
    _control: ControlEnd,
    _slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// A pipe whose read end feeds the function's log as `stream`; the write end is the
/// container's.
fn output_pipe(
    d: &Daemon,
    f: &Function,
    id: &str,
    stream: LogStream,
) -> Result<OwnedFd, RequestError> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RequestError::Spawn(RuntimeError::sys("pipe2")(e).into()))?;
    // Our end only: the handler's stays blocking, as a program expects its stdout to be.
    nix::fcntl::fcntl(
        &rd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| RequestError::Spawn(RuntimeError::sys("fcntl O_NONBLOCK")(e).into()))?;
    let dropped = d
        .metrics
        .log_bytes_dropped
        .get_or_create_owned(&Metrics::label(&f.name));
    logs::forward(rd, f.log.clone(), id, stream, dropped);
    Ok(wr)
}

/// Where a request's handler connects.
enum ControlEnd {
    /// The image's control socket (native runtime), once the container is registered.
    Shared(Option<Registration>),
    /// A socket in the request's own bundle directory (runc backend).
    Bundle(Arc<Bundle>, UnixListener),
}

impl ControlEnd {
    /// The handler's connection.
    async fn accept(&mut self) -> Result<tokio::net::UnixStream, RequestError> {
        match self {
            ControlEnd::Shared(Some(registration)) => Ok(registration.connected().await),
            ControlEnd::Shared(None) => std::future::pending().await,
            ControlEnd::Bundle(_, listener) => listener
                .accept()
                .await
                .map(|(stream, _)| stream)
                .map_err(RequestError::Accept),
        }
    }
}

/// Everything up to the handler's connect on /control.sock.
pub async fn start(
    d: &Arc<Daemon>,
    f: &Arc<Function>,
    id: &str,
    accepted: Instant,
) -> Result<Started, RequestError> {
    let live = f.live();
    let slots = acquire_slots(d, &live).await?;
    let image = f.image().await;
    let image_arc = Arc::clone(&image);
    let mut control = match image.native {
        Some(_) => ControlEnd::Shared(None),
        None => {
            let bundle = Bundle::create(&d.cfg.bundles_dir(), id)?;
            let listener = bind_control_socket(&bundle, image.config.uid, image.config.gid)?;
            ControlEnd::Bundle(Arc::new(bundle), listener)
        }
    };
    let (stdout_wr, stderr_wr) = (
        output_pipe(d, f, id, LogStream::Stdout)?,
        output_pipe(d, f, id, LogStream::Stderr)?,
    );

    let spawn_d = d.clone();
    let id_owned = id.to_string();
    let bundle = match &control {
        ControlEnd::Bundle(bundle, _) => Some(Arc::clone(bundle)),
        ControlEnd::Shared(_) => None,
    };
    let spawn_live = live.clone();
    let container = tokio::task::spawn_blocking(move || {
        let cfg = &image.config;
        let rootfs = image.rootfs();
        let sock = bundle.as_ref().map(|b| b.dir.join("control.sock"));
        let env = settings::merge_env(&cfg.env, &spawn_live.env);
        let spec = ContainerSpec {
            id: &id_owned,
            rootfs: &rootfs,
            template: image.native.as_ref().map(|n| &n.template),
            argv: &cfg.cmd,
            env: &env,
            workdir: &cfg.working_dir,
            uid: cfg.uid,
            gid: cfg.gid,
            hostname: &id_owned,
            resources: spawn_live.resources,
            control_socket: sock.as_deref(),
            secrets: &spawn_live.secrets,
            stdout: Some(stdout_wr.as_fd()),
            stderr: Some(stderr_wr.as_fd()),
        };
        // `image` (a read guard) lives until the mounts are done: no redeploy can swap
        // the rootfs under a spawn.
        spawn_d
            .backend
            .spawn(&spec, bundle.as_ref().map(|b| b.dir.as_path()))
    })
    .await
    .map_err(RequestError::SpawnTask)??;
    if let (ControlEnd::Shared(registration), Some(native)) = (&mut control, &image_arc.native) {
        let (netns_cookie, init, pid_ns) = container
            .native_identity()
            .expect("the native runtime's container");
        *registration = Some(native.control.register(netns_cookie, init, pid_ns));
    }

    let connect = d.cfg.connect_timeout().saturating_sub(accepted.elapsed());
    let pidfd_exit = container_exit(&container);
    tokio::select! {
        conn = tokio::time::timeout(connect, control.accept()) => match conn {
            Ok(Ok(stream)) => Ok(Started {
                id: id.to_string(),
                container,
                control: stream,
                image: image_arc,
                live,
                _control: control,
                _slots: slots,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let status = container.wait(Duration::ZERO).await?;
                tracing::debug!(?status, "handler killed after connect timeout");
                Err(RequestError::ConnectTimeout(d.cfg.connect_timeout()))
            }
        },
        () = pidfd_exit => {
            let status = container.wait(Duration::ZERO).await?;
            Err(RequestError::ExitedEarly(status))
        }
    }
}

/// Resolves when the container has ended (without reaping or cleaning it up). It owns
/// a dup of the pidfd: the container's own wait may register the original meanwhile.
fn container_exit(c: &Container) -> impl std::future::Future<Output = ()> {
    let fd = c.pidfd().try_clone_to_owned();
    async move {
        match fd {
            Ok(fd)
                if crate::pidfd::exited(fd.as_fd(), Duration::MAX)
                    .await
                    .is_ok() => {}
            // Without a pidfd, the connect timeout still ends the wait.
            _ => std::future::pending().await,
        }
    }
}

async fn acquire_slots(
    d: &Daemon,
    live: &Live,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), RequestError> {
    let wait = d.cfg.queue_timeout();
    let both = async {
        let mine = live.slots.clone().acquire_owned().await;
        let global = d.global_slots.clone().acquire_owned().await;
        (mine, global)
    };
    match tokio::time::timeout(wait, both).await {
        Ok((Ok(a), Ok(b))) => Ok((a, b)),
        _ => Err(RequestError::Busy(wait)),
    }
}

fn bind_control_socket(bundle: &Bundle, uid: u32, gid: u32) -> Result<UnixListener, RequestError> {
    let path = bundle.dir.join("control.sock");
    let err = |source| RequestError::Bundle {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(err)?;
    // Only the container's user may connect; the bundle directory is 0700 besides.
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

async fn hand_over(control: &tokio::net::UnixStream, tcp: &TcpStream) -> Result<(), RequestError> {
    let fd = tcp.as_raw_fd();
    // Handlers read an ordinary blocking socket, but O_NONBLOCK lives in the open file
    // description, which the handler's fd shares with our tokio socket: without this, a
    // handler reading before the client's bytes arrive gets EAGAIN.
    set_nonblocking(tcp, false).map_err(RequestError::HandOver)?;
    let sent = control
        .async_io(tokio::io::Interest::WRITABLE, || {
            fdpass::send_fd(control.as_raw_fd(), fd)
        })
        .await;
    if sent.is_err() {
        // We keep the connection to answer the client ourselves, through tokio.
        let _ = set_nonblocking(tcp, true);
    }
    sent.map_err(RequestError::HandOver)
}

fn set_nonblocking(fd: impl AsFd + Copy, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(
        fd,
        FcntlArg::F_SETFL(
            flags.difference(OFlag::O_NONBLOCK)
                | if on {
                    OFlag::O_NONBLOCK
                } else {
                    OFlag::empty()
                },
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JoinError, as a panicking blocking task gives.
    fn join_error() -> tokio::task::JoinError {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { tokio::task::spawn_blocking(|| panic!("boom")).await })
            .unwrap_err()
    }

    #[test]
    fn a_failed_task_is_a_500_for_its_request_not_a_panic() {
        for e in [
            RequestError::SpawnTask(join_error()),
            RequestError::Spawn(BackendError::TeardownTask(join_error())),
        ] {
            let answer = e.http_response();
            assert!(answer.starts_with("HTTP/1.0 500 "), "{answer}");
            assert!(answer.contains("task failed"), "{answer}");
        }
    }
}
