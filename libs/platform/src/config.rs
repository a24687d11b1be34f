//! Layered configuration: built-in defaults < config file < environment.
//!
//! Defaults live in the config structs themselves (`#[serde(default)]`), so the
//! `Serialize` side of a config type is free to redact secrets for `--print-config`.
//! The environment layer reads `<PREFIX>__section__key` (double underscore between
//! levels; names are case-insensitive, e.g. `PROVISIONER__DATABASE__URL`). Environment
//! variable names are upper case while keys may be camelCase (`clusterId`): the loader
//! maps each segment onto the field it names through the config type's JSON Schema, so
//! `PROVISIONER__PROVISIONCLIENTSCONFIG__CLUSTERID` sets `provisionClientsConfig.clusterId`
//! with no alias on the field. Map keys (`clients.<name>`) are taken lower case.

use std::{path::Path, sync::Arc};

use figment::{
    Figment,
    providers::{Env, Format, Json, Toml, Yaml},
};
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Checks that go beyond the shape serde already enforces.
pub trait Validate {
    /// Every problem found, one human-readable line each (naming the key); empty when valid.
    fn problems(&self) -> Vec<String>;

    /// Things that work but should be changed (a legacy key name, ...), one line each;
    /// printed on stderr at start.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Why the configuration could not be used. Each variant renders as lines fit for stderr.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file is missing, unreadable or of an unknown kind.
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    /// A value has the wrong shape (type, missing field, unknown variant, ...).
    #[error("invalid config: {}", .0.join("; "))]
    Shape(Vec<String>),
    /// Values that parse but cannot be used; `loaded` is the configuration as it was
    /// read (secrets redacted), for `--print-config`.
    #[error("invalid config:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        problems: Vec<String>,
        loaded: String,
    },
    /// The effective configuration could not be rendered.
    #[error("cannot render config: {0}")]
    Render(String),
}

impl ConfigError {
    /// Every problem, one line each.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Shape(problems) | Self::Invalid { problems, .. } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Loads `T` from the optional file and the environment, then validates it.
pub fn load<T>(env_prefix: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Validate + JsonSchema,
{
    let config: T = figment::<T>(env_prefix, file)?
        .extract()
        .map_err(|err| ConfigError::Shape(err.into_iter().map(describe).collect()))?;
    let problems = config.problems();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            loaded: render(&config)?,
            problems,
        })
    }
}

/// The figment behind [`load`]: the file and the environment layers, the environment's
/// keys mapped onto `T`'s field names.
pub fn figment<T: JsonSchema>(
    env_prefix: &str,
    file: Option<&Path>,
) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::File {
                path: shown,
                reason: "no such file".into(),
            });
        }
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        figment = match extension.as_deref() {
            Some("yaml" | "yml") => figment.merge(Yaml::file_exact(path)),
            Some("toml") => figment.merge(Toml::file_exact(path)),
            Some("json") => figment.merge(Json::file_exact(path)),
            _ => {
                return Err(ConfigError::File {
                    path: shown,
                    reason: "unknown format: use a .yaml, .yml, .toml or .json file".into(),
                });
            }
        };
    }
    let keys = Arc::new(Keys::of::<T>());
    let env = Env::prefixed(&format!("{env_prefix}__"))
        .split("__")
        .map(move |key| keys.normalize(key.as_str()).into())
        // The mapping decides the case of every segment.
        .lowercase(false);
    Ok(figment.merge(env))
}

/// The key names of a config type, from its JSON Schema.
struct Keys {
    schema: Value,
}

impl Keys {
    fn of<T: JsonSchema>() -> Self {
        Self {
            schema: schemars::schema_for!(T).to_value(),
        }
    }

    /// `provisionclientsconfig.clusterid` (any case) -> `provisionClientsConfig.clusterId`.
    /// Segments the schema does not know are lower-cased (and then rejected by the type
    /// if it denies unknown fields).
    fn normalize(&self, key: &str) -> String {
        let mut node = Some(&self.schema);
        let mut out = Vec::new();
        for segment in key.split('.') {
            match node.and_then(|n| self.step(n, segment)) {
                Some((name, child)) => {
                    out.push(name);
                    node = Some(child);
                }
                None => {
                    out.push(segment.to_ascii_lowercase());
                    node = None;
                }
            }
        }
        out.join(".")
    }

