//! The health server (`/healthz`, `/livez`), with kube-proxy's answers.

use std::{net::SocketAddr, time::SystemTime};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::health::{Health, HealthBody};

/// Binds the health server; fails when the address is taken (as kube-proxy does).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/healthz` and `/livez` on `listener` until the task is dropped.
pub async fn serve_health(listener: TcpListener, health: Health) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .with_state(health);
    info!(addr = ?listener.local_addr().ok(), "health server listening");
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "health server stopped");
    }
}

async fn healthz(State(health): State<Health>) -> (StatusCode, Json<HealthBody>) {
    let (ok, body) = health.check(SystemTime::now(), true);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
