//! `conntrace_idle_before_close_seconds` against a real HTTP/1.1 server (Python's
//! `http.server`, keep-alive, closing connections idle for 2 s) and a real client
//! (`http.client`, six keep-alive connections: it hangs up three itself after 0.8 s,
//! the server closes the other three at 2 s). Three recordings at once: the server's
//! node (`--comm` of the server), the client's node (`--comm` of the client), and one
//! node with both ends (`--port`). Each has one series, the server's address, with
//! the server's three idle closes: the client's own hang-ups are no idle close of a
//! server. Before, the server's node had a series per client ephemeral port (and
//! none for the server), so 64 hung-up clients filled the endpoint cap.

use std::time::{Duration, Instant};

use tests::{free_port, http_get, peers::keepalive_httpd, Python, Recorder};

/// Six keep-alive connections, one request each; three hung up after 0.8 s idle,
/// three left to the server's 2 s timeout.
const CLIENT: &str = r#"
import ctypes, http.client, sys, time
ctypes.CDLL(None).prctl(15, b"ka-mcli", 0, 0, 0)
port = int(sys.argv[1])
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(6)]
for c in conns:
    c.request("GET", "/")
    c.getresponse().read()
time.sleep(0.8)
for c in conns[:3]:
    c.close()
time.sleep(2.7)
for c in conns[3:]:
    c.close()
print("done", flush=True)
"#;

fn idle_series(page: &str) -> Vec<String> {
    let mut series: Vec<String> = page
        .lines()
        .filter(|l| l.starts_with("conntrace_idle_before_close_seconds_count"))
        .map(str::to_owned)
        .collect();
    series.sort_unstable();
    series
}

#[test]
fn idle_close_metrics_name_the_server_from_either_end_once() {
    let mut server = Python::spawn(None, &keepalive_httpd("ka-msrv", 2), &[]);
    let port = server.line();
    let metrics: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let vantages = [
        ("the server's node", vec!["--comm", "ka-msrv"]),
        ("the client's node", vec!["--comm", "ka-mcli"]),
        ("both ends on one node", vec!["--port", port.as_str()]),
    ];
    let recorders: Vec<Recorder> = vantages
        .iter()
        .zip(&metrics)
        .map(|((_, filter), m)| {
            let m = m.to_string();
            let mut args = filter.clone();
            args.extend(["--metrics-addr", m.as_str()]);
            Recorder::start(&args)
        })
        .collect();
    let mut client = Python::spawn(None, CLIENT, &[&port]);
    assert_eq!(client.line(), "done");
    client.wait();

    let expected = vec![format!(
        "conntrace_idle_before_close_seconds_count{{endpoint=\"127.0.0.1:{port}\"}} 3"
    )];
    for ((vantage, _), m) in vantages.iter().zip(&metrics) {
        // The page is rendered every 200 ms; the idle closes ship at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut page = http_get(*m, "/metrics");
        while idle_series(&page) != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            page = http_get(*m, "/metrics");
        }
        assert_eq!(idle_series(&page), expected, "{vantage}:\n{page}");
        assert!(
            page.contains("conntrace_metrics_endpoints_dropped_total 0"),
            "{vantage}:\n{page}"
        );
        // The three hang-ups are there, as transitions, on the server's sockets.
        if vantage.starts_with("the server") {
            assert!(
                page.contains(
                    "conntrace_tcp_state_transitions_total{old=\"ESTABLISHED\",new=\"CLOSE_WAIT\"} 3"
                ),
                "{vantage}:\n{page}"
            );
        }
    }
    for rec in recorders {
        let recording = rec.stop();
        assert!(recording.losses().is_empty(), "{:?}", recording.losses());
    }
    drop(server);
}