    /// The field (or map entry) `segment` names in `schema`, and its schema.
    fn step<'a>(&'a self, schema: &'a Value, segment: &str) -> Option<(String, &'a Value)> {
        let alternatives = self.alternatives(schema);
        for alternative in &alternatives {
            if let Some(Value::Object(properties)) = alternative.get("properties")
                && let Some((name, child)) = properties
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(segment))
            {
                return Some((name.clone(), child));
            }
        }
        alternatives.into_iter().find_map(|alternative| {
            match alternative.get("additionalProperties") {
                Some(value @ Value::Object(_)) => Some((segment.to_ascii_lowercase(), value)),
                _ => None,
            }
        })
    }

    /// `schema` with `$ref`s resolved, and the branches of `anyOf`/`oneOf`/`allOf`
    /// (an `Option<Struct>` is `anyOf: [Struct, null]`).
    fn alternatives<'a>(&'a self, schema: &'a Value) -> Vec<&'a Value> {
        let mut out = Vec::new();
        let mut todo = vec![schema];
        while let Some(schema) = todo.pop() {
            if out.len() > 64 {
                break;
            }
            let schema = self.resolve(schema);
            out.push(schema);
            for combinator in ["anyOf", "oneOf", "allOf"] {
                if let Some(Value::Array(branches)) = schema.get(combinator) {
                    todo.extend(branches);
                }
            }
        }
        out
    }

    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(name) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                break;
            };
            match self.schema.get("$defs").and_then(|defs| defs.get(name)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    /// Every leaf key, as (environment variable, key path); a map contributes one
    /// `example` entry.
    fn leaves(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.walk(&self.schema, &mut Vec::new(), prefix, &mut out);
        out
    }

    fn walk(
        &self,
        schema: &Value,
        path: &mut Vec<String>,
        prefix: &str,
        out: &mut Vec<(String, String)>,
    ) {
        if path.len() > 8 {
            return;
        }
        let mut inner = false;
        for alternative in self.alternatives(schema) {
            if let Some(Value::Object(properties)) = alternative.get("properties") {
                for (name, child) in properties {
                    inner = true;
                    path.push(name.clone());
                    self.walk(child, path, prefix, out);
                    path.pop();
                }
            }
            if let Some(child @ Value::Object(_)) = alternative.get("additionalProperties") {
                inner = true;
                path.push("example".into());
                self.walk(child, path, prefix, out);
                path.pop();
            }
        }
        if !inner && !path.is_empty() {
            let var = std::iter::once(prefix.to_owned())
                .chain(path.iter().map(|s| s.to_ascii_uppercase()))
                .collect::<Vec<_>>()
                .join("__");
            out.push((var, path.join(".")));
        }
    }
}

/// Checks that every key of `T` can be set from the environment: sets each variable
/// with `set_env` (a `figment::Jail`'s, in a test) and looks for its value at the key
/// path in the loaded figment. Returns what did not arrive, one line each; every service
/// runs it over its own config type.
pub fn check_env_overrides<T: JsonSchema>(
    env_prefix: &str,
    mut set_env: impl FnMut(&str, &str),
) -> Vec<String> {
    let keys = Keys::of::<T>().leaves(env_prefix);
    if keys.is_empty() {
        return vec!["the config type has no keys".into()];
    }
    for (index, (var, _)) in keys.iter().enumerate() {
        set_env(var, &format!("from-env-{index}"));
    }
    let figment = match figment::<T>(env_prefix, None) {
        Ok(figment) => figment,
        Err(err) => return vec![err.to_string()],
    };
    keys.iter()
        .enumerate()
        .filter_map(|(index, (var, path))| {
            let found = figment.find_value(path).ok().and_then(|v| v.into_string());
            (found.as_deref() != Some(format!("from-env-{index}").as_str()))
                .then(|| format!("{var} does not set {path} (found {found:?})"))
        })
        .collect()
}

