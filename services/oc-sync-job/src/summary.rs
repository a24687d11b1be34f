//! The end-of-run summary: a table for people, or one JSON line (`--output json`). It
//! names applications and instances, never a secret.

use std::fmt::Write as _;

use platform::job::{JobExit, RunSummary};
use serde::Serialize;

use crate::plan::Action;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything planned was applied (possibly nothing).
    Success,
    /// Dry run: the lists say what a run would do.
    Planned,
    /// Some applications failed; the others were applied.
    PartialFailure,
    /// A stop signal came before anything was applied.
    Interrupted,
    /// Bad config, a listing failed, or too many deletions: nothing was changed.
    Fatal,
}

/// A left-alone instance and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    pub what: String,
    pub why: String,
}

/// A failure: of one application (`application` set) or of the whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub application: Option<String>,
    /// What was being done: `create`, `update`, `repair`, `delete`.
    pub action: Option<&'static str>,
    pub error: String,
}

/// Calls made, per API (every attempt counts; the token calls are Compass's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Calls {
    pub open_connectors: u64,
    pub compass: u64,
    pub retries: u64,
}

/// One line of the text table: what happens to which application, and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    verb: &'static str,
    application: String,
    detail: String,
}

/// Everything a run did or, in a dry run, would do.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `sync`, or `plan` for a dry run.
    pub command: &'static str,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub repaired: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: Vec<String>,
    pub skipped: Vec<Skip>,
    pub errors: Vec<Failure>,
    pub calls: Calls,
    pub duration_ms: u64,
    #[serde(skip)]
    lines: Vec<Line>,
}

impl Summary {
    pub fn new(outcome: Outcome, dry_run: bool) -> Self {
        Self {
            command: if dry_run { "plan" } else { "sync" },
            outcome,
            dry_run,
            created: Vec::new(),
            updated: Vec::new(),
            repaired: Vec::new(),
            deleted: Vec::new(),
            unchanged: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
            calls: Calls::default(),
            duration_ms: 0,
            lines: Vec::new(),
        }
    }

    /// A run that changed nothing, with one line per problem.
    pub fn fatal(problems: Vec<String>, dry_run: bool) -> Self {
        let mut summary = Self::new(Outcome::Fatal, dry_run);
        summary.errors = problems
            .into_iter()
            .map(|error| Failure {
                application: None,
                action: None,
                error,
            })
            .collect();
        summary
    }

    /// Records an action that was carried out (or, in a dry run, planned).
    pub fn done(&mut self, action: &Action, application: &str, detail: String) {
        let list = match action {
            Action::Create { .. } => &mut self.created,
            Action::Update { .. } => &mut self.updated,
            Action::Repair { .. } => &mut self.repaired,
            Action::Delete { .. } => &mut self.deleted,
            Action::Unchanged { .. } => {
                self.unchanged.push(application.to_owned());
                return;
            }
            Action::Skipped { what, why } => {
                self.skipped.push(Skip {
                    what: what.clone(),
                    why: why.clone(),
                });
                return;
            }
        };
        list.push(application.to_owned());
        self.lines.push(Line {
            verb: action.verb(),
            application: application.to_owned(),
            detail,
        });
    }

    /// Records an action that failed.
    pub fn failed(&mut self, action: &Action, application: &str, error: String) {
        tracing::error!(application, action = action.verb(), error = %error, "failed");
        self.errors.push(Failure {
            application: Some(application.to_owned()),
            action: Some(action.verb()),
            error,
        });
    }

    /// Puts every list in name order (the apply finishes items in any order).
    pub fn sort(&mut self) {
        for list in [
            &mut self.created,
            &mut self.updated,
            &mut self.repaired,
            &mut self.deleted,
            &mut self.unchanged,
        ] {
            list.sort();
        }
        let rank = |verb: &str| {
            ["create", "update", "repair", "delete"]
                .iter()
                .position(|v| *v == verb)
        };
        self.lines
            .sort_by(|a, b| (rank(a.verb), &a.application).cmp(&(rank(b.verb), &b.application)));
        self.errors
            .sort_by(|a, b| a.application.cmp(&b.application));
    }

    /// Whether a run would change Compass (what `--detailed-exitcode` reports).
    pub fn changes_pending(&self) -> bool {
        !(self.created.is_empty()
            && self.updated.is_empty()
            && self.repaired.is_empty()
            && self.deleted.is_empty())
    }

