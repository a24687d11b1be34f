//! One run: both listings, the plan, and the plan carried out with bounded concurrency.
//!
//! Safety: nothing changes unless both listings completed; a plan with more deletions
//! than `maxDeletes` changes nothing; one failing application never stops the others; a
//! stop signal lets the calls under way finish and starts no new ones.

use std::{sync::Arc, time::Instant};

use futures::StreamExt as _;
use platform::job::{JobExit, print_summary};
use secrecy::{ExposeSecret as _, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    Cli,
    compass::{Compass, Desired, FINGERPRINT_LABEL, SHARD_LABEL},
    config::Config,
    http::{self, CallError, RetryPolicy},
    oc::{self, OpenConnectors},
    plan::{self, Action, Instance, Settings},
    summary::{Calls, Outcome, Summary},
};

/// What the run needs besides the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub dry_run: bool,
    pub max_deletes: Option<usize>,
    /// The retry policy of both clients (the tests shorten it).
    pub retry: RetryPolicy,
}

impl From<&Cli> for Options {
    fn from(cli: &Cli) -> Self {
        Self {
            dry_run: cli.dry_run,
            max_deletes: cli.max_deletes,
            retry: RetryPolicy::default(),
        }
    }
}

/// Runs the job, prints its summary, and gives the exit code.
pub async fn run(cli: &Cli, config: &Config, shutdown: CancellationToken) -> JobExit {
    let options = Options::from(cli);
    let span = tracing::info_span!("oc_sync_run", dry_run = options.dry_run);
    async move {
        let summary = sync(config, &options, &shutdown).await;
        let exit = summary.exit(cli.detailed_exitcode);
        if let Err(err) = print_summary(&summary, cli.output) {
            tracing::error!(error = %err, "cannot print the summary");
        }
        tracing::info!(
            outcome = ?summary.outcome,
            exit_code = exit.code(),
            created = summary.created.len(),
            updated = summary.updated.len(),
            repaired = summary.repaired.len(),
            deleted = summary.deleted.len(),
            unchanged = summary.unchanged.len(),
            skipped = summary.skipped.len(),
            errors = summary.errors.len(),
            open_connectors_calls = summary.calls.open_connectors,
            compass_calls = summary.calls.compass,
            retries = summary.calls.retries,
            duration_ms = summary.duration_ms,
            "run finished"
        );
        exit
    }
    .instrument(span)
    .await
}

/// The clients and what every application is written with.
struct Job {
    oc: OpenConnectors,
    compass: Compass,
    /// `<scheme>://<host>/elements/api-v2`: the API definitions' target.
    target_url: String,
    context: String,
    user_secret: SecretString,
    organization_secret: SecretString,
    integration_system_id: Option<String>,
    prefix: String,
}

/// The run, without printing: what the summary says.
pub async fn sync(config: &Config, options: &Options, shutdown: &CancellationToken) -> Summary {
    let started = Instant::now();
    let job = match Job::new(config, options) {
        Ok(job) => Arc::new(job),
        Err(problem) => return fatal(problem, options.dry_run, started),
    };
    let mut summary = job.sync(config, options, shutdown).await;
    let (oc_calls, oc_retries) = job.oc.counts();
    let (compass_calls, compass_retries) = job.compass.counts();
    summary.calls = Calls {
        open_connectors: oc_calls,
        compass: compass_calls,
        retries: oc_retries + compass_retries,
    };
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.sort();
    summary
}

fn fatal(problem: String, dry_run: bool, started: Instant) -> Summary {
    tracing::error!(error = %problem, "run failed; nothing was changed");
    let mut summary = Summary::fatal(vec![problem], dry_run);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary
}

