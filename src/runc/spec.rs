//! The OCI runtime spec (`config.json`) of one request's container: runc's defaults (the
//! `runc spec` namespaces, mounts, masked paths and capabilities) with the image's
//! command, user and root, faasd's resource limits, the control socket bind mount and the
//! request's secrets tmpfs bound read-only at /run/secrets.

use std::path::Path;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, Process, RootBuilder, Spec, UserBuilder,
};

use oci_spec::OciSpecError;

use crate::runtime::secrets::SECRETS_DIR;
use crate::runtime::{ContainerSpec, Resources};

/// The CFS period the CPU quota is expressed in (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// `secrets`: the host directory of the container's secrets tmpfs (see runc/mod.rs).
pub fn build(
    spec: &ContainerSpec<'_>,
    cgroup_parent: &str,
    secrets: Option<&Path>,
) -> Result<Spec, OciSpecError> {
    let mut oci = Spec::default();
    oci.set_hostname(Some(spec.hostname.to_string()));
    oci.set_root(Some(
        RootBuilder::default()
            .path(spec.rootfs)
            .readonly(true)
            .build()?,
    ));
    // runc's default process (no_new_privileges, its capability set, RLIMIT_NOFILE 1024),
    // running the image's command as the image's user.
    let mut process = Process::default();
    process.set_args(Some(spec.argv.to_vec()));
    process.set_env(Some(spec.env.to_vec()));
    process.set_cwd(spec.workdir.into());
    process.set_user(UserBuilder::default().uid(spec.uid).gid(spec.gid).build()?);
    process.set_capabilities(process.capabilities().clone().map(without_net_bind_service));
    oci.set_process(Some(process));
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(strings(&["nosuid", "nodev", "mode=1777", "size=64m"]))
            .build()?,
    );
    if let Some(sock) = spec.control_socket {
        mounts.push(bind_mount(sock, "/control.sock", &[])?);
    }
    if let Some(dir) = secrets {
        mounts.push(bind_mount(dir, SECRETS_DIR, &["ro"])?);
    }
    oci.set_mounts(Some(mounts));
    if let Some(linux) = oci.linux_mut() {
        linux.set_cgroups_path(Some(format!("/{cgroup_parent}/{}", spec.id).into()));
        linux.set_resources(Some(resources(&spec.resources)?));
    }
    Ok(oci)
}

/// The handed-over socket is in the host's network namespace: no privileged host port.
fn without_net_bind_service(mut caps: LinuxCapabilities) -> LinuxCapabilities {
    let drop = |set: &Option<Capabilities>| {
        set.clone().map(|mut set| {
            set.remove(&Capability::NetBindService);
            set
        })
    };
    caps.set_bounding(drop(caps.bounding()));
    caps.set_effective(drop(caps.effective()));
    caps.set_inheritable(drop(caps.inheritable()));
    caps.set_permitted(drop(caps.permitted()));
    caps.set_ambient(drop(caps.ambient()));
    caps
}

fn bind_mount(
    source: &Path,
    destination: &str,
    extra: &[&str],
) -> Result<oci_spec::runtime::Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(strings(
            &[&["bind", "nosuid", "nodev", "noexec"], extra].concat(),
        ))
        .build()
}

fn resources(r: &Resources) -> Result<oci_spec::runtime::LinuxResources, OciSpecError> {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(r.memory_bytes as i64)
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota((r.cpu_millis * CPU_PERIOD_US / 1000) as i64)
                .period(CPU_PERIOD_US)
                .build()?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(r.pids_max as i64)
                .build()?,
        )
        .build()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_carries_command_user_limits_and_control_socket() {
        let argv = ["/test-handler".to_string()];
        let env = ["PATH=/bin".to_string()];
        let spec = ContainerSpec {
            id: "hello-7",
            rootfs: Path::new("/var/lib/faasd/images/hello/rootfs"),
            template: None,
            argv: &argv,
            env: &env,
            workdir: "/srv",
            uid: 1000,
            gid: 100,
            hostname: "hello-7",
            resources: Resources::default(),
            control_socket: Some(Path::new("/var/lib/faasd/bundles/hello-7/control.sock")),
            secrets: &crate::runtime::secrets::NO_SECRETS,
            stdout: None,
            stderr: None,
        };
        let secrets = Path::new("/var/lib/faasd/bundles/hello-7/secrets");
        let json = serde_json::to_value(build(&spec, "faasd", Some(secrets)).unwrap()).unwrap();
        assert_eq!(json["process"]["args"][0], "/test-handler");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["gid"], 100);
        assert_eq!(json["process"]["cwd"], "/srv");
        assert_eq!(json["root"]["readonly"], true);
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            let caps = &json["process"]["capabilities"][set];
            assert!(
                !caps.to_string().contains("CAP_NET_BIND_SERVICE"),
                "{set}: {caps}"
            );
            assert!(caps.to_string().contains("CAP_KILL"), "{set}: {caps}");
        }
        assert_eq!(json["linux"]["cgroupsPath"], "/faasd/hello-7");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 512 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 100_000);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 128);
        let mounts = json["mounts"].as_array().unwrap();
        let sock = mounts
            .iter()
            .find(|m| m["destination"] == "/control.sock")
            .expect("control socket mount");
        assert_eq!(
            sock["source"],
            "/var/lib/faasd/bundles/hello-7/control.sock"
        );
        let secrets = mounts
            .iter()
            .find(|m| m["destination"] == "/run/secrets")
            .expect("secrets mount");
        assert_eq!(secrets["source"], "/var/lib/faasd/bundles/hello-7/secrets");
        assert!(
            secrets["options"].to_string().contains("\"ro\""),
            "{secrets}"
        );
        let ns: Vec<_> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect();
        for want in ["pid", "network", "mount", "ipc", "uts"] {
            assert!(
                ns.iter().any(|n| n == want),
                "{want} namespace missing: {ns:?}"
            );
        }
    }
}
