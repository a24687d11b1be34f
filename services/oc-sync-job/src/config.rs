//! The job's configuration: the original Go job's JSON file, field for field
//! (`logLevel`, `compass{...}`, `openConnectors{...}`), plus the keys it gained
//! (`compass.integrationSystemID`, `concurrency`, `maxDeletes`, `syncDisabledInstances`).
//! Every value can be overridden from the environment: `OC_SYNC__COMPASS__CLIENTSECRET`.

use std::time::Duration;

use platform::config::Validate;
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Prefix of the environment overrides: `OC_SYNC__OPENCONNECTORS__USERSECRET`, ...
pub const ENV_PREFIX: &str = "OC_SYNC";

/// Where the job reads its file when `--config` is not given (the Go job's default).
pub const DEFAULT_CONFIG_PATH: &str = "/config/config.json";

/// Compass application names are DNS-1123 labels of at most this many characters.
pub const MAX_APPLICATION_NAME: usize = 36;

/// Open Connectors instance ids are 32-bit integers: at most this many digits.
const MAX_INSTANCE_ID_DIGITS: usize = 10;

/// The most calls the job makes at once, and the most milliseconds a call may take.
const MAX_CONCURRENCY: usize = 64;
const MAX_TIMEOUT_MILLS: u64 = 300_000;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The log level of the Go job's file (`Trace`, `Debug`, `Info`, `Warn`, `Error`, any
    /// case); `RUST_LOG` wins over it.
    #[serde(default)]
    pub log_level: Option<String>,
    pub compass: CompassConfig,
    pub open_connectors: OpenConnectorsConfig,
    /// Calls under way at once (default 8).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A run that would delete more applications than this deletes none and exits 1
    /// (default 10; `--max-deletes` overrides it).
    #[serde(default = "default_max_deletes")]
    pub max_deletes: usize,
    /// `true`: disabled or invalid instances are treated as absent (their applications
    /// are deleted); `false` (default): they are not created, and existing applications
    /// of them are kept.
    #[serde(default)]
    pub sync_disabled_instances: bool,
}

/// The Compass runtime, through its Director.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompassConfig {
    /// The OAuth2-secured Director GraphQL URL.
    #[serde(rename = "directorURL")]
    pub director_url: String,
    /// The tenant (a UUID), sent as the `tenant` header.
    #[serde(rename = "tenantId")]
    pub tenant_id: String,
    /// The OAuth2 client-credentials token URL.
    #[serde(rename = "tokenUrl")]
    pub token_url: String,
    /// The integration system's client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The integration system's client secret.
    #[serde(rename = "clientSecret", serialize_with = "platform::secret::redact")]
    #[schemars(with = "String")]
    pub client_secret: SecretString,
    /// Applications are named `<applicationPrefix>-<instanceID>`.
    #[serde(rename = "applicationPrefix")]
    pub application_prefix: String,
    /// Timeout of each Compass call (token and Director), milliseconds.
    #[serde(rename = "timeoutMills", default = "default_timeout_mills")]
    pub timeout_mills: u64,
    /// Set on the applications the job creates, when given: the integration system that
    /// manages them.
    #[serde(rename = "integrationSystemID", default)]
    pub integration_system_id: Option<String>,
}

/// The Open Connectors tenant.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenConnectorsConfig {
    /// The tenant's host (`api.openconnectors.ext.hanatrial.ondemand.com`); a scheme may
    /// be given (`http://127.0.0.1:8080` for a local fake), `https://` otherwise.
    pub hostname: String,
    #[serde(
        rename = "organizationSecret",
        serialize_with = "platform::secret::redact"
    )]
    #[schemars(with = "String")]
    pub organization_secret: SecretString,
    #[serde(rename = "userSecret", serialize_with = "platform::secret::redact")]
    #[schemars(with = "String")]
    pub user_secret: SecretString,
    /// Timeout of each Open Connectors call, milliseconds.
    #[serde(rename = "timeoutMills", default = "default_timeout_mills")]
    pub timeout_mills: u64,
    /// Only instances carrying every one of these tags; empty: all instances.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_concurrency() -> usize {
    8
}

fn default_max_deletes() -> usize {
    10
}

fn default_timeout_mills() -> u64 {
    6000
}

impl CompassConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_mills)
    }
}

