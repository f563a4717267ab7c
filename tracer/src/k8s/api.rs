//! Pod names and namespaces from the Kubernetes API, for the pods on this node only.
//!
//! In a cluster (a service-account token, `KUBERNETES_SERVICE_HOST`, and `NODE_NAME`
//! from the downward API) a background thread lists
//! `/api/v1/pods?fieldSelector=spec.nodeName=NODE` every 30 s and hands changes to the
//! pipeline. Nothing waits on it: when the API is unreachable, attribution stays at
//! the pod UID from the cgroup path. `CONNTRACE_KUBE_API` overrides the API address
//! (tests use a plain-HTTP server speaking the API's format).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{mpsc, Arc},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// A pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Deserialize)]
struct PodList {
    items: Vec<PodItem>,
}

#[derive(Deserialize)]
struct PodItem {
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: String,
    uid: String,
}

/// Parses a `PodList` or the `PartialObjectMetadataList` asked for
/// (`items[].metadata.{name,namespace,uid}` in both).
pub fn parse_pod_list(json: &str) -> Result<Vec<PodInfo>> {
    let list: PodList = serde_json::from_str(json).context("not a PodList")?;
    let mut pods: Vec<PodInfo> = list
        .items
        .into_iter()
        .map(|i| PodInfo {
            uid: i.metadata.uid,
            namespace: i.metadata.namespace,
            name: i.metadata.name,
        })
        .collect();
    pods.sort();
    Ok(pods)
}

const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the API is and how to talk to it.
pub struct ApiConfig {
    pub base: String,
    pub node: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiConfig {
    /// From the environment of a pod; `None` outside a cluster.
    pub fn from_env() -> Option<Self> {
        let node = std::env::var("NODE_NAME").ok()?;
        let token = std::fs::read_to_string(Path::new(SA).join("token"))
            .ok()
            .map(|t| t.trim().to_owned());
        let base = if let Ok(b) = std::env::var("CONNTRACE_KUBE_API") {
            b
        } else {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("https://{host}:{port}")
        };
        let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(5));
        if let Some(tls) = cluster_tls(&Path::new(SA).join("ca.crt")) {
            builder = builder.tls_config(tls);
        }
        Some(Self {
            base: base.trim_end_matches('/').to_owned(),
            node,
            token,
            agent: builder.build(),
        })
    }

    /// Lists the pods on this node.
    pub fn pods(&self) -> Result<Vec<PodInfo>> {
        let url = format!(
            "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.base, self.node
        );
        // Metadata only (names, namespaces, UIDs): never pod specs and their env values.
        let mut req = self.agent.get(&url).set(
            "Accept",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        );
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let body = req
            .call()
            .with_context(|| format!("listing pods at {}", self.base))?
            .into_string()
            .context("reading the pod list")?;
        parse_pod_list(&body)
    }
}

/// TLS trusting the cluster's CA (the service-account `ca.crt`).
fn cluster_tls(ca: &Path) -> Option<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).ok()?.flatten() {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Arc::new(config))
}

/// How often the pod list is refreshed.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Starts the background refresher; the receiver yields the whole list whenever it
/// changed, and the last error (for the status line) when listing fails.
pub fn spawn_watcher(
    cfg: ApiConfig,
    every: Duration,
) -> mpsc::Receiver<Result<Vec<PodInfo>, String>> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("kube-api".into())
        .spawn(move || {
            let mut last: Option<Vec<PodInfo>> = None;
            loop {
                let msg = match cfg.pods() {
                    Ok(pods) if last.as_ref() != Some(&pods) => {
                        last = Some(pods.clone());
                        Some(Ok(pods))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(format!("{e:#}"))),
                };
                if let Some(m) = msg {
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                std::thread::sleep(every);
            }
        });
    rx
}

/// Pods by UID.
pub fn by_uid(pods: &[PodInfo]) -> BTreeMap<String, PodInfo> {
    pods.iter().map(|p| (p.uid.clone(), p.clone())).collect()
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
    };

    use super::*;

    /// A trimmed response of `GET /api/v1/pods?fieldSelector=spec.nodeName=node-1`, in
    /// the API's own format.
    pub const POD_LIST: &str = r#"{
      "kind": "PodList",
      "apiVersion": "v1",
      "metadata": {"resourceVersion": "123456"},
      "items": [
        {
          "metadata": {
            "name": "web-7d4b9c6f5-x2kqp",
            "generateName": "web-7d4b9c6f5-",
            "namespace": "shop",
            "uid": "7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
            "resourceVersion": "123400",
            "creationTimestamp": "2026-11-20T08:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c6f5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c6f5", "uid": "0c1d", "controller": true}]
          },
          "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.25"}]},
          "status": {"phase": "Running", "qosClass": "Burstable", "podIP": "10.244.1.17"}
        },
        {
          "metadata": {"name": "pgbouncer-0", "namespace": "db", "uid": "11111111-2222-3333-4444-555555555555"},
          "spec": {"nodeName": "node-1"},
          "status": {"phase": "Running", "qosClass": "Guaranteed"}
        }
      ]
    }"#;

    /// Serves `body` to one request and returns what was asked.
    fn serve_once(body: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (base, h)
    }

    fn config(base: String) -> ApiConfig {
        ApiConfig {
            base,
            node: "node-1".into(),
            token: Some("t0ken".into()),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build(),
        }
    }

    #[test]
    fn parses_a_real_pod_list() {
        let pods = parse_pod_list(POD_LIST).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[1].name, "web-7d4b9c6f5-x2kqp");
        assert_eq!(pods[1].namespace, "shop");
        assert_eq!(pods[1].uid, "7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9");
        assert!(parse_pod_list(r#"{"kind":"Status","status":"Failure"}"#).is_err());
    }

    #[test]
    fn lists_only_this_nodes_pods_with_the_token() {
        let (base, server) = serve_once(POD_LIST);
        let pods = config(base).pods().unwrap();
        assert_eq!(pods.len(), 2);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1 "),
            "{request}"
        );
        assert!(request.contains("Authorization: Bearer t0ken"), "{request}");
        assert!(
            request.contains("as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            "metadata only: {request}"
        );
    }

    #[test]
    fn unreachable_api_is_an_error_not_a_hang() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let err = config(format!("http://127.0.0.1:{port}"))
            .pods()
            .unwrap_err();
        assert!(format!("{err:#}").contains("listing pods"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The watcher reports the failure and keeps running without blocking anyone.
        let rx = spawn_watcher(
            config(format!("http://127.0.0.1:{port}")),
            Duration::from_mins(1),
        );
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(first.is_err());
    }
}
