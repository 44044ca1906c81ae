//! Fixtures shared by the kernel tests.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

#[path = "../common/private_ns.rs"]
mod private_ns;
pub use private_ns::enter_private_namespaces;

use faasd::runtime::{
    Container, ContainerSpec, ExitStatus, MountTemplate, Resources, Runtime, RuntimeError,
};
use libtest_mimic::Failed;

pub type TestResult = Result<(), libtest_mimic::Failed>;

/// Where the tests keep their files: FAASD_TEST_STATE (a tmpfs in the VM), else /tmp.
pub fn state_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("FAASD_TEST_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("faasd-kernel-tests-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A unique name for a container or cgroup.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub const CGROUP_PARENT: &str = "faasd-test";

pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(CGROUP_PARENT)
            .and_then(|rt| rt.with_netns_pool(4))
            .and_then(|rt| rt.with_fresh_pool(4))
            .expect("runtime")
    })
}

/// Lays out a minimal image root: static busybox as /bin/busybox and /bin/sh, plus the
/// mount points an installed image has.
pub fn make_rootfs(dir: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::write(dir.join("control.sock"), b"").unwrap();
    fs::copy(busybox(), dir.join("bin/busybox")).unwrap();
    fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
}

fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("static busybox (Debian package busybox-static) is required")
}

/// The shared busybox rootfs.
pub fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = state_dir().join("busybox-rootfs");
        make_rootfs(&dir);
        dir
    })
}

pub struct Run {
    pub status: ExitStatus,
    pub output: String,
}

/// Options of a test container, with defaults for everything.
pub struct Opts<'a> {
    pub rootfs: &'a Path,
    pub uid: u32,
    pub resources: Resources,
    pub workdir: &'a str,
    pub timeout: Duration,
    pub id: Option<&'a str>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            rootfs: rootfs(),
            uid: 0,
            resources: Resources::default(),
            workdir: "/",
            timeout: Duration::from_secs(20),
            id: None,
        }
    }
}

/// Runs `script` under busybox sh in a container, capturing stdout and stderr together.
pub fn sh(script: &str) -> Result<Run, RuntimeError> {
    sh_with(script, Opts::default())
}

pub fn sh_with(script: &str, opts: Opts<'_>) -> Result<Run, RuntimeError> {
    sh_on(runtime(), script, opts)
}

pub fn run(argv: &[String], opts: Opts<'_>) -> Result<Run, RuntimeError> {
    run_on(runtime(), argv, opts)
}

/// Runs `script` under busybox sh in a container of `rt`.
pub fn sh_on(rt: &Runtime, script: &str, opts: Opts<'_>) -> Result<Run, RuntimeError> {
    let argv = ["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
    run_on(rt, &argv, opts)
}

pub fn run_on(rt: &Runtime, argv: &[String], opts: Opts<'_>) -> Result<Run, RuntimeError> {
    let timeout = opts.timeout;
    let (container, output) = spawn_on(rt, argv, opts)?;
    let status = container.wait_blocking(timeout)?;
    Ok(Run {
        status,
        output: output.join().unwrap(),
    })
}

/// Starts `argv` in a container of `rt`; returns it and a thread collecting its stdout
/// and stderr until it ends.
pub fn spawn_on(
    rt: &Runtime,
    argv: &[String],
    opts: Opts<'_>,
) -> Result<(Container, std::thread::JoinHandle<String>), RuntimeError> {
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let id = opts.id.map(str::to_string).unwrap_or_else(|| unique("c"));
    let env = ["PATH=/bin".to_string()];
    // The shared rootfs's template is built once, as the daemon does per image.
    static SHARED: OnceLock<MountTemplate> = OnceLock::new();
    let own;
    let template = if opts.rootfs == rootfs() {
        match SHARED.get() {
            Some(t) => t,
            None => {
                SHARED.get_or_init(|| MountTemplate::build(rootfs(), None).expect("template").0)
            }
        }
    } else {
        own = MountTemplate::build(opts.rootfs, None)?.0;
        &own
    };
    let spec = ContainerSpec {
        id: &id,
        rootfs: opts.rootfs,
        template: Some(template),
        argv,
        env: &env,
        workdir: opts.workdir,
        uid: opts.uid,
        gid: opts.uid,
        hostname: "faasd-test",
        resources: opts.resources,
        control_socket: None,
        secrets: &faasd::runtime::secrets::NO_SECRETS,
        stdout: Some(wr.as_fd()),
        stderr: Some(wr.as_fd()),
    };
    let container = rt.spawn(&spec)?;
    drop(wr);
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = fs::File::from(rd).read_to_string(&mut s);
        s
    });
    Ok((container, reader))
}

