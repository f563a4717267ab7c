//! The `--metrics-addr` HTTP server, off the event thread: its own thread and
//! runtime, hyper for HTTP/1, answering `GET /metrics` from the last page the event
//! loop rendered (every 200 ms) — a scrape never waits on the engine and the engine
//! never waits on a scrape. Bounded: at most [`MAX_CONNECTIONS`] at once (more are
//! closed at once and counted), [`HEADER_TIMEOUT`] to send a request head and
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

pub const MAX_CONNECTIONS: usize = 32;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server did, for its own series.
#[derive(Debug, Default)]
pub struct Counters {
    pub scrapes: AtomicU64,
    pub refused: AtomicU64,
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

async fn accept_loop(listener: std::net::TcpListener, h: Handle) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            // EMFILE and friends: wait instead of spinning on the same error.
            h.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            h.counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(socket);
            continue;
        };
        let h = h.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(socket);
            let service = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&h, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
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
