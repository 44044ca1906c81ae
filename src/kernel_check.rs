//! What this kernel lets faasd guarantee about a handler's reach, each guarantee with the
//! mechanism that enforces it: printed by `faasd --check-kernel`, and every missing one
//! logged as a warning when the daemon starts.

use crate::backend::BackendKind;
use crate::runtime::{net_support, NetSupport, LANDLOCK_NET_ABI};

pub struct Guarantee {
    pub what: &'static str,
    /// What a handler can do where the guarantee does not hold.
    pub exposure: &'static str,
    pub mechanism: &'static str,
    /// Whether it holds on this kernel with this backend, and why not.
    pub holds: Result<(), String>,
}

/// The running kernel's release, e.g. "6.1.0-27-amd64".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("(unknown: {e})"))
}

fn landlock_net(backend: BackendKind) -> Result<(), String> {
    if backend == BackendKind::Runc {
        return Err("runc applies no Landlock rules".into());
    }
    match net_support() {
        NetSupport::Enforced { .. } => Ok(()),
        NetSupport::AbiTooOld { abi } => Err(format!(
            "Landlock ABI {abi} has no network rules (needs ABI {LANDLOCK_NET_ABI}, Linux 6.7)"
        )),
        NetSupport::Unavailable { errno } => Err(format!(
            "Landlock is not enabled in this kernel ({}; needs ABI {LANDLOCK_NET_ABI}, \
             Linux 6.7, with landlock in the lsm= list)",
            std::io::Error::from_raw_os_error(errno)
        )),
    }
}

fn native_only(backend: BackendKind) -> Result<(), String> {
    match backend {
        BackendKind::Native => Ok(()),
        BackendKind::Runc => Err("the runc backend's spec has no seccomp filter".into()),
    }
}

fn sealed_binary() -> Result<(), String> {
    match crate::sealed_exe::is_sealed() {
        Ok(true) => Ok(()),
        Ok(false) => Err("this process does not run from a sealed memfd".into()),
        Err(e) => Err(format!("cannot open /proc/self/exe: {e}")),
    }
}

pub fn guarantees(backend: BackendKind) -> Vec<Guarantee> {
    vec![
        Guarantee {
            what: "a handler cannot connect or bind a TCP socket, the client socket it is \
                   handed (which lives in the host's network namespace) included: no \
                   connection to 127.0.0.1:8080 or any other host address, no host port",
            exposure: "a handler can disconnect the client socket it is handed and connect it \
                       to any address the host reaches (the control API on 127.0.0.1 \
                       included) or bind it to a host port from 1024 up",
            mechanism: "Landlock network rules (ABI 4, Linux 6.7+)",
            holds: landlock_net(backend),
        },
        Guarantee {
            what: "a handler cannot connect the client socket implicitly with TCP Fast \
                   Open (MSG_FASTOPEN) nor read the host's network devices through it \
                   (SIOCGIF* ioctls)",
            exposure: "a handler can connect the client socket it is handed anywhere the \
                       host reaches with sendto(MSG_FASTOPEN), and list the host's network \
                       interfaces through it",
            mechanism: "seccomp filter on the flags and ioctl arguments",
            holds: native_only(backend),
        },
        Guarantee {
            what: "a handler cannot bind a host port below 1024",
            exposure: "a handler can bind the client socket to a host port below 1024",
            mechanism: "CAP_NET_BIND_SERVICE dropped from the container (any kernel)",
            holds: Ok(()),
        },
        Guarantee {
            what: "a container cannot reach or overwrite the faasd binary on the host \
                   (#!/proc/self/exe runs a sealed in-memory copy)",
            exposure: "an image whose entrypoint starts with #!/proc/self/exe can keep a \
                       handle on the faasd binary and overwrite it once faasd stops",
            mechanism: "sealed memfd re-exec at start (memfd_create, Linux 3.17+)",
            holds: sealed_binary(),
        },
    ]
}

/// A report of every guarantee, one per line pair, for `faasd --check-kernel`.
pub fn report(backend: BackendKind) -> (String, bool) {
    let landlock = match crate::runtime::landlock_abi() {
        Ok(abi) => format!("Landlock ABI {abi}"),
        Err(e) => format!("no Landlock ({e})"),
    };
    let mut out = format!(
        "faasd on Linux {} ({landlock}), {backend:?} runtime:\n",
        kernel_release()
    );
    let mut all = true;
    for g in guarantees(backend) {
        let status = match &g.holds {
            Ok(()) => "yes".to_string(),
            Err(why) => {
                all = false;
                format!("NO: {why}")
            }
        };
        out.push_str(&format!(
            "  [{status}] {}\n        by {}\n",
            g.what, g.mechanism
        ));
    }
    (out, all)
}
