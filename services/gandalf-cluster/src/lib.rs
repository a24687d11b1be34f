//! gandalf-cluster: the cluster side a gandalf-aggregator talks to.
//!
//! A small real server, not a full Gandalf: tenants, their secrets and database from its
//! config; aggregator and relayed connector secret validation; logical configurations
//! saved and returned (in memory, or in PostgreSQL or SQLite); database configuration replies; commands routed by
//! `context["connector_type"]` to an aggregator holding a connector of that type; events
//! fanned out to every other aggregator of the tenant and kept in a bounded log
//! (`GET /v1/events?tenant=`); `grpc.health.v1`; the ops endpoint.

pub mod config;
pub mod http;
pub mod routing;
pub mod service;
pub mod storage;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use gandalf::frame::FrameServer;
use platform::ops::{OpsServer, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, routing::Cluster, service::ClusterService};

/// The cluster, bound and ready to run.
pub struct App {
    grpc: TcpListener,
    ops: OpsServer,
    cluster: Arc<Cluster>,
    readiness: Readiness,
    grace: Duration,
}

impl App {
    /// Binds the gRPC and admin listeners (port 0 picks free ones).
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let grpc = TcpListener::bind(config.listen).await?;
        let readiness = Readiness::with_components(["grpc"]);
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let admin = config.admin_listen;
        for tenant in config.tenants_without_aggregator_secrets() {
            tracing::warn!(
                tenant,
                "tenants.{tenant}.aggregator_secrets is not set: aggregators validate with the connector secrets, so a connector's secret can open a stream as an aggregator; set aggregator_secrets"
            );
        }
        let storage = storage::Storage::open(config.storage.as_ref().map(|s| &s.url))
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!(storage = storage.kind(), "logical configurations storage");
        let cluster = Cluster::new(config, storage);
        let ops = OpsServer::bind(admin, readiness.clone())
            .await?
            .merge(http::routes(cluster.clone()));
        Ok(Self {
            grpc,
            ops,
            cluster,
            readiness,
            grace,
        })
    }

    /// The gRPC address aggregators connect to.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The admin HTTP address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// The routing state (tests and the demo look at it).
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.clone()
    }

    /// Serves until `shutdown` is cancelled, then gives open streams the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<FrameServer<ClusterService>>().await;
        let drain = platform::shutdown::Drain::new();
        let service = ClusterService::new(self.cluster.clone(), shutdown.clone(), drain.clone());
        let stream = self.cluster.stream();
        let grpc = stream
            .server()
            .add_service(health)
            .add_service(FrameServer::new(service, stream.max_message_bytes))
            .serve_with_incoming_shutdown(nodelay(self.grpc), shutdown.clone().cancelled_owned());
        self.readiness.set("grpc", true);
        tracing::info!("serving");
        let ops = tokio::spawn(self.ops.run(shutdown.clone()));
        let grace = self.grace;
        let served = tokio::select! {
            served = grpc => served.map_err(std::io::Error::other),
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "streams still open after the grace period");
                Ok(())
            }
        };
        reporter
            .set_not_serving::<FrameServer<ClusterService>>()
            .await;
        // The stream handlers end on the token; wait for exactly them.
        if let Err(err) = drain.wait(grace).await {
            tracing::warn!(error = %err, "stream handlers still running at exit");
        }
        let _ = ops.await;
        served
    }
}

/// Accepted connections with TCP_NODELAY: small envelopes must not wait for Nagle's
/// algorithm (with delayed ACKs that costs tens of milliseconds per exchange).
fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
