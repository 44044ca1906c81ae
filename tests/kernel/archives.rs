//! Archives made by a real tool (issue 15): a test rootfs imported into podman, saved with
//! `podman save --format docker-archive` and `--format oci-archive` (an OCI image layout),
//! each deployed with `faas new` and served.
//!
//! podman keeps everything it writes in the test's directory (storage, run and tmp dirs,
//! network config) or on a private /var/lib (support::with_private_var_lib): the machine
//! is left as it was.

use std::path::{Path, PathBuf};
use std::process::Output;

use libtest_mimic::{Failed, Trial};

use crate::e2e::{Setup, Via};
use crate::support::{self, image, unique, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![Trial::test(
        "archives::podman_docker_and_oci_archives_deploy",
        podman_archives,
    )]
}

/// A podman whose whole state lives in `dir` and `run` (removed on drop).
struct Podman {
    dir: PathBuf,
    /// Its runroot: podman refuses one longer than 50 characters, as the test state dir
    /// is in the VM.
    run: PathBuf,
}

impl Podman {
    fn new() -> Result<Self, Failed> {
        let dir = support::state_dir().join(unique("podman"));
        std::fs::create_dir_all(&dir)?;
        let run = Path::new("/run").join(unique("faasd-podman"));
        Ok(Podman { dir, run })
    }

    fn run(&self, args: &[&str]) -> Result<Output, Failed> {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let out = support::with_private_var_lib("podman")
            .args(["--storage-driver", "vfs"])
            .args([
                "--root",
                &d("root"),
                "--runroot",
                self.run.to_str().unwrap(),
                "--tmpdir",
                &d("tmp"),
            ])
            .args([
                "--network-config-dir",
                &d("net"),
                "--events-backend",
                "none",
            ])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args)
            .output()
            .map_err(|e| format!("running podman (Debian package podman): {e}"))?;
        support::ensure(
            out.status.success(),
            format!("podman {args:?}: {}", String::from_utf8_lossy(&out.stderr)),
        )?;
        Ok(out)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

/// The root filesystem of the test handler image: its one layer, as a plain tar.
fn test_rootfs(to: &Path) -> TestResult {
    let mut ar = tar::Archive::new(std::fs::File::open(image("test-handler.tar")?)?);
    for entry in ar.entries()? {
        let mut entry = entry?;
        if entry.path()?.ends_with("layer.tar") {
            entry.unpack(to)?;
            return Ok(());
        }
    }
    Err("test-handler.tar has no layer.tar".into())
}

fn podman_archives() -> TestResult {
    let podman = Podman::new()?;
    let rootfs = podman.dir.join("rootfs.tar");
    test_rootfs(&rootfs)?;
    podman.run(&[
        "import",
        "--change",
        r#"CMD ["/test-handler"]"#,
        "--change",
        "ENV PATH=/bin",
        rootfs.to_str().unwrap(),
        "localhost/faasd-test:1",
    ])?;
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    for format in ["docker-archive", "oci-archive"] {
        let archive = podman.dir.join(format!("{format}.tar"));
        podman.run(&[
            "save",
            "--format",
            format,
            "-o",
            archive.to_str().unwrap(),
            "localhost/faasd-test:1",
        ])?;
        let ip = s.deploy_path(format, &archive, Via::File)?;
        s.expect_hello(ip, &format!("/{format}"))?;
    }
    // Saved images are what a user deploys again: a redeploy from the other format.
    let ip = s.deploy_path(
        "docker-archive",
        &podman.dir.join("oci-archive.tar"),
        Via::Stdin,
    )?;
    s.expect_hello(ip, "/again")?;
    s.check_no_request_left()
}