impl OpenConnectorsConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_mills)
    }

    /// The base URL of the tenant: the hostname with `https://` unless it names a scheme.
    pub fn base_url(&self) -> Result<url::Url, String> {
        let text = self.hostname.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("https://{text}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| format!("{text:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?}: use http:// or https://, or no scheme"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{text:?}: no host"));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!("{text:?}: a host (and port), without a path"));
        }
        Ok(url)
    }

    /// The context applications are labelled with: the host (and port, when given),
    /// without the scheme.
    pub fn context(&self) -> Option<String> {
        let url = self.base_url().ok()?;
        let host = url.host_str()?;
        Some(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        })
    }
}

impl Config {
    /// The `RUST_LOG`-style filter `logLevel` stands for (`None`: the default).
    pub fn log_filter(&self) -> Option<&'static str> {
        let level = self.log_level.as_deref()?.trim().to_ascii_lowercase();
        Some(match level.as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "info" | "information" => "info",
            "warn" | "warning" => "warn",
            "error" | "fatal" | "panic" => "error",
            _ => return None,
        })
    }
}

/// `url` parses as an absolute http(s) URL.
fn http_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(parsed) => Err(format!(
            "{url:?}: scheme {:?}: use http:// or https://",
            parsed.scheme()
        )),
        Err(e) => Err(format!("{url:?}: {e}")),
    }
}

/// A UUID in its 8-4-4-4-12 hexadecimal form.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why `<prefix>-<instance id>` would not be a Compass application name, if it would not.
fn prefix_problem(prefix: &str) -> Option<String> {
    let longest = prefix.len() + 1 + MAX_INSTANCE_ID_DIGITS;
    if prefix.is_empty() {
        return Some("must not be empty".into());
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some(format!(
            "{prefix:?}: only lower-case letters, digits and '-' (Compass names are DNS-1123 labels)"
        ));
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some(format!("{prefix:?}: must start with a lower-case letter"));
    }
    if longest > MAX_APPLICATION_NAME {
        return Some(format!(
            "{prefix:?}: too long: {prefix}-<instance id> takes up to {longest} characters, \
             Compass allows {MAX_APPLICATION_NAME} (at most {} for the prefix)",
            MAX_APPLICATION_NAME - 1 - MAX_INSTANCE_ID_DIGITS
        ));
    }
    None
}

