//! An instance's context: the `<BASE>_<DOMAIN>` variables, the shared `WRITE_ENV`, and the
//! per-environment maps (`KAFKA_BOOTSTRAP_<ENV>`, `BQ_PROJECT_<ENV>`, `BQ_DATASET_<ENV>`),
//! read from the process environment and the `.env` file the ConfigMap mounts (the
//! environment wins). Every problem is reported at once, each naming its exact variable.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

/// Every problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The variables an instance sees.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: HashMap<String, String>,
    /// The `.env` file that was read, if any.
    pub env_file: Option<PathBuf>,
}

impl Vars {
    /// Reads `env_file` (or `./.env` when it exists), then lays `process` over it.
    /// An explicitly named file that is missing or malformed is a problem.
    pub fn load(
        env_file: Option<&Path>,
        process: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Problems> {
        let mut vars = Self::default();
        let (path, explicit) = match env_file {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(".env"), false),
        };
        if path.is_file() {
            let items = dotenvy::from_path_iter(&path)
                .map_err(|e| Problems(vec![format!("env file {}: {e}", path.display())]))?;
            for item in items {
                let (key, value) =
                    item.map_err(|e| Problems(vec![format!("env file {}: {e}", path.display())]))?;
                vars.values.insert(key, value);
            }
            vars.env_file = Some(path);
        } else if explicit {
            return Err(Problems(vec![format!(
                "env file {}: no such file",
                path.display()
            )]));
        }
        vars.values.extend(process);
        Ok(vars)
    }

    /// Variables from a list (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            env_file: None,
        }
    }

    /// A variable's value; empty counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

/// Where rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Bigquery,
    Jsonl,
}

/// Payload encoding on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "protobuf" | "proto" => Some(Self::Protobuf),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// How an event becomes a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowMode {
    /// Metadata columns plus the event as JSON in `payload`.
    Payload,
    /// Metadata columns plus the event's top-level fields as columns.
    Flatten,
}

/// Where a group with no committed offset starts (`KAFKA_OFFSET_RESET_<D>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// The oldest message the topic keeps.
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// BigQuery API used by the `bigquery` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BigQueryApi {
    StorageWrite,
    InsertAll,
}

/// Where the `bigquery` sink writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BigQueryTarget {
    pub project: String,
    pub dataset: String,
    pub credentials: PathBuf,
    pub api: BigQueryApi,
    /// REST base (`BIGQUERY_ENDPOINT`); requests go to `<base>/bigquery/v2/...`.
    pub endpoint: String,
    /// gRPC endpoint of the Storage Write API (`BIGQUERY_STORAGE_ENDPOINT`).
    pub storage_endpoint: String,
    /// `BQ_CREATE_TABLE_<D>=true`: a missing table is created from the row layout.
    pub create_table: bool,
    /// Rows per insertAll request (`BIGQUERY_INSERT_ALL_ROWS`, default 500, at most
    /// 50,000: BigQuery's own limit).
    pub insert_all_rows: usize,
    /// Bytes per request on either API (`BIGQUERY_REQUEST_BYTES`, default 9 MB; BigQuery
    /// refuses requests of 10 MB and more).
    pub request_bytes: usize,
}

/// Default REST base of the `bigquery` sink.
pub const BIGQUERY_ENDPOINT: &str = "https://bigquery.googleapis.com";
/// Default gRPC endpoint of the Storage Write API.
pub const BIGQUERY_STORAGE_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";
/// BigQuery's limit on one request's size, both APIs.
pub const BIGQUERY_MAX_REQUEST_BYTES: usize = 10_000_000;

/// Everything an instance needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Context {
    pub domain: String,
    pub bq_table: String,
    pub import_path: String,
    pub import_object: String,
    pub ignore_events: BTreeSet<String>,
    pub consume_env: String,
    pub group_id: String,
    pub offset_reset: OffsetReset,
    pub write_env: String,
    pub kafka_bootstrap: Vec<String>,
    /// Security settings of the Kafka environment (`KAFKA_SECURITY_PROTOCOL_<ENV>`, ...).
    pub kafka_properties: Vec<KafkaProperty>,
    pub topic_override: Option<String>,
    pub format_override: Option<Format>,
    pub row_mode: RowMode,
    pub dlq_topic: Option<String>,
    pub sink: SinkKind,
    pub jsonl_dir: PathBuf,
    pub bigquery: Option<BigQueryTarget>,
    pub admin_listen: SocketAddr,
    pub tuning: Tuning,
}

