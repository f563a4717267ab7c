//! Real software as test peers: a PostgreSQL server with pgbouncer in front of it,
//! uvicorn, and an nftables DNAT rule, each run inside a test's own network
//! namespace and stopped (processes killed, files removed) on drop, also when the
//! test fails. `cargo xtask setup` / `test` installs them.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

const REMEDY: &str = "run the tests with `sudo cargo xtask test` (or `sudo cargo xtask setup` first): it installs the test peers";

/// The interpreter of the peers' venv (uvicorn): `$CONNTRACE_PEER_PYTHON`, else where
/// `cargo xtask setup` makes it.
pub fn peer_python() -> PathBuf {
    let python = std::env::var_os("CONNTRACE_PEER_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("conntrace/peers/bin/python"))
        })
        .expect("HOME or XDG_CACHE_HOME");
    assert!(python.exists(), "{} missing: {REMEDY}", python.display());
    python
}

/// `bin/` of the installed PostgreSQL server (the newest version present).
fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .unwrap_or_else(|| panic!("no PostgreSQL server in /usr/lib/postgresql: {REMEDY}"))
}

/// A process the test started; on drop asked to stop (`stop`, its shutdown signal:
/// nginx's master takes its workers with it on SIGTERM, PostgreSQL does a fast
/// shutdown on SIGINT), killed after 3 s, and reaped.
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    stop: i32,
}

impl Daemon {
    fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child,
            stop: libc::SIGKILL,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn shut_down(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, self.stop) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// `setpriv` to the `postgres` user: it execs in place (runuser forks, so killing
/// it would leave the server running).
const AS_POSTGRES: [&str; 4] = [
    "setpriv",
    "--reuid=postgres",
    "--regid=postgres",
    "--clear-groups",
];

/// `cmd` inside `ns` as the `postgres` user (neither server runs as root).
fn as_postgres(ns: &Netns, cmd: &[&str], log: &std::path::Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name])
        .args(AS_POSTGRES)
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("log file"))
        .stderr(std::fs::File::create(log.with_extension("err")).expect("log file"));
    c
}

/// Waits until `addr` accepts a connection from inside `ns`, or panics after `within`.
fn wait_listening(ns: &Netns, addr: &str, within: Duration, what: &str, log: &std::path::Path) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let started = Instant::now();
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c"])
            .arg(format!(
                "import socket; socket.create_connection(('{host}', {port}), 1).close()"
            ))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{what} did not listen on {addr} within {within:?}: {}{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PostgreSQL on 127.0.0.1:5432 inside `ns` and pgbouncer in front of it on
/// `listen`:6432 (session pooling, any user, no password), in a fresh cluster under
/// a temporary directory.
pub struct PgBouncer {
    pub postgres: Daemon,
    pub pgbouncer: Daemon,
    dir: PathBuf,
}

impl PgBouncer {
    pub fn start(ns: &Netns, listen: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::unique("ctpg"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let chown = |p: &std::path::Path| {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}: {REMEDY}", p.display());
        };
        chown(&dir);
        let bin = postgres_bin();
        let data = dir.join("data");
        crate::run_ok(
            Command::new(AS_POSTGRES[0])
                .args(&AS_POSTGRES[1..])
                .arg(bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        );
        let log = dir.join("postgres.log");
        let mut postgres = Daemon::new(
            "postgres",
            as_postgres(
                ns,
                &[
                    bin.join("postgres").to_str().expect("path"),
                    "-D",
                    data.to_str().expect("path"),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                    dir.to_str().expect("path"),
                ],
                &log,
            )
            .spawn()
            .expect("start postgres"),
        );
        postgres.stop = libc::SIGINT;
        wait_listening(
            ns,
            "127.0.0.1:5432",
            Duration::from_mins(1),
            "postgres",
            &log,
        );
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port=5432 dbname=postgres user=postgres\n\
                 [pgbouncer]\nlisten_addr = {listen}\nlisten_port = 6432\nauth_type = any\n\
                 unix_socket_dir =\npool_mode = session\nlogfile = {log}\npidfile = {pid}\n",
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display()
            ),
        )
        .expect("pgbouncer.ini");
        chown(&ini);
        let log = dir.join("pgbouncer.out");
        let pgbouncer = Daemon::new(
            "pgbouncer",
            as_postgres(ns, &["pgbouncer", ini.to_str().expect("path")], &log)
                .spawn()
                .expect("start pgbouncer"),
        );
        wait_listening(
            ns,
            &format!("{listen}:6432"),
            Duration::from_secs(30),
            "pgbouncer",
            &log,
        );
        Self {
            postgres,
            pgbouncer,
            dir,
        }
    }
}

