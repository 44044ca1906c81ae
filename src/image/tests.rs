//! Unit tests: archives are built in memory with the tar crate, installed into temp dirs.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

// ---------- building layers and images ----------

#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32),
    Owned(&'static str, u32, u32),
    Sym(String, String),
    Hard(String, String),
    Fifo(&'static str),
    Char(&'static str),
}

fn file(p: &str, data: &str) -> E {
    E::File(p.to_string(), data.as_bytes().to_vec(), 0o644)
}
fn sym(p: &str, t: &str) -> E {
    E::Sym(p.to_string(), t.to_string())
}
fn hard(p: &str, t: &str) -> E {
    E::Hard(p.to_string(), t.to_string())
}

/// Writes raw bytes into a GNU header's name / linkname (no validation, so tests can build
/// malicious archives).
fn header(
    kind: tar::EntryType,
    path: &str,
    link: Option<&str>,
    size: u64,
    mode: u32,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    {
        let g = h.as_gnu_mut().unwrap();
        assert!(path.len() < 100);
        g.name = [0; 100];
        g.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            g.linkname = [0; 100];
            g.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_cksum();
    h
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        use tar::EntryType as T;
        match e {
            E::Dir(p, m) => b
                .append(&header(T::Directory, p, None, 0, *m), &[][..])
                .unwrap(),
            E::File(p, d, m) => b
                .append(&header(T::Regular, p, None, d.len() as u64, *m), &d[..])
                .unwrap(),
            E::Owned(p, u, g) => {
                let mut h = header(T::Regular, p, None, 2, 0o640);
                h.set_uid(*u as u64);
                h.set_gid(*g as u64);
                h.set_cksum();
                b.append(&h, &b"hi"[..]).unwrap()
            }
            E::Sym(p, t) => b
                .append(&header(T::Symlink, p, Some(t), 0, 0o777), &[][..])
                .unwrap(),
            E::Hard(p, t) => b
                .append(&header(T::Link, p, Some(t), 0, 0o644), &[][..])
                .unwrap(),
            E::Fifo(p) => b
                .append(&header(T::Fifo, p, None, 0, 0o644), &[][..])
                .unwrap(),
            E::Char(p) => b
                .append(&header(T::Char, p, None, 0, 0o644), &[][..])
                .unwrap(),
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd_(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

fn outer(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn config_json(cfg: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "config": cfg}))
        .unwrap()
}

fn default_cfg() -> Vec<u8> {
    config_json(serde_json::json!({"Cmd": ["/test-handler"]}))
}

/// Classic layout: `<n>/layer.tar`, `<cfg>.json`, `manifest.json`.
fn classic(cfg: Vec<u8>, layers: Vec<Vec<u8>>) -> Vec<u8> {
    let mut m = vec![("abc123.json".to_string(), cfg)];
    let mut names = vec![];
    for (i, l) in layers.into_iter().enumerate() {
        let n = format!("{i:064x}/layer.tar");
        names.push(n.clone());
        m.push((n, l));
    }
    let manifest =
        serde_json::json!([{"Config": "abc123.json", "RepoTags": ["t:latest"], "Layers": names}]);
    m.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    outer(&m)
}

/// OCI layout (Docker 25+): blobs/sha256/..., index.json, oci-layout, manifest.json.
/// `with_docker_manifest = false` leaves out manifest.json (pure OCI archive).
fn oci(cfg: Vec<u8>, layers: Vec<Vec<u8>>, with_docker_manifest: bool) -> Vec<u8> {
    outer(&oci_members(cfg, layers, with_docker_manifest))
}

/// The sha256 of `data`, lowercase hex.
fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

fn oci_members(
    cfg: Vec<u8>,
    layers: Vec<Vec<u8>>,
    with_docker_manifest: bool,
) -> Vec<(String, Vec<u8>)> {
    let mut m = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let cfg_d = sha(&cfg);
    m.push((format!("blobs/sha256/{cfg_d}"), cfg));
    let mut descs = vec![];
    let mut paths = vec![];
    for l in layers {
        let d = sha(&l);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{d}"), "size": l.len()}));
        paths.push(format!("blobs/sha256/{d}"));
        m.push((format!("blobs/sha256/{d}"), l));
    }
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cfg_d}"), "size": 1},
        "layers": descs});
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let man_d = sha(&manifest);
    m.push((format!("blobs/sha256/{man_d}"), manifest));
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{man_d}"), "size": 1}]});
    m.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    if with_docker_manifest {
        let dm = serde_json::json!([{"Config": format!("blobs/sha256/{cfg_d}"), "RepoTags": ["t:latest"], "Layers": paths}]);
        m.push(("manifest.json".into(), serde_json::to_vec(&dm).unwrap()));
    }
    m
}

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("work")).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret"), "host secret").unwrap();
        Env { tmp }
    }
    fn work(&self) -> std::path::PathBuf {
        self.tmp.path().join("work")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.tmp.path().join("outside")
    }
    fn install(&self, upload: &[u8]) -> Result<StagedImage, ImageError> {
        self.install_with(upload, &Limits::default())
    }
    fn install_with(&self, upload: &[u8], limits: &Limits) -> Result<StagedImage, ImageError> {
        install(upload, &self.work(), limits)
    }
    /// Installs and commits to <tmp>/img; returns its rootfs path.
    fn ok(&self, upload: &[u8]) -> std::path::PathBuf {
        let s = self
            .install(upload)
            .unwrap_or_else(|e| panic!("install failed: {e}"));
        let dest = self.tmp.path().join("img");
        s.commit(&dest).unwrap();
        self.assert_no_staging();
        dest.join("rootfs")
    }
    fn err(&self, upload: &[u8]) -> String {
        self.err_with(upload, &Limits::default())
    }
    fn err_with(&self, upload: &[u8], limits: &Limits) -> String {
        let e = match self.install_with(upload, limits) {
            Ok(_) => panic!("install unexpectedly succeeded"),
            Err(e) => e.to_string(),
        };
        self.assert_no_staging();
        self.assert_outside_untouched();
        e
    }
    fn assert_no_staging(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("secret")],
            "host dir outside was written"
        );
        assert_eq!(
            std::fs::read_to_string(self.outside().join("secret")).unwrap(),
            "host secret"
        );
        assert_eq!(
            std::fs::metadata(self.outside().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn basic_layer() -> Vec<u8> {
    layer(&[
        E::Dir("bin", 0o755),
        E::File("test-handler".into(), b"\x7fELF".to_vec(), 0o755),
        sym("bin/sh", "busybox"),
    ])
}

// ---------- layouts and compression ----------

#[test]
fn classic_layout_plain() {
    let env = Env::new();
    let r = env.ok(&classic(default_cfg(), vec![basic_layer()]));
    assert_eq!(std::fs::read(r.join("test-handler")).unwrap(), b"\x7fELF");
    assert_eq!(
        std::fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let cfg = load_config(r.parent().unwrap()).unwrap();
    assert_eq!(cfg.cmd, vec!["/test-handler"]);
    env.assert_outside_untouched();
}

#[test]
fn oci_layout_gzip_with_and_without_docker_manifest() {
    for with in [true, false] {
        let env = Env::new();
        let r = env.ok(&oci(default_cfg(), vec![gzip(&basic_layer())], with));
        assert!(r.join("test-handler").is_file());
        assert_eq!(
            load_config(r.parent().unwrap()).unwrap().cmd,
            vec!["/test-handler"]
        );
    }
}

#[test]
fn zstd_layers_and_layer_order() {
    let env = Env::new();
    let l1 = zstd_(&layer(&[file("a", "one"), file("b", "one")]));
    let l2 = gzip(&layer(&[file("a", "two")]));
    let l3 = layer(&[file("c", "three")]);
    let r = env.ok(&classic(default_cfg(), vec![l1, l2, l3]));
    assert_eq!(read(&r.join("a")), "two");
    assert_eq!(read(&r.join("b")), "one");
    assert_eq!(read(&r.join("c")), "three");
}

#[test]
fn classic_layout_with_symlinked_duplicate_layer() {
    // Older `docker save` writes a symlink for a layer that appears twice.
    let l = layer(&[file("x", "x")]);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(l.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "aaa/layer.tar", &l[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
        .unwrap();
    let cfg = default_cfg();
    let mut h = tar::Header::new_ustar();
    h.set_size(cfg.len() as u64);
    b.append_data(&mut h, "c.json", &cfg[..]).unwrap();
    let m = br#"[{"Config":"c.json","Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#;
    let mut h = tar::Header::new_ustar();
    h.set_size(m.len() as u64);
    b.append_data(&mut h, "manifest.json", &m[..]).unwrap();
    let env = Env::new();
    let r = env.ok(&b.into_inner().unwrap());
    assert_eq!(read(&r.join("x")), "x");
}

#[test]
fn mount_points_prepared() {
    let env = Env::new();
    let r = env.ok(&classic(default_cfg(), vec![basic_layer()]));
    for d in ["proc", "dev", "sys", "tmp"] {
        let m = std::fs::symlink_metadata(r.join(d)).unwrap();
        assert!(m.is_dir(), "{d}");
    }
    assert_eq!(
        std::fs::symlink_metadata(r.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    let m = std::fs::symlink_metadata(r.join("control.sock")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.len(), 0);
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    assert!(!r.parent().unwrap().join("upload.tar").exists());
}

#[test]
fn mount_point_symlink_or_wrong_type_rejected() {
    let env = Env::new();
    let e = env.err(&classic(default_cfg(), vec![layer(&[sym("proc", "/")])]));
    assert_eq!(
        e,
        "image path /proc is a symlink; the runtime refuses to mount over it"
    );
    let e = env.err(&classic(default_cfg(), vec![layer(&[file("tmp", "x")])]));
    assert!(e.contains("/tmp is a regular file"), "{e}");
    let e = env.err(&classic(
        default_cfg(),
        vec![layer(&[E::Dir("control.sock", 0o755)])],
    ));
    assert!(e.contains("/control.sock is a directory"), "{e}");
}

// ---------- whiteouts, hardlinks, modes ----------

#[test]
fn whiteouts_file_and_opaque() {
    let env = Env::new();
    let l1 = layer(&[
        file("a/keep", "k"),
        file("a/gone", "g"),
        E::Dir("a/gonedir", 0o755),
        file("a/gonedir/x", "x"),
        file("b/old1", "o"),
        file("b/sub/old2", "o"),
        file("c/old", "o"),
    ]);
    let l2 = layer(&[
        file("a/.wh.gone", ""),
        file("a/.wh.gonedir", ""),
        file("a/.wh.never-existed", ""),
        // same-layer entry written before the opaque marker survives
        file("b/before", "new"),
        file("b/.wh..wh..opq", ""),
        file("b/new", "new"),
        // re-created dir in an opaque dir: its lower contents are hidden too
        E::Dir("c", 0o755),
        E::Dir("c/sub", 0o755),
        file("c/.wh..wh..opq", ""),
    ]);
    let r = env.ok(&classic(default_cfg(), vec![l1, gzip(&l2)]));
    assert!(r.join("a/keep").exists());
    assert!(!r.join("a/gone").exists());
    assert!(!r.join("a/gonedir").exists());
    assert!(!r.join("a/.wh.gone").exists());
    let mut b: Vec<_> = std::fs::read_dir(r.join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    b.sort();
    assert_eq!(b, vec!["before", "new"]);
    let c: Vec<_> = std::fs::read_dir(r.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(c, vec!["sub"]);
}

#[test]
fn malformed_whiteouts_rejected() {
    for name in ["d/.wh.", ".wh..", "d/.wh..."] {
        let env = Env::new();
        let e = env.err(&classic(default_cfg(), vec![layer(&[file(name, "")])]));
        assert!(e.contains("malformed whiteout"), "{name}: {e}");
    }
}

#[test]
fn hardlinks_within_image() {
    let env = Env::new();
    let l1 = layer(&[
        file("usr/bin/perl", "perl"),
        hard("usr/bin/perl5", "usr/bin/perl"),
    ]);
    let l2 = layer(&[hard("usr/bin/perl-again", "./usr/bin/perl")]);
    let r = env.ok(&classic(default_cfg(), vec![l1, l2]));
    let a = std::fs::metadata(r.join("usr/bin/perl")).unwrap();
    let b = std::fs::metadata(r.join("usr/bin/perl5")).unwrap();
    let c = std::fs::metadata(r.join("usr/bin/perl-again")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 3);
}

#[test]
fn hardlink_is_replaced_not_written_through() {
    let env = Env::new();
    let l1 = layer(&[file("a", "orig"), hard("b", "a")]);
    let l2 = layer(&[file("b", "new")]);
    let r = env.ok(&classic(default_cfg(), vec![l1, l2]));
    assert_eq!(read(&r.join("a")), "orig");
    assert_eq!(read(&r.join("b")), "new");
}

#[test]
fn modes_ownership_and_special_files() {
    let env = Env::new();
    let l = layer(&[
        E::File("usr/bin/su".into(), b"su".to_vec(), 0o4755),
        E::File("usr/bin/wall".into(), b"w".to_vec(), 0o2755),
        E::Dir("sticky", 0o1777),
        E::Owned("home/app/f", 1234, 5678),
        E::Fifo("fifo"),
        E::Char("dev-null"),
        E::File("ro".into(), b"r".to_vec(), 0o400),
    ]);
    let r = env.ok(&classic(default_cfg(), vec![l]));
    let mode = |p: &str| {
        std::fs::symlink_metadata(r.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/su"), 0o4755);
    assert_eq!(mode("sticky"), 0o1777);
    assert_eq!(mode("ro"), 0o400);
    assert_eq!(mode("home/app/f"), 0o640);
    if is_root() {
        assert_eq!(mode("usr/bin/wall"), 0o2755);
        let m = std::fs::metadata(r.join("home/app/f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        assert_eq!(std::fs::metadata(r.join("usr/bin/su")).unwrap().uid(), 0);
    }
    assert_eq!(
        std::fs::metadata(r.join("usr/bin/su")).unwrap().mtime(),
        1_600_000_000
    );
    assert!(!r.join("fifo").exists());
    assert!(!r.join("dev-null").exists());
}

#[test]
fn type_changes_between_layers() {
    let env = Env::new();
    let l1 = layer(&[file("d/x", "x"), file("f", "f"), sym("s", "/etc")]);
    let l2 = layer(&[
        file("d", "now a file"),
        E::Dir("f", 0o755),
        file("s", "now a file"),
    ]);
    let r = env.ok(&classic(default_cfg(), vec![l1, l2]));
    assert_eq!(read(&r.join("d")), "now a file");
    assert!(std::fs::symlink_metadata(r.join("f")).unwrap().is_dir());
    assert!(std::fs::symlink_metadata(r.join("s")).unwrap().is_file());
}

// ---------- config ----------

fn cfg_of(env: &Env, cfg: serde_json::Value, extra: &[E]) -> Result<ImageConfig, ImageError> {
    let mut entries = vec![
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001:App:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
        file("etc/group", "root:x:0:\napp:x:1001:\nstaff:x:50:app\n"),
    ];
    entries.extend_from_slice(extra);
    let s = install(
        &classic(config_json(cfg), vec![layer(&entries)])[..],
        &env.work(),
        &Limits::default(),
    )?;
    Ok(s.config().clone())
}

#[test]
fn config_entrypoint_cmd_env_workdir() {
    let env = Env::new();
    let c = cfg_of(&env, serde_json::json!({"Entrypoint": ["/usr/bin/python3", "-u"], "Cmd": ["/h.py"], "Env": ["PATH=/usr/bin", "A=b=c"], "WorkingDir": "/srv"}), &[]).unwrap();
    assert_eq!(
        c,
        ImageConfig {
            cmd: vec!["/usr/bin/python3".into(), "-u".into(), "/h.py".into()],
            env: vec!["PATH=/usr/bin".into(), "A=b=c".into()],
            working_dir: "/srv".into(),
            uid: 0,
            gid: 0
        }
    );
    let c = cfg_of(
        &env,
        serde_json::json!({"Entrypoint": null, "Cmd": null}),
        &[],
    )
    .unwrap();
    assert_eq!(c.cmd, vec!["/bin/sh"]);
    assert_eq!(c.working_dir, "/");
    assert!(c.env.is_empty());
    let c = cfg_of(&env, serde_json::json!({"Entrypoint": "/entry"}), &[]).unwrap();
    assert_eq!(c.cmd, vec!["/entry"]);
    // no "config" object at all
    let s = install(
        &classic(br#"{"os":"linux"}"#.to_vec(), vec![layer(&[])])[..],
        &env.work(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(s.config().cmd, vec!["/bin/sh"]);
    drop(s);
    env.assert_no_staging();
}

#[test]
fn config_user_forms() {
    let env = Env::new();
    let u =
        |user: &str| cfg_of(&env, serde_json::json!({"User": user}), &[]).map(|c| (c.uid, c.gid));
    assert_eq!(u("").unwrap(), (0, 0));
    assert_eq!(u("1000").unwrap(), (1000, 1001));
    assert_eq!(u("4242").unwrap(), (4242, 0));
    assert_eq!(u("4242:77").unwrap(), (4242, 77));
    assert_eq!(u("app").unwrap(), (1000, 1001));
    assert_eq!(u("app:staff").unwrap(), (1000, 50));
    assert_eq!(u("nobody:0").unwrap(), (65534, 0));
    assert_eq!(u("1000:staff").unwrap(), (1000, 50));
    let e = u("ghost").unwrap_err().to_string();
    assert!(e.contains("no user \"ghost\""), "{e}");
    let e = u("app:ghosts").unwrap_err().to_string();
    assert!(e.contains("no group \"ghosts\""), "{e}");
    env.assert_no_staging();
}

#[test]
fn user_lookup_does_not_follow_passwd_symlink_out() {
    let env = Env::new();
    let host_passwd = env.outside().join("secret");
    let entries = [sym("etc/passwd", host_passwd.to_str().unwrap())];
    let s = install(
        &classic(
            config_json(serde_json::json!({"User": "app"})),
            vec![layer(&entries)],
        )[..],
        &env.work(),
        &Limits::default(),
    );
    assert!(s.is_err());
    env.assert_no_staging();
}

#[test]
fn bad_config_json() {
    let env = Env::new();
    let e = env.err(&classic(b"{not json".to_vec(), vec![basic_layer()]));
    assert!(e.starts_with("image config abc123.json is invalid"), "{e}");
}

// ---------- escapes: the host path outside must stay untouched ----------

#[test]
fn dotdot_entries_rejected() {
    let env = Env::new();
    // from <tmp>/work/.staging-x/rootfs, ../../../outside is <tmp>/outside
    for p in [
        "../../../outside/pwned",
        "a/../../../../outside/pwned",
        "./../../../outside/secret",
    ] {
        let e = env.err(&classic(default_cfg(), vec![layer(&[file(p, "pwned")])]));
        assert!(
            e.contains(&format!("entry {p} escapes the image root")),
            "{e}"
        );
    }
}

#[test]
fn absolute_entries_rejected() {
    let env = Env::new();
    let p = format!("{}/pwned", env.outside().display());
    let e = env.err(&classic(default_cfg(), vec![layer(&[file(&p, "pwned")])]));
    assert!(e.contains("escapes the image root"), "{e}");
}

#[test]
fn write_through_absolute_symlink_is_contained() {
    let env = Env::new();
    let out = env.outside();
    let out_s = out.to_str().unwrap();
    let inner = out_s.trim_start_matches('/');
    // the same path exists inside the image, so the write lands there
    let l = layer(&[
        E::Dir(Box::leak(inner.to_string().into_boxed_str()), 0o755),
        sym("evil", out_s),
        file("evil/pwned", "pwned"),
        file("evil/secret", "overwritten"),
    ]);
    let r = env.ok(&classic(default_cfg(), vec![l]));
    env.assert_outside_untouched();
    assert_eq!(read(&r.join(inner).join("pwned")), "pwned");
    assert_eq!(read(&r.join(inner).join("secret")), "overwritten");
}

#[test]
fn write_through_dangling_absolute_symlink_fails() {
    let env = Env::new();
    let out_s = env.outside().to_str().unwrap().to_string();
    let e = env.err(&classic(
        default_cfg(),
        vec![layer(&[sym("evil", &out_s), file("evil/pwned", "pwned")])],
    ));
    assert!(e.contains("evil/pwned"), "{e}");
}

#[test]
fn write_through_relative_symlink_is_contained() {
    let env = Env::new();
    let l = layer(&[sym("evil", "../../../outside"), file("evil/pwned", "pwned")]);
    // ../../../outside from the image root is /outside inside the image: created there or
    // refused, never on the host.
    match env.install(&classic(default_cfg(), vec![l.clone()])) {
        Ok(s) => drop(s),
        Err(e) => assert!(e.to_string().contains("evil/pwned"), "{e}"),
    }
    env.assert_outside_untouched();
    env.assert_no_staging();
    let l2 = layer(&[
        E::Dir("outside", 0o755),
        sym("evil", "../../../outside"),
        file("evil/pwned", "pwned"),
        sym("deep/x/y", "../../../../../../../../outside"),
    ]);
    let l3 = layer(&[file("deep/x/y/pwned2", "p")]);
    let r = env.ok(&classic(default_cfg(), vec![l2, l3]));
    env.assert_outside_untouched();
    assert_eq!(read(&r.join("outside/pwned")), "pwned");
    assert_eq!(read(&r.join("outside/pwned2")), "p");
}

#[test]
fn final_component_symlink_is_replaced_not_followed() {
    let env = Env::new();
    let secret = env.outside().join("secret");
    let l1 = layer(&[
        sym("f", secret.to_str().unwrap()),
        sym("g", "../../../outside/secret"),
    ]);
    let l2 = layer(&[file("f", "overwritten"), file("g", "overwritten")]);
    let r = env.ok(&classic(default_cfg(), vec![l1, l2]));
    env.assert_outside_untouched();
    assert_eq!(read(&r.join("f")), "overwritten");
}

#[test]
fn symlink_then_directory_entry_does_not_chmod_outside() {
    let env = Env::new();
    let out = env.outside();
    let before = std::fs::metadata(&out).unwrap().permissions().mode();
    let l = layer(&[sym("d", out.to_str().unwrap()), E::Dir("d", 0o777)]);
    let r = env.ok(&classic(default_cfg(), vec![l]));
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode(),
        before
    );
    assert!(std::fs::symlink_metadata(r.join("d")).unwrap().is_dir());
    env.assert_outside_untouched();
}

#[test]
fn hardlinks_to_outside_rejected() {
    let env = Env::new();
    let abs = env.outside().join("secret");
    let cases: Vec<(Vec<E>, &str)> = vec![
        (
            vec![hard("hl", "../../../outside/secret")],
            "escapes the image root",
        ),
        (
            vec![hard("hl", abs.to_str().unwrap())],
            "escapes the image root",
        ),
        (
            vec![
                sym("d", env.outside().to_str().unwrap()),
                hard("hl", "d/secret"),
            ],
            "cannot find the target",
        ),
        (
            vec![sym("d", "../../../outside"), hard("hl", "d/secret")],
            "cannot find the target",
        ),
        (
            vec![
                sym("s", abs.to_str().unwrap()),
                hard("hl", "s"),
                file("hl2", "x"),
            ],
            "",
        ),
    ];
    for (entries, want) in cases {
        let up = classic(default_cfg(), vec![layer(&entries)]);
        if want.is_empty() {
            // hardlink to a symlink links the symlink itself; nothing outside changes
            let s = env.install(&up).unwrap();
            let p = s.path().join("rootfs/hl");
            assert!(std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink());
            drop(s);
            env.assert_outside_untouched();
            env.assert_no_staging();
        } else {
            let e = env.err(&up);
            assert!(e.contains(want), "{e}");
        }
    }
}

#[test]
fn symlinks_named_root_rejected() {
    for name in [".", "/", "", "./"] {
        let env = Env::new();
        let e = env.err(&classic(default_cfg(), vec![layer(&[sym(name, "/etc")])]));
        assert!(e.contains("a symlink must have a name"), "{name:?}: {e}");
    }
}

#[test]
fn whiteout_escape_rejected() {
    let env = Env::new();
    let e = env.err(&classic(
        default_cfg(),
        vec![layer(&[file("../../../outside/.wh.secret", "")])],
    ));
    assert!(e.contains("escapes the image root"), "{e}");
    // a whiteout through a symlink stays inside
    let l = layer(&[
        sym("o", env.outside().to_str().unwrap()),
        file("o/.wh.secret", ""),
        sym("p", "../../../outside"),
        file("p/.wh.secret", ""),
        file("p/.wh..wh..opq", ""),
    ]);
    let _ = env.ok(&classic(default_cfg(), vec![l]));
    env.assert_outside_untouched();
}

// ---------- manifests ----------

#[test]
fn manifest_bad_layer_paths_rejected() {
    for (l, want) in [
        (
            "../outside/secret",
            "which is not a relative path inside the archive",
        ),
        (
            "/etc/passwd",
            "which is not a relative path inside the archive",
        ),
        (
            "nothere/layer.tar",
            "manifest.json names layer nothere/layer.tar, which is missing from the archive",
        ),
    ] {
        let env = Env::new();
        let m = serde_json::json!([{"Config": "c.json", "Layers": [l]}]);
        let up = outer(&[
            ("c.json".into(), default_cfg()),
            ("manifest.json".into(), serde_json::to_vec(&m).unwrap()),
        ]);
        let e = env.err(&up);
        assert!(e.contains(want), "{e}");
        assert!(e.contains(l), "{e}");
    }
}

#[test]
fn manifest_missing_config_and_oci_bad_digest() {
    let env = Env::new();
    let m = br#"[{"Config":"nope.json","Layers":[]}]"#.to_vec();
    let e = env.err(&outer(&[("manifest.json".into(), m)]));
    assert!(
        e.contains("names config nope.json, which is missing"),
        "{e}"
    );
    let idx = br#"{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../x"}]}"#.to_vec();
    let e = env.err(&outer(&[("index.json".into(), idx)]));
    assert!(e.contains("invalid digest"), "{e}");
    let e = env.err(&outer(&[("hello.txt".into(), b"hi".to_vec())]));
    assert!(e.contains("neither manifest.json nor index.json"), "{e}");
}

#[test]
fn missing_oci_layer_blob_rejected() {
    let env = Env::new();
    let mut up = oci(default_cfg(), vec![basic_layer()], false);
    // rename the layer blob so the manifest's digest points nowhere
    let needle = format!("blobs/sha256/{}", sha(&basic_layer()));
    let pos = up
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap();
    up[pos + 13] = b'f';
    let h = tar::Header::from_byte_slice(&up[pos..pos + 512]).clone();
    let mut h = h;
    h.set_cksum();
    up[pos..pos + 512].copy_from_slice(h.as_bytes());
    let e = env.err(&up);
    assert!(e.contains("which is missing from the archive"), "{e}");
}

// ---------- broken uploads ----------

#[test]
fn non_tar_upload_rejected() {
    let env = Env::new();
    for up in [
        &b"hello, this is not a tar archive at all"[..],
        &[][..],
        &vec![0x42u8; 4096][..],
    ] {
        let e = env.err(up);
        assert!(e.contains("not a docker-save tar archive"), "{e}");
    }
}

#[test]
fn truncated_upload_rejected() {
    let env = Env::new();
    let big = vec![7u8; 100_000];
    let up = classic(
        default_cfg(),
        vec![layer(&[E::File("big".into(), big, 0o644)])],
    );
    for cut in [up.len() / 2, 1000, up.len() - 2048, 700] {
        let e = env.err(&up[..cut]);
        assert!(!e.is_empty());
    }
    // a layer blob cut short inside a (complete) outer archive
    let l = layer(&[E::File("big".into(), vec![1u8; 50_000], 0o644)]);
    let e = env.err(&classic(default_cfg(), vec![l[..20_000].to_vec()]));
    assert!(e.contains("is truncated or corrupt"), "{e}");
    let g = gzip(&layer(&[E::File("big".into(), vec![1u8; 50_000], 0o644)]));
    let e = env.err(&classic(default_cfg(), vec![g[..g.len() / 2].to_vec()]));
    assert!(e.contains("0000/layer.tar"), "{e}");
}

#[test]
fn layer_not_tar_rejected() {
    let env = Env::new();
    let text =
        b"this is not a tar file, just some text that is long enough to be a block? no".repeat(10);
    let e = env.err(&oci(default_cfg(), vec![text.clone()], true));
    assert!(
        e.contains(&format!(
            "layer blobs/sha256/{} is not a tar archive",
            sha(&text)
        )),
        "{e}"
    );
    let e = env.err(&classic(
        default_cfg(),
        vec![vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]],
    ));
    assert!(e.contains("xz"), "{e}");
}

// ---------- limits ----------

#[test]
fn limit_on_decompressed_bytes() {
    let env = Env::new();
    // ~20 MB of zeros gzip to ~20 KB
    let bomb = gzip(&layer(&[E::File(
        "zeros".into(),
        vec![0u8; 20 << 20],
        0o644,
    )]));
    assert!(bomb.len() < 200_000);
    let limits = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = env.err_with(&classic(default_cfg(), vec![bomb.clone()]), &limits);
    assert_eq!(
        e,
        "the image exceeds the limit of 1048576 decompressed bytes"
    );
    // budget is over all layers together
    let l = layer(&[E::File("f".into(), vec![1u8; 300_000], 0o644)]);
    let limits = Limits {
        max_bytes: 700_000,
        ..Limits::default()
    };
    assert!(env
        .install_with(&classic(default_cfg(), vec![l.clone(), l.clone()]), &limits)
        .is_ok());
    env.assert_no_staging();
    let e = env.err_with(
        &classic(default_cfg(), vec![l.clone(), l.clone(), gzip(&l)]),
        &limits,
    );
    assert!(e.contains("decompressed bytes"), "{e}");
    // the upload itself is bounded too
    let limits = Limits {
        max_bytes: 0,
        ..Limits::default()
    };
    let big = classic(
        default_cfg(),
        vec![layer(&[E::File("f".into(), vec![1u8; 65 << 20], 0o644)])],
    );
    let e = env.err_with(&big, &limits);
    assert!(e.contains("the upload is larger than"), "{e}");
}

#[test]
fn limit_on_entries_and_depth() {
    let env = Env::new();
    let many: Vec<E> = (0..50).map(|i| file(&format!("f{i}"), "x")).collect();
    let limits = Limits {
        max_entries: 20,
        ..Limits::default()
    };
    let e = env.err_with(&classic(default_cfg(), vec![layer(&many)]), &limits);
    assert_eq!(e, "the image exceeds the limit of 20 entries");
    let deep = (0..10)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/")
        + "/f";
    let limits = Limits {
        max_depth: 8,
        ..Limits::default()
    };
    let e = env.err_with(
        &classic(default_cfg(), vec![layer(&[file(&deep, "x")])]),
        &limits,
    );
    assert!(e.contains("limit of 8 path components"), "{e}");
    let ok = Limits {
        max_depth: 11,
        ..Limits::default()
    };
    assert!(env
        .install_with(
            &classic(default_cfg(), vec![layer(&[file(&deep, "x")])]),
            &ok
        )
        .is_ok());
}

// ---------- commit / drop ----------

#[test]
fn commit_refuses_existing_destination_and_cleans_up() {
    let env = Env::new();
    let up = classic(default_cfg(), vec![basic_layer()]);
    let dest = env.tmp.path().join("img");
    std::fs::create_dir(&dest).unwrap();
    let s = env.install(&up).unwrap();
    let e = s.commit(&dest).unwrap_err().to_string();
    assert!(e.contains("cannot move the staged image"), "{e}");
    env.assert_no_staging();
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    // and a successful commit leaves exactly rootfs/ + config.json
    let dest2 = env.tmp.path().join("img2");
    env.install(&up).unwrap().commit(&dest2).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&dest2)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["config.json", "rootfs"]);
    // Private to root: the store is not traversable by local users (issue 10 #2).
    assert_eq!(
        std::fs::metadata(&dest2).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let e = load_config(&env.tmp.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read image config"), "{e}");
}

#[test]
fn staging_is_dropped_when_uncommitted() {
    let env = Env::new();
    let s = env
        .install(&classic(default_cfg(), vec![basic_layer()]))
        .unwrap();
    assert!(s.path().join("rootfs/test-handler").exists());
    assert!(s.path().starts_with(env.work()));
    drop(s);
    env.assert_no_staging();
}

#[test]
fn long_names_via_gnu_and_pax() {
    let env = Env::new();
    let long = format!("{}/{}", "a".repeat(120), "b".repeat(120));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    let l = b.into_inner().unwrap();
    let r = env.ok(&classic(default_cfg(), vec![l]));
    assert_eq!(read(&r.join(&long)), "long");
}

// ---------- random corruption (a cheap fuzz) ----------

#[test]
fn random_corruptions_never_escape_or_leak_staging() {
    let env = Env::new();
    let out = env.outside().to_str().unwrap().to_string();
    let l1 = layer(&[
        E::Dir("etc", 0o755),
        file("etc/passwd", "root:x:0:0::/:/bin/sh\n"),
        sym("evil", &out),
        sym("rel", "../../../outside"),
        file("a/b/c", "abc"),
        hard("a/h", "a/b/c"),
    ]);
    let l2 = layer(&[
        file("a/.wh.h", ""),
        file("a/b/.wh..wh..opq", ""),
        file("evil/x", "x"),
    ]);
    let images = [
        classic(default_cfg(), vec![l1.clone(), gzip(&l2)]),
        oci(default_cfg(), vec![zstd_(&l1), l2.clone()], true),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for img in &images {
        for _ in 0..150 {
            let mut m = img.clone();
            match next() % 3 {
                0 => {
                    for _ in 0..(1 + next() % 4) {
                        let i = (next() as usize) % m.len();
                        m[i] = next() as u8;
                    }
                }
                1 => m.truncate((next() as usize) % m.len()),
                _ => {
                    // corrupt inside a tar header name/link area of some 512-byte block
                    let blocks = m.len() / 512;
                    let b = (next() as usize) % blocks;
                    let off = b * 512 + (next() as usize) % 257;
                    m[off] = [b'.', b'/', b'.', 0, b'a'][(next() % 5) as usize];
                }
            }
            if let Ok(s) = env.install(&m) {
                drop(s);
            }
            env.assert_no_staging();
            env.assert_outside_untouched();
        }
    }
}

#[test]
fn file_capability_xattr_kept() {
    let env = Env::new();
    // VFS_CAP_REVISION_2, cap_net_raw (13) permitted + effective
    let cap: Vec<u8> = vec![
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut b = tar::Builder::new(Vec::new());
    let mut pax = Vec::new();
    let key = "SCHILY.xattr.security.capability";
    let mut rec = Vec::new();
    rec.extend_from_slice(b" ");
    rec.extend_from_slice(key.as_bytes());
    rec.push(b'=');
    rec.extend_from_slice(&cap);
    rec.push(b'\n');
    let mut len = rec.len() + 2;
    if (len.to_string().len() + rec.len()) != len {
        len = len.to_string().len() + rec.len();
    }
    pax.extend_from_slice(len.to_string().as_bytes());
    pax.extend_from_slice(&rec);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(pax.len() as u64);
    h.set_path("PaxHeaders/ping").unwrap();
    h.set_cksum();
    b.append(&h, &pax[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    h.set_mode(0o755);
    b.append_data(&mut h, "bin/ping", &b"ping"[..]).unwrap();
    let r = env.ok(&classic(default_cfg(), vec![b.into_inner().unwrap()]));
    if is_root() {
        let p = std::ffi::CString::new(r.join("bin/ping").to_str().unwrap()).unwrap();
        let n = std::ffi::CString::new("security.capability").unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: valid NUL-terminated strings and a writable buffer of the given size.
        let got =
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(
            got,
            cap.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        assert_eq!(&buf[..cap.len()], &cap[..]);
    }
}

// ---------- bounded extension records (issue 10 #6) ----------

/// A raw header of `kind` claiming `size` bytes, followed by `data` (which may be shorter:
/// the guard must refuse at the header, before the data).
fn raw_record(kind: tar::EntryType, name: &str, size: u64, data: &[u8]) -> Vec<u8> {
    let mut out = header(kind, name, None, size, 0o644).as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

#[test]
fn huge_extension_records_refused_before_reading() {
    use tar::EntryType as T;
    let env = Env::new();
    for (kind, what) in [
        (T::GNULongName, "GNU long name"),
        (T::GNULongLink, "GNU long link"),
        (T::XHeader, "PAX extended header"),
        (T::XGlobalHeader, "PAX global header"),
    ] {
        // 1 GiB claimed, 4 KiB present: reading it whole would fail only at the end.
        let mut l = raw_record(kind, "././@LongLink", 1 << 30, &[b'a'; 4096]);
        l.extend_from_slice(&[0; 1024]);
        for upload in [
            classic(default_cfg(), vec![l.clone()]),
            classic(default_cfg(), vec![gzip(&l)]),
        ] {
            let e = env.err(&upload);
            assert!(
                e.contains(what) && e.contains("1073741824 bytes exceeds the limit of 65536"),
                "{e}"
            );
        }
        // The same record as a member of the outer archive.
        let mut up = raw_record(kind, "././@LongLink", 1 << 30, &[b'a'; 4096]);
        up.extend_from_slice(&classic(default_cfg(), vec![basic_layer()]));
        let e = env.err(&up);
        assert!(e.contains("the upload") && e.contains(what), "{e}");
    }
}

/// PAX `size` overrides the header's: the guard must follow the same entry boundaries
/// as the tar crate, or a record could hide in what it takes for data.
#[test]
fn pax_size_override_is_followed() {
    use tar::EntryType as T;
    let env = Env::new();
    let pax = |size: u64| {
        let rec = format!("size={size}\n");
        let rec = format!(
            "{} {rec}",
            rec.len() + 1 + (rec.len() + 3).to_string().len()
        );
        raw_record(T::XHeader, "pax", rec.len() as u64, rec.as_bytes())
    };
    let huge = raw_record(T::GNULongName, "././@LongLink", 1 << 30, &[]);
    // Header says 1024 bytes of data (holding the huge record), PAX says 0: it is a header.
    let mut l = pax(0);
    l.extend(raw_record(T::Regular, "f", 1024, &[]));
    l.extend(&huge);
    l.extend_from_slice(&[0; 1024]);
    let e = env.err(&classic(default_cfg(), vec![l]));
    assert!(e.contains("GNU long name"), "{e}");
    // Header says 0, PAX says 512: the huge record is the file's data.
    let mut l = pax(512);
    l.extend(raw_record(T::Regular, "f", 0, &[]));
    l.extend(&huge);
    l.extend_from_slice(&[0; 1024]);
    let r = env.ok(&classic(default_cfg(), vec![l]));
    assert_eq!(std::fs::metadata(r.join("f")).unwrap().len(), 512);
}

// ---------- WorkingDir and command under /proc or /sys (issue 10 #1) ----------

#[test]
fn workdir_and_command_under_kernel_fs_refused() {
    let env = Env::new();
    let refused = [
        serde_json::json!({"WorkingDir": "/proc/self/cwd"}),
        serde_json::json!({"WorkingDir": "/proc"}),
        serde_json::json!({"WorkingDir": "//sys//fs/"}),
        serde_json::json!({"WorkingDir": "/srv/../proc/1/root"}),
        serde_json::json!({"WorkingDir": "/./../sys"}),
        serde_json::json!({"WorkingDir": "proc/self"}),
        serde_json::json!({"Entrypoint": ["/proc/self/exe"]}),
        serde_json::json!({"Cmd": ["/sys/kernel/x", "arg"]}),
        serde_json::json!({"WorkingDir": "/app", "Cmd": ["../proc/self/exe"]}),
        serde_json::json!({"WorkingDir": "/app", "Cmd": ["./../../proc/self/exe"]}),
    ];
    for cfg in refused {
        let e = cfg_of(&env, cfg.clone(), &[]).err().map(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_some_and(|e| e.contains("lies under /proc or /sys")),
            "{cfg}: {e:?}"
        );
        env.assert_no_staging();
    }
    let allowed = [
        serde_json::json!({"WorkingDir": "/process"}),
        serde_json::json!({"WorkingDir": "/srv/proc"}),
        serde_json::json!({"WorkingDir": "/sysroot", "Cmd": ["proc"]}),
        serde_json::json!({"Cmd": ["sh", "/proc/self/status"]}),
    ];
    for cfg in allowed {
        assert!(cfg_of(&env, cfg.clone(), &[]).is_ok(), "{cfg}");
    }
}

#[test]
fn normalize_resolves_like_the_kernel() {
    use super::image_config::normalize;
    assert_eq!(normalize("/", "/a//b/./c/"), "/a/b/c");
    assert_eq!(normalize("/", "/../../a"), "/a");
    assert_eq!(normalize("/srv/app", "../x"), "/srv/x");
    assert_eq!(normalize("/srv", "x/.."), "/srv");
}

// ---------- modes (issue 10 #2, #10) ----------

#[test]
fn image_dir_and_config_are_private() {
    let env = Env::new();
    let s = env
        .install(&classic(default_cfg(), vec![basic_layer()]))
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(s.path()), 0o700);
    assert_eq!(mode(&s.path().join(CONFIG_FILE)), 0o600);
}

// ---------- digests (issue 11 #5) ----------

/// Replaces member `name`'s content with `with`.
fn swap(members: &mut [(String, Vec<u8>)], name: &str, with: Vec<u8>) {
    let m = members.iter_mut().find(|(n, _)| n == name).unwrap();
    m.1 = with;
}

#[test]
fn tampered_layer_and_config_refused_in_both_layouts() {
    let env = Env::new();
    let good = basic_layer();
    // Still a valid layer, one byte of a file changed.
    let evil = layer(&[
        E::Dir("bin", 0o755),
        E::File("test-handler".into(), b"\x7fELG".to_vec(), 0o755),
        sym("bin/sh", "busybox"),
    ]);
    let cfg = default_cfg();
    let evil_cfg = config_json(serde_json::json!({"Cmd": ["/bin/sh", "-c", "evil"]}));
    let layer_name = format!("blobs/sha256/{}", sha(&good));
    let cfg_name = format!("blobs/sha256/{}", sha(&cfg));
    // false: OCI index.json -> manifest; true: Docker 25+ manifest.json naming the blobs.
    for docker_manifest in [false, true] {
        let members = oci_members(cfg.clone(), vec![good.clone()], docker_manifest);
        env.ok(&outer(&members));
        std::fs::remove_dir_all(env.tmp.path().join("img")).unwrap();

        let mut m = members.clone();
        swap(&mut m, &layer_name, gzip(&evil));
        let e = env.err(&outer(&m));
        assert!(
            e.contains(&format!("layer {layer_name} does not match its digest")),
            "{e}"
        );
        let mut m = members.clone();
        swap(&mut m, &layer_name, evil.clone());
        let e = env.err(&outer(&m));
        assert!(
            e.contains(&format!("its content is sha256:{}", sha(&evil))),
            "{e}"
        );

        let mut m = members;
        swap(&mut m, &cfg_name, evil_cfg.clone());
        let e = env.err(&outer(&m));
        assert!(
            e.contains(&format!("config {cfg_name} does not match its digest")),
            "{e}"
        );
    }
    // Classic layout: the config is <sha256>.json; <id>/layer.tar names carry no digest.
    let classic_members = |cfg_data: Vec<u8>| {
        let cfg_file = format!("{}.json", sha(&cfg));
        let manifest = serde_json::json!([{"Config": cfg_file, "Layers": ["1/layer.tar"]}]);
        vec![
            (cfg_file, cfg_data),
            ("1/layer.tar".to_string(), evil.clone()),
            (
                "manifest.json".to_string(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ]
    };
    env.ok(&outer(&classic_members(cfg.clone())));
    let e = env.err(&outer(&classic_members(evil_cfg)));
    assert!(
        e.contains(&format!(
            "config {}.json does not match its digest",
            sha(&cfg)
        )),
        "{e}"
    );
}

#[test]
fn oci_digests_must_be_sha256_hex() {
    let env = Env::new();
    for digest in ["sha512:abcd", "sha256:ABC", "sha256:abc"] {
        let idx = serde_json::json!({"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest}]});
        let e = env.err(&outer(&[(
            "index.json".into(),
            serde_json::to_vec(&idx).unwrap(),
        )]));
        assert!(e.contains("digest"), "{digest}: {e}");
    }
}

// ---------- the install gate (issue 10 #6) ----------

#[test]
fn gate_runs_after_the_spool_and_its_refusal_leaves_nothing() {
    let env = Env::new();
    let up = classic(default_cfg(), vec![basic_layer()]);
    let work = env.work();
    let e = install_gated(&up[..], &work, &Limits::default(), || {
        // The whole upload is on disk before an install slot is asked for.
        let staging = std::fs::read_dir(&work)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(
            std::fs::metadata(staging.join(SPOOL_FILE)).unwrap().len(),
            up.len() as u64
        );
        Err::<(), _>(ImageError::InstallsBusy {
            limit: 2,
            waited: std::time::Duration::from_secs(30),
        })
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("2 images are being installed already"), "{e}");
    env.assert_no_staging();
}

// ---------- the image id of an archive, without installing it ----------

#[test]
fn archive_digest_is_the_config_blobs_sha256_in_either_layout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = default_cfg();
    let want = format!("sha256:{}", sha(&cfg));
    for (name, bytes) in [
        ("classic.tar", classic(cfg.clone(), vec![basic_layer()])),
        ("oci.tar", oci(cfg.clone(), vec![basic_layer()], false)),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let got = archive_digest(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(got, want, "{name}");
    }
    let not_an_image = dir.path().join("junk.tar");
    std::fs::write(&not_an_image, b"not a tarball at all").unwrap();
    assert!(archive_digest(std::fs::File::open(&not_an_image).unwrap()).is_err());
}
