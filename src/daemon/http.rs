//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// What `/readyz` checks.
#[derive(Default)]
pub(super) struct Readiness {
    pub partitions_assigned: AtomicBool,
    pub onnxruntime_loaded: AtomicBool,
    pub probes_loaded: AtomicBool,
    pub broker_reachable: AtomicBool,
}

impl Readiness {
    fn report(&self) -> (bool, String) {
        let checks = [
            ("partitions_assigned", &self.partitions_assigned),
            ("onnxruntime_loaded", &self.onnxruntime_loaded),
            ("probes_loaded", &self.probes_loaded),
            ("broker_reachable", &self.broker_reachable),
        ];
        let mut ready = true;
        let mut text = String::new();
        for (name, flag) in checks {
            let ok = flag.load(Ordering::Relaxed);
            ready &= ok;
            text.push_str(&format!("{name} {}\n", if ok { "ok" } else { "waiting" }));
        }
        (ready, text)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Arc<Readiness>,
}

/// Binds `listen` and serves until the process ends; returns the bound address.
pub(super) async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    readiness: Arc<Readiness>,
) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(|State(s): State<AppState>| async move { s.metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                let (ready, text) = s.readiness.report();
                (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, text)
            }),
        )
        .with_state(AppState { metrics, readiness });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint on {listen} (metrics.listen)"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