impl Job {
    fn new(config: &Config, options: &Options) -> Result<Self, String> {
        let connect_timeout = config
            .compass
            .timeout()
            .min(config.open_connectors.timeout());
        let client = http::client(connect_timeout)?;
        let oc_config = &config.open_connectors;
        let target_url = oc::api_url(oc_config)?
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            oc: OpenConnectors::new(oc_config, client.clone(), options.retry)?,
            compass: Compass::new(&config.compass, client, options.retry, config.concurrency)?,
            target_url,
            context: oc_config
                .context()
                .ok_or("openConnectors.hostname: no host")?,
            user_secret: oc_config.user_secret.clone(),
            organization_secret: oc_config.organization_secret.clone(),
            integration_system_id: config
                .compass
                .integration_system_id
                .as_deref()
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            prefix: config.compass.application_prefix.clone(),
        })
    }

    async fn sync(
        self: &Arc<Self>,
        config: &Config,
        options: &Options,
        shutdown: &CancellationToken,
    ) -> Summary {
        let started = Instant::now();
        let dry_run = options.dry_run;
        // Both listings at once; either failing stops the run before any change.
        let (instances, applications) = tokio::join!(
            self.oc.instances(),
            self.compass.applications(&self.context)
        );
        let instances = match instances {
            Ok(instances) => instances,
            Err(err) => return fatal(listing_failed("Open Connectors", &err), dry_run, started),
        };
        let applications = match applications {
            Ok(applications) => applications,
            Err(err) => return fatal(listing_failed("Compass", &err), dry_run, started),
        };
        tracing::info!(
            instances = instances.len(),
            applications = applications.len(),
            context = %self.context,
            "listed"
        );
        let settings = Settings {
            prefix: self.prefix.clone(),
            context: self.context.clone(),
            sync_disabled: config.sync_disabled_instances,
            max_deletes: options.max_deletes.unwrap_or(config.max_deletes),
        };
        let actions = match plan::plan(&instances, &applications, &settings) {
            Ok(actions) => actions,
            Err(refused) => return fatal(refused.to_string(), dry_run, started),
        };
        if dry_run {
            let mut summary = Summary::new(Outcome::Planned, true);
            for action in &actions {
                summary.done(action, &self.application_name(action), detail(action));
            }
            return summary;
        }
        if shutdown.is_cancelled() {
            let mut summary = Summary::new(Outcome::Interrupted, false);
            summary
                .errors
                .push(stopped(actions.iter().filter(|a| a.mutates()).count()));
            return summary;
        }
        self.apply(actions, config.concurrency, shutdown).await
    }

    /// Carries the actions out, `concurrency` at a time; stops starting new ones when
    /// the shutdown token fires.
    async fn apply(
        self: &Arc<Self>,
        actions: Vec<Action>,
        concurrency: usize,
        shutdown: &CancellationToken,
    ) -> Summary {
        let mut summary = Summary::new(Outcome::Success, false);
        let (work, rest): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(Action::mutates);
        for action in &rest {
            summary.done(action, &self.application_name(action), detail(action));
        }
        let pending = work.len();
        let results = futures::stream::iter(work)
            .take_until(shutdown.clone().cancelled_owned())
            .map(|action| {
                let job = Arc::clone(self);
                async move {
                    let name = job.application_name(&action);
                    let span = tracing::info_span!(
                        "apply",
                        action = action.verb(),
                        application = %name
                    );
                    let result = job.carry_out(&action, &name).instrument(span).await;
                    (action, name, result)
                }
            })
            .buffer_unordered(concurrency.max(1));
        let mut results = std::pin::pin!(results);
        let (mut applied, mut failed, mut finished) = (0usize, 0usize, 0usize);
        while let Some((action, name, result)) = results.next().await {
            finished += 1;
            match result {
                Ok(()) => {
                    applied += 1;
                    tracing::info!(action = action.verb(), application = %name, "applied");
                    summary.done(&action, &name, detail(&action));
                }
                Err(err) => {
                    failed += 1;
                    summary.failed(&action, &name, err.to_string());
                }
            }
        }
        let not_started = pending - finished;
        if not_started > 0 {
            summary.errors.push(stopped(not_started));
        }
        summary.outcome = match (not_started > 0, applied > 0, failed > 0) {
            (true, false, _) => Outcome::Interrupted,
            (false, _, false) => Outcome::Success,
            _ => Outcome::PartialFailure,
        };
        summary
    }

    /// The application an action is about (for a create: the one it makes).
    fn application_name(&self, action: &Action) -> String {
        match action {
            Action::Create { instance } => plan::application_name(&self.prefix, instance)
                .unwrap_or_else(|_| format!("instance {}", instance.id)),
            Action::Update { application, .. }
            | Action::Repair { application, .. }
            | Action::Delete { application, .. }
            | Action::Unchanged { application } => application.name.clone(),
            Action::Skipped { what, .. } => what.clone(),
        }
    }

    /// What the instance's application must look like, its OpenAPI document fetched.
    async fn desired(&self, instance: &Instance, name: &str) -> Result<Desired, CallError> {
        let spec = self.oc.docs(instance.id).await?;
        let header = format!(
            "User {}, Organization {}, Element {}",
            self.user_secret.expose_secret(),
            self.organization_secret.expose_secret(),
            instance.token.0
        );
        let auth_headers = serde_json::json!({ "Authorization": [header] }).to_string();
        Ok(Desired {
            name: name.to_owned(),
            description: plan::description(instance),
            label: serde_json::json!({
                "connectorInstanceContext": self.context,
                "connectorInstanceID": instance.id.to_string(),
            }),
            fingerprint: plan::fingerprint(instance),
            shard: plan::shard_of(instance.id),
            integration_system_id: self.integration_system_id.clone(),
            bundle_name: instance.element.key.clone(),
            auth_headers: SecretString::from(auth_headers),
            api_name: instance.element.key.clone(),
            target_url: self.target_url.clone(),
            spec,
        })
    }

    /// One action's calls. The fingerprint label is written last: an update cut short is
    /// done again by the next run.
    async fn carry_out(&self, action: &Action, name: &str) -> Result<(), CallError> {
        let compass = &self.compass;
        match action {
            Action::Create { instance } => {
                let desired = self.desired(instance, name).await?;
                compass.register(&desired).await.map(drop)
            }
            Action::Update {
                application,
                instance,
            } => {
                let desired = self.desired(instance, name).await?;
                compass
                    .update_application(&application.id, &desired)
                    .await?;
                if let Some(bundle) = &application.bundle_id {
                    compass.update_bundle(bundle, &desired).await?;
                }
                if let Some(api) = &application.api_definition_id {
                    compass.update_api_definition(api, &desired).await?;
                }
                self.set_fingerprint(&application.id, &desired).await
            }
            Action::Repair {
                application,
                instance,
            } => {
                let desired = self.desired(instance, name).await?;
                match &application.bundle_id {
                    Some(bundle) => {
                        compass.update_bundle(bundle, &desired).await?;
                        compass.add_api_definition(bundle, &desired).await?;
                    }
                    None => compass.add_bundle(&application.id, &desired).await?,
                }
                compass
                    .update_application(&application.id, &desired)
                    .await?;
                self.set_fingerprint(&application.id, &desired).await
            }
            Action::Delete { application, .. } => {
                compass.unregister(&application.id, &application.name).await
            }
            Action::Unchanged { .. } | Action::Skipped { .. } => Ok(()),
        }
    }

    /// The shard label, then the fingerprint (last: it says the application is whole).
    async fn set_fingerprint(&self, id: &str, desired: &Desired) -> Result<(), CallError> {
        for (key, value) in [
            (SHARD_LABEL, &desired.shard),
            (FINGERPRINT_LABEL, &desired.fingerprint),
        ] {
            let value = serde_json::Value::String(value.clone());
            self.compass
                .set_label(id, &desired.name, key, value)
                .await?;
        }
        Ok(())
    }
}

fn listing_failed(side: &str, err: &CallError) -> String {
    format!("the {side} listing failed, so nothing was changed: {err}")
}

fn stopped(count: usize) -> crate::summary::Failure {
    crate::summary::Failure {
        application: None,
        action: None,
        error: format!(
            "stopped by a signal: {count} changes not started (the next run makes them)"
        ),
    }
}

/// The text table's detail of an action.
fn detail(action: &Action) -> String {
    let about = |instance: &Instance| {
        format!(
            "instance {} {:?} ({})",
            instance.id, instance.name, instance.element.key
        )
    };
    match action {
        Action::Create { instance } | Action::Update { instance, .. } => about(instance),
        Action::Repair { instance, .. } => format!("{}: API definition missing", about(instance)),
        Action::Delete { why, .. } => why.clone(),
        Action::Unchanged { .. } | Action::Skipped { .. } => String::new(),
    }
}
