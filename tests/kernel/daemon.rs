//! faasd end to end, in-process, inside the harness's private network namespace: deploy
//! the static test handler, call it over HTTP, undeploy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use faasd::daemon::{loopback::Loopback, Config, Daemon};
use libtest_mimic::Trial;

use crate::support::{self, ensure, unique, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![Trial::test(
        "daemon::deploy_serve_undeploy",
        deploy_serve_undeploy,
    )]
}

/// The classic-layout test handler image, built by rootfs-tools (static C handler).
fn test_image() -> PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = support::state_dir().join("root-handler");
        support::make_rootfs(&dir);
        let repo = env!("CARGO_MANIFEST_DIR");
        let ok = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.join("test-handler"))
            .arg(format!("{repo}/rootfs-tools/test-handler.c"))
            .status()
            .expect("gcc");
        assert!(ok.success(), "building the test handler failed");
        let out = support::state_dir().join("test-handler.tar");
        let ok = Command::new("python3")
            .arg(format!("{repo}/rootfs-tools/mkimage.py"))
            .arg("--rootfs")
            .arg(&dir)
            .args(["--cmd", "[\"/test-handler\"]", "--layout", "classic", "-o"])
            .arg(&out)
            .status()
            .expect("python3");
        assert!(ok.success(), "mkimage.py failed");
        out
    })
    .clone()
}

fn http_get(ip: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect((ip, 80))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {ip}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn deploy_serve_undeploy() -> TestResult {
    let image = test_image();
    let state = support::state_dir().join(unique("daemon"));
    let parent = unique("faasd-e2e");
    let cfg = Config::parse_from([
        "faasd",
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--cgroup-parent",
        &parent,
    ]);
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let d = Daemon::start(cfg).await?;
        let upload = std::fs::File::open(&image)?;
        let deployed = d.deploy("hello", upload, Default::default()).await?;
        let ip = deployed.ip.to_string();
        let lo = Loopback::open().await?;
        let ours = lo.addresses().await?;
        ensure(
            ours.iter().any(|a| a.ip == deployed.ip && a.is_ours()),
            format!("{ip} not on lo with label lo:faas"),
        )?;
        // Sequential and concurrent requests, each in a fresh container.
        for i in 0..3 {
            let path = format!("/seq/{i}");
            let ip = ip.clone();
            let body = tokio::task::spawn_blocking(move || http_get(&ip, &path)).await??;
            ensure(body.contains("Hello from FaaS handler!"), &body)?;
            ensure(body.contains(&format!("GET /seq/{i} HTTP/1.1")), &body)?;
        }
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let ip = ip.clone();
                tokio::task::spawn_blocking(move || http_get(&ip, "/par"))
            })
            .collect();
        for c in calls {
            let body = c.await??;
            ensure(body.contains("Hello from FaaS handler!"), &body)?;
        }
        // The rootfs was extracted once; no bundle outlives its request.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bundles: Vec<_> = std::fs::read_dir(state.join("bundles"))?.collect();
        ensure(
            bundles.is_empty(),
            format!("{} bundles left", bundles.len()),
        )?;
        ensure(
            state.join("images/hello/rootfs/test-handler").exists(),
            "rootfs missing",
        )?;
        // Bad names are refused and leave nothing.
        for bad in ["../x", "a/b", "", &"x".repeat(64)] {
            let upload = std::fs::File::open(&image)?;
            ensure(
                d.deploy(bad, upload, Default::default()).await.is_err(),
                format!("{bad:?} accepted"),
            )?;
        }
        d.undeploy("hello").await?;
        let left = lo.addresses().await?;
        ensure(
            !left.iter().any(|a| a.ip == deployed.ip),
            "address left after undeploy",
        )?;
        d.shutdown().await;
        Ok::<_, libtest_mimic::Failed>(())
    });
    support::remove_cgroup_parent(&parent);
    result
}