    /// The exit code of this summary.
    pub fn exit(&self, detailed_exitcode: bool) -> JobExit {
        match self.outcome {
            Outcome::Success => JobExit::Success,
            Outcome::Planned if detailed_exitcode && self.changes_pending() => {
                JobExit::ChangesPending
            }
            Outcome::Planned => JobExit::Success,
            Outcome::PartialFailure => JobExit::PartialFailure,
            Outcome::Interrupted | Outcome::Fatal => JobExit::Fatal,
        }
    }

    fn counts(&self) -> String {
        format!(
            "{} created, {} updated, {} repaired, {} deleted, {} unchanged, {} skipped, {} errors",
            self.created.len(),
            self.updated.len(),
            self.repaired.len(),
            self.deleted.len(),
            self.unchanged.len(),
            self.skipped.len(),
            self.errors.len()
        )
    }
}

impl RunSummary for Summary {
    fn to_text(&self) -> String {
        let mut out = String::new();
        let verb = self.command;
        let ended = match self.outcome {
            Outcome::Success => "done",
            Outcome::Planned => "planned (dry run, nothing changed)",
            Outcome::PartialFailure => "partly failed",
            Outcome::Interrupted => "interrupted before any change",
            Outcome::Fatal => "failed, nothing was changed",
        };
        let _ = writeln!(out, "oc-sync-job {verb}: {ended}");
        if self.outcome != Outcome::Fatal {
            let width = self
                .lines
                .iter()
                .map(|l| l.application.len())
                .chain(
                    self.errors
                        .iter()
                        .filter_map(|e| e.application.as_ref().map(String::len)),
                )
                .max()
                .unwrap_or(0);
            let prefix = if self.dry_run { "would " } else { "" };
            for line in &self.lines {
                let _ = writeln!(
                    out,
                    "  {prefix}{:<6}  {:<width$}  {}",
                    line.verb, line.application, line.detail
                );
            }
            for skip in &self.skipped {
                let _ = writeln!(out, "  skipped {}: {}", skip.what, skip.why);
            }
        }
        for error in &self.errors {
            match (&error.application, error.action) {
                (Some(application), Some(action)) => {
                    let _ = writeln!(out, "  error   {application} ({action}): {}", error.error);
                }
                _ => {
                    let _ = writeln!(out, "  error: {}", error.error);
                }
            }
        }
        if self.outcome != Outcome::Fatal {
            let _ = writeln!(out, "{}", self.counts());
        }
        let _ = writeln!(
            out,
            "calls: {} Open Connectors, {} Compass ({} retried), {:.2} s",
            self.calls.open_connectors,
            self.calls.compass,
            self.calls.retries,
            self.duration_ms as f64 / 1000.0
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Element, Instance, Token};

    fn create() -> Action {
        Action::Create {
            instance: Instance {
                id: 1,
                name: "crm".into(),
                token: Token("secret-token".into()),
                disabled: false,
                valid: true,
                element: Element {
                    id: 2,
                    name: "Salesforce".into(),
                    key: "sfdc".into(),
                },
            },
        }
    }

    #[test]
    fn a_dry_run_with_changes_exits_2_only_with_detailed_exitcode() {
        let mut summary = Summary::new(Outcome::Planned, true);
        assert_eq!(summary.exit(true), JobExit::Success);
        summary.done(&create(), "oc-1", "instance 1".into());
        assert_eq!(summary.exit(true), JobExit::ChangesPending);
        assert_eq!(summary.exit(false), JobExit::Success);
        let text = summary.to_text();
        assert!(text.contains("would create  oc-1"), "{text}");
        assert!(text.contains("1 created"), "{text}");
    }

    #[test]
    fn the_json_line_names_each_list_and_no_secret() {
        let mut summary = Summary::new(Outcome::PartialFailure, false);
        summary.done(&create(), "oc-1", "instance 1".into());
        summary.failed(
            &create(),
            "oc-2",
            "registerApplication oc-2: HTTP 500".into(),
        );
        assert_eq!(summary.exit(false), JobExit::PartialFailure);
        let json = serde_json::to_value(&summary).expect("serializes");
        for key in [
            "created",
            "updated",
            "repaired",
            "deleted",
            "unchanged",
            "skipped",
            "errors",
        ] {
            assert!(json.get(key).is_some_and(|v| v.is_array()), "{key}: {json}");
        }
        assert_eq!(json["created"][0], "oc-1");
        assert_eq!(json["errors"][0]["application"], "oc-2");
        assert_eq!(json["errors"][0]["action"], "create");
        assert!(!json.to_string().contains("secret-token"));
    }
}
