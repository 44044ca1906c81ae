//! faasd: serves every HTTP connection to a function's address with a fresh container.

use std::process::ExitCode;

use clap::Parser;
use faasd::backend::BackendKind;
use faasd::daemon::{serve_api, serve_gateway, Config, Daemon, DaemonError};
use faasd::{kernel_check, sealed_exe};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before anything else, while this process has one thread: from here on the binary
    // containers could reach through /proc/self/exe is a sealed copy (see sealed_exe.rs).
    if let Err(e) = sealed_exe::reexec_sealed() {
        eprintln!("faasd: cannot run from a sealed copy of the binary: {e}");
        return ExitCode::FAILURE;
    }
    let cfg = Config::parse();
    if cfg.check_kernel {
        let (report, all) = kernel_check::report(cfg.runtime);
        print!("{report}");
        return if all {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FAASD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    warn_missing_guarantees(&cfg);
    // Still the only thread: every thread made from here on, and every container cloned
    // from one, inherits the containers' bounding set (privileges.rs).
    if cfg.runtime == BackendKind::Native {
        if let Err(e) = faasd::runtime::limit_bounding_set() {
            eprintln!("faasd: cannot limit the capability bounding set: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faasd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("faasd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every guarantee this kernel (or backend) cannot give, loudly, with what it exposes.
fn warn_missing_guarantees(cfg: &Config) {
    let kernel = kernel_check::kernel_release();
    for g in kernel_check::guarantees(cfg.runtime) {
        if let Err(why) = g.holds {
            tracing::warn!(
                "EXPOSED on Linux {kernel} with the {:?} runtime: {} ({why}; {} would \
                 prevent it). `faasd --check-kernel` lists every guarantee.",
                cfg.runtime,
                g.exposure,
                g.mechanism
            );
        }
    }
}

async fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(cfg).await?;
    let api = tokio::spawn(serve_api(daemon.clone()));
    let gateway = tokio::spawn(serve_gateway(daemon.clone()));
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        r = api => return listener_ended(&daemon, r).await,
        r = gateway, if daemon.cfg.gateway.is_some() => return listener_ended(&daemon, r).await,
    }
    daemon.shutdown().await;
    Ok(())
}

/// The control API or the gateway failed to start or died: take everything down cleanly.
async fn listener_ended(
    daemon: &Daemon,
    r: Result<Result<(), DaemonError>, tokio::task::JoinError>,
) -> Result<(), Box<dyn std::error::Error>> {
    daemon.shutdown().await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
