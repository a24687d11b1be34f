//! The end-of-run summary: printed (text or JSON) and stored in `provisioning_runs`.
//! It names clients, never their keys.

use std::fmt::Write as _;

use platform::job::{JobExit, RunSummary};
use serde::Serialize;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything asked for was applied (possibly nothing).
    Success,
    /// Dry run: the lists say what an apply would do.
    Planned,
    /// Some clients failed; the others were applied.
    PartialFailure,
    /// `provisionClientsConfig.enabled: false`: nothing was read or written.
    Disabled,
    /// Another run held the lock for the whole wait: nothing was done.
    Locked,
    /// A shutdown signal came before anything was written: nothing was done.
    Interrupted,
    /// Bad config or unreachable database: nothing was written.
    Fatal,
}

impl Outcome {
    /// How an apply ended: a stop signal before anything was applied is an interrupted
    /// run (exit 1, nothing done), not a partial failure.
    pub fn after_apply(stopped: bool, applied_any: bool, failed_any: bool) -> Self {
        match (stopped, applied_any, failed_any) {
            (true, false, _) => Self::Interrupted,
            (_, _, false) => Self::Success,
            _ => Self::PartialFailure,
        }
    }

    /// The value stored in `provisioning_runs.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Planned => "planned",
            Self::PartialFailure => "partial_failure",
            Self::Disabled => "disabled",
            Self::Locked => "locked",
            Self::Interrupted => "interrupted",
            Self::Fatal => "fatal",
        }
    }
}

/// A drifted client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftEntry {
    pub client: String,
    pub differences: Vec<String>,
    /// Fixed in this run (only with `--repair`).
    pub repaired: bool,
}

/// A failure: of one client, or (`client: null`) of the whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientError {
    pub client: Option<String>,
    pub error: String,
}

/// Everything a run did or, in a dry run, would do.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `apply`, `plan` or `migrate`.
    pub command: &'static str,
    pub run_id: Option<String>,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub repair: bool,
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<DriftEntry>,
    pub orphans: Vec<String>,
    pub errors: Vec<ClientError>,
    /// What became of the API keys pending delivery.
    pub key_delivery: KeyDelivery,
    /// One sentence for the outcomes that did no work (disabled, locked, interrupted).
    pub message: Option<String>,
}

/// The keys' delivery in a run. Names clients, never keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyDelivery {
    /// Where pending keys go (`secret NAMESPACE/NAME`, `file PATH`); null without one.
    pub target: Option<String>,
    /// Clients whose keys this run delivered (created now or pending from earlier runs).
    pub delivered: Vec<String>,
    /// Clients whose keys are still pending: no target, or the delivery failed.
    pub pending: Vec<String>,
    /// Entries the target already held, kept beside the delivered ones.
    pub kept: usize,
}

impl Summary {
    /// An empty summary with the given outcome.
    pub fn new(outcome: Outcome, dry_run: bool, repair: bool) -> Self {
        Self {
            command: if dry_run { "plan" } else { "apply" },
            run_id: None,
            outcome,
            dry_run,
            repair,
            created: Vec::new(),
            unchanged: Vec::new(),
            drift: Vec::new(),
            orphans: Vec::new(),
            errors: Vec::new(),
            key_delivery: KeyDelivery::default(),
            message: None,
        }
    }

    /// Adds a failure of the run as a whole (not of one client): a run that succeeded
    /// so far becomes a partial failure.
    pub fn fail(&mut self, error: String) {
        tracing::error!(error = %error, "run failure");
        if self.outcome == Outcome::Success {
            self.outcome = Outcome::PartialFailure;
        }
        self.errors.push(ClientError {
            client: None,
            error,
        });
    }

    /// A run that stopped before doing anything, with one line per problem.
    pub fn fatal(problems: Vec<String>, dry_run: bool, repair: bool) -> Self {
        let mut summary = Self::new(Outcome::Fatal, dry_run, repair);
        summary.errors = problems
            .into_iter()
            .map(|error| ClientError {
                client: None,
                error,
            })
            .collect();
        summary
    }

    /// Whether an apply (with the same `--repair`) would change the database.
    pub fn changes_pending(&self) -> bool {
        !self.created.is_empty() || (self.repair && self.drift.iter().any(|d| !d.repaired))
    }

    /// The process exit code for this summary.
    pub fn exit(&self, detailed_exitcode: bool) -> JobExit {
        match self.outcome {
            // The run did not do its job and changed nothing; the next one will.
            Outcome::Fatal | Outcome::Interrupted => JobExit::Fatal,
            _ if !self.errors.is_empty() => JobExit::PartialFailure,
            Outcome::Planned if detailed_exitcode && self.changes_pending() => {
                JobExit::ChangesPending
            }
            _ => JobExit::Success,
        }
    }
}

