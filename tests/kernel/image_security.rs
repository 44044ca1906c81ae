//! The image store under attack, through the real `faasd` binary (issue 10 #2, #6, #9,
//! #10): images are built here as `docker save` tarballs with the tar crate, so that each
//! test holds exactly the hostile content it needs.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use libtest_mimic::Trial;
use serde_json::{json, Value};

use crate::e2e::Setup;
use crate::support::{self, TestResult};

pub fn tests() -> Vec<Trial> {
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("image_security::", stringify!($test)), $test)),*]
        };
    }
    trials![
        setuid_binary_in_store_grants_nothing,
        env_values_stay_private,
        huge_long_name_upload_bounded,
        store_quota_refuses_and_leaves_nothing,
    ]
}

const NOBODY: u32 = 65534;

/// One layer entry: path, mode, data.
type Entry<'a> = (&'a str, u32, &'a [u8]);

fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A classic `docker save` archive of one layer (already a tar stream, maybe compressed).
pub(crate) fn docker_save(config: Value, layer: &[u8]) -> Vec<u8> {
    let config = serde_json::to_vec(&json!({"os": "linux", "config": config})).unwrap();
    let manifest =
        serde_json::to_vec(&json!([{"Config": "config.json", "Layers": ["l/layer.tar"]}])).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("config.json", &config[..]),
        ("l/layer.tar", layer),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).map_or(0, |m| m.mode() & 0o7777)
}

/// Runs `program -u` (coreutils `id`: the effective uid) as nobody, with `fd` (a root-opened
/// file) left open; `Err` when it cannot even be started.
fn id_as_nobody(program: &Path, fd: Option<RawFd>) -> std::io::Result<String> {
    let mut cmd = Command::new(program);
    cmd.arg("-u").uid(NOBODY).gid(NOBODY);
    if let Some(fd) = fd {
        // SAFETY: fcntl is async-signal-safe and touches only the child's own fd table.
        unsafe {
            cmd.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
    }
    let out = cmd.output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()
        + &String::from_utf8_lossy(&out.stderr))
}

/// Issue 10 #2: an image's setuid-root binary, deployed, is run by an unprivileged local
/// user on the host: by its store path (the store must not be traversable), and through
/// an fd root opened on it (the store must be nosuid). Modes are checked, also after a
/// restart that finds them widened, and the store mount is not stacked by the restart.
fn setuid_binary_in_store_grants_nothing() -> TestResult {
    let id = fs::read("/usr/bin/id")?;
    let image = docker_save(
        json!({"Cmd": ["/suid-id"]}),
        &layer(&[("suid-id", 0o4755, &id)]),
    );
    let s = Setup::new(&[])?;
    let mut d = s.start()?;
    let r = s.upload("suid", &image)?;
    s.check(r.status() == Some(200), format!("deploy answered {r}"))?;
    let state = s.state();
    let images = state.join("images");
    let binary = images.join("suid/rootfs/suid-id");
    let meta = fs::metadata(&binary)?;
    s.check(
        meta.mode() & 0o4000 != 0 && meta.uid() == 0,
        "the image's binary should be extracted setuid root (it is the container's to use)",
    )?;

    // By path, as a local user would.
    match id_as_nobody(&binary, None) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => return Err(s.fail(format!("nobody ran {} : {other:?}", binary.display()))),
    }
    // Through an fd, as if the path had leaked: the mount must ignore the setuid bit.
    let file = fs::File::open(&binary)?;
    let via_fd = Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
    let euid = id_as_nobody(&via_fd, Some(file.as_raw_fd()))?;
    s.check(
        euid == NOBODY.to_string(),
        format!("nobody running the setuid-root binary got euid {euid:?}, not {NOBODY}"),
    )?;
    drop(file);
    let flags = nix::sys::statvfs::statvfs(&images)?.flags();
    s.check(
        flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID)
            && flags.contains(nix::sys::statvfs::FsFlags::ST_NODEV),
        format!("images/ is mounted with {flags:?}, not nosuid,nodev"),
    )?;

    let private = |what: &str| -> TestResult {
        for (path, want) in [
            (state.clone(), 0o700),
            (images.clone(), 0o700),
            (state.join("bundles"), 0o700),
            (images.join("suid"), 0o700),
            (state.join("registry.json"), 0o600),
            (images.join("suid/config.json"), 0o600),
        ] {
            let got = mode(&path);
            s.check(
                got == want,
                format!("{what}: {} is {got:o}, not {want:o}", path.display()),
            )?;
        }
        Ok(())
    };
    private("after a deploy")?;

    // An older daemon's wide modes are tightened at start; the mount is reused, not stacked.
    d.stop()?;
    for (path, m) in [
        (&state, 0o755),
        (&images, 0o755),
        (&images.join("suid"), 0o755),
        (&state.join("registry.json"), 0o644),
        (&images.join("suid/config.json"), 0o644),
    ] {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(m))?;
    }
    let _d = s.start()?;
    private("after a restart")?;
    let canonical = images.canonicalize()?;
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mounts = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == canonical.to_str())
        .count();
    s.check(
        mounts == 1,
        format!("{mounts} mounts on images/ after a restart"),
    )?;
    let listed = s.list()?;
    s.check(
        listed["suid"]["cmd"] == json!(["/suid-id"]),
        format!("not restored: {listed}"),
    )
}

