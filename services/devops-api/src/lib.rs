//! devops-api: declares tenant databases on PostgreSQL (spec `04-devops-api.md`).
//!
//! A tenant is one aggregate: a schema in a database, the NOLOGIN group roles
//! `<tenant>_owner`, `<tenant>_writer`, `<tenant>_reader` with their grants and default
//! privileges, logins in those groups, extensions. `PUT /v1/tenants/{name}` plans the
//! exact statements from the catalogs ([`catalog`], [`plan`]) and applies them in one
//! transaction under a per-tenant lock ([`tenants`]); names are checked and quoted
//! ([`names`]), passwords travel only as SCRAM verifiers ([`scram`]); every change is in
//! the append-only audit log ([`store`]). [`api`] is the HTTP side, [`auth`] who may call.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod names;
pub mod plan;
pub mod scram;
pub mod spec;
pub mod store;
pub mod tenants;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use platform::ops::{OpsServer, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{api::AppState, auth::Authenticator, config::Config, store::Store, tenants::Tenants};

/// The readiness component of the database (reachable, migrations applied).
const DATABASE: &str = "database";

/// The API, bound and ready to run.
pub struct App {
    listener: TcpListener,
    ops: OpsServer,
    state: AppState,
    store: Arc<Store>,
    max_body_bytes: usize,
    grace: Duration,
}

impl App {
    /// Binds both ports, reads the tokens file, prepares the pools (not connecting yet).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let auth = Authenticator::new(&config.auth).map_err(|e| anyhow::anyhow!("auth: {e}"))?;
        let store = Arc::new(Store::new(&config.database).map_err(anyhow::Error::msg)?);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot bind {}", config.listen))?;
        let readiness = Readiness::with_components([DATABASE]);
        let ops = OpsServer::bind(config.admin_listen, readiness.clone())
            .await
            .with_context(|| format!("cannot bind {}", config.admin_listen))?;
        Ok(Self {
            listener,
            ops,
            state: AppState {
                tenants: Tenants::new(
                    Arc::clone(&store),
                    spec::Limits {
                        allowed_extensions: config.tenants.allowed_extensions.clone(),
                        max_logins: config.tenants.max_logins,
                    },
                ),
                auth: Arc::new(auth),
                readiness,
            },
            store,
            max_body_bytes: config.max_body_bytes,
            grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    /// The API's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin address (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Serves until `shutdown`: migrates (again and again while the database is down),
    /// probes the database for readiness, answers requests, then lets those under way
    /// finish within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let store = Arc::clone(&self.store);
        let readiness = self.state.readiness.clone();
        let stop = shutdown.clone();
        // Migrations first, then a probe of the database every 2 s.
        tokio::spawn(async move {
            loop {
                match store.migrate().await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "the database is not reachable or cannot be migrated; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        }
                    }
                }
            }
            tracing::info!("database migrated");
            let probe_store = Arc::clone(&store);
            readiness.probe(
                DATABASE,
                Duration::from_secs(2),
                Duration::from_secs(2),
                move || {
                    let store = Arc::clone(&probe_store);
                    async move {
                        sqlx::query("SELECT 1")
                            .execute(store.admin())
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                },
                stop,
            );
        });
        let router = api::router(self.state.clone(), self.max_body_bytes);
        let ops = tokio::spawn(self.ops.run(shutdown.clone()));
        let stop = shutdown.clone();
        let grace = self.grace;
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await });
        let result = served.await;
        let _ = tokio::time::timeout(grace, ops).await;
        self.store.admin().close().await;
        result
    }
}