/// Process-wide knobs with defaults that suit most topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tuning {
    /// `BATCH_ROWS`: rows per sink write, at most.
    pub batch_rows: usize,
    /// `BATCH_LINGER_MS`: how long a batch waits to fill before it is written.
    #[serde(rename = "linger_ms", with = "platform::config::duration_ms")]
    pub linger: Duration,
    /// `BATCH_BYTES`: bytes per sink write, at most (about: the rows' encoded size).
    pub batch_bytes: usize,
    /// `BATCHES_IN_FLIGHT`: sink writes under way at once.
    pub batches_in_flight: usize,
    /// `MAX_IN_FLIGHT`: messages consumed and not yet finished before fetching pauses.
    pub max_in_flight: usize,
    /// `MAX_IN_FLIGHT_BYTES`: the same bound in bytes (keys and payloads as consumed).
    pub max_in_flight_bytes: usize,
    /// `SHUTDOWN_GRACE_SECS`: how long SIGTERM waits for unfinished rows.
    #[serde(
        rename = "shutdown_grace_secs",
        with = "platform::config::duration_secs"
    )]
    pub shutdown_grace: Duration,
    /// `KAFKA_SESSION_TIMEOUT_MS`: how long the group waits for a silent member (a killed
    /// pod) before its partitions go to the others.
    #[serde(rename = "session_timeout_ms", with = "platform::config::duration_ms")]
    pub session_timeout: Duration,
    /// `RETRY_MAX_MS`: the longest wait between two tries of a failed write (the wait
    /// starts at 200 ms and doubles up to this).
    #[serde(rename = "retry_max_ms", with = "platform::config::duration_ms")]
    pub retry_max: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            batch_rows: 1000,
            linger: Duration::from_millis(200),
            batch_bytes: 5 * 1024 * 1024,
            batches_in_flight: 4,
            max_in_flight: 20_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(25),
            session_timeout: Duration::from_secs(45),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// librdkafka security properties a Kafka environment may set: the variable's base name,
/// the property, and whether the value is a secret.
pub const KAFKA_SECURITY: [(&str, &str, bool); 8] = [
    ("KAFKA_SECURITY_PROTOCOL", "security.protocol", false),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism", false),
    ("KAFKA_SASL_USERNAME", "sasl.username", false),
    ("KAFKA_SASL_PASSWORD", "sasl.password", true),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location", false),
    (
        "KAFKA_SSL_CERTIFICATE_LOCATION",
        "ssl.certificate.location",
        false,
    ),
    ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location", false),
    ("KAFKA_SSL_KEY_PASSWORD", "ssl.key.password", true),
];

/// One librdkafka property from the environment; secrets never reach `Debug` or `--check`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    pub property: &'static str,
    pub variable: String,
    pub value: String,
    pub secret: bool,
}

impl KafkaProperty {
    fn shown(&self) -> &str {
        if self.secret {
            "<redacted>"
        } else {
            &self.value
        }
    }
}

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.property, self.shown())
    }
}

impl Serialize for KafkaProperty {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("KafkaProperty", 3)?;
        s.serialize_field("property", self.property)?;
        s.serialize_field("variable", &self.variable)?;
        s.serialize_field("value", self.shown())?;
        s.end()
    }
}

/// Why `value` cannot be `property`, if it cannot.
fn check_kafka_property(name: &str, property: &str, value: &str) -> Option<String> {
    let allowed: &[&str] = match property {
        "security.protocol" => &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
        "sasl.mechanism" => &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        _ => &[],
    };
    if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
        return Some(format!(
            "{name}: {value:?} is not one of {}",
            allowed.join(", ")
        ));
    }
    if property.ends_with(".location") && value != "probe" && !Path::new(value).is_file() {
        return Some(format!("{name}: {value} is not a readable file"));
    }
    None
}

