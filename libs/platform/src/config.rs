//! Layered configuration: built-in defaults < config file < environment.
//!
//! Defaults live in the config structs themselves (`#[serde(default)]`), so the
//! `Serialize` side of a config type is free to redact secrets for `--print-config`.
//! The environment layer reads `<PREFIX>__section__key` (double underscore between
//! levels; names are case-insensitive, e.g. `PROVISIONER__DATABASE__URL`).

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Json, Toml, Yaml},
};
use serde::{Serialize, de::DeserializeOwned};

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
    T: DeserializeOwned + Serialize + Validate,
{
    let config: T = figment(env_prefix, file)?
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

/// The figment behind [`load`], for services that need to extract more than one type.
pub fn figment(env_prefix: &str, file: Option<&Path>) -> Result<Figment, ConfigError> {
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
    Ok(figment.merge(Env::prefixed(&format!("{env_prefix}__")).split("__")))
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

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        database: SecretUrl,
        #[serde(with = "crate::config::duration_secs")]
        grace: Duration,
        workers: u16,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                database: SecretUrl::from_static("sqlite://local.db"),
                grace: Duration::from_secs(30),
                workers: 4,
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

/// `Duration` as whole seconds in config files (`grace_period_secs: 30`).
pub mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

/// `Duration` as whole milliseconds in config files (`linger_ms: 200`).
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}
