//! What leaves the process besides the log: findings rendered as text, markdown or
//! JSON ([`report`]), terminal text that survives a closed pipe ([`term`]), Prometheus
//! metrics ([`metrics`]) and the HTTP server that serves them ([`metrics_http`]).

pub mod metrics;
pub mod metrics_http;
pub mod report;
pub mod term;
