//! A cluster, aggregators and connectors per test.

use std::{collections::BTreeMap, net::SocketAddr, str::FromStr, time::Duration};

use gandalf::connector::{Connector, ConnectorError, ConnectorOptions};
use gandalf_aggregator::StartError;
use gandalf_cluster::config::{DatabaseInfo, TenantConfig};
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "acme";
pub const AGG_SECRET: &str = "agg-secret";
pub const CONNECTOR_SECRET: &str = "connector-secret";

/// A running gandalf-cluster.
pub struct Cluster {
    pub grpc: String,
    pub admin: String,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Cluster {
    pub async fn start(database: Option<String>) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), database).await
    }

    /// On a given address (a restart keeps its address).
    pub async fn start_at(listen: SocketAddr, database: Option<String>) -> Self {
        Self::start_accepting(listen, database, AGG_SECRET).await
    }

    /// On a given address, accepting aggregators with `aggregator_secret` only.
    pub async fn start_accepting(
        listen: SocketAddr,
        database: Option<String>,
        aggregator_secret: &str,
    ) -> Self {
        Self::start_full(listen, database, aggregator_secret, None, |_| {}).await
    }

    /// With its heartbeat interval set (the cluster's idle rule in tests).
    pub async fn start_heartbeating(interval_ms: u64) -> Self {
        Self::start_full(
            "127.0.0.1:0".parse().expect("addr"),
            None,
            AGG_SECRET,
            None,
            |config| config.heartbeat_interval_ms = interval_ms,
        )
        .await
    }

    /// Keeping logical configurations in SQL at `storage` (a URL).
    pub async fn start_stored(storage: &str) -> Self {
        Self::start_full(
            "127.0.0.1:0".parse().expect("addr"),
            None,
            AGG_SECRET,
            Some(storage),
            |_| {},
        )
        .await
    }

    async fn start_full(
        listen: SocketAddr,
        database: Option<String>,
        aggregator_secret: &str,
        storage: Option<&str>,
        tweak: impl FnOnce(&mut gandalf_cluster::config::Config),
    ) -> Self {
        let mut tenants = BTreeMap::new();
        tenants.insert(
            TENANT.to_owned(),
            TenantConfig {
                secrets: vec![SecretString::from(CONNECTOR_SECRET)],
                aggregator_secrets: vec![SecretString::from(aggregator_secret)],
                database: database.map(|url| DatabaseInfo {
                    url: FromStr::from_str(&url).expect("url"),
                }),
            },
        );
        tenants.insert(
            "globex".to_owned(),
            TenantConfig {
                secrets: vec![SecretString::from("globex-secret")],
                aggregator_secrets: Vec::new(),
                database: None,
            },
        );
        let mut config = gandalf_cluster::config::Config {
            listen,
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            tenants,
            event_log_capacity: 100,
            storage: storage.map(|url| gandalf_cluster::config::StorageConfig {
                url: FromStr::from_str(url).expect("url"),
            }),
            shutdown_grace_secs: 1,
            ..gandalf_cluster::config::Config::default()
        };
        tweak(&mut config);
        let app = gandalf_cluster::App::build(config)
            .await
            .expect("cluster binds");
        let addr = app.grpc_addr().expect("addr");
        let admin = format!("http://{}", app.admin_addr().expect("addr"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Self {
            grpc: format!("http://{addr}"),
            admin,
            addr,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    pub async fn events(&self) -> serde_json::Value {
        get_json(&format!("{}/v1/events?tenant={TENANT}", self.admin)).await
    }
}

/// A running gandalf-aggregator.
pub struct Aggregator {
    pub grpc: String,
    pub admin: String,
    stop: CancellationToken,
    pub task: JoinHandle<Result<(), StartError>>,
}

pub fn aggregator_config(
    name: &str,
    members: &[&str],
    secret: &str,
) -> gandalf_aggregator::config::Config {
    gandalf_aggregator::config::Config {
        logical_name: name.into(),
        tenant: TENANT.into(),
        secret: SecretString::from(secret),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        cluster: members.iter().map(|m| (*m).to_owned()).collect(),
        max_timeout_ms: 2000,
        startup_timeout_secs: 15,
        reconnect_backoff_max_ms: 200,
        shutdown_grace_secs: 1,
        ..gandalf_aggregator::config::Config::default()
    }
}

impl Aggregator {
    /// Starts one and waits until it is ready.
    pub async fn start(name: &str, cluster: &Cluster) -> Self {
        let aggregator = Self::spawn(aggregator_config(name, &[&cluster.grpc], AGG_SECRET)).await;
        aggregator.wait_ready().await;
        aggregator
    }

    /// Starts one with its config adjusted by `tweak` and waits until it is ready.
    pub async fn start_with(
        name: &str,
        cluster: &Cluster,
        tweak: impl FnOnce(&mut gandalf_aggregator::config::Config),
    ) -> Self {
        let mut config = aggregator_config(name, &[&cluster.grpc], AGG_SECRET);
        tweak(&mut config);
        let aggregator = Self::spawn(config).await;
        aggregator.wait_ready().await;
        aggregator
    }

    /// Starts one without waiting.
    pub async fn spawn(config: gandalf_aggregator::config::Config) -> Self {
        let app = gandalf_aggregator::App::build(config)
            .await
            .expect("aggregator binds");
        let grpc = format!("http://{}", app.grpc_addr().expect("addr"));
        let admin = format!("http://{}", app.admin_addr().expect("addr"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Self {
            grpc,
            admin,
            stop,
            task,
        }
    }

    pub async fn ready_status(&self) -> u16 {
        reqwest::get(format!("{}/readyz", self.admin))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.ready_status().await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aggregator not ready within 10 s");
    }

    pub async fn connector(&self, name: &str, connector_type: &str) -> Connector {
        self.try_connector(name, connector_type, CONNECTOR_SECRET)
            .await
            .expect("connector connects")
    }

    pub async fn try_connector(
        &self,
        name: &str,
        connector_type: &str,
        secret: &str,
    ) -> Result<Connector, ConnectorError> {
        Connector::connect(ConnectorOptions::new(
            &self.grpc,
            name,
            connector_type,
            TENANT,
            secret,
        ))
        .await
    }

    pub async fn connections(&self) -> serde_json::Value {
        get_json(&format!("{}/v1/connections", self.admin)).await
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

/// Acknowledges every command `connector` receives, in the background.
pub fn acknowledge_all(connector: std::sync::Arc<Connector>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = connector.next_command().await {
            let _ = connector.acknowledge(&incoming).await;
        }
    })
}

/// The next envelope a subscription sees with the given event name, within 5 s.
pub async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<gandalf::wire::Envelope>>,
    name: &str,
) -> gandalf::wire::Envelope {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let envelope = rx.recv().await.expect("subscription open");
            if let Some(gandalf::wire::envelope::Body::Event(e)) = &envelope.body
                && e.event == name
            {
                return (*envelope).clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} event within 5 s"))
}
