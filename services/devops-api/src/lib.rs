//! devops-api: declares tenant databases on PostgreSQL (spec `04-devops-api.md`).
//!
//! A tenant is one aggregate: a schema in a database, the NOLOGIN group roles
//! `<tenant>_owner`, `<tenant>_writer`, `<tenant>_reader` with their grants and default
//! privileges, logins in those groups, extensions. `PUT /v1/tenants/{name}` plans the
//! exact statements from the catalogs ([`catalog`], [`plan`]) and applies them in one
//! transaction under a per-tenant lock ([`tenants`]); names are checked and quoted
//! ([`names`]), passwords travel only as SCRAM verifiers ([`scram`]); every change is in
//! the append-only audit log ([`store`]). [`api`] is the HTTP side, [`auth`] who may call
//! and which tenants each caller may touch. The listener is served by an accept loop of
//! its own ([`App::run`]) that bounds what one client can hold: connections are capped,
//! and one that does not send complete request headers in time is closed.

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

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use platform::ops::{OpsServer, Readiness};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::{
    api::AppState,
    auth::Authenticator,
    config::{Config, HttpConfig},
    store::Store,
    tenants::Tenants,
};

/// The readiness component of the database (reachable, migrations applied).
const DATABASE: &str = "database";
/// A connection's read buffer, for the request line and headers: a head that does not
/// fit is refused (431). The buffer can grow to about twice this in one read; hyper's
/// default (~400 KiB) times `http.max_connections` would be more memory than the API has.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The API, bound and ready to run.
pub struct App {
    listener: TcpListener,
    ops: OpsServer,
    state: AppState,
    store: Arc<Store>,
    max_body_bytes: usize,
    http: HttpConfig,
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
                        max_changes_per_caller: config.tenants.max_changes_per_caller,
                    },
                ),
                auth: Arc::new(auth),
                readiness,
            },
            store,
            max_body_bytes: config.max_body_bytes,
            http: config.http,
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
    /// probes the database for readiness, answers requests (within the `http` limits),
    /// then lets those under way finish within the grace period.
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
                            .execute(store.probe())
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                },
                stop,
            );
        });
        let router = api::router(
            self.state.clone(),
            self.max_body_bytes,
            Duration::from_secs(self.http.request_timeout_secs),
        );
        let ops = tokio::spawn(self.ops.run(shutdown.clone()));
        serve(self.listener, router, &self.http, shutdown, self.grace).await;
        let _ = tokio::time::timeout(self.grace, ops).await;
        self.store.admin().close().await;
        self.store.probe().close().await;
        Ok(())
    }
}

/// Serves `router` on `listener` until `shutdown`. At most `http.max_connections`
/// connections are open at once: the loop takes a slot before it accepts, so the others
/// wait in the listen backlog and cost nothing here. A connection that has not sent
/// complete request headers within `http.header_read_timeout_secs` (the first request's,
/// or the next one's on a kept-alive connection) is closed, and so frees its slot. On
/// `shutdown` the listener is closed, idle connections too, and requests under way get
/// `grace` to finish; connections still open then are dropped.
async fn serve(
    listener: TcpListener,
    router: Router,
    http: &HttpConfig,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(
        http.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(http.header_read_timeout_secs))
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace period is over: ends the connections still open.
    let cut = CancellationToken::new();
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        // The auth middleware reads the peer's address (the identity header is believed
        // only from trusted proxies).
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let cut = cut.clone();
        tokio::spawn(async move {
            let open = metrics::gauge!("devops_api_http_connections");
            open.increment(1.0);
            tokio::select! {
                ended = connection => if let Err(error) = ended {
                    // A header read timeout, a client that went away, a malformed request.
                    tracing::debug!(%peer, %error, "connection ended with an error");
                },
                () = cut.cancelled() => {
                    tracing::warn!(%peer, "connection still open after the shutdown grace period closed");
                }
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
    // Nothing more is accepted: connections in the backlog are refused.
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        cut.cancel();
    }
}

/// An `accept` that failed: a connection that went away before it was taken is nothing;
/// anything else (out of file descriptors) is waited out a little, not spun on.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