impl PgBouncer {
    /// Waits until PostgreSQL runs `n` queries containing `text` (delivered through
    /// pgbouncer), asking it over its unix socket from inside `ns`; panics after
    /// `within`. Under TCG a client takes seconds to start: no fixed sleep is safe.
    pub fn wait_running(&self, ns: &Netns, text: &str, n: u32, within: Duration) {
        let started = Instant::now();
        let sql = format!(
            "select count(*) from pg_stat_activity where state = 'active' and query like '%{text}%' and pid <> pg_backend_pid()"
        );
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .args(AS_POSTGRES)
                .args(["psql", "-X", "-At", "-h"])
                .arg(&self.dir)
                .args(["-U", "postgres", "-d", "postgres", "-c", &sql])
                .output()
                .expect("psql");
            let running: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            if running >= n {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{running} of {n} queries reached PostgreSQL within {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // The daemons go first (fields drop after this body): stop them now so the
        // directory can go.
        self.pgbouncer.shut_down();
        self.postgres.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `psql -c QUERY` against pgbouncer at `server`:6432 from inside `ns` (libpq's
/// defaults: keepalive on with the kernel's timers).
pub fn psql(ns: &Netns, server: &str, query: &str) -> Daemon {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "psql", "-X", "-q", "-h", server])
        .args([
            "-p", "6432", "-U", "postgres", "-d", "postgres", "-c", query,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start psql");
    Daemon::new("psql", child)
}

/// uvicorn serving a one-line ASGI app on `addr` inside `ns`, closing idle
/// keep-alive connections after `keepalive_s` (its `--timeout-keep-alive`).
pub fn uvicorn(ns: &Netns, addr: &str, keepalive_s: u32) -> Daemon {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = format!(
        "import uvicorn\n\
         async def app(scope, receive, send):\n    \
             if scope['type'] != 'http':\n        return\n    \
             await send({{'type': 'http.response.start', 'status': 200, 'headers': [(b'content-length', b'2')]}})\n    \
             await send({{'type': 'http.response.body', 'body': b'ok'}})\n\
         uvicorn.run(app, host='{host}', port={port}, timeout_keep_alive={keepalive_s}, log_level='warning')\n"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(peer_python())
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("start uvicorn");
    let daemon = Daemon::new("uvicorn", child);
    let log = std::env::temp_dir().join("no-log");
    wait_listening(ns, addr, Duration::from_mins(1), "uvicorn", &log);
    daemon
}

/// A Service: connections from `ns` to `vip` are DNAT'd to `backend` (nftables, in
/// the namespace's output hook, as kube-proxy's rules translate a node's own
/// connections); `vip`'s /16 is routed out of `dev`.
pub fn service(ns: &Netns, dev: &str, vip: &str, backend: &str) {
    let (vip_ip, vip_port) = vip.rsplit_once(':').expect("vip host:port");
    let net = vip_ip.split('.').take(2).collect::<Vec<_>>().join(".");
    ns.exec(&["ip", "route", "add", &format!("{net}.0.0/16"), "dev", dev]);
    ns.exec(&["nft", "add", "table", "ip", "ctsvc"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "ip",
        "ctsvc",
        "out",
        "{ type nat hook output priority -100 ; }",
    ]);
    ns.exec(&[
        "nft", "add", "rule", "ip", "ctsvc", "out", "ip", "daddr", vip_ip, "tcp", "dport",
        vip_port, "dnat", "to", backend,
    ]);
}

/// nginx serving `ok` on `addr` inside `ns` (two workers, its default backlog 511),
/// its files under a temporary directory removed on drop.
pub struct Nginx {
    pub daemon: Daemon,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(ns: &Netns, addr: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::unique("ctngx"));
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\n\
                 http {{ access_log off;\n server {{ listen {addr}; location / {{ return 200 \"ok\"; }} }} }}\n",
                pid = dir.join("nginx.pid").display()
            ),
        )
        .expect("nginx.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nginx", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start nginx ({e}): {REMEDY}"));
        let mut daemon = Daemon::new("nginx", child);
        daemon.stop = libc::SIGTERM;
        wait_listening(
            ns,
            addr,
            Duration::from_secs(30),
            "nginx",
            &dir.join("logs/none"),
        );
        Self { daemon, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.daemon.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `wrk` from inside `ns` for `secs` seconds, 64 connections, each request on a new
/// connection (`Connection: close`): a listener under connection churn.
pub fn wrk_churn(ns: &Netns, url: &str, secs: u32) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "wrk", "-t2", "-c64"])
        .arg(format!("-d{secs}s"))
        .args(["-H", "Connection: close", url])
        .output()
        .unwrap_or_else(|e| panic!("run wrk ({e}): {REMEDY}"));
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A keep-alive HTTP/1.1 server in Python's standard library (`http.server`,
/// threaded), naming itself `comm` (the process and its handler threads) before it
/// listens on 127.0.0.1 and prints its port; a connection idle for `idle_timeout_s`
/// it closes first. For [`crate::Python::spawn`].
pub fn keepalive_httpd(comm: &str, idle_timeout_s: u32) -> String {
    format!(
        r#"
import ctypes, http.server, socketserver
ctypes.CDLL(None).prctl(15, b"{comm}", 0, 0, 0)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = {idle_timeout_s}
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#
    )
}
