//! faasd runs from a sealed in-memory copy of its own binary, so no container can reach
//! the binary on the host's disk (runc's defence against CVE-2019-5736).
//!
//! A container's first process shares the daemon's memory until its exec, and with it
//! `/proc/self/exe`: an image whose entrypoint is a script starting `#!/proc/self/exe`
//! runs the daemon's binary as the container's pid 1, with the image's dynamic loader and
//! libraries. Its code can then keep an `O_PATH` fd on that binary and, once nothing
//! executes it any more (a restart), reopen it through `/proc/self/fd` for writing and
//! replace the host's faasd. Started from a memfd sealed against writes, resizing and
//! further sealing, the daemon's `/proc/self/exe` is that memfd: there is nothing on the
//! host to reach, and the copy cannot be changed.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// Set across the re-exec: a copy that still does not see itself sealed stops there
/// instead of copying itself again.
const MARKER: &str = "FAASD_SEALED_EXE";

fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

#[derive(Debug, thiserror::Error)]
pub enum SealedExeError {
    #[error("open /proc/self/exe: {0}")]
    OpenSelf(#[source] io::Error),
    #[error("memfd_create: {0}")]
    MemfdCreate(#[source] nix::Error),
    #[error("copying /proc/self/exe into the memfd: {0}")]
    Copy(#[source] io::Error),
    #[error("sealing the memfd: {0}")]
    Seal(#[source] nix::Error),
    #[error("an argument or environment variable contains a NUL byte")]
    NulByte,
    #[error("fexecve of the sealed copy: {0}")]
    Exec(#[source] nix::Error),
    #[error("re-executed from a sealed copy, but /proc/self/exe is still not one")]
    StillUnsealed,
}

/// Whether this process runs from a sealed copy of its binary.
pub fn is_sealed() -> io::Result<bool> {
    let exe = File::open("/proc/self/exe")?;
    // F_GET_SEALS fails (EINVAL) on files that are not memfds.
    Ok(fcntl(exe.as_fd(), FcntlArg::F_GET_SEALS)
        .is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(seals())))
}

/// Returns at once when this process already runs from a sealed copy; otherwise copies
/// the binary into a sealed memfd and executes it with the same arguments and
/// environment (it never returns then). Call first thing in main, before any thread.
pub fn reexec_sealed() -> Result<(), SealedExeError> {
    if is_sealed().map_err(SealedExeError::OpenSelf)? {
        std::env::remove_var(MARKER);
        // The exec named the process after the memfd ("memfd:faasd"); `ps -C faasd`
        // and friends look for "faasd". Cosmetic: a failure changes nothing else.
        let _ = nix::sys::prctl::set_name(c"faasd");
        return Ok(());
    }
    if std::env::var_os(MARKER).is_some() {
        return Err(SealedExeError::StillUnsealed);
    }
    let mut exe = File::open("/proc/self/exe").map_err(SealedExeError::OpenSelf)?;
    let memfd = memfd_create(
        c"faasd",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(SealedExeError::MemfdCreate)?;
    let mut copy = File::from(memfd);
    io::copy(&mut exe, &mut copy).map_err(SealedExeError::Copy)?;
    fcntl(copy.as_fd(), FcntlArg::F_ADD_SEALS(seals())).map_err(SealedExeError::Seal)?;
    let cstrings = |items: Vec<Vec<u8>>| {
        items
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| SealedExeError::NulByte)
    };
    use std::os::unix::ffi::OsStringExt;
    let args = cstrings(std::env::args_os().map(OsStringExt::into_vec).collect())?;
    std::env::set_var(MARKER, "1");
    let env = cstrings(
        std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                kv
            })
            .collect(),
    )?;
    // Close-on-exec is fine: glibc's fexecve is execveat(AT_EMPTY_PATH), which opens
    // the binary before the exec closes the fd.
    let err = nix::unistd::fexecve(copy.as_fd(), &args, &env).unwrap_err();
    Err(SealedExeError::Exec(err))
}