/// Issue 10 #10: env values are neither in /api/list (which needs no token) nor in files
/// other users can read.
fn env_values_stay_private() -> TestResult {
    let image = docker_save(
        json!({"Cmd": ["/h"], "Env": ["PATH=/bin", "API_KEY=s3cret-value", "EMPTY="]}),
        &layer(&[("h", 0o755, b"#!/bin/sh\n")]),
    );
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let r = s.upload("envy", &image)?;
    s.check(r.status() == Some(200), format!("deploy answered {r}"))?;
    let listed = s.list()?;
    let f = &listed["envy"];
    s.check(
        f["env"] == json!(["PATH", "API_KEY", "EMPTY"]) && !listed.to_string().contains("s3cret"),
        format!("/api/list shows {listed}"),
    )?;
    // The prototype's fields stay.
    s.check(
        f["ip"].is_string() && f["rootfs"].is_string() && f["cmd"] == json!(["/h"]),
        format!("/api/list lost fields: {listed}"),
    )?;
    // Every file holding the value is root's alone.
    for path in [
        s.state().join("registry.json"),
        s.state().join("images/envy/config.json"),
    ] {
        let text = fs::read_to_string(&path)?;
        s.check(
            text.contains("s3cret-value") && mode(&path) == 0o600,
            format!("{} is {:o}", path.display(), mode(&path)),
        )?;
    }
    Ok(())
}

/// Issue 10 #6: a ~1 MB upload whose gzip layer holds a 1 GiB GNU long-name record is
/// refused with a 4xx naming the record, and faasd's peak RSS stays under 200 MiB
/// (the tar crate alone would have read the record whole: 3.6 GiB).
fn huge_long_name_upload_bounded() -> TestResult {
    const RECORD: u64 = 1 << 30;
    const MAX_RSS_KIB: u64 = 200 << 10;
    let gzip = |data: &[u8]| -> std::io::Result<Vec<u8>> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data)?;
        gz.finish()
    };
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink")?;
    h.set_size(RECORD);
    h.set_cksum();
    // Concatenated gzip members (faasd reads them as one stream): 1 MiB is compressed
    // once and repeated, which keeps the test fast under the VM's CPU emulation.
    let chunk = gzip(&[b'a'; 1 << 20])?;
    let mut layer = gzip(h.as_bytes())?;
    for _ in 0..RECORD >> 20 {
        layer.extend_from_slice(&chunk);
    }
    let image = docker_save(json!({"Cmd": ["/h"]}), &layer);

    let s = Setup::new(&[])?;
    let d = s.start()?;
    let r = s.upload("longname", &image)?;
    let hwm = support::peak_rss(d.pid())? >> 10;
    eprintln!(
        "huge_long_name_upload_bounded: upload {} KiB, faasd VmHWM {} MiB",
        image.len() >> 10,
        hwm >> 10
    );
    s.check(
        hwm < MAX_RSS_KIB,
        format!("faasd's peak RSS reached {} MiB (bound 200 MiB)", hwm >> 10),
    )?;
    s.check(
        r.status() == Some(400)
            && r.body()
                .contains("GNU long name record of 1073741824 bytes exceeds the limit"),
        format!(
            "a {} KiB upload with a 1 GiB long name answered {r}",
            image.len() >> 10
        ),
    )?;
    s.check_no_function("the long-name upload")
}

/// Issue 10 #9: with `--store-max-gb 0.01` (10 MiB), a 12 MiB image is refused with 507
/// naming the quota and leaves nothing; a small image still deploys and serves after it.
fn store_quota_refuses_and_leaves_nothing() -> TestResult {
    // Incompressible, so that no filesystem makes it smaller than it is.
    let mut big = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let image = docker_save(json!({"Cmd": ["/h"]}), &layer(&[("big", 0o644, &big)]));
    let s = Setup::new(&["--store-max-gb", "0.01"])?;
    let _d = s.start()?;
    let r = s.upload("big", &image)?;
    s.check(
        r.status() == Some(507) && r.body().contains("--store-max-gb quota of 10 MiB"),
        format!("a 12 MiB image in a 10 MiB store answered {r}"),
    )?;
    s.check_no_function("the image over the store quota")?;
    let small = fs::read(support::image("test-handler.tar")?)?;
    let r = s.upload("small", &small)?;
    s.check(
        r.status() == Some(200),
        format!("a small image after it answered {r}"),
    )
}
