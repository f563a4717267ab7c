//! `--metrics-addr` under a real Prometheus: it scrapes the OpenMetrics exposition
//! without error (target up, no last error) and answers a query with the series.

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tests::{free_port, http_get, unique, Recorder};

struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_the_openmetrics_exposition() {
    let metrics_port = free_port();
    let rec = Recorder::start(&["--metrics-addr", &metrics_port.to_string()]);
    // Some traffic: refused connects make connect-error and reset series.
    let refused = free_port();
    for _ in 0..3 {
        let _ = TcpStream::connect(("127.0.0.1", refused));
    }
    // The page is rendered every 200 ms: wait for the refusals to show.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = http_get(metrics_port, "/metrics");
    while !text.contains("ECONNREFUSED") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = http_get(metrics_port, "/metrics");
    }
    assert!(text.contains("conntrace_events_total"), "{text}");
    assert!(
        text.contains("conntrace_connect_errors_total{errno=\"ECONNREFUSED\"}"),
        "{text}"
    );

    // OpenMetrics text (prometheus-client): every family typed, `# EOF` last. The
    // strict check is Prometheus's own OpenMetrics parser below: a page it cannot
    // parse fails the scrape (target down, lastError set) and yields no series.
    // (Debian's promtool lints only the older Prometheus text format.)
    assert!(text.contains("# TYPE conntrace_events counter"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    let dir = std::env::temp_dir().join(unique("ct-prom-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: conntrace\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("config");
    let web = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt install prometheus)");
    let prom = Prometheus { child, dir };
    let deadline = Instant::now() + Duration::from_secs(40);
    let answer = loop {
        let body = TcpStream::connect(("127.0.0.1", web))
            .ok()
            .map(|_| http_get(web, "/api/v1/query?query=conntrace_connect_errors_total"))
            .unwrap_or_default();
        if body.contains("ECONNREFUSED") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never returned the series: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let v: serde_json::Value = serde_json::from_str(&answer).expect("query JSON");
    assert_eq!(v["status"], "success");
    let result = &v["data"]["result"][0];
    assert_eq!(result["metric"]["job"], "conntrace");
    assert_eq!(result["metric"]["errno"], "ECONNREFUSED");
    let n: f64 = result["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("value");
    assert!(n >= 3.0, "{answer}");
    let targets = http_get(web, "/api/v1/targets");
    let t: serde_json::Value = serde_json::from_str(&targets).expect("targets JSON");
    let target = &t["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
    drop(prom);
    drop(rec.stop());
}