impl RunSummary for Summary {
    fn to_text(&self) -> String {
        let mut out = String::new();
        let verb = self.command;
        if let Some(message) = &self.message {
            let _ = writeln!(out, "provisioner-job {verb}: {message}");
            return out;
        }
        if self.outcome == Outcome::Fatal {
            let _ = writeln!(out, "provisioner-job {verb}: failed, nothing was written");
            for e in &self.errors {
                let _ = writeln!(out, "  error: {}", e.error);
            }
            return out;
        }
        let (create_word, repair_word) = if self.dry_run {
            ("to create", "to repair")
        } else {
            ("created", "repaired")
        };
        let _ = writeln!(
            out,
            "provisioner-job {verb}: {} {create_word}, {} unchanged, {} drift, {} orphans, {} errors",
            self.created.len(),
            self.unchanged.len(),
            self.drift.len(),
            self.orphans.len(),
            self.errors.len()
        );
        let width = self
            .created
            .iter()
            .chain(self.orphans.iter())
            .chain(self.drift.iter().map(|d| &d.client))
            .chain(self.errors.iter().filter_map(|e| e.client.as_ref()))
            .map(String::len)
            .max()
            .unwrap_or(6)
            .max(6);
        let mut row = |name: &str, status: &str, detail: &str| {
            let _ = writeln!(out, "  {name:<width$}  {status:<9} {detail}");
        };
        for name in &self.created {
            row(name, create_word, "");
        }
        for d in &self.drift {
            let action = match (d.repaired, self.repair, self.dry_run) {
                (true, _, _) => " (repaired)".to_owned(),
                (false, true, true) => format!(" ({repair_word} with --repair)"),
                (false, true, false) => " (not repaired)".to_owned(),
                (false, false, _) => " (run with --repair to fix)".to_owned(),
            };
            row(
                &d.client,
                "drift",
                &format!("{}{action}", d.differences.join("; ")),
            );
        }
        for name in &self.orphans {
            row(name, "orphan", "declared nowhere; left in place");
        }
        for e in &self.errors {
            row(e.client.as_deref().unwrap_or("-"), "error", &e.error);
        }
        let delivery = &self.key_delivery;
        if !delivery.delivered.is_empty() {
            let _ = writeln!(
                out,
                "{} API key(s) delivered to {}{}",
                delivery.delivered.len(),
                delivery.target.as_deref().unwrap_or("?"),
                if delivery.kept > 0 {
                    format!(" ({} entries already there kept)", delivery.kept)
                } else {
                    String::new()
                }
            );
        }
        if !delivery.pending.is_empty() {
            let why = match &delivery.target {
                Some(target) => format!("the delivery to {target} failed (see the errors)"),
                None => "no target; a run with --api-keys-secret or --api-keys-out delivers them"
                    .to_owned(),
            };
            let _ = writeln!(
                out,
                "{} API key(s) pending delivery: {why}",
                delivery.pending.len()
            );
        }
        if !self.dry_run
            && self.created.is_empty()
            && self.errors.is_empty()
            && self.drift.is_empty()
        {
            let _ = writeln!(out, "nothing to do: every declared client is in place");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_outcome() {
        let mut plan = Summary::new(Outcome::Planned, true, false);
        assert_eq!(plan.exit(true), JobExit::Success);
        plan.created.push("a".into());
        assert_eq!(plan.exit(true), JobExit::ChangesPending);
        assert_eq!(plan.exit(false), JobExit::Success);

        let mut drift_only = Summary::new(Outcome::Planned, true, false);
        drift_only.drift.push(DriftEntry {
            client: "d".into(),
            differences: vec![],
            repaired: false,
        });
        assert_eq!(
            drift_only.exit(true),
            JobExit::Success,
            "drift is pending only with --repair"
        );
        drift_only.repair = true;
        assert_eq!(drift_only.exit(true), JobExit::ChangesPending);

        let mut partial = Summary::new(Outcome::PartialFailure, false, false);
        partial.errors.push(ClientError {
            client: Some("x".into()),
            error: "boom".into(),
        });
        assert_eq!(partial.exit(false), JobExit::PartialFailure);
        assert_eq!(
            Summary::fatal(vec!["bad".into()], false, false).exit(false),
            JobExit::Fatal
        );
    }

    #[test]
    fn a_stop_before_the_first_write_is_interrupted_not_partial() {
        let exit = |outcome| Summary::new(outcome, false, false).exit(false);
        // Stopped before the first batch: every client is "not applied", none written.
        let stopped_early = Outcome::after_apply(true, false, true);
        assert_eq!(stopped_early, Outcome::Interrupted);
        assert_eq!(exit(stopped_early), JobExit::Fatal);
        // Stopped after some batches: the rest is a partial failure.
        assert_eq!(
            Outcome::after_apply(true, true, true),
            Outcome::PartialFailure
        );
        assert_eq!(Outcome::after_apply(false, true, false), Outcome::Success);
        assert_eq!(
            Outcome::after_apply(false, false, true),
            Outcome::PartialFailure
        );
    }

    #[test]
    fn nothing_to_do_is_said_only_when_nothing_is_off() {
        let quiet = Summary::new(Outcome::Success, false, false);
        assert!(quiet.to_text().contains("nothing to do"));
        let mut drifted = Summary::new(Outcome::Success, false, false);
        drifted.drift.push(DriftEntry {
            client: "d".into(),
            differences: vec!["x".into()],
            repaired: false,
        });
        let text = drifted.to_text();
        assert!(!text.contains("nothing to do"), "{text}");
        assert!(text.contains("run with --repair to fix"), "{text}");
    }

    #[test]
    fn json_has_the_documented_lists() {
        let summary = Summary::new(Outcome::Success, false, false);
        let value = serde_json::to_value(&summary).expect("json");
        for key in ["created", "unchanged", "drift", "orphans", "errors"] {
            assert!(value[key].is_array(), "{key}");
        }
    }
}
