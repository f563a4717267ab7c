//! Issue 25: the keep-alive race predicted before it fails, against real software
//! (uvicorn, Python's http.client, Java 17's HttpClient), in namespaces of the
//! test's own. Alone in its binary: the reuse gaps come from inspection passes every
//! 2 s, which a neighbour's connection churn would space out (the inspection keeps
//! to 1 % of a CPU).

use serde_json::Value;
use tests::{findings_for, peers::uvicorn, Python, Recorder, VethPair};

/// A pool of `size` `http.client` connections that reuses them every `pause` seconds
/// for `rounds` rounds, then leaves them idle until the server closes them; prints
/// the requests that failed. Each round sends on the connections one after another,
/// so a connection's reuse gap is the pause plus the other connections' requests.
const PAUSING_POOL: &str = r"
import http.client, sys, time
host, port = sys.argv[1].rsplit(':', 1)
pause, rounds, size = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def get(c):
    c.request('GET', '/'); r = c.getresponse(); r.read()
pool = [http.client.HTTPConnection(host, int(port), timeout=5) for _ in range(size)]
failed = 0
for i in range(rounds):
    for j, c in enumerate(pool):
        try:
            get(c)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            failed += 1
            c.close()
            pool[j] = http.client.HTTPConnection(host, int(port), timeout=5)
            get(pool[j])
    if i + 1 < rounds:
        time.sleep(pause)
time.sleep(5)
print(failed, flush=True)
";

/// Issue 25: the keep-alive race predicted before it fails, against uvicorn (idle
/// timeout 4 s): a pool reusing after 3.4 s has not failed yet and is warned about
/// with its margin; one reusing after 1 s is not; Java 17's HttpClient with its own
/// keep-alive timeout of 2 s, sending every 2 s, is named safe: it retires idle
/// connections itself (at 1.2-1.9 s), and when its timer-driven eviction loses to the
/// next request (a slow TCG guest reused one after 2.45 s idle) the gap is still far
/// below the 3.2 s where a 4 s server becomes dangerous. (Against a 3 s uvicorn that
/// late reuse was rightly a near miss, and the test's safe pool was not safe.)
/// `Pool.java` compiled into a directory of this test's own, removed when dropped.
struct PoolClasses(std::path::PathBuf);

