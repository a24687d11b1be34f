//! The command-line flags every binary shares.

use std::path::PathBuf;

use serde::{Serialize, de::DeserializeOwned};

use crate::config::{self, ConfigError, Validate};

/// `--config` and `--print-config`, flattened into each binary's own clap parser.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (YAML, TOML or JSON, chosen by extension). Values from the
    /// environment (`<PREFIX>__section__key`) override it.
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// Loads and validates the configuration: defaults < `--config` file < environment.
    pub fn load<T>(&self, env_prefix: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Validate,
    {
        config::load(env_prefix, self.config.as_deref())
    }

    /// When `--print-config` was given, renders the configuration for stdout.
    pub fn printed<T: Serialize>(&self, config: &T) -> Option<Result<String, ConfigError>> {
        self.print_config.then(|| config::render(config))
    }
}
