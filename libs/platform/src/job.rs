//! What the CronJob binaries share: exit codes and the end-of-run summary.
//!
//! Every run ends with a summary, including a run that never started (bad flags, bad
//! config): [`start_failed`] renders those through the job's own fatal summary, so a log
//! pipeline reading `--output json` gets one JSON line from every run.

use std::{ffi::OsString, io::Write};

use serde::Serialize;

use crate::cli::StartError;

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
    /// One JSON object on one line, for scripts and log pipelines.
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
            // Compact: log pipelines split multi-line output into separate records.
            serde_json::to_writer(&mut out, summary)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

/// The `--output` / `-o` format asked for on a command line that may not parse (the
/// last one given wins, as with clap); text when none or an unknown one is given.
pub fn requested_format<I, T>(args: I) -> OutputFormat
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.into().to_string_lossy().into_owned())
        .collect();
    let mut format = OutputFormat::Text;
    for (i, arg) in args.iter().enumerate() {
        if arg == "--" {
            break;
        }
        let value = match arg.as_str() {
            "--output" | "-o" => args.get(i + 1).map(String::as_str),
            other => other
                .strip_prefix("--output=")
                .or_else(|| other.strip_prefix("-o="))
                .or_else(|| other.strip_prefix("-o").filter(|v| !v.is_empty())),
        };
        match value {
            Some("json") => format = OutputFormat::Json,
            Some("text") => format = OutputFormat::Text,
            _ => {}
        }
    }
    format
}

/// Ends a run that failed to start: the problems on stderr and, with `--output json`,
/// the job's fatal summary (built by `fatal` from the problems) as a JSON line on stdout.
pub fn start_failed<S, F>(err: &StartError, format: OutputFormat, fatal: F) -> JobExit
where
    S: RunSummary,
    F: FnOnce(Vec<String>) -> S,
{
    err.report();
    if format == OutputFormat::Json {
        // stderr already says it all in text form; stdout carries the JSON for scripts.
        if let Err(err) = print_summary(&fatal(err.problems()), format) {
            eprintln!("error: cannot print the summary: {err}");
        }
    }
    JobExit::Fatal
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

    #[test]
    fn the_output_format_is_found_on_a_command_line_that_does_not_parse() {
        let format = |args: &[&str]| requested_format(args.iter().copied());
        assert_eq!(
            format(&["job", "--bogus", "--output", "json"]),
            OutputFormat::Json
        );
        assert_eq!(
            format(&["job", "-o", "json", "--bogus"]),
            OutputFormat::Json
        );
        assert_eq!(format(&["job", "--output=json"]), OutputFormat::Json);
        assert_eq!(format(&["job", "-ojson"]), OutputFormat::Json);
        assert_eq!(
            format(&["job", "-o", "json", "-o", "text"]),
            OutputFormat::Text
        );
        assert_eq!(format(&["job", "--output"]), OutputFormat::Text);
        assert_eq!(
            format(&["job", "--", "--output", "json"]),
            OutputFormat::Text
        );
        assert_eq!(format(&["job"]), OutputFormat::Text);
    }
}
