//! A connection's cgroup to its container and pod, from the cgroup path alone:
//! cgroup v2 and v1, systemd and cgroupfs drivers, containerd, CRI-O and Docker.
//!
//! ```text
//! systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//! cgroupfs: /kubepods/burstable/pod<uid>/<id>
//! docker:   /system.slice/docker-<id>.scope   or   /docker/<id>
//! ```

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// What a cgroup path says about the container in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// `containerd`, `cri-o` or `docker`.
    pub runtime: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`.
    pub qos: Option<String>,
}

impl ContainerRef {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn hex_id(s: &str) -> Option<String> {
    (s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_owned())
}

/// Parses a cgroup path (as in `/proc/<pid>/cgroup`, or relative to a mount).
pub fn parse(path: &str) -> ContainerRef {
    let mut out = ContainerRef::default();
    let kube = path.contains("kubepods");
    for segment in path.split('/') {
        let name = segment
            .strip_suffix(".scope")
            .or_else(|| segment.strip_suffix(".slice"))
            .unwrap_or(segment);
        // Pod: "kubepods-burstable-pod<uid_with_underscores>" or "pod<uid>".
        if kube {
            if let Some(i) = name.rfind("pod") {
                let uid = &name[i + 3..];
                let before = &name[..i];
                if uid.len() >= 32 && (before.is_empty() || before.ends_with('-')) {
                    out.pod_uid = Some(uid.replace('_', "-"));
                }
            }
            for qos in ["burstable", "besteffort"] {
                if name == qos || name == format!("kubepods-{qos}") {
                    out.qos = Some(qos.to_owned());
                }
            }
        }
        let runtimes = [
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
        ];
        for (prefix, runtime) in runtimes {
            if let Some(id) = name.strip_prefix(prefix).and_then(hex_id) {
                out.runtime = Some(runtime.to_owned());
                out.container_id = Some(id);
            }
        }
        // cgroupfs driver: the container id is a bare hex segment under the pod.
        if out.container_id.is_none() && (out.pod_uid.is_some() || path.starts_with("/docker/")) {
            if let Some(id) = hex_id(name) {
                out.container_id = Some(id);
                if path.starts_with("/docker/") {
                    out.runtime = Some("docker".to_owned());
                }
            }
        }
    }
    if kube && out.pod_uid.is_some() && out.qos.is_none() {
        out.qos = Some("guaranteed".to_owned());
    }
    out
}

/// cgroup v2 ids are the inode numbers of the cgroup directories: a walk of the
/// cgroup2 mount maps them to paths. Cached; rebuilt on a miss at most once a second.
pub struct CgroupPaths {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked: Option<Instant>,
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupPaths {
    pub fn new() -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists());
        Self {
            root,
            by_id: HashMap::new(),
            walked: None,
        }
    }

    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.by_id.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = dir
                    .strip_prefix(&root)
                    .map_or_else(|_| PathBuf::new(), Path::to_path_buf);
                self.by_id.insert(meta.ino(), format!("/{}", rel.display()));
            }
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }

    /// The path of cgroup `id`, relative to the cgroup2 mount.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self
                .walked
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.walk();
        }
        self.by_id.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f2a1c9e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";
    const UID: &str = "7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

    #[test]
    fn systemd_containerd_burstable() {
        let uid_ = UID.replace('-', "_");
        let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CID}.scope");
        let c = parse(&p);
        assert_eq!(c.runtime.as_deref(), Some("containerd"));
        assert_eq!(c.container_id.as_deref(), Some(CID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.qos.as_deref(), Some("burstable"));
    }

    #[test]
    fn systemd_crio_guaranteed() {
        let uid_ = UID.replace('-', "_");
        let p = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{CID}.scope");
        let c = parse(&p);
        assert_eq!(c.runtime.as_deref(), Some("cri-o"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.qos.as_deref(), Some("guaranteed"));
    }

    #[test]
    fn cgroupfs_driver_besteffort_and_v1_controller_prefix() {
        let c = parse(&format!("/kubepods/besteffort/pod{UID}/{CID}"));
        assert_eq!(c.container_id.as_deref(), Some(CID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.qos.as_deref(), Some("besteffort"));
        assert_eq!(c.runtime, None, "cgroupfs paths do not name the runtime");
        let v1 = parse(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!(v1.qos.as_deref(), Some("guaranteed"));
    }

    #[test]
    fn docker_outside_kubernetes() {
        let c = parse(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(
            (c.runtime.as_deref(), c.container_id.as_deref(), c.pod_uid),
            (Some("docker"), Some(CID), None)
        );
        let c = parse(&format!("/docker/{CID}"));
        assert_eq!(
            (c.runtime.as_deref(), c.container_id.as_deref()),
            (Some("docker"), Some(CID))
        );
    }

    #[test]
    fn plain_host_cgroups_are_not_containers() {
        assert!(parse("/user.slice/user-0.slice/session-1.scope").is_empty());
        assert!(parse("/system.slice/nginx.service").is_empty());
        assert!(parse("/").is_empty());
    }
}