impl PoolClasses {
    /// Compiled before anything is measured: `java Pool.java` compiles in the JVM it
    /// runs in, and interpreted in CI's TCG guests (below) that took long enough to
    /// starve the Python pools it started with — ci21's 6.1 guest saw the 1 s pool
    /// reuse after 3.45 s, exactly, and warned about it rightly.
    fn compile() -> Self {
        let dir = std::env::temp_dir().join(format!("conntrace-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for Pool.class");
        let classes = Self(dir);
        let status = std::process::Command::new("javac")
            .arg("-J-Xint")
            .arg("-d")
            .arg(&classes.0)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/peers/Pool.java"))
            .status()
            .expect("javac (Debian's openjdk-17)");
        assert!(status.success(), "javac Pool.java: {status}");
        classes
    }
}

impl Drop for PoolClasses {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pool_reusing_near_uvicorns_timeout_is_warned_before_it_fails() {
    let server = "192.0.2.2:8000";
    let classes = PoolClasses::compile();
    let pair = VethPair::new();
    let _uvicorn = uvicorn(&pair.b, server, 4);
    let rec = Recorder::start(&[]);
    let mut near = Python::spawn(Some(&pair.a.name), PAUSING_POOL, &[server, "3.4", "6", "3"]);
    // One connection: in CI's TCG guests uvicorn answered in ~1.2 s with the other
    // peers running, and a pool of 3 then reused each connection after 1 s plus two
    // answers, 3.45-3.74 s (ci21 on 6.1, ci22 on 6.12): rightly a near miss once the
    // inspection's probes saw those gaps exactly. Alone, its gap is its pause.
    let mut far = Python::spawn(Some(&pair.a.name), PAUSING_POOL, &[server, "1.0", "6", "1"]);
    let java = std::process::Command::new("ip")
        .args(["netns", "exec", &pair.a.name, "java"])
        // Interpreted: in the matrix's TCG guests the JIT's compiled code crashed the
        // JVM now and then (SIGSEGV in C1 code, on 5.10 and 6.1); the pool's timers and
        // sockets are the same without it.
        .arg("-Xint")
        .arg("-Djdk.httpclient.keepalive.timeout=2")
        .arg("-cp")
        .arg(&classes.0)
        .arg("Pool")
        .args([&format!("http://{server}/"), "5", "2000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("java (Debian's openjdk-17)");
    let java_pid = java.id();
    let (near_failed, far_failed) = (near.line(), far.line());
    let java_out = java.wait_with_output().expect("java");
    let (near_pid, far_pid) = (near.pid(), far.pid());
    near.wait();
    far.wait();
    let recording = rec.stop();
    assert_eq!(far_failed, "0", "reuse after 1 s never fails");
    let near_failed: u64 = near_failed.parse().expect("count");
    assert_eq!(String::from_utf8_lossy(&java_out.stdout).trim(), "0");

    let report = recording.replayed_report();
    let of = |pid: u32| -> Vec<&Value> {
        findings_for(&report, "keepalive-near-miss", server)
            .into_iter()
            .filter(|f| f["process"]["pid"] == pid)
            .collect()
    };
    let warned = of(near_pid);
    let reuses: Vec<String> = recording
        .log
        .records
        .iter()
        .filter_map(|r| match r {
            tracer::event::Record::Reuses(r) => Some(format!(
                "{} {:?}",
                r.mono_ns / 1_000_000,
                r.reuses
                    .iter()
                    .map(|u| (u.process.pid, u.gap_ms, u.exact))
                    .collect::<Vec<_>>()
            )),
            _ => None,
        })
        .collect();
    if near_failed > 0 {
        // A slow machine (a TCG guest) stretched a 3.4 s pause past uvicorn's 4 s:
        // then it is the race, counted as the client counted it, and no near miss.
        let races: Vec<&Value> = findings_for(&report, "keepalive-reuse-race", server)
            .into_iter()
            .filter(|f| f["process"]["pid"] == near_pid)
            .collect();
        assert_eq!(races.len(), 1, "{report:#?}");
        assert_eq!(races[0]["count"], near_failed, "{:#}", races[0]);
        assert!(warned.is_empty(), "{report:#?}");
    } else {
        assert_eq!(
            warned.len(),
            1,
            "{report:#?}\nreuse records (near pid {near_pid}): {reuses:#?}"
        );
        let w = warned[0];
        assert_eq!(w["severity"], "warning", "{w:#}");
        let timeout = w["evidence"]["server_idle_timeout_ms"]
            .as_u64()
            .expect("timeout");
        assert!((4000..=4100).contains(&timeout), "uvicorn's 4 s: {w:#}");
        let gap = w["evidence"]["max_reuse_gap_ms"].as_u64().expect("gap");
        assert!(
            (3300..4000).contains(&gap),
            "reused after about 3.4 s: {w:#}"
        );
        assert_eq!(w["evidence"]["margin_ms"], timeout - gap);
    }
    assert!(
        of(far_pid).is_empty(),
        "reuse after 1 s is far from 4 s: {report:#?}\nreuse records (far pid {far_pid}): {reuses:#?}"
    );
    let safe = of(java_pid);
    assert_eq!(safe.len(), 1, "Java named safe: {report:#?}");
    assert_eq!(safe[0]["severity"], "info", "{:#}", safe[0]);
    let pool = safe[0]["evidence"]["pool_idle_timeout_ms"]
        .as_u64()
        .expect("pool timeout");
    assert!(
        (1000..2100).contains(&pool),
        "Java's idle connections closed within its 2 s keep-alive timeout: {:#}",
        safe[0]
    );
    assert!(
        findings_for(&report, "keepalive-reuse-race", server)
            .iter()
            .all(|f| f["process"]["pid"] == near_pid),
        "only the near pool may have failed: {report:#?}"
    );
}
