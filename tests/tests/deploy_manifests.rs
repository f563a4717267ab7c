//! The cluster manifests parse, ask for the capabilities and mounts the binary
//! needs (and no blanket privilege), and run a real subcommand.

use clap::Parser as _;
use serde_yaml::Value;

/// Every document of the manifest file.
fn documents() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(path).expect("read daemonset.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect()
}

fn manifest() -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet")
}

#[test]
fn the_service_account_may_read_pods_and_nothing_more() {
    let docs = documents();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("ClusterRole");
    let rules = role["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), vec!["pods"]);
    assert_eq!(strings(&rules[0]["verbs"]), vec!["get", "list", "watch"]);
    assert_eq!(
        manifest()["spec"]["template"]["spec"]["serviceAccountName"],
        "conntrace"
    );
    let env = &manifest()["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_sequence()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "NODE_NAME")),
        "the API client lists this node's pods"
    );
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn daemonset_has_the_capabilities_and_read_only_mounts_it_needs() {
    let m = manifest();
    assert_eq!(m["kind"], "DaemonSet");
    let pod = &m["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "findings name host pids");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    let caps = strings(&sc["capabilities"]["add"]);
    for needed in ["BPF", "PERFMON"] {
        assert!(
            caps.iter().any(|c| c == needed),
            "capability {needed}: {caps:?}"
        );
    }
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);
    // NET_ADMIN: ctnetlink answers only with it — the Service VIP's backend.
    assert!(caps.iter().any(|c| c == "NET_ADMIN"), "{caps:?}");
    assert!(
        !caps.iter().any(|c| c == "NET_RAW" || c == "SYS_MODULE"),
        "nothing beyond what a read needs: {caps:?}"
    );
    let mounts = c["volumeMounts"].as_sequence().expect("mounts");
    // What the binary opens on the host (strace of `watch`; docs/kubernetes.md):
    // BTF, tracefs, cgroupfs, the kernel config for HZ, named network namespaces.
    for path in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/boot",
        "/run/netns",
    ] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount {path}"));
        assert_eq!(m["readOnly"], true, "{path} read-only");
    }
    let annotations = &m["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let port = annotations["prometheus.io/port"].as_str().expect("port");
    assert_eq!(
        c["ports"][0]["containerPort"]
            .as_u64()
            .map(|p| p.to_string())
            .as_deref(),
        Some(port)
    );
    assert!(
        c["resources"]["limits"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );
}

#[test]
fn container_command_is_a_real_subcommand() {
    let m = manifest();
    let c = &m["spec"]["template"]["spec"]["containers"][0];
    let mut argv = strings(&c["command"]);
    assert_eq!(argv, vec!["/usr/local/bin/conntrace"]);
    // The kubelet expands $(HOST_IP) from the pod's status.hostIP.
    argv.extend(
        strings(&c["args"])
            .into_iter()
            .map(|a| a.replace("$(HOST_IP)", "10.0.0.5")),
    );
    let env = &c["env"];
    assert!(
        env.as_sequence()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "HOST_IP"
                && v["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP")),
        "metrics bind the node's address"
    );
    let cli = tracer::commands::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Some(tracer::commands::cli::Command::Watch(w)) = cli.command else {
        panic!("the DaemonSet runs `watch`")
    };
    assert!(w.json, "JSON lines for the log pipeline");
    let port = m["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        .as_str()
        .expect("port");
    assert_eq!(
        w.live.metrics_addr.map(|a| a.port().to_string()).as_deref(),
        Some(port)
    );
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/Containerfile"
    ))
    .expect("Containerfile");
    assert!(
        file.contains("ENTRYPOINT [\"/usr/local/bin/conntrace\"]"),
        "image entrypoint matches the manifest"
    );
    assert!(
        file.lines().any(|l| l.trim() == "FROM scratch"),
        "the image is the static binary alone: no registry to pull from"
    );
    // The reference `cargo xtask image` tags.
    let image = c["image"].as_str().expect("image");
    assert_eq!(
        image,
        format!("ghcr.io/conntrace/conntrace:{}", env!("CARGO_PKG_VERSION"))
    );
}