impl Validate for Config {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let compass = &self.compass;
        let oc = &self.open_connectors;
        for (key, url) in [
            ("compass.directorURL", &compass.director_url),
            ("compass.tokenUrl", &compass.token_url),
        ] {
            if let Err(why) = http_url(url) {
                problems.push(format!("{key}: {why}"));
            }
        }
        if !is_uuid(compass.tenant_id.trim()) {
            problems.push(format!(
                "compass.tenantId: {:?} is not a UUID",
                compass.tenant_id
            ));
        }
        if compass.client_id.trim().is_empty() {
            problems.push("compass.clientID: must not be empty".into());
        }
        for (key, secret) in [
            ("compass.clientSecret", &compass.client_secret),
            ("openConnectors.organizationSecret", &oc.organization_secret),
            ("openConnectors.userSecret", &oc.user_secret),
        ] {
            if secret.expose_secret().trim().is_empty() {
                problems.push(format!("{key}: must not be empty"));
            }
        }
        if let Some(why) = prefix_problem(&compass.application_prefix) {
            problems.push(format!("compass.applicationPrefix: {why}"));
        }
        if let Some(id) = &compass.integration_system_id
            && !is_uuid(id.trim())
        {
            problems.push(format!("compass.integrationSystemID: {id:?} is not a UUID"));
        }
        if let Err(why) = oc.base_url() {
            problems.push(format!("openConnectors.hostname: {why}"));
        }
        for (key, mills) in [
            ("compass.timeoutMills", compass.timeout_mills),
            ("openConnectors.timeoutMills", oc.timeout_mills),
        ] {
            if !(1..=MAX_TIMEOUT_MILLS).contains(&mills) {
                problems.push(format!(
                    "{key}: {mills} is out of range 1..={MAX_TIMEOUT_MILLS}"
                ));
            }
        }
        if let Some(tag) = oc.tags.iter().find(|t| t.trim().is_empty()) {
            problems.push(format!("openConnectors.tags: an empty tag ({tag:?})"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            problems.push(format!(
                "concurrency: {} is out of range 1..={MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        if self.log_level.is_some() && self.log_filter().is_none() {
            problems.push(format!(
                "logLevel: {:?}: use Trace, Debug, Info, Warn or Error",
                self.log_level.as_deref().unwrap_or_default()
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example file, as the Go job's README gives it.
    pub const SEED_EXAMPLE: &str = r#"{
  "logLevel": "Trace",
  "compass":{
    "directorURL":"https://compass-gateway-auth-oauth.mycompass.org/director/graphql",
    "tenantId":"3e64ebae-38b5-46a0-b1ed-9ccee153a0ae",
    "tokenUrl":"https://oauth2.mycompass.org/oauth2/token",
    "clientID":"clientid",
    "clientSecret":"clientsecret",
    "applicationPrefix":"app-prefix",
    "timeoutMills":6000
  },
  "openConnectors":{
    "hostname":"api.openconnectors.ext.hanatrial.ondemand.com",
    "organizationSecret":"orgsecret",
    "userSecret":"usersecret",
    "timeoutMills":6000
  }
}"#;

    fn seed() -> Config {
        serde_json::from_str(SEED_EXAMPLE).expect("the seed's example parses")
    }

    #[test]
    fn the_seeds_example_is_valid_with_the_new_keys_defaulted() {
        let config = seed();
        assert_eq!(config.problems(), Vec::<String>::new());
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.max_deletes, 10);
        assert!(!config.sync_disabled_instances);
        assert_eq!(config.log_filter(), Some("trace"));
        assert_eq!(
            config.open_connectors.context().as_deref(),
            Some("api.openconnectors.ext.hanatrial.ondemand.com")
        );
        assert_eq!(
            config.open_connectors.base_url().expect("url").as_str(),
            "https://api.openconnectors.ext.hanatrial.ondemand.com/"
        );
    }

    #[test]
    fn a_hostname_may_carry_a_scheme_and_port() {
        let mut config = seed();
        config.open_connectors.hostname = "http://127.0.0.1:8080".into();
        assert_eq!(config.problems(), Vec::<String>::new());
        assert_eq!(
            config.open_connectors.context().as_deref(),
            Some("127.0.0.1:8080")
        );
        for bad in ["ftp://host", "https://host/elements", "", "http://"] {
            config.open_connectors.hostname = bad.into();
            let problems = config.problems();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("openConnectors.hostname:")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_named_by_its_key_on_a_line_of_its_own() {
        let mut config = seed();
        config.compass.director_url = "not a url".into();
        config.compass.token_url = "ftp://tokens".into();
        config.compass.tenant_id = "tenant-1".into();
        config.compass.client_id = " ".into();
        config.compass.client_secret = SecretString::from("");
        config.open_connectors.user_secret = SecretString::from("  ");
        config.compass.application_prefix = "App_Prefix".into();
        config.compass.timeout_mills = 0;
        config.concurrency = 0;
        config.log_level = Some("loud".into());
        let problems = config.problems();
        for key in [
            "compass.directorURL:",
            "compass.tokenUrl:",
            "compass.tenantId:",
            "compass.clientID:",
            "compass.clientSecret:",
            "openConnectors.userSecret:",
            "compass.applicationPrefix:",
            "compass.timeoutMills:",
            "concurrency:",
            "logLevel:",
        ] {
            assert_eq!(
                problems.iter().filter(|p| p.starts_with(key)).count(),
                1,
                "{key} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 10, "{problems:#?}");
    }

    #[test]
    fn the_prefix_must_leave_room_for_any_instance_id() {
        assert_eq!(prefix_problem("app-prefix"), None);
        // 25 + '-' + 10 digits = 36.
        assert_eq!(prefix_problem(&"a".repeat(25)), None);
        let long = prefix_problem(&"a".repeat(26)).expect("too long");
        assert!(long.contains("37 characters"), "{long}");
        assert!(prefix_problem("1app").is_some());
        assert!(prefix_problem("app.prefix").is_some());
        assert!(prefix_problem("").is_some());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = SEED_EXAMPLE.replace(
            "\"timeoutMills\":6000\n  },\n  \"openConnectors\"",
            "\"timeoutMills\":6000,\n    \"clientId\":\"x\"\n  },\n  \"openConnectors\"",
        );
        let err = serde_json::from_str::<Config>(&text).expect_err("clientId is not a key");
        assert!(err.to_string().contains("clientId"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let text = platform::config::render(&seed()).expect("render");
        for secret in ["clientsecret", "orgsecret", "usersecret"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains(platform::secret::REDACTED));
    }
}