/// One line per figment error: the key, the problem and where the value came from.
fn describe(err: figment::Error) -> String {
    let key = err.path.join(".");
    let origin = err
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(source) => format!(" (from {source})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    let kind = err.kind.to_string();
    if key.is_empty() {
        format!("{kind}{origin}")
    } else {
        format!("key `{key}`: {kind}{origin}")
    }
}

/// Renders a configuration as YAML; secrets are redacted by the types' `Serialize`.
pub fn render<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    serde_yaml::to_string(config).map_err(|e| ConfigError::Render(e.to_string()))
}

#[cfg(test)]
// figment::Jail closures return figment::Error, whose size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::secret::SecretUrl;

    #[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        database: SecretUrl,
        #[serde(with = "crate::config::duration_secs")]
        #[schemars(with = "u64")]
        grace: Duration,
        workers: u16,
        #[serde(rename = "camelCase")]
        camel_case: Nested,
        tenants: std::collections::BTreeMap<String, Nested>,
    }

    #[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        #[serde(rename = "clusterId")]
        cluster_id: String,
        limit: Option<u32>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                database: SecretUrl::from_static("sqlite://local.db"),
                grace: Duration::from_secs(30),
                workers: 4,
                camel_case: Nested::default(),
                tenants: std::collections::BTreeMap::new(),
            }
        }
    }

    impl Validate for Sample {
        fn problems(&self) -> Vec<String> {
            if self.workers == 0 {
                vec!["workers: must be at least 1".into()]
            } else {
                Vec::new()
            }
        }
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("app.yaml", "workers: 8\ngrace: 5\n")?;
            jail.set_env("SAMPLE__WORKERS", "9");
            let config: Sample =
                load("SAMPLE", Some(Path::new("app.yaml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.workers, 9);
            assert_eq!(config.grace, Duration::from_secs(5));
            assert_eq!(config.database.expose(), "sqlite://local.db");
            Ok(())
        });
    }

    #[test]
    fn camel_case_keys_and_map_entries_are_set_from_upper_case_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SAMPLE__CAMELCASE__CLUSTERID", "from-env");
            jail.set_env("SAMPLE__TENANTS__ACME__CLUSTERID", "acme-cluster");
            jail.set_env("SAMPLE__TENANTS__ACME__LIMIT", "5");
            let config: Sample = load("SAMPLE", None).map_err(|e| e.to_string())?;
            assert_eq!(config.camel_case.cluster_id, "from-env");
            assert_eq!(config.tenants["acme"].cluster_id, "acme-cluster");
            assert_eq!(config.tenants["acme"].limit, Some(5));

            jail.set_env("SAMPLE__CAMELCASE__CLUSTERIDD", "typo");
            let err = load::<Sample>("SAMPLE", None).expect_err("unknown key");
            assert!(err.to_string().contains("clusteridd"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn every_key_of_a_config_type_can_be_set_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let failures = check_env_overrides::<Sample>("SAMPLE", |k, v| jail.set_env(k, v));
            assert!(failures.is_empty(), "{failures:#?}");
            let keys = Keys::of::<Sample>().leaves("SAMPLE");
            assert!(
                keys.contains(&(
                    "SAMPLE__TENANTS__EXAMPLE__CLUSTERID".into(),
                    "tenants.example.clusterId".into()
                )),
                "{keys:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn durations_take_a_bare_number_in_the_key_s_unit_or_a_unit() {
        figment::Jail::expect_with(|jail| {
            for (given, expected) in [("5", 5), ("30s", 30), ("2m", 120), ("1500ms", 1)] {
                jail.create_file("d.yaml", &format!("grace: {given}\n"))?;
                let config: Sample =
                    load("SAMPLE", Some(Path::new("d.yaml"))).map_err(|e| e.to_string())?;
                assert_eq!(config.grace.as_secs(), expected, "{given}");
            }
            jail.set_env("SAMPLE__GRACE", "45s");
            let config: Sample = load("SAMPLE", None).map_err(|e| e.to_string())?;
            assert_eq!(config.grace, Duration::from_secs(45));
            jail.set_env("SAMPLE__GRACE", "soon");
            let err = load::<Sample>("SAMPLE", None).expect_err("not a duration");
            assert!(
                err.to_string().contains("\"soon\" is not a duration"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn wrong_type_names_the_key_and_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("app.yaml", "workers: many\n")?;
            let err = load::<Sample>("SAMPLE", Some(Path::new("app.yaml"))).expect_err("must fail");
            let text = err.to_string();
            assert!(text.contains("key `workers`"), "{text}");
            assert!(text.contains("app.yaml"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_and_failed_validation_are_reported() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "wrokers = 2\n")?;
            let err =
                load::<Sample>("SAMPLE", Some(Path::new("typo.toml"))).expect_err("must fail");
            assert!(err.to_string().contains("wrokers"), "{err}");

            jail.create_file("zero.json", r#"{"workers": 0}"#)?;
            let err =
                load::<Sample>("SAMPLE", Some(Path::new("zero.json"))).expect_err("must fail");
            assert!(
                matches!(err, ConfigError::Invalid { ref problems, ref loaded }
                    if problems == &["workers: must be at least 1"] && loaded.contains("workers: 0")),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn missing_or_unknown_kind_of_file_is_a_clear_error() {
        let err = load::<Sample>("SAMPLE", Some(Path::new("/nonexistent/app.yaml")))
            .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/app.yaml: no such file"
        );
        figment::Jail::expect_with(|jail| {
            jail.create_file("app.ini", "workers=1")?;
            let err = load::<Sample>("SAMPLE", Some(Path::new("app.ini"))).expect_err("must fail");
            assert!(err.to_string().contains("unknown format"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn rendered_config_redacts_the_password() {
        let sample = Sample {
            database: "postgres://admin:hunter2@db:5432/app"
                .parse()
                .expect("valid url"),
            ..Sample::default()
        };
        let text = render(&sample).expect("renders");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://admin:***@db:5432/app"), "{text}");
    }
}

/// Test support (feature `testing`): asserts that every key of `T` can be set from the
/// environment (see [`check_env_overrides`]), in a `figment::Jail`.
#[cfg(feature = "testing")]
// figment::Jail closures return figment::Error, whose size is not ours to choose.
#[allow(clippy::result_large_err)]
pub fn assert_env_overrides<T: JsonSchema>(env_prefix: &str) {
    figment::Jail::expect_with(|jail| {
        let failures = check_env_overrides::<T>(env_prefix, |k, v| jail.set_env(k, v));
        assert!(failures.is_empty(), "{failures:#?}");
        Ok(())
    });
}

/// A duration in a config file: a bare number in the key's unit (`lock_wait_secs: 30`,
/// `linger_ms: 200`), or a number with its unit (`30s`, `500ms`, `2m`, `1h 30m`).
fn parse_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    unit: fn(u64) -> std::time::Duration,
    unit_name: &'static str,
) -> Result<std::time::Duration, D::Error> {
    use serde::de::{Error, Visitor};

    struct DurationVisitor(fn(u64) -> std::time::Duration, &'static str);

    impl Visitor<'_> for DurationVisitor {
        type Value = std::time::Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "a duration: a number of {}, or a number with its unit (30s, 500ms, 2m)",
                self.1
            )
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok((self.0)(value))
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<Self::Value, E> {
            u64::try_from(value)
                .map(self.0)
                .map_err(|_| E::custom(format!("a duration cannot be negative ({value})")))
        }

        fn visit_str<E: Error>(self, value: &str) -> Result<Self::Value, E> {
            let value = value.trim();
            // Environment values arrive as strings: "30" is 30 of the key's unit.
            if let Ok(number) = value.parse::<u64>() {
                return Ok((self.0)(number));
            }
            humantime::parse_duration(value).map_err(|e| {
                E::custom(format!(
                    "{value:?} is not a duration ({e}); write e.g. 30s, 500ms or 2m"
                ))
            })
        }
    }

    deserializer.deserialize_any(DurationVisitor(unit, unit_name))
}

/// `Duration` in config files, in seconds when no unit is given (`grace_secs: 30` or
/// `grace_secs: 2m`); written back as whole seconds.
pub mod duration_secs {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::parse_duration(deserializer, Duration::from_secs, "seconds")
    }
}

/// `Duration` in config files, in milliseconds when no unit is given (`linger_ms: 200`
/// or `linger_ms: 1s`); written back as whole milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::parse_duration(deserializer, Duration::from_millis, "milliseconds")
    }
}
