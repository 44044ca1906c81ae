//! deploy/kubernetes/: the manifests are only on paper (no cluster here), so this checks
//! what can be checked without one: every file is valid YAML (parsed by Debian's
//! python3-yaml, which rootfs-tools/test-all.sh installs) and the pieces fit together the
//! way the README says: a privileged DaemonSet whose probes ask the gateway port's
//! /healthz, the state dir on a hostPath, the functions file from the ConfigMap applied
//! by `faas apply`, and a Service to the gateway port.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// The YAML documents of `file`, as JSON values.
fn documents(file: &Path) -> Vec<Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
        print(json.dumps(docs))";
    let out = Command::new("python3")
        .args(["-c", TO_JSON])
        .arg(file)
        .output()
        .expect("python3 (Debian packages python3 and python3-yaml) is required");
    assert!(
        out.status.success(),
        "{} is not valid YAML (or python3-yaml is missing): {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python's JSON")
}

fn manifests() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DIR)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| documents(f)).collect()
}

/// The one document of `kind`.
fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    let containers = pod["containers"].as_array().expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's command and arguments as one text (the scripts are `sh -c` arguments).
fn command_line(c: &Value) -> String {
    ["command", "args"]
        .iter()
        .flat_map(|k| c[k].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_manifest_parses_and_names_itself() {
    let docs = manifests();
    assert!(!docs.is_empty());
    for d in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(d[field].is_string(), "a document without {field}: {d}");
        }
        if d["kind"] != "Kustomization" {
            assert!(d["metadata"]["name"].is_string(), "unnamed: {d}");
        }
    }
    // kubectl apply -k lists every other file.
    let kustomization = one(&docs, "Kustomization");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for file in &listed {
        assert!(
            Path::new(DIR).join(file).is_file(),
            "{file} is listed but missing"
        );
    }
    assert_eq!(
        listed.len() + 1,
        docs.len(),
        "a manifest is not in kustomization.yaml"
    );
}

#[test]
fn daemonset_service_and_configmap_fit_together() {
    let docs = manifests();
    let ds = one(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );

    // faasd: privileged, the gateway on the port the probes and the Service use.
    let faasd = container(pod, "faasd");
    assert_eq!(faasd["securityContext"]["privileged"], true);
    let run = command_line(faasd);
    assert!(run.contains("--gateway 0.0.0.0:8081"), "{run}");
    assert!(run.contains("--listen 127.0.0.1:8080"), "{run}");
    let port = &faasd["ports"][0];
    assert_eq!(
        (&port["name"], &port["containerPort"]),
        (&"gateway".into(), &8081.into())
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &faasd[probe]["httpGet"];
        assert_eq!(
            (&get["path"], &get["port"]),
            (&"/healthz".into(), &"gateway".into()),
            "{probe}"
        );
    }

    // The state dir on a hostPath, mounted where --state-dir says.
    let state = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["hostPath"].is_object())
        .expect("a hostPath volume");
    let mount = faasd["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == state["name"])
        .expect("the hostPath volume mounted in faasd");
    let dir = mount["mountPath"].as_str().unwrap();
    assert!(run.contains(&format!("--state-dir {dir}")), "{run}");

    // The functions file: the ConfigMap's key, mounted in the apply container, applied.
    let cm = one(&docs, "ConfigMap");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
        .expect("the ConfigMap as a volume");
    let apply = container(pod, "apply");
    let at = apply["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap mounted in the apply container")["mountPath"]
        .as_str()
        .unwrap();
    let key = cm["data"]
        .as_object()
        .expect("data")
        .keys()
        .next()
        .expect("a key");
    let script = command_line(apply);
    assert!(script.contains(&format!("file={at}/{key}")), "{script}");
    assert!(
        script.contains("faas apply --prune -f \"$file\""),
        "{script}"
    );
    // A functions file (TOML) whose functions come from a registry: an archive (`file`)
    // would have to be inside the pod.
    let file: toml::Table = cm["data"][key].as_str().unwrap().parse().expect("TOML");
    let functions = file["functions"]
        .as_table()
        .expect("[functions.NAME] tables");
    assert!(!functions.is_empty());
    for (name, f) in functions {
        assert!(f.get("image").is_some_and(toml::Value::is_str), "{name}");
    }

    // The Service: to the gateway port of these pods, in their namespace.
    let svc = one(&docs, "Service");
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "gateway");
    let ns = one(&docs, "Namespace")["metadata"]["name"].clone();
    for d in [ds, cm, svc] {
        assert_eq!(d["metadata"]["namespace"], ns);
    }
}

/// The check can fail: broken YAML is reported, not skipped.
#[test]
fn invalid_yaml_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Service\n  spec: [unclosed\n").unwrap();
    let parsed = std::panic::catch_unwind(|| documents(&bad));
    assert!(parsed.is_err(), "invalid YAML was accepted");
}
