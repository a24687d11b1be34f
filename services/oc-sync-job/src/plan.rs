//! The reconcile's decisions, from the two listings alone: which instance gets a new
//! application, which application is updated, repaired, deleted or left as it is.
//!
//! An instance and an application belong together only through the application's label
//! `open_connectors: {connectorInstanceContext: <OC host>, connectorInstanceID: "<id>"}`;
//! an application of another context is never touched (the Director's label filter
//! already leaves those out; the plan checks again). Whether an instance changed is told
//! by a fingerprint of what the listing says about it (name, element, state), kept in the
//! application's `open_connectors_fingerprint` label, so a run with nothing to do makes
//! no call beyond the two listings; the OpenAPI document is fetched only for the
//! applications that are created, updated or repaired.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

/// An Open Connectors instance, as the listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: i64,
    pub name: String,
    /// The instance's own token, which the application's API definition authenticates
    /// with (`Element <token>`).
    pub token: Token,
    pub disabled: bool,
    pub valid: bool,
    pub element: Element,
}

/// An instance token: never printed (its `Debug` says `[redacted]`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The connector an instance is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub id: i64,
    pub name: String,
    pub key: String,
}

/// A Compass application carrying the `open_connectors` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Compass's id of the application.
    pub id: String,
    pub name: String,
    /// `connectorInstanceContext` of its label.
    pub context: String,
    /// `connectorInstanceID` of its label.
    pub instance_id: String,
    /// Its `open_connectors_fingerprint` label, when it has one.
    pub fingerprint: Option<String>,
    /// Its `open_connectors_shard` label, when it has one.
    pub shard: Option<String>,
    /// Its first bundle, when it has one.
    pub bundle_id: Option<String>,
    /// The API definition in that bundle, when there is one.
    pub api_definition_id: Option<String>,
}

impl Application {
    /// Whether it carries an API definition (one that the job wrote, or any).
    pub fn has_api_definition(&self) -> bool {
        self.api_definition_id.is_some()
    }
}

/// What the plan is made against.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `compass.applicationPrefix`.
    pub prefix: String,
    /// This tenant's host: the label's `connectorInstanceContext`.
    pub context: String,
    /// `syncDisabledInstances`.
    pub sync_disabled: bool,
    /// `maxDeletes` (or `--max-deletes`).
    pub max_deletes: usize,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new application for the instance, with its API definition.
    Create { instance: Instance },
    /// The instance changed since the application was written.
    Update {
        application: Application,
        instance: Instance,
    },
    /// The application has no API definition: it gets one (and is brought up to date).
    Repair {
        application: Application,
        instance: Instance,
    },
    /// The application's instance is gone (or disabled, with `syncDisabledInstances`).
    Delete {
        application: Application,
        why: String,
    },
    /// Nothing to do.
    Unchanged { application: Application },
    /// Left alone, and why (a disabled instance, an instance id that makes no valid name).
    Skipped { what: String, why: String },
}

impl Action {
    /// Whether carrying it out changes anything in Compass.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Self::Create { .. } | Self::Update { .. } | Self::Repair { .. } | Self::Delete { .. }
        )
    }

    /// `create`, `update`, ... (the summary's and the plan's word for it).
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Update { .. } => "update",
            Self::Repair { .. } => "repair",
            Self::Delete { .. } => "delete",
            Self::Unchanged { .. } => "unchanged",
            Self::Skipped { .. } => "skipped",
        }
    }
}

/// Why no plan can be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{count} applications would be deleted, more than maxDeletes ({max}); nothing is \
         deleted (an empty or partial Open Connectors listing looks like this: check it, \
         then raise maxDeletes or pass --max-deletes {count})"
    )]
    TooManyDeletes { count: usize, max: usize },
}

/// The listing shards: applications are labelled `open_connectors_shard: "<id mod 16>"`
/// so that the Director's listing, which pages 10 applications at a time and can only be
/// walked page after page, is walked as 16 listings at once.
pub const SHARDS: i64 = 16;

/// The `open_connectors_shard` label value of an instance's application.
pub fn shard_of(instance_id: i64) -> String {
    instance_id.rem_euclid(SHARDS).to_string()
}

