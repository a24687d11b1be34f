//! A tansu broker process (Kafka protocol, in-memory storage) on a free loopback port,
//! stopped when dropped; shared by the end-to-end tests and the benchmark. `$TANSU` names
//! the binary (`make tools` installs it), else `tansu` on the PATH.

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
};

pub struct Tansu {
    child: Child,
    pub bootstrap: String,
}

impl Tansu {
    /// Starts a broker and waits until it listens; its output goes to `log` when given.
    pub fn start(log: Option<&Path>) -> Result<Self, String> {
        let binary = std::env::var("TANSU").unwrap_or_else(|_| "tansu".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
                let copy = file.try_clone().map_err(|e| e.to_string())?;
                (Stdio::from(copy), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e} (`make tools` installs tansu)"))?;
        let tansu = Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&tansu.bootstrap).is_err() {
            if Instant::now() > deadline {
                return Err(format!("tansu did not listen on {}", tansu.bootstrap));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(tansu)
    }

    /// Creates `topics` (name, partitions), one replica each.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(|e| format!("admin client: {e}"))?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .map_err(|e| format!("create topics: {e}"))?;
        for result in results {
            result.map_err(|(topic, err)| format!("cannot create {topic}: {err}"))?;
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
