//! Images from an OCI registry (issue 15) through the real binaries: Debian's
//! `docker-registry` on 127.0.n.2:5000 inside the harness's network namespace (once with
//! htpasswd basic auth), test images pushed into it with `skopeo` from the project's own
//! `docker save` tarballs, then `faas new NAME --image REF`.
//!
//! skopeo runs with a private /var/lib (support::with_private_var_lib); the registry keeps
//! its storage in the test's directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::e2e::{eventually, exchange, Setup};
use crate::support::{self, image, unique, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test("registry::anonymous_pull_deploys_and_serves", anonymous),
        Trial::test("registry::basic_auth_from_docker_config", basic_auth),
        Trial::test("registry::tampered_blob_is_refused", tampered),
    ]
}

/// A docker-registry process and its storage; killed and removed on drop.
pub(crate) struct Registry {
    child: Child,
    dir: PathBuf,
    addr: String,
    /// `user:password` when it wants basic auth.
    creds: Option<&'static str>,
}

impl Registry {
    pub(crate) fn start(s: &Setup, creds: Option<&'static str>) -> Result<Self, Failed> {
        let dir = support::state_dir().join(unique("registry"));
        fs::create_dir_all(&dir)?;
        let addr = format!("127.0.{}.2:5000", s.n);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        if let Some(creds) = creds {
            let (user, password) = creds.split_once(':').unwrap();
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()?;
            support::ensure(
                out.status.success(),
                "htpasswd (Debian package apache2-utils) failed",
            )?;
            fs::write(dir.join("htpasswd"), &out.stdout)?;
            config += &format!(
                "auth:\n  htpasswd:\n    realm: faasd-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        fs::write(dir.join("config.yml"), config)?;
        let log = fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!("starting docker-registry (Debian package docker-registry): {e}")
            })?;
        let r = Registry {
            child,
            dir,
            addr,
            creds,
        };
        let up = eventually(Duration::from_secs(20), || {
            exchange(&r.addr, b"GET /v2/ HTTP/1.0\r\n\r\n")
                .is_ok_and(|reply| matches!(reply.status(), Some(200 | 401)))
        });
        let log = || fs::read_to_string(r.dir.join("registry.log")).unwrap_or_default();
        support::ensure(
            up,
            format!(
                "docker-registry did not answer on {}: {}",
                r.addr,
                support::last_lines(&log(), 10)
            ),
        )?;
        Ok(r)
    }

    /// Pushes test image `file` (a `docker save` tarball) as `repo:tag` with skopeo.
    pub(crate) fn push(&self, file: &str, repo_tag: &str) -> TestResult {
        let src = format!("docker-archive:{}", image(file)?.display());
        let dest = format!("docker://{}/{repo_tag}", self.addr);
        let mut args = vec!["--insecure-policy", "copy", "--dest-tls-verify=false"];
        if let Some(creds) = self.creds {
            args.extend(["--dest-creds", creds]);
        }
        let out = support::with_private_var_lib("skopeo")
            .args(&args)
            .args([&src, &dest])
            .output()
            .map_err(|e| format!("running skopeo (Debian package skopeo): {e}"))?;
        support::ensure(
            out.status.success(),
            format!(
                "skopeo copy {src} {dest}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub(crate) fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// The registry's stored blobs, largest first (a layer before its config).
    fn blobs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().is_some_and(|n| n == "data") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.join("data/docker/registry/v2/blobs"), &mut out);
        out.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).map_or(0, |m| m.len())));
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A faasd allowed plain HTTP to the test's registry.
pub(crate) fn setup() -> Result<Setup, Failed> {
    let mut s = Setup::new(&[])?;
    let insecure = format!("127.0.{}.2:5000", s.n);
    s.add_flags(&["--insecure-registry", &insecure]);
    Ok(s)
}

/// `faas new NAME --image REF`: Ok(stdout, stderr) on success, Err(stderr) on failure.
fn faas_pull(
    s: &Setup,
    name: &str,
    reference: &str,
) -> Result<Result<(String, String), String>, Failed> {
    let out = s.faas(&["new", name, "--image", reference], None)?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    Ok(if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(stderr)
    })
}