/// The name of the instance's application, when it makes a valid Compass name.
pub fn application_name(prefix: &str, instance: &Instance) -> Result<String, String> {
    let name = format!("{prefix}-{}", instance.id);
    if instance.id < 0 {
        return Err(format!("instance id {} is negative", instance.id));
    }
    if name.len() > crate::config::MAX_APPLICATION_NAME {
        return Err(format!(
            "{name:?} is longer than Compass's {} characters",
            crate::config::MAX_APPLICATION_NAME
        ));
    }
    Ok(name)
}

/// The application's description: `SAP Cloud Platform Open Connectors <element>:
/// <instance>`, cut (on a character boundary) to what Compass takes.
pub fn description(instance: &Instance) -> String {
    const MAX: usize = 2000;
    let text = format!(
        "SAP Cloud Platform Open Connectors {}: {}",
        instance.element.name, instance.name
    );
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text,
    }
}

/// What the listing says about an instance that the application reflects, hashed: a
/// change of any of it means the application is rewritten (its spec fetched again). The
/// token is part of it (the API definition authenticates with it); the hash does not
/// reveal it.
pub fn fingerprint(instance: &Instance) -> String {
    let mut hash = Sha256::new();
    for part in [
        instance.name.as_str(),
        &instance.token.0,
        &instance.element.id.to_string(),
        &instance.element.key,
        &instance.element.name,
        if instance.disabled {
            "disabled"
        } else {
            "enabled"
        },
        if instance.valid { "valid" } else { "invalid" },
    ] {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The decisions for `instances` against `applications`, in instance id order, then the
/// deletions; refused when more than `max_deletes` would be deleted.
pub fn plan(
    instances: &[Instance],
    applications: &[Application],
    settings: &Settings,
) -> Result<Vec<Action>, PlanError> {
    let mut actions = Vec::new();
    // Ours, by instance id; several applications for one instance: the one with the
    // expected name is kept, the others deleted.
    let mut ours: BTreeMap<&str, Vec<&Application>> = BTreeMap::new();
    for application in applications {
        if application.context == settings.context {
            ours.entry(application.instance_id.as_str())
                .or_default()
                .push(application);
        }
    }
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by_key(|i| i.id);
    sorted.dedup_by_key(|i| i.id);
    let mut deletes = Vec::new();
    for instance in sorted {
        let id = instance.id.to_string();
        let found = ours.remove(id.as_str()).unwrap_or_default();
        let name = match application_name(&settings.prefix, instance) {
            Ok(name) => name,
            Err(why) => {
                actions.push(Action::Skipped {
                    what: format!("instance {id} ({})", instance.name),
                    why,
                });
                continue;
            }
        };
        let (kept, extra) = keep_one(found, &name);
        for application in extra {
            deletes.push(Action::Delete {
                application: application.clone(),
                why: format!("a second application for instance {id}"),
            });
        }
        // Compass cannot rename an application: one under another name (the prefix
        // changed) is replaced.
        let kept = match kept {
            Some(application) if application.name != name => {
                deletes.push(Action::Delete {
                    application: application.clone(),
                    why: format!(
                        "instance {id}'s application is now named {name} (applicationPrefix changed)"
                    ),
                });
                None
            }
            kept => kept,
        };
        let usable = instance.valid && !instance.disabled;
        if !usable {
            let state = if instance.disabled {
                "disabled"
            } else {
                "invalid"
            };
            match kept {
                Some(application) if settings.sync_disabled => deletes.push(Action::Delete {
                    application: application.clone(),
                    why: format!("instance {id} is {state} (syncDisabledInstances)"),
                }),
                Some(application) => actions.push(Action::Unchanged {
                    application: application.clone(),
                }),
                None => actions.push(Action::Skipped {
                    what: format!("instance {id} ({})", instance.name),
                    why: format!("the instance is {state}"),
                }),
            }
            continue;
        }
        actions.push(match kept {
            None => Action::Create {
                instance: instance.clone(),
            },
            Some(application) if !application.has_api_definition() => Action::Repair {
                application: application.clone(),
                instance: instance.clone(),
            },
            Some(application)
                if application.fingerprint.as_deref() != Some(fingerprint(instance).as_str())
                    || application.shard.as_deref() != Some(shard_of(instance.id).as_str()) =>
            {
                Action::Update {
                    application: application.clone(),
                    instance: instance.clone(),
                }
            }
            Some(application) => Action::Unchanged {
                application: application.clone(),
            },
        });
    }
    for (id, applications) in ours {
        for application in applications {
            deletes.push(Action::Delete {
                application: application.clone(),
                why: format!("instance {id} is gone"),
            });
        }
    }
    if deletes.len() > settings.max_deletes {
        return Err(PlanError::TooManyDeletes {
            count: deletes.len(),
            max: settings.max_deletes,
        });
    }
    actions.extend(deletes);
    Ok(actions)
}

/// The application named `name` (else the first), and the others.
fn keep_one<'a>(
    mut found: Vec<&'a Application>,
    name: &str,
) -> (Option<&'a Application>, Vec<&'a Application>) {
    let at = found.iter().position(|a| a.name == name).unwrap_or(0);
    if found.is_empty() {
        return (None, Vec::new());
    }
    let kept = found.remove(at);
    (Some(kept), found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &str = "api.openconnectors.example.com";

    fn settings() -> Settings {
        Settings {
            prefix: "oc".into(),
            context: CONTEXT.into(),
            sync_disabled: false,
            max_deletes: 10,
        }
    }

    fn instance(id: i64, name: &str) -> Instance {
        Instance {
            id,
            name: name.into(),
            token: Token(format!("token-{id}")),
            disabled: false,
            valid: true,
            element: Element {
                id: 7,
                name: "Salesforce".into(),
                key: "sfdc".into(),
            },
        }
    }

    /// The application a run wrote for `instance`.
    fn written(instance: &Instance) -> Application {
        Application {
            id: format!("app-{}", instance.id),
            name: format!("oc-{}", instance.id),
            context: CONTEXT.into(),
            instance_id: instance.id.to_string(),
            fingerprint: Some(fingerprint(instance)),
            shard: Some(shard_of(instance.id)),
            bundle_id: Some(format!("bundle-{}", instance.id)),
            api_definition_id: Some(format!("api-{}", instance.id)),
        }
    }

    fn verbs(actions: &[Action]) -> Vec<&'static str> {
        actions.iter().map(Action::verb).collect()
    }

    #[test]
    fn a_first_run_creates_one_application_per_instance_and_a_second_does_nothing() {
        let instances = [instance(2, "b"), instance(1, "a")];
        let first = plan(&instances, &[], &settings()).expect("plan");
        assert_eq!(verbs(&first), ["create", "create"]);
        let applications: Vec<Application> = instances.iter().map(written).collect();
        let second = plan(&instances, &applications, &settings()).expect("plan");
        assert_eq!(verbs(&second), ["unchanged", "unchanged"]);
        assert!(second.iter().all(|a| !a.mutates()));
    }

    #[test]
    fn a_renamed_instance_is_updated_and_a_broken_application_repaired() {
        let before = [instance(1, "a"), instance(2, "b")];
        let mut applications: Vec<Application> = before.iter().map(written).collect();
        applications[1].api_definition_id = None;
        let after = [instance(1, "a renamed"), instance(2, "b")];
        let actions = plan(&after, &applications, &settings()).expect("plan");
        assert_eq!(verbs(&actions), ["update", "repair"]);
        // An application written before fingerprints (no label) is brought up to date.
        applications[1].api_definition_id = Some("api-2".into());
        applications[1].fingerprint = None;
        let actions = plan(&before, &applications, &settings()).expect("plan");
        assert_eq!(verbs(&actions), ["unchanged", "update"]);
        // So is one without its listing shard.
        applications[1].fingerprint = Some(fingerprint(&before[1]));
        applications[0].shard = None;
        let actions = plan(&before, &applications, &settings()).expect("plan");
        assert_eq!(verbs(&actions), ["update", "unchanged"]);
    }

    #[test]
    fn a_vanished_instance_is_deleted_and_other_contexts_are_never_touched() {
        let instances = [instance(1, "a")];
        let mut foreign = written(&instance(5, "elsewhere"));
        foreign.context = "another.host".into();
        let applications = vec![written(&instances[0]), written(&instance(3, "c")), foreign];
        let actions = plan(&instances, &applications, &settings()).expect("plan");
        assert_eq!(verbs(&actions), ["unchanged", "delete"]);
        match &actions[1] {
            Action::Delete { application, why } => {
                assert_eq!(application.instance_id, "3");
                assert!(why.contains("gone"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn more_deletions_than_allowed_refuse_the_plan() {
        let applications: Vec<Application> =
            (1..=4).map(|id| written(&instance(id, "x"))).collect();
        let mut settings = settings();
        settings.max_deletes = 3;
        let refused = plan(&[], &applications, &settings).expect_err("too many");
        assert_eq!(refused, PlanError::TooManyDeletes { count: 4, max: 3 });
        assert!(refused.to_string().contains("--max-deletes 4"));
        settings.max_deletes = 4;
        let actions = plan(&[], &applications, &settings).expect("plan");
        assert_eq!(verbs(&actions), ["delete"; 4]);
    }

    #[test]
    fn disabled_instances_are_not_created_and_kept_unless_the_config_says_so() {
        let mut disabled = instance(1, "a");
        disabled.disabled = true;
        let mut invalid = instance(2, "b");
        invalid.valid = false;
        let instances = [disabled.clone(), invalid.clone()];
        let actions = plan(&instances, &[], &settings()).expect("plan");
        assert_eq!(verbs(&actions), ["skipped", "skipped"]);
        let applications = vec![written(&disabled), written(&invalid)];
        let kept = plan(&instances, &applications, &settings()).expect("plan");
        assert_eq!(verbs(&kept), ["unchanged", "unchanged"]);
        let mut sync = settings();
        sync.sync_disabled = true;
        let deleted = plan(&instances, &applications, &sync).expect("plan");
        assert_eq!(verbs(&deleted), ["delete", "delete"]);
    }

    #[test]
    fn a_second_application_for_one_instance_is_deleted_the_named_one_kept() {
        let one = instance(1, "a");
        let mut copy = written(&one);
        copy.id = "copy".into();
        copy.name = "oc-1-copy".into();
        let applications = vec![copy, written(&one)];
        let actions = plan(std::slice::from_ref(&one), &applications, &settings()).expect("plan");
        assert_eq!(verbs(&actions), ["unchanged", "delete"]);
        match &actions[1] {
            Action::Delete { application, .. } => assert_eq!(application.id, "copy"),
            other => panic!("{other:?}"),
        }
        // A new prefix: the application under the old name is replaced.
        let mut settings = settings();
        settings.prefix = "connector".into();
        let actions = plan(&[one], &[written(&instance(1, "a"))], &settings).expect("plan");
        assert_eq!(verbs(&actions), ["create", "delete"]);
    }

    #[test]
    fn a_new_instance_token_updates_the_application_and_is_never_printed() {
        let before = instance(1, "a");
        let mut after = before.clone();
        after.token = Token("rotated".into());
        let actions = plan(
            std::slice::from_ref(&after),
            &[written(&before)],
            &settings(),
        )
        .expect("plan");
        assert_eq!(verbs(&actions), ["update"]);
        let printed = format!("{actions:?}");
        assert!(!printed.contains("rotated"), "{printed}");
        assert!(!fingerprint(&after).contains("rotated"));
    }

    #[test]
    fn an_instance_id_that_makes_no_valid_name_is_skipped() {
        let mut settings = settings();
        settings.prefix = "a".repeat(25);
        let actions = plan(&[instance(12_345_678_901, "huge")], &[], &settings).expect("plan");
        assert_eq!(verbs(&actions), ["skipped"]);
    }

    #[test]
    fn the_description_is_cut_on_a_character_boundary() {
        let long = instance(1, &"ü".repeat(3000));
        let text = description(&long);
        assert_eq!(text.chars().count(), 2000);
        assert!(text.starts_with("SAP Cloud Platform Open Connectors Salesforce: üü"));
        assert_eq!(fingerprint(&long).len(), 24);
        assert_ne!(fingerprint(&long), fingerprint(&instance(1, "other")));
    }
}