impl Context {
    /// The name of this domain's variable `base`, e.g. `IMPORT_PATH_DELIVERY`.
    pub fn var(&self, base: &str) -> String {
        format!("{base}_{}", self.domain)
    }
}

/// `IGNORE_EVENTS_<D>`: a JSON list of event names, or that list encoded once more as a
/// JSON string (the form the original ConfigMaps carry: `'"[\"A\"]"'`).
pub fn parse_ignore_events(name: &str, raw: &str) -> Result<BTreeSet<String>, String> {
    let expected = || {
        format!(
            "{name}: expected a JSON list of event names such as [\"ShippingPricesEstimatedEvent\"], got {raw:?}"
        )
    };
    let mut value: serde_json::Value = serde_json::from_str(raw.trim()).map_err(|_| expected())?;
    if let serde_json::Value::String(inner) = &value {
        value = serde_json::from_str(inner.trim()).map_err(|_| expected())?;
    }
    let serde_json::Value::Array(items) = value else {
        return Err(expected());
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(event) if !event.trim().is_empty() => {
                Ok(event.trim().to_owned())
            }
            _ => Err(expected()),
        })
        .collect()
}

/// Resolves the context of `domain`; every missing or malformed variable is a problem.
pub fn resolve(domain: &str, vars: &Vars) -> Result<Context, Problems> {
    let mut problems = Vec::new();
    let domain = domain.trim().to_ascii_uppercase();
    if domain.is_empty()
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Problems(vec![format!(
            "domain {domain:?}: use letters, digits and '_' (e.g. DELIVERY)"
        )]));
    }
    let where_from = match &vars.env_file {
        Some(path) => format!("the environment or {}", path.display()),
        None => "the environment (no .env file was read)".to_owned(),
    };
    let mut required = |name: String| -> String {
        match vars.get(&name) {
            Some(value) => value.trim().to_owned(),
            None => {
                problems.push(format!("{name} is not set (in {where_from})"));
                String::new()
            }
        }
    };
    let bq_table = required(format!("BQ_TABLE_{domain}"));
    let import_path = required(format!("IMPORT_PATH_{domain}"));
    let import_object = required(format!("IMPORT_OBJECT_{domain}"));
    let consume_env = required(format!("CONSUME_ENV_{domain}"));
    let group_id = required(format!("GROUP_ID_{domain}"));
    let write_env = required("WRITE_ENV".to_owned());

    let mut kafka_bootstrap = Vec::new();
    if !consume_env.is_empty() {
        let name = format!("KAFKA_BOOTSTRAP_{}", consume_env.to_ascii_uppercase());
        match vars.get(&name) {
            None => problems.push(format!(
                "{name} is not set (CONSUME_ENV_{domain}={consume_env} needs it), in {where_from}"
            )),
            Some(list) => {
                for broker in list.split(',').map(str::trim) {
                    match broker.rsplit_once(':') {
                        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                            kafka_bootstrap.push(broker.to_owned());
                        }
                        _ => problems.push(format!("{name}: {broker:?} is not host:port")),
                    }
                }
            }
        }
    }

    let mut kafka_properties = Vec::new();
    if !consume_env.is_empty() {
        let env = consume_env.to_ascii_uppercase();
        for (base, property, secret) in KAFKA_SECURITY {
            let variable = format!("{base}_{env}");
            let Some(value) = vars.get(&variable).map(str::trim) else {
                continue;
            };
            match check_kafka_property(&variable, property, value) {
                Some(problem) => problems.push(problem),
                None => kafka_properties.push(KafkaProperty {
                    property,
                    variable,
                    value: value.to_owned(),
                    secret,
                }),
            }
        }
    }

    let ignore_name = format!("IGNORE_EVENTS_{domain}");
    let ignore_events = match vars.get(&ignore_name) {
        None => BTreeSet::new(),
        Some(raw) => parse_ignore_events(&ignore_name, raw).unwrap_or_else(|problem| {
            problems.push(problem);
            BTreeSet::new()
        }),
    };

    let reset_name = format!("KAFKA_OFFSET_RESET_{domain}");
    let offset_reset = match vars.get(&reset_name).map(|v| v.trim().to_ascii_lowercase()) {
        None => OffsetReset::Earliest,
        Some(v) if v == "earliest" => OffsetReset::Earliest,
        Some(v) if v == "latest" => OffsetReset::Latest,
        Some(v) => {
            problems.push(format!("{reset_name}: {v:?} is not earliest or latest"));
            OffsetReset::Earliest
        }
    };

    let format_name = format!("FORMAT_{domain}");
    let format_override = vars.get(&format_name).and_then(|raw| {
        let parsed = Format::parse(raw);
        if parsed.is_none() {
            problems.push(format!("{format_name}: {raw:?} is not protobuf or json"));
        }
        parsed
    });
    let row_name = format!("ROW_MODE_{domain}");
    let row_mode = match vars.get(&row_name).map(|v| v.trim().to_ascii_lowercase()) {
        None => RowMode::Payload,
        Some(v) if v == "payload" => RowMode::Payload,
        Some(v) if v == "flatten" => RowMode::Flatten,
        Some(v) => {
            problems.push(format!("{row_name}: {v:?} is not payload or flatten"));
            RowMode::Payload
        }
    };
    let sink = match vars.get("SINK").map(|v| v.trim().to_ascii_lowercase()) {
        None => SinkKind::Bigquery,
        Some(v) if v == "bigquery" => SinkKind::Bigquery,
        Some(v) if v == "jsonl" => SinkKind::Jsonl,
        Some(v) => {
            problems.push(format!("SINK: {v:?} is not bigquery or jsonl"));
            SinkKind::Bigquery
        }
    };
    let admin_listen = match vars.get("ADMIN_LISTEN") {
        None => SocketAddr::from(([0, 0, 0, 0], 9090)),
        Some(raw) => raw.trim().parse().unwrap_or_else(|_| {
            problems.push(format!(
                "ADMIN_LISTEN: {raw:?} is not an address such as 0.0.0.0:9090"
            ));
            SocketAddr::from(([0, 0, 0, 0], 9090))
        }),
    };

    let mut tuning = Tuning::default();
    let mut number = |name: &str, min: u64, max: u64| -> Option<u64> {
        let raw = vars.get(name)?;
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                problems.push(format!(
                    "{name}: {raw:?} is not a whole number from {min} to {max}"
                ));
                None
            }
        }
    };
    if let Some(n) = number("BATCH_ROWS", 1, 100_000) {
        tuning.batch_rows = n as usize;
    }
    if let Some(n) = number("BATCH_LINGER_MS", 0, 60_000) {
        tuning.linger = Duration::from_millis(n);
    }
    if let Some(n) = number("MAX_IN_FLIGHT", 1, 10_000_000) {
        tuning.max_in_flight = n as usize;
    }
    if let Some(n) = number("MAX_IN_FLIGHT_BYTES", 1024 * 1024, 16 * 1024 * 1024 * 1024) {
        tuning.max_in_flight_bytes = n as usize;
    }
    if let Some(n) = number("BATCH_BYTES", 64 * 1024, 1024 * 1024 * 1024) {
        tuning.batch_bytes = n as usize;
    }
    if let Some(n) = number("BATCHES_IN_FLIGHT", 1, 64) {
        tuning.batches_in_flight = n as usize;
    }
    if let Some(n) = number("SHUTDOWN_GRACE_SECS", 0, 3600) {
        tuning.shutdown_grace = Duration::from_secs(n);
    }
    if let Some(n) = number("KAFKA_SESSION_TIMEOUT_MS", 1000, 3_600_000) {
        tuning.session_timeout = Duration::from_millis(n);
    }
    if let Some(n) = number("RETRY_MAX_MS", 200, 3_600_000) {
        tuning.retry_max = Duration::from_millis(n);
    }

    let bigquery = (sink == SinkKind::Bigquery && !write_env.is_empty()).then(|| {
        let env = write_env.to_ascii_uppercase();
        let mut need = |name: String, why: &str| match vars.get(&name) {
            Some(v) => v.trim().to_owned(),
            None => {
                problems.push(format!("{name} is not set ({why}), in {where_from}"));
                String::new()
            }
        };
        let project = need(
            format!("BQ_PROJECT_{env}"),
            &format!("WRITE_ENV={write_env} needs it"),
        );
        let dataset = need(
            format!("BQ_DATASET_{env}"),
            &format!("WRITE_ENV={write_env} needs it"),
        );
        let credentials = PathBuf::from(need(
            "GOOGLE_APPLICATION_CREDENTIALS".into(),
            "the bigquery sink authenticates with it",
        ));
        if !credentials.as_os_str().is_empty() && !credentials.is_file() {
            problems.push(format!(
                "GOOGLE_APPLICATION_CREDENTIALS: {} is not a readable file",
                credentials.display()
            ));
        }
        let api = match vars
            .get("BIGQUERY_API")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => BigQueryApi::StorageWrite,
            Some(v) if v == "storage_write" => BigQueryApi::StorageWrite,
            Some(v) if v == "insert_all" => BigQueryApi::InsertAll,
            Some(v) => {
                problems.push(format!(
                    "BIGQUERY_API: {v:?} is not storage_write or insert_all"
                ));
                BigQueryApi::StorageWrite
            }
        };
        let mut url = |name: &str, default: &str| {
            let raw = vars.get(name).map_or(default, str::trim);
            match url::Url::parse(raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    raw.trim_end_matches('/').to_owned()
                }
                _ => {
                    problems.push(format!(
                        "{name}: {raw:?} is not an http:// or https:// URL such as {default}"
                    ));
                    default.to_owned()
                }
            }
        };
        let endpoint = url("BIGQUERY_ENDPOINT", BIGQUERY_ENDPOINT);
        let storage_endpoint = url("BIGQUERY_STORAGE_ENDPOINT", BIGQUERY_STORAGE_ENDPOINT);
        let create_name = format!("BQ_CREATE_TABLE_{domain}");
        let create_table = match vars
            .get(&create_name)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => {
                problems.push(format!("{create_name}: {v:?} is not true or false"));
                false
            }
        };
        let mut limit = |name: &str, default: usize, min: usize, max: usize| match vars.get(name) {
            None => default,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if (min..=max).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{name}: {raw:?} is not a whole number from {min} to {max}"
                    ));
                    default
                }
            },
        };
        let insert_all_rows = limit("BIGQUERY_INSERT_ALL_ROWS", 500, 1, 50_000);
        let request_bytes = limit(
            "BIGQUERY_REQUEST_BYTES",
            9_000_000,
            100_000,
            BIGQUERY_MAX_REQUEST_BYTES - 100_000,
        );
        BigQueryTarget {
            project,
            dataset,
            credentials,
            api,
            endpoint,
            storage_endpoint,
            create_table,
            insert_all_rows,
            request_bytes,
        }
    });

    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    Ok(Context {
        topic_override: vars
            .get(&format!("TOPIC_{domain}"))
            .map(|v| v.trim().to_owned()),
        dlq_topic: vars
            .get(&format!("DLQ_TOPIC_{domain}"))
            .map(|v| v.trim().to_owned()),
        jsonl_dir: PathBuf::from(vars.get("JSONL_DIR").unwrap_or("./out")),
        domain,
        bq_table,
        import_path,
        import_object,
        ignore_events,
        consume_env,
        group_id,
        offset_reset,
        write_env,
        kafka_bootstrap,
        kafka_properties,
        format_override,
        row_mode,
        sink,
        bigquery,
        admin_listen,
        tuning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's ConfigMap, as a .env file, plus the per-environment maps.
    const SEED_ENV: &str = r#"BQ_TABLE_DELIVERY='delivery_events_temp'
IMPORT_PATH_DELIVERY='contracts.delivery.delivery_events_v10'
IMPORT_OBJECT_DELIVERY='DeliveryEventsV10Topic'
IGNORE_EVENTS_DELIVERY='"[\"ShippingPricesEstimatedEvent\"]"'
CONSUME_ENV_DELIVERY='prod'
GROUP_ID_DELIVERY='test-new-uat-ip'
WRITE_ENV='prod'
KAFKA_BOOTSTRAP_PROD=prod1:9092,prod2:9092,prod3:9092
SINK=jsonl
"#;

    fn seed_vars(process: &[(&str, &str)]) -> Vars {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        std::fs::write(&path, SEED_ENV).expect("write");
        let vars = Vars::load(
            Some(&path),
            process
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .expect("loads");
        drop(dir);
        vars
    }

    #[test]
    fn the_seeds_configmap_resolves_with_its_double_encoded_ignore_list() {
        let context = resolve("delivery", &seed_vars(&[])).expect("resolves");
        assert_eq!(context.domain, "DELIVERY");
        assert_eq!(context.bq_table, "delivery_events_temp");
        assert_eq!(
            context.import_path,
            "contracts.delivery.delivery_events_v10"
        );
        assert_eq!(context.import_object, "DeliveryEventsV10Topic");
        assert_eq!(
            context.ignore_events,
            BTreeSet::from(["ShippingPricesEstimatedEvent".to_owned()])
        );
        assert_eq!(
            context.kafka_bootstrap,
            ["prod1:9092", "prod2:9092", "prod3:9092"]
        );
        assert_eq!(context.sink, SinkKind::Jsonl);
        assert_eq!(context.bigquery, None);
        assert_eq!(context.offset_reset, OffsetReset::Earliest);
        assert_eq!(context.var("GROUP_ID"), "GROUP_ID_DELIVERY");
    }

    #[test]
    fn the_process_environment_wins_over_the_file() {
        let vars = seed_vars(&[
            ("GROUP_ID_DELIVERY", "from-env"),
            ("IGNORE_EVENTS_DELIVERY", "[]"),
        ]);
        let context = resolve("DELIVERY", &vars).expect("resolves");
        assert_eq!(context.group_id, "from-env");
        let latest = seed_vars(&[("KAFKA_OFFSET_RESET_DELIVERY", "Latest")]);
        let latest = resolve("DELIVERY", &latest).expect("resolves");
        assert_eq!(latest.offset_reset, OffsetReset::Latest);
        assert!(context.ignore_events.is_empty());
    }

    #[test]
    fn every_missing_variable_is_named_exactly_and_all_at_once() {
        let vars = Vars::from_pairs([("BQ_TABLE_DELIVERY", "t"), ("CONSUME_ENV_DELIVERY", "uat")]);
        let problems = resolve("DELIVERY", &vars).expect_err("incomplete").0;
        let named: Vec<&str> = problems
            .iter()
            .map(|p| p.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            named,
            [
                "IMPORT_PATH_DELIVERY",
                "IMPORT_OBJECT_DELIVERY",
                "GROUP_ID_DELIVERY",
                "WRITE_ENV",
                "KAFKA_BOOTSTRAP_UAT"
            ],
            "{problems:#?}"
        );
        assert!(
            problems[4].contains("CONSUME_ENV_DELIVERY=uat needs it"),
            "{}",
            problems[4]
        );
    }

    #[test]
    fn malformed_values_name_their_variable() {
        for (raw, ok) in [
            (r#"["A","B"]"#, true),
            (r#""[\"A\"]""#, true),
            ("[]", true),
            ("A,B", false),
            (r#"{"A":1}"#, false),
            (r#"[1]"#, false),
            (r#""not a list""#, false),
        ] {
            let parsed = parse_ignore_events("IGNORE_EVENTS_DELIVERY", raw);
            assert_eq!(parsed.is_ok(), ok, "{raw}: {parsed:?}");
            if let Err(problem) = parsed {
                assert!(
                    problem.starts_with("IGNORE_EVENTS_DELIVERY: expected a JSON list"),
                    "{problem}"
                );
            }
        }
        let vars = seed_vars(&[
            ("KAFKA_BOOTSTRAP_PROD", "prod1:9092,prod2"),
            ("ROW_MODE_DELIVERY", "wide"),
            ("FORMAT_DELIVERY", "avro"),
            ("SINK", "s3"),
            ("KAFKA_OFFSET_RESET_DELIVERY", "smallest"),
            ("MAX_IN_FLIGHT_BYTES", "12"),
        ]);
        let problems = resolve("DELIVERY", &vars).expect_err("malformed").0;
        for expected in [
            "KAFKA_BOOTSTRAP_PROD: \"prod2\" is not host:port",
            "ROW_MODE_DELIVERY: \"wide\"",
            "FORMAT_DELIVERY: \"avro\"",
            "SINK: \"s3\"",
            "KAFKA_OFFSET_RESET_DELIVERY: \"smallest\" is not earliest or latest",
            "MAX_IN_FLIGHT_BYTES: \"12\" is not a whole number from 1048576",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected}: {problems:#?}"
            );
        }
    }

    #[test]
    fn kafka_security_comes_from_the_consume_environment_and_hides_secrets() {
        let vars = seed_vars(&[
            ("KAFKA_SECURITY_PROTOCOL_PROD", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM_PROD", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME_PROD", "delivery-consumer"),
            ("KAFKA_SASL_PASSWORD_PROD", "hunter2"),
            ("KAFKA_SASL_PASSWORD_UAT", "not this environment"),
        ]);
        let context = resolve("DELIVERY", &vars).expect("resolves");
        let set: Vec<_> = context
            .kafka_properties
            .iter()
            .map(|p| (p.property, p.value.as_str()))
            .collect();
        assert_eq!(
            set,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "delivery-consumer"),
                ("sasl.password", "hunter2"),
            ]
        );
        let shown = serde_json::to_string(&context).expect("json");
        let debug = format!("{context:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }

        let vars = seed_vars(&[
            ("KAFKA_SECURITY_PROTOCOL_PROD", "tls"),
            ("KAFKA_SSL_CA_LOCATION_PROD", "/nonexistent/ca.pem"),
        ]);
        let problems = resolve("DELIVERY", &vars).expect_err("malformed").0;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("KAFKA_SECURITY_PROTOCOL_PROD: \"tls\" is not one of")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p
                    == "KAFKA_SSL_CA_LOCATION_PROD: /nonexistent/ca.pem is not a readable file"),
            "{problems:#?}"
        );
    }

    #[test]
    fn the_bigquery_sink_needs_its_environment_map_and_credentials() {
        let vars = seed_vars(&[("SINK", "bigquery")]);
        let problems = resolve("DELIVERY", &vars)
            .expect_err("bigquery needs more")
            .0;
        let named: Vec<&str> = problems
            .iter()
            .map(|p| p.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            named,
            [
                "BQ_PROJECT_PROD",
                "BQ_DATASET_PROD",
                "GOOGLE_APPLICATION_CREDENTIALS"
            ]
        );

        let credentials = tempfile::NamedTempFile::new().expect("file");
        let path = credentials.path().to_str().expect("utf8").to_owned();
        let vars = seed_vars(&[
            ("SINK", "bigquery"),
            ("BQ_PROJECT_PROD", "acme-data"),
            ("BQ_DATASET_PROD", "events"),
            ("GOOGLE_APPLICATION_CREDENTIALS", &path),
        ]);
        let target = resolve("DELIVERY", &vars)
            .expect("resolves")
            .bigquery
            .expect("target");
        assert_eq!(
            (target.project.as_str(), target.dataset.as_str()),
            ("acme-data", "events")
        );
        assert_eq!(target.api, BigQueryApi::StorageWrite);
    }

    #[test]
    fn a_named_env_file_must_exist() {
        let problems = Vars::load(Some(Path::new("/nonexistent/.env")), [])
            .expect_err("missing")
            .0;
        assert_eq!(problems, ["env file /nonexistent/.env: no such file"]);
    }
}
