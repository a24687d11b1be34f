//! The admin HTTP endpoint of long-running services, on its own port:
//!
//! - `GET /healthz`: 200 while the process serves requests at all (liveness).
//! - `GET /readyz`: 200 when every registered component is ready, else 503 with the
//!   components that are not (readiness).
//! - `GET /metrics`: everything recorded through the `metrics` facade, in Prometheus text.
//!
//! A service merges its own routes (`/v1/connections`, ...) with [`OpsServer::merge`].

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The process-wide Prometheus recorder, installed on first use: [`crate::telemetry::init`]
/// and [`OpsServer::bind`] call it, so a service's metric handles are never taken from the
/// no-op recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); our handle then
            // renders an empty page rather than failing the service.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Which components of a service are ready. Cheap to clone; every clone shares state.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    components: Arc<RwLock<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// A readiness with the given components, none of them ready yet.
    pub fn with_components<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let readiness = Self::default();
        for name in names {
            readiness.set(name, false);
        }
        readiness
    }

    /// Marks a component ready or not.
    pub fn set(&self, component: impl Into<String>, ready: bool) {
        let mut map = self.components.write().unwrap_or_else(|e| e.into_inner());
        map.insert(component.into(), ready);
    }

    /// Components that are not ready; empty means ready.
    pub fn not_ready(&self) -> Vec<String> {
        let map = self.components.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// True when every registered component is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    /// Drives `component` from a probe of a dependency instead of flags the service sets:
    /// every `every`, `check` runs (at most `timeout`; a probe that hangs counts as not
    /// ready) and its answer becomes the component's readiness, until `stop` is
    /// cancelled. Changes are logged.
    pub fn probe<F, Fut>(
        &self,
        component: impl Into<String>,
        every: Duration,
        timeout: Duration,
        check: F,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let component = component.into();
        self.set(component.clone(), false);
        let readiness = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_ready = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let answer = match tokio::time::timeout(timeout, check()).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                let ready = answer.is_ok();
                if was_ready != Some(ready) {
                    match &answer {
                        Ok(()) => tracing::info!(component = %component, "dependency ready"),
                        Err(why) => {
                            tracing::warn!(component = %component, reason = %why, "dependency not ready")
                        }
                    }
                }
                was_ready = Some(ready);
                readiness.set(component.clone(), ready);
            }
        })
    }
}

/// The admin server, bound and ready to run.
pub struct OpsServer {
    listener: TcpListener,
    router: Router,
}

impl OpsServer {
    /// Binds the admin port (`127.0.0.1:0` picks a free one; see [`OpsServer::local_addr`]).
    ///
    /// Installs the metrics recorder (if [`crate::telemetry::init`] has not), so handles
    /// taken between `bind` and [`OpsServer::run`] are the ones `/metrics` renders.
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> std::io::Result<Self> {
        metrics_handle();
        let listener = TcpListener::bind(addr).await?;
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(readiness);
        Ok(Self { listener, router })
    }

    /// Adds the service's own routes.
    pub fn merge(mut self, routes: Router) -> Self {
        self.router = self.router.merge(routes);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then finishes the requests in flight.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = metrics_handle();
        let upkeep_stop = shutdown.clone();
        // Histograms are summarised lazily; without an exporter thread, upkeep is ours.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = upkeep_stop.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let waiting = readiness.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "waiting_for": waiting })),
        )
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_probe_drives_readiness_and_a_hanging_probe_is_not_ready() {
        // 0: answers ok, 1: answers an error, 2: hangs.
        let mode = Arc::new(AtomicU8::new(0));
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        let probe_mode = mode.clone();
        let task = readiness.probe(
            "database",
            Duration::from_secs(1),
            Duration::from_millis(200),
            move || {
                let mode = probe_mode.load(Ordering::SeqCst);
                async move {
                    match mode {
                        0 => Ok(()),
                        1 => Err("refused".to_owned()),
                        _ => std::future::pending().await,
                    }
                }
            },
            stop.clone(),
        );
        assert_eq!(
            readiness.not_ready(),
            ["database"],
            "not ready before the first answer"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(readiness.is_ready());

        mode.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(readiness.not_ready(), ["database"]);

        mode.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(readiness.is_ready());

        mode.store(2, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            readiness.not_ready(),
            ["database"],
            "a hanging probe is not ready"
        );

        stop.cancel();
        task.await.expect("probe stops");
    }

    async fn start(
        readiness: Readiness,
        extra: Router,
    ) -> (
        String,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let server = OpsServer::bind("127.0.0.1:0".parse().expect("addr"), readiness)
            .await
            .expect("bind")
            .merge(extra);
        let base = format!("http://{}", server.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        (base, stop, task)
    }

    #[tokio::test]
    async fn readyz_follows_the_components_and_metrics_render() {
        let readiness = Readiness::with_components(["database", "cluster"]);
        let extra = Router::new().route("/v1/ping", get(|| async { "pong" }));
        let (base, stop, task) = start(readiness.clone(), extra).await;
        let client = reqwest::Client::new();

        let health = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200);

        let not_ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(not_ready.status(), 503);
        let body: serde_json::Value = not_ready.json().await.expect("json");
        assert_eq!(body["waiting_for"], json!(["cluster", "database"]));

        readiness.set("database", true);
        readiness.set("cluster", true);
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);

        metrics::counter!("ops_test_requests_total", "kind" => "probe").increment(3);
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        assert!(
            text.contains("ops_test_requests_total{kind=\"probe\"} 3"),
            "{text}"
        );

        let pong = client
            .get(format!("{base}/v1/ping"))
            .send()
            .await
            .expect("ping");
        assert_eq!(pong.text().await.expect("body"), "pong");

        stop.cancel();
        task.await.expect("join").expect("clean stop");
    }
}