/// Whether the cgroup of container `id` still exists in any hierarchy.
pub fn cgroup_exists(id: &str) -> bool {
    faasd::runtime::cgroup_children(CGROUP_PARENT)
        .iter()
        .any(|c| c == id)
}

/// Pids of every process in a cgroup under `parent`, read from /proc rather than from the
/// cgroup tree (which the runtime under test maintains).
pub fn processes_in(parent: &str) -> Vec<i32> {
    process_cgroups(parent)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// The container cgroups under `parent` that hold a process, by /proc: live containers.
/// An ended container's cgroup may wait empty in the runtime's pool: not one of these.
pub fn cgroups_in_use(parent: &str) -> Vec<String> {
    let needle = format!("/{parent}/");
    let mut names: Vec<String> = process_cgroups(parent)
        .iter()
        .flat_map(|(_, cgroups)| cgroups.lines())
        .filter_map(|l| {
            let (_, below) = l.split_once(&needle)?;
            below.split('/').next().map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Each process in a cgroup under `parent`, with its /proc/PID/cgroup.
fn process_cgroups(parent: &str) -> Vec<(i32, String)> {
    let needle = format!("/{parent}/");
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    pids.filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|pid: i32| {
            let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            cgroups.contains(&needle).then_some((pid, cgroups))
        })
        .collect()
}

/// Kills and removes the containers left under a daemon's cgroup parent, then the parent
/// itself in every hierarchy (v2, or each v1 controller), so tests leave no cgroup behind.
pub fn remove_cgroup_parent(parent: &str) {
    let _ = faasd::runtime::sweep_cgroups(parent);
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs::read_dir(root).into_iter().flatten().flatten();
    for dir in std::iter::once(root.to_path_buf()).chain(hierarchies.map(|e| e.path())) {
        let _ = fs::remove_dir(dir.join(parent));
    }
}

pub fn ensure(cond: bool, msg: impl std::fmt::Display) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

/// Every tarball the tests deploy, all made by rootfs-tools/build-test-images.sh.
const IMAGES: [&str; 16] = [
    "test-handler.tar",
    "test-handler-oci.tar",
    "test-handler-serve.tar",
    "test-handler-crash.tar",
    "test-handler-noconnect.tar",
    "test-handler-hang.tar",
    "test-handler-flood.tar",
    "test-handler-floodlines.tar",
    "test-handler-slow.tar",
    "test-handler-forkbomb.tar",
    "test-handler-memhog.tar",
    "test-handler-probe.tar",
    "python-handler.tar",
    "net-attack.tar",
    "control-attack.tar",
    "exe-attack.tar",
];

/// The path of test image `file`, in FAASD_TEST_IMAGES or else <repo>/target/test-images,
/// where they are built once when one is missing.
pub fn image(file: &str) -> Result<PathBuf, Failed> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::var_os("FAASD_TEST_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-images"));
        let complete = || IMAGES.iter().all(|f| dir.join(f).is_file());
        if complete() {
            return Ok(dir);
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rootfs-tools/build-test-images.sh"
        );
        let out = Command::new("bash").arg(script).arg(&dir).output();
        match out {
            Ok(out) if out.status.success() && complete() => Ok(dir),
            // The test process is already in its private network namespace, so apt-get can
            // only use the .deb cache; the VM has no network at all.
            other => Err(format!(
                "test images missing in {0} and building them failed; build them first with \
                 `bash {script} {0}` on a machine with network: {1}",
                dir.display(),
                match other {
                    Ok(out) => last_lines(&String::from_utf8_lossy(&out.stderr), 20),
                    Err(e) => e.to_string(),
                }
            )),
        }
    });
    Ok(dir.as_ref().map_err(Failed::from)?.join(file))
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The largest resident size (VmHWM) process `pid` reached, in bytes.
pub fn peak_rss(pid: i32) -> Result<u64, Failed> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib << 10)
}

/// `program`, run in a mount namespace of its own with a tmpfs on /var/lib: podman and
/// skopeo keep a blob cache there whatever their flags say, which would outlive the test.
pub fn with_private_var_lib(program: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=16m faasd-test /var/lib && exec "$@""#)
        .args(["sh", program]);
    c
}
