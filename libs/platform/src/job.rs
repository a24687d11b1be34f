//! What the CronJob binaries share: exit codes and the end-of-run summary.

use std::io::Write;

use serde::Serialize;

/// A job's exit code. Operators and CronJob alerting rely on these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobExit {
    /// Changes applied, or nothing to do.
    Success = 0,
    /// Bad config or an unreachable dependency: nothing changed.
    Fatal = 1,
    /// `--dry-run --detailed-exitcode` only: changes are pending.
    ChangesPending = 2,
    /// Some items failed, the rest were applied; each failure is in the summary.
    PartialFailure = 3,
}

impl JobExit {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<JobExit> for std::process::ExitCode {
    fn from(exit: JobExit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// How the end-of-run summary is printed on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Text,
    /// One JSON document for scripts.
    Json,
}

/// A job's end-of-run summary.
pub trait RunSummary: Serialize {
    /// The human-readable form (ends with a newline).
    fn to_text(&self) -> String;
}

/// Prints the summary on stdout in the asked format.
pub fn print_summary<S: RunSummary>(summary: &S, format: OutputFormat) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Text => out.write_all(summary.to_text().as_bytes())?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, summary)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        assert_eq!(JobExit::Success.code(), 0);
        assert_eq!(JobExit::Fatal.code(), 1);
        assert_eq!(JobExit::ChangesPending.code(), 2);
        assert_eq!(JobExit::PartialFailure.code(), 3);
    }
}
