//! Kubernetes node context: which container and pod a connection's cgroup is.
//!
//! The live pipeline resolves each new cgroup id once ([`Attributor`]) and writes a
//! `{"cgroup": ...}` record to the log; the engine keeps those records and fills
//! `process.container` / `process.pod` in findings, so a replay attributes alike.

pub mod api;
pub mod cgroup;

use serde::{Deserialize, Serialize};

pub use self::cgroup::ContainerRef;

/// One cgroup, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupInfo {
    pub id: u64,
    pub path: String,
    #[serde(flatten)]
    pub container: ContainerRef,
}

/// Resolves cgroup ids to paths and containers, once each; bounded.
pub struct Attributor {
    paths: cgroup::CgroupPaths,
    /// FxHash: asked for every record's cgroup.
    seen: crate::engine::conn::FxMap<u64, Option<ContainerRef>>,
}

const MAX_CGROUPS: usize = 65_536;

impl Default for Attributor {
    fn default() -> Self {
        Self::new()
    }
}

impl Attributor {
    pub fn new() -> Self {
        Self {
            paths: cgroup::CgroupPaths::new(),
            seen: crate::engine::conn::FxMap::default(),
        }
    }

    /// For a cgroup id not seen before: its record (to log and to the engine).
    pub fn first_sight(&mut self, id: u64) -> Option<CgroupInfo> {
        if id == 0 || self.seen.contains_key(&id) {
            return None;
        }
        if self.seen.len() >= MAX_CGROUPS {
            self.seen.clear();
        }
        let path = self.paths.path(id);
        let info = path.map(|path| CgroupInfo {
            id,
            container: cgroup::parse(&path),
            path,
        });
        self.seen
            .insert(id, info.as_ref().map(|i| i.container.clone()));
        info
    }

    /// The container of a cgroup already seen.
    pub fn container(&self, id: u64) -> Option<&ContainerRef> {
        self.seen.get(&id).and_then(Option::as_ref)
    }
}
