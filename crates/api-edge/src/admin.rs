//! What operators scrape and probe: `/metrics` (Prometheus text), liveness and readiness. The edge
//! serves them beside the API; a worker serves them on a small listener of its own ([`serve`]).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use ridehail_ports::Backend;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::routes::health;

/// This process's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", security(()),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        ridehail_runtime::telemetry::render_metrics(),
    )
}

async fn ready(State(backend): State<Backend>) -> impl IntoResponse {
    health::readiness(&backend).await
}

/// A worker's admin routes.
pub fn router(backend: Backend) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(ready))
        .with_state(backend)
}

/// Serves [`router`] on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, backend: Backend, shutdown: CancellationToken) -> anyhow::Result<()> {
    axum::serve(listener, router(backend)).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
