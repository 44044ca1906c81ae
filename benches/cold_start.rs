//! Spawn-to-exit of a static binary in a full container: faasd's native runtime vs
//! `runc run` and `crun run` of the same rootfs, vs a plain fork+exec with no isolation
//! (the floor), all in one run. Needs root. `cargo bench --bench cold_start`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use faasd::runtime::{ContainerSpec, Resources, Runtime};

fn rootfs() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faasd-bench-{}", std::process::id()));
    let root = dir.join("rootfs");
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("control.sock"), b"").unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/rootfs-tools/test-handler.c");
    let ok = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(root.join("test-handler"))
        .arg(src)
        .status()
        .expect("gcc");
    assert!(ok.success());
    root
}

/// An OCI bundle for runc/crun around `root`, made with `runc spec`.
fn oci_bundle(root: &Path) -> Option<PathBuf> {
    let bundle = root.parent()?.to_path_buf();
    let ok = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .ok()?;
    if !ok.success() {
        return None;
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    spec["process"]["args"] = serde_json::json!(["/test-handler", "true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!(root);
    spec["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).ok()?).ok()?;
    Some(bundle)
}

fn oci_run(tool: &str, bundle: &Path) -> bool {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "faasd-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    Command::new(tool)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn spawn_to_exit(c: &mut Criterion) {
    let root = rootfs();
    let rt = Runtime::new("faasd-bench").expect("runtime (run as root)");
    let argv = ["/test-handler".to_string(), "true".to_string()];
    let mut g = c.benchmark_group("spawn_to_exit");
    g.sample_size(30).measurement_time(Duration::from_secs(5));

    g.bench_function("fork_exec_floor", |b| {
        b.iter(|| {
            let s = Command::new(root.join("test-handler"))
                .arg("true")
                .status()
                .unwrap();
            assert!(s.success());
        })
    });

    let n = AtomicU64::new(0);
    g.bench_function("faasd_native", |b| {
        b.iter(|| {
            let id = format!("b{}", n.fetch_add(1, Ordering::Relaxed));
            let spec = ContainerSpec {
                id: &id,
                rootfs: &root,
                argv: &argv,
                env: &[],
                workdir: "/",
                uid: 0,
                gid: 0,
                hostname: "bench",
                resources: Resources::default(),
                control_socket: None,
                stdout: None,
                stderr: None,
            };
            let status = rt
                .spawn(&spec)
                .unwrap()
                .wait_blocking(Duration::from_secs(10))
                .unwrap();
            assert!(status.success());
        })
    });

    match oci_bundle(&root) {
        Some(bundle) => {
            for tool in ["runc", "crun"] {
                if oci_run(tool, &bundle) {
                    g.bench_function(tool, |b| b.iter(|| assert!(oci_run(tool, &bundle))));
                } else {
                    eprintln!("skipping {tool}: `{tool} run` of the bundle failed here (crun refuses the cgroup v1/v2 hybrid layout)");
                }
            }
        }
        None => eprintln!("skipping runc and crun: `runc spec` is not available"),
    }
    g.finish();
    let _ = std::fs::remove_dir_all(root.parent().unwrap());
}

criterion_group!(benches, spawn_to_exit);
criterion_main!(benches);
