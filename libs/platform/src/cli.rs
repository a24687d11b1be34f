//! The command-line flags every binary shares.

use std::path::PathBuf;

use std::process::ExitCode;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    config::{self, ConfigError, Validate},
    telemetry::{self, TelemetryGuard},
};

/// Parses the command line: `--help` / `--version` print and give exit code 0, a bad
/// argument prints clap's message and gives 1 (a fatal start, as every bad input).
pub fn parse<P: clap::Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|err| {
        let _ = err.print();
        ExitCode::from(if err.use_stderr() { 1 } else { 0 })
    })
}

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

impl ConfigArgs {
    /// The start of every `main`: loads the config (a problem goes to stderr, exit 1),
    /// handles `--print-config` (printed, exit 0), then starts telemetry. `Err` is the
    /// exit code to return at once.
    pub fn start<T>(
        &self,
        env_prefix: &str,
        service: &'static str,
    ) -> Result<(T, TelemetryGuard), ExitCode>
    where
        T: DeserializeOwned + Serialize + Validate,
    {
        let fail = |err: &dyn std::fmt::Display| {
            eprintln!("error: {err}");
            ExitCode::from(1)
        };
        let config: T = self.load(env_prefix).map_err(|e| fail(&e))?;
        if let Some(printed) = self.printed(&config) {
            return Err(match printed {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(err) => fail(&err),
            });
        }
        let guard = telemetry::init(service).map_err(|e| fail(&e))?;
        Ok((config, guard))
    }
}
