//! The health server (`/healthz`, `/livez`) and the metrics server (`/metrics`,
//! `/proxyMode`, `/healthz`), with kube-proxy's answers.

use std::{net::SocketAddr, time::SystemTime};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    dataplane::ProxyMode,
    health::{Health, Probe},
    metrics::Metrics,
};

/// Binds a server; fails when the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[derive(Clone)]
struct HealthState {
    health: Health,
    metrics: Metrics,
}

/// Serves `/healthz` and `/livez` on `listener` until the task is dropped; answers are
/// counted in `metrics`.
pub async fn serve_health(listener: TcpListener, health: Health, metrics: Metrics) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(HealthState { health, metrics });
    info!(addr = ?listener.local_addr().ok(), "health server listening");
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "health server stopped");
    }
}

async fn healthz(State(s): State<HealthState>) -> Response {
    let (ok, body) = s.health.check(SystemTime::now(), Probe::Healthz);
    s.metrics.healthz(ok);
    health_response(ok, body)
}

async fn livez(State(s): State<HealthState>) -> Response {
    let (ok, body) = s.health.check(SystemTime::now(), Probe::Livez);
    s.metrics.livez(ok);
    health_response(ok, body)
}

fn health_response(ok: bool, body: crate::health::HealthBody) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (code, Json(body)).into_response();
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Clone)]
struct MetricsState {
    metrics: Metrics,
    mode: ProxyMode,
}

/// Serves `/metrics` (OpenMetrics text), `/proxyMode` (the mode's name, as kube-proxy) and
/// `/healthz` (the server is up) until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Metrics, mode: ProxyMode) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/proxyMode", get(proxy_mode))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(MetricsState { metrics, mode });
    info!(addr = ?listener.local_addr().ok(), "metrics server listening");
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics server stopped");
    }
}

async fn scrape(State(s): State<MetricsState>) -> Response {
    let mut response = s.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn proxy_mode(State(s): State<MetricsState>) -> String {
    s.mode.to_string()
}