/// Pulls must succeed: the deployed function's address.
fn pulled(s: &Setup, name: &str, reference: &str) -> Result<std::net::Ipv4Addr, Failed> {
    let (stdout, stderr) = faas_pull(s, name, reference)?
        .map_err(|e| s.fail(format!("faas new {name} --image {reference}: {e}")))?;
    s.check(
        stderr.contains(&format!("Pulled {reference}")),
        format!("no progress report on stderr: {stderr:?}"),
    )?;
    stdout
        .trim_end()
        .strip_prefix(&format!("Deployed {name} at "))
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| s.fail(format!("unexpected output {stdout:?}")))
}

/// Anonymous pulls of both tarball layouts; an unknown tag is a clear error that leaves
/// nothing.
fn anonymous() -> TestResult {
    let s = setup()?;
    // First: faasd brings the namespace's lo up.
    let _d = s.start()?;
    let registry = Registry::start(&s, None)?;
    registry.push("test-handler.tar", "hello:1")?;
    registry.push("test-handler-probe.tar", "probe:latest")?;
    let ip = pulled(&s, "hello", &registry.reference("hello:1"))?;
    s.expect_hello(ip, "/pulled")?;
    // A redeploy from the registry swaps the image in place (the probe reports its session).
    let again = pulled(&s, "hello", &registry.reference("probe:latest"))?;
    s.check(again == ip, format!("the redeploy moved {ip} to {again}"))?;
    let r = s.get(ip, "/probe")?;
    s.check(r.body().contains("sid="), format!("not the new image: {r}"))?;

    let unknown = registry.reference("hello:nope");
    let err = faas_pull(&s, "ghost", &unknown)?
        .err()
        .ok_or_else(|| s.fail("pulling an unknown tag succeeded"))?;
    s.check(
        err.contains(&format!("has no image {unknown}")),
        format!("unknown tag: unclear error {err:?}"),
    )?;
    let err = faas_pull(&s, "ghost", "not a reference")?
        .err()
        .ok_or_else(|| s.fail("an invalid reference was accepted"))?;
    s.check(
        err.contains("invalid image reference"),
        format!("bad reference: {err:?}"),
    )?;
    s.check(
        s.entries("images") == ["hello"] && s.list()?.get("ghost").is_none(),
        format!("failed pulls left {:?}", s.entries("images")),
    )?;
    s.check_no_request_left()
}

/// A registry with htpasswd: refused without credentials, pulled with a docker config.json.
fn basic_auth() -> TestResult {
    let mut s = setup()?;
    let without = s.start()?;
    let registry = Registry::start(&s, Some("alice:s3cret"))?;
    registry.push("test-handler.tar", "private/hello:1")?;
    let reference = registry.reference("private/hello:1");
    let err = faas_pull(&s, "hello", &reference)?
        .err()
        .ok_or_else(|| s.fail("pulled without credentials"))?;
    s.check(
        err.contains("refused access"),
        format!("without credentials: {err:?}"),
    )?;
    s.check_no_function("a refused pull")?;
    drop(without);

    let config = s.state().with_file_name("docker-config.json");
    // base64("alice:s3cret")
    let auths = format!(
        r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#,
        registry.addr
    );
    fs::write(&config, auths)?;
    s.add_flags(&["--registry-auth", config.to_str().unwrap()]);
    let _d = s.start()?;
    let ip = pulled(&s, "hello", &reference)?;
    s.expect_hello(ip, "/private")
}

/// A layer changed in the registry's storage (same digest, other bytes) is refused and
/// leaves no image, address or staging directory.
fn tampered() -> TestResult {
    let s = setup()?;
    let _d = s.start()?;
    let registry = Registry::start(&s, None)?;
    registry.push("test-handler.tar", "hello:1")?;
    let layer = registry
        .blobs()
        .into_iter()
        .next()
        .ok_or("no blob stored")?;
    let mut bytes = fs::read(&layer)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&layer, bytes)?;
    let err = faas_pull(&s, "hello", &registry.reference("hello:1"))?
        .err()
        .ok_or_else(|| s.fail("a tampered layer was deployed"))?;
    s.check(
        err.to_lowercase().contains("digest"),
        format!("tampered layer: the error does not say digest: {err:?}"),
    )?;
    s.check_no_function("a tampered pull")
}
