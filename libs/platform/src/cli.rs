//! The command line every binary shares: one parser with one set of exit codes, the
//! `--config` / `--print-config` flags, and the start of every `main`.
//!
//! Exit codes of a start that goes no further: `--help`, `--version` and `--print-config`
//! print and give 0; a usage error, a bad config or telemetry that cannot start give 1
//! (a fatal start, as every bad input), never clap's own 2 — 2 is a job's "changes
//! pending".

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Service,
    config::{self, ConfigError, Validate},
    telemetry::{self, TelemetryError, TelemetryGuard},
};

/// Why a binary stopped before doing its work.
#[derive(Debug)]
pub enum Stop {
    /// `--help`, `--version` or `--print-config` printed what was asked: exit 0.
    Printed,
    /// The start failed: exit 1. Render it with [`StartError::report`] (or a job's own
    /// fatal summary).
    Failed(StartError),
}

impl Stop {
    /// The process exit code: 0 for [`Stop::Printed`], 1 for [`Stop::Failed`].
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Printed => ExitCode::SUCCESS,
            Self::Failed(_) => ExitCode::from(1),
        }
    }

    /// Reports a failure on stderr and gives the exit code: what a server's `main` does.
    pub fn report(self) -> ExitCode {
        let code = self.exit_code();
        if let Self::Failed(err) = self {
            err.report();
        }
        code
    }
}

/// A start that failed, by kind, so that a job can render it in its summary and a server
/// can log it the same way.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The command line is wrong (clap's message, without its usage footer).
    #[error("{0}")]
    Usage(String),
    /// The configuration cannot be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging or tracing cannot start.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

impl StartError {
    /// Every problem, one line each, without the `error:` prefix.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Config(err) => err.problems(),
            other => vec![other.to_string()],
        }
    }

    /// Writes `error: <problem>` lines on stderr.
    pub fn report(&self) {
        match self {
            Self::Config(_) => eprintln!("error: {self}"),
            _ => {
                for problem in self.problems() {
                    eprintln!("error: {problem}");
                }
            }
        }
    }
}

/// Parses the process's command line. `--help` / `--version` are printed
/// ([`Stop::Printed`]); a bad argument is a [`StartError::Usage`].
pub fn parse<P: clap::Parser>() -> Result<P, Stop> {
    parse_from(std::env::args_os())
}

/// [`parse`] over the given arguments (the first is the program name).
pub fn parse_from<P, I, T>(args: I) -> Result<P, Stop>
where
    P: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    P::try_parse_from(args).map_err(|err| {
        if err.use_stderr() {
            Stop::Failed(StartError::Usage(usage_message(&err)))
        } else {
            let _ = err.print();
            Stop::Printed
        }
    })
}

/// clap's message as one line: `error: ` and the usage/`--help` footer left out.
fn usage_message(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let tips: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("tip:"))
        .collect();
    if tips.is_empty() {
        format!("{first} (see --help)")
    } else {
        format!("{first}; {} (see --help)", tips.join("; "))
    }
}

/// `--config` and `--print-config`, flattened into each binary's own clap parser.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (YAML, TOML or JSON, chosen by extension). Values from the
    /// environment (`<PREFIX>__section__key`) override it.
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets redacted) and exit; an invalid one is
    /// printed as loaded, followed by its problems (exit 1).
    #[arg(long, global = true)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// Loads and validates the configuration: defaults < `--config` file < environment.
    pub fn load<T>(&self, env_prefix: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Serialize + Validate + JsonSchema,
    {
        config::load(env_prefix, self.config.as_deref())
    }

    /// The start of every `main`: loads the config, handles `--print-config` (printed,
    /// [`Stop::Printed`]), prints the config's warnings on stderr, then starts
    /// telemetry for `service`.
    pub fn start<T>(&self, env_prefix: &str, service: Service) -> Result<(T, TelemetryGuard), Stop>
    where
        T: DeserializeOwned + Serialize + Validate + JsonSchema,
    {
        self.start_with_filter(env_prefix, service, |_: &T| None)
    }

    /// [`ConfigArgs::start`] for a config that names its log level: `log_filter` gives
    /// the filter used when `RUST_LOG` is unset.
    pub fn start_with_filter<T>(
        &self,
        env_prefix: &str,
        service: Service,
        log_filter: impl FnOnce(&T) -> Option<&'static str>,
    ) -> Result<(T, TelemetryGuard), Stop>
    where
        T: DeserializeOwned + Serialize + Validate + JsonSchema,
    {
        let loaded = self.load::<T>(env_prefix);
        if self.print_config {
            return Err(print_config(loaded));
        }
        let config = loaded.map_err(|e| Stop::Failed(e.into()))?;
        for warning in config.warnings() {
            eprintln!("warning: {warning}");
        }
        let guard = telemetry::init_with_filter(service, log_filter(&config))
            .map_err(|e| Stop::Failed(e.into()))?;
        Ok((config, guard))
    }
}

/// `--print-config`: the effective configuration on stdout. An invalid one that could be
/// read is printed as loaded, then the start fails with its problems.
fn print_config<T: Serialize>(loaded: Result<T, ConfigError>) -> Stop {
    let rendered = match &loaded {
        Ok(config) => Some(config::render(config)),
        Err(ConfigError::Invalid { loaded, .. }) => Some(Ok(loaded.clone())),
        Err(_) => None,
    };
    match rendered {
        Some(Err(err)) => return Stop::Failed(err.into()),
        Some(Ok(text)) => print!("{text}"),
        None => {}
    }
    match loaded {
        Ok(_) => Stop::Printed,
        Err(err) => Stop::Failed(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "sample", version = "9.8.7")]
    struct Sample {
        #[arg(long)]
        count: Option<u32>,
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn a_usage_error_is_a_failed_start_with_clap_s_message_on_one_line() {
        let stop = parse_from::<Sample, _, _>(["sample", "--count", "many"]).expect_err("bad");
        assert_eq!(stop.exit_code(), ExitCode::from(1));
        let Stop::Failed(StartError::Usage(message)) = stop else {
            panic!("not a usage error: {stop:?}");
        };
        assert!(message.contains("'many'"), "{message}");
        assert!(message.contains("--count"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.starts_with("error:"), "{message}");

        let stop = parse_from::<Sample, _, _>(["sample", "--cuont"]).expect_err("bad");
        let Stop::Failed(err) = stop else {
            panic!("not a failure")
        };
        assert!(err.to_string().contains("--cuont"), "{err}");
    }

    #[test]
    fn help_and_version_are_printed_and_succeed() {
        for flag in ["--help", "--version"] {
            let stop = parse_from::<Sample, _, _>(["sample", flag]).expect_err("stops");
            assert!(matches!(stop, Stop::Printed), "{flag}: {stop:?}");
            assert_eq!(stop.exit_code(), ExitCode::SUCCESS);
        }
        let parsed = parse_from::<Sample, _, _>(["sample", "--count", "3"]).expect("valid");
        assert_eq!(parsed.count, Some(3));
    }
}
