//! The `--metrics-addr` HTTP server, off the event thread: its own thread and
//! runtime, hyper for HTTP/1, answering `GET /metrics` from the last page the event
//! loop rendered (every 200 ms) — a scrape never waits on the engine and the engine
//! never waits on a scrape. Bounded: as many connections as the process can afford
//! ([`connection_limit`]: a quarter of its file limit, 64 to 4096, a few KB each);
//! when full, the oldest connection that has not sent a request is cut to make room
//! (counted), so idle neighbours cannot blind the scrapes — only a table full of live
//! scrapes refuses; [`HEADER_TIMEOUT`] to send a request head and
//! [`CONNECTION_TIMEOUT`] per connection; accept errors (EMFILE) back off instead of
//! spinning. Anything but `GET /metrics` gets 404 or 405.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};

/// Connections held at most (see [`connection_limit`]).
pub const MAX_CONNECTIONS: usize = 4096;
pub const MIN_CONNECTIONS: usize = 64;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server did, for its own series.
#[derive(Debug, Default)]
pub struct Counters {
    pub scrapes: AtomicU64,
    pub refused: AtomicU64,
    /// Connections cut to make room: they had sent no request.
    pub reclaimed: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The page the event loop publishes and the server answers with.
#[derive(Clone)]
pub struct Handle {
    page: Arc<Mutex<Bytes>>,
    pub counters: Arc<Counters>,
}

impl Handle {
    /// Replaces the page (a new render of the event loop).
    pub fn publish(&self, page: String) {
        if let Ok(mut p) = self.page.lock() {
            *p = Bytes::from(page);
        }
    }

    fn page(&self) -> Bytes {
        self.page.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Binds `addr` (so a bad address fails at start) and serves it on a new thread.
pub fn serve(addr: SocketAddr) -> Result<Handle> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("serving metrics on {addr}"))?;
    listener.set_nonblocking(true)?;
    let handle = Handle {
        page: Arc::new(Mutex::new(Bytes::from_static(b"# conntrace is starting\n"))),
        counters: Arc::new(Counters::default()),
    };
    let h = handle.clone();
    std::thread::Builder::new()
        .name("conntrace-metrics".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(accept_loop(listener, h));
        })
        .context("starting the metrics thread")?;
    Ok(handle)
}

/// One open connection: when it came, whether its request head arrived, and how to
/// cut it.
struct Open {
    since: std::time::Instant,
    requested: Arc<std::sync::atomic::AtomicBool>,
    abort: tokio::task::AbortHandle,
}

/// The connections open now, by arrival number.
#[derive(Default)]
struct Table {
    open: std::collections::BTreeMap<u64, Open>,
    next: u64,
}

impl Table {
    /// Cuts the oldest connection that has sent no request; `false` when every
    /// connection is busy with a scrape.
    fn reclaim(&mut self) -> bool {
        let idle = self
            .open
            .iter()
            .filter(|(_, o)| !o.requested.load(Ordering::Relaxed))
            .min_by_key(|(_, o)| o.since)
            .map(|(k, _)| *k);
        match idle.and_then(|k| self.open.remove(&k)) {
            Some(o) => {
                o.abort.abort();
                true
            }
            None => false,
        }
    }
}

/// The most connections the server holds: what the process can afford, a quarter of
/// its file limit (raised to the hard limit at start), between 64 and 4096.
pub fn connection_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for getrlimit/setrlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur / 4)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

async fn accept_loop(listener: std::net::TcpListener, h: Handle) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let limit = connection_limit();
    let table = Arc::new(Mutex::new(Table::default()));
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            // EMFILE and friends: wait instead of spinning on the same error.
            h.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(mut t) = table.lock() else {
            return;
        };
        // Full: the oldest connection that never sent a request makes room (an idle
        // neighbour must not blind the scrapes); only a table of live scrapes refuses.
        if t.open.len() >= limit {
            if t.reclaim() {
                h.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
            } else {
                h.counters.refused.fetch_add(1, Ordering::Relaxed);
                drop(socket);
                continue;
            }
        }
        let id = t.next;
        t.next += 1;
        let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h2, flag, done) = (h.clone(), requested.clone(), table.clone());
        let task = tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(socket);
            let service = hyper::service::service_fn(move |req| {
                flag.store(true, Ordering::Relaxed);
                let h = h2.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&h, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            if let Ok(mut t) = done.lock() {
                t.open.remove(&id);
            }
        });
        t.open.insert(
            id,
            Open {
                since: std::time::Instant::now(),
                requested,
                abort: task.abort_handle(),
            },
        );
    }
}

fn answer<B>(h: &Handle, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, body, kind) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            h.counters.scrapes.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                h.page(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"GET only\n"),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"conntrace serves /metrics\n"),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
