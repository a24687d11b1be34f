//! The Compass side: the Director's GraphQL API, as the job's integration system.
//!
//! Every operation is in `graphql/queries.graphql`, checked by `graphql_client` against
//! `graphql/director.graphql` (the subset of the Director schema the job uses) when the
//! crate compiles. Every call carries the `tenant` header and a bearer token from the
//! OAuth2 client-credentials grant at `tokenUrl` (client id and secret in HTTP Basic); the
//! token is cached, fetched again shortly before it expires, and once more when the
//! Director answers 401. GraphQL `errors` in a 200 answer are errors.

use std::time::{Duration, Instant};

use graphql_client::GraphQLQuery;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::{Mutex, Semaphore};
use url::Url;

use crate::{
    config::CompassConfig,
    http::{CallError, Caller, RetryPolicy, excerpt},
    plan::{Application, SHARDS},
};

/// The label that ties an application to its instance.
pub const LABEL: &str = "open_connectors";
/// The label holding [`crate::plan::fingerprint`] of the instance last written.
pub const FINGERPRINT_LABEL: &str = "open_connectors_fingerprint";
/// The label holding [`crate::plan::shard_of`] the instance id: the listing's shard.
pub const SHARD_LABEL: &str = "open_connectors_shard";
/// The applications' provider.
pub const PROVIDER_NAME: &str = "SAP Cloud Platform Open Connectors";
/// Applications asked for per page: the most the Director serves.
pub const PAGE_SIZE: i64 = 10;
/// The token scopes asked for.
pub const SCOPES: &str = "application:read application:write";

const MAX_PAGES: usize = 100_000;
const MAX_BODY: usize = 32 << 20;
/// A token is fetched again when it has less than this left.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// The lifetime assumed for a token whose answer gives none.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

// The Director's custom scalars, as the generated code names them.
pub type Any = serde_json::Value;
pub type Labels = serde_json::Value;
pub type PageCursor = String;
#[allow(clippy::upper_case_acronyms)]
pub type CLOB = String;
pub type HttpHeadersSerialized = String;
#[allow(clippy::upper_case_acronyms)]
pub type JSONSchema = String;

macro_rules! operation {
    ($name:ident) => {
        #[derive(GraphQLQuery)]
        #[graphql(
            schema_path = "graphql/director.graphql",
            query_path = "graphql/queries.graphql",
            response_derives = "Debug",
            variables_derives = "Clone",
            skip_serializing_none
        )]
        pub struct $name;
    };
}

operation!(Applications);
operation!(RegisterApplication);
operation!(UpdateApplication);
operation!(UnregisterApplication);
operation!(SetApplicationLabel);
operation!(AddBundle);
operation!(UpdateBundle);
operation!(AddAPIDefinitionToBundle);
operation!(UpdateAPIDefinition);

/// What an instance's application looks like in Compass.
#[derive(Debug, Clone)]
pub struct Desired {
    pub name: String,
    pub description: String,
    /// `open_connectors: {connectorInstanceContext, connectorInstanceID}`.
    pub label: serde_json::Value,
    pub fingerprint: String,
    /// The `open_connectors_shard` label.
    pub shard: String,
    pub integration_system_id: Option<String>,
    pub bundle_name: String,
    /// The `Authorization` header the runtime calls the instance with, as the Director's
    /// `HttpHeadersSerialized` (`{"Authorization": ["User .., Organization .., Element .."]}`).
    pub auth_headers: SecretString,
    /// The API definition: named after the element, pointing at the tenant's API.
    pub api_name: String,
    pub target_url: String,
    /// The OpenAPI document (JSON text).
    pub spec: String,
}

impl Desired {
    /// The labels of a new application.
    pub fn labels(&self) -> serde_json::Value {
        serde_json::json!({
            LABEL: self.label,
            FINGERPRINT_LABEL: self.fingerprint,
            SHARD_LABEL: self.shard,
        })
    }
}

// One constructor per generated module: each operation has its own copy of the input types.
macro_rules! api_definition_input {
    ($module:ident, $desired:expr) => {
        $module::APIDefinitionInput {
            name: $desired.api_name.clone(),
            description: Some(format!(
                "OpenAPI of the Open Connectors {} API",
                $desired.api_name
            )),
            target_url: $desired.target_url.clone(),
            group: None,
            spec: Some($module::APISpecInput {
                data: Some($desired.spec.clone()),
                type_: $module::APISpecType::OPEN_API,
                format: $module::SpecFormat::JSON,
            }),
        }
    };
}

macro_rules! auth_input {
    ($module:ident, $desired:expr) => {
        Some($module::AuthInput {
            additional_headers_serialized: Some($desired.auth_headers.expose_secret().to_owned()),
        })
    };
}

macro_rules! bundle_create_input {
    ($module:ident, $desired:expr) => {
        $module::BundleCreateInput {
            name: $desired.bundle_name.clone(),
            description: Some($desired.description.clone()),
            instance_auth_request_input_schema: None,
            default_instance_auth: auth_input!($module, $desired),
            api_definitions: Some(vec![api_definition_input!($module, $desired)]),
        }
    };
}

/// The cached bearer token.
struct Token {
    value: SecretString,
    renew_at: Instant,
    /// Which fetch it came from: a 401 clears only the token it was sent with.
    generation: u64,
}

/// A client of one tenant of one Director.
pub struct Compass {
    caller: Caller,
    director: Url,
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    tenant: String,
    token: Mutex<(Option<Token>, u64)>,
    /// Listing calls under way at once (`concurrency`).
    listing: Semaphore,
}

impl std::fmt::Debug for Compass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compass")
            .field("director", &self.director.as_str())
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Compass {
    /// A client making at most `concurrency` listing calls at once.
    pub fn new(
        config: &CompassConfig,
        client: reqwest::Client,
        policy: RetryPolicy,
        concurrency: usize,
    ) -> Result<Self, String> {
        let parse = |key: &str, url: &str| {
            Url::parse(url).map_err(|e| format!("compass.{key}: {url:?}: {e}"))
        };
        Ok(Self {
            caller: Caller::new(client, config.timeout(), policy, MAX_BODY),
            director: parse("directorURL", &config.director_url)?,
            token_url: parse("tokenUrl", &config.token_url)?,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            tenant: config.tenant_id.trim().to_owned(),
            token: Mutex::new((None, 0)),
            listing: Semaphore::new(concurrency.max(1)),
        })
    }

    /// (calls, retries) so far, token calls included.
    pub fn counts(&self) -> (u64, u64) {
        self.caller.counts()
    }

    /// A token with more than the margin left, and its generation.
    async fn bearer(&self) -> Result<(SecretString, u64), CallError> {
        let mut state = self.token.lock().await;
        if let Some(token) = &state.0
            && Instant::now() < token.renew_at
        {
            return Ok((token.value.clone(), token.generation));
        }
        let what = "POST tokenUrl (client credentials)";
        let reply = self
            .caller
            .call(what, |client| {
                client
                    .post(self.token_url.clone())
                    .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
                    .header(reqwest::header::ACCEPT, "application/json")
                    .form(&[("grant_type", "client_credentials"), ("scope", SCOPES)])
            })
            .await
            .map_err(|err| match err {
                CallError::Status { status, body, .. } if (400..500).contains(&status) => {
                    CallError::Refused {
                        what: what.into(),
                        error: format!(
                            "the token endpoint refused the client credentials (HTTP {status}): \
                             check compass.clientID and compass.clientSecret ({body})"
                        ),
                    }
                }
                other => other,
            })?;
        let answer: TokenAnswer =
            serde_json::from_slice(&reply.body).map_err(|e| CallError::Refused {
                what: what.into(),
                error: format!("the answer has no access_token: {e}"),
            })?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        // Renewed ahead of expiry: by the margin, or a tenth of a short lifetime.
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 10));
        state.1 += 1;
        let token = Token {
            value: SecretString::from(answer.access_token),
            renew_at,
            generation: state.1,
        };
        let out = (token.value.clone(), token.generation);
        state.0 = Some(token);
        tracing::debug!(lifetime_s = lifetime.as_secs(), "token fetched");
        Ok(out)
    }

    /// Forgets the token of `generation` (a 401 came back with it).
    async fn invalidate(&self, generation: u64) {
        let mut state = self.token.lock().await;
        if state.0.as_ref().is_some_and(|t| t.generation == generation) {
            state.0 = None;
        }
    }

    /// Sends one operation; a 401 fetches a new token and sends it once more.
    async fn graphql<Q: GraphQLQuery>(
        &self,
        what: &str,
        variables: Q::Variables,
    ) -> Result<Q::ResponseData, CallError> {
        let body =
            bytes::Bytes::from(serde_json::to_vec(&Q::build_query(variables)).map_err(|e| {
                CallError::Refused {
                    what: what.into(),
                    error: format!("cannot encode the request: {e}"),
                }
            })?);
        let mut renewed = false;
        let reply = loop {
            let (token, generation) = self.bearer().await?;
            let sent = self
                .caller
                .call(what, |client| {
                    client
                        .post(self.director.clone())
                        .bearer_auth(token.expose_secret())
                        .header("tenant", &self.tenant)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .header(reqwest::header::ACCEPT, "application/json")
                        .body(body.clone())
                })
                .await;
            match sent {
                Err(err) if err.status() == Some(401) && !renewed => {
                    tracing::info!("the Director answered 401: fetching a new token");
                    self.invalidate(generation).await;
                    renewed = true;
                }
                other => break other?,
            }
        };
        let answer: graphql_client::Response<Q::ResponseData> = serde_json::from_slice(&reply.body)
            .map_err(|e| CallError::Refused {
                what: what.into(),
                error: format!("not a GraphQL answer: {e}: {}", excerpt(&reply.body)),
            })?;
        if let Some(errors) = answer.errors.filter(|e| !e.is_empty()) {
            let messages: Vec<String> = errors
                .iter()
                .map(|e| excerpt(e.message.as_bytes()))
                .collect();
            return Err(CallError::Refused {
                what: what.into(),
                error: messages.join("; "),
            });
        }
        answer.data.ok_or_else(|| CallError::Refused {
            what: what.into(),
            error: "the answer has neither data nor errors".into(),
        })
    }

    /// Every application labelled `open_connectors` with this `context` (the Director
    /// filters by the label's JSON content: `value @> query`).
    ///
    /// The Director pages 10 applications at a time and each page names the next, so one
    /// listing of N applications takes N/10 calls one after the other. The job lists its
    /// [`SHARDS`] shards at once instead (`open_connectors_shard` label), next to one
    /// call that counts all of them; when the shards do not add up to the count (an
    /// application without the shard label: written by the Go job, or by hand), it lists
    /// them all, page after page, and the run labels what lacked it.
    pub async fn applications(&self, context: &str) -> Result<Vec<Application>, CallError> {
        let ours = applications::LabelFilter {
            key: LABEL.into(),
            query: Some(serde_json::json!({ "connectorInstanceContext": context }).to_string()),
        };
        let shard_filter = |shard: i64| applications::LabelFilter {
            key: SHARD_LABEL.into(),
            query: Some(serde_json::Value::String(shard.to_string()).to_string()),
        };
        let count = self.page(vec![ours.clone()], 1, None, "count applications");
        let shards = futures::future::try_join_all((0..SHARDS).map(|shard| {
            let filter = vec![ours.clone(), shard_filter(shard)];
            async move { self.list(filter, &format!("shard {shard}")).await }
        }));
        let (count, shards) = tokio::try_join!(count, shards)?;
        let total = usize::try_from(count.total_count).unwrap_or(usize::MAX);
        let found: Vec<Application> = shards.into_iter().flatten().collect();
        if found.len() == total {
            return Ok(found);
        }
        tracing::info!(
            total,
            sharded = found.len(),
            "applications without the shard label: listing them all, page after page"
        );
        self.list(vec![ours], "all").await
    }

    /// Every application the filters match, page after page.
    async fn list(
        &self,
        filter: Vec<applications::LabelFilter>,
        what: &str,
    ) -> Result<Vec<Application>, CallError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for page in 1.. {
            if page > MAX_PAGES {
                return Err(CallError::Refused {
                    what: format!("query applications ({what})"),
                    error: format!("the listing has more than {MAX_PAGES} pages"),
                });
            }
            let label = format!("query applications ({what}, page {page})");
            let data = self
                .page(filter.clone(), PAGE_SIZE, after.clone(), &label)
                .await?;
            found.extend(data.data.into_iter().filter_map(read_application));
            if !data.page_info.has_next_page {
                break;
            }
            let next = data.page_info.end_cursor;
            if next.is_empty() || after.as_deref() == Some(next.as_str()) {
                return Err(CallError::Refused {
                    what: label,
                    error: "hasNextPage without a new endCursor".into(),
                });
            }
            after = Some(next);
        }
        Ok(found)
    }

    /// One page, at most `concurrency` listing calls under way at once.
    async fn page(
        &self,
        filter: Vec<applications::LabelFilter>,
        first: i64,
        after: Option<String>,
        what: &str,
    ) -> Result<applications::ApplicationsApplications, CallError> {
        let _permit = self
            .listing
            .acquire()
            .await
            .map_err(|_| CallError::Refused {
                what: what.into(),
                error: "the listing was stopped".into(),
            })?;
        let data = self
            .graphql::<Applications>(
                what,
                applications::Variables {
                    filter: Some(filter),
                    first: Some(first),
                    after,
                },
            )
            .await?;
        Ok(data.applications)
    }

    /// Registers the application with its bundle and API definition; its id.
    pub async fn register(&self, desired: &Desired) -> Result<String, CallError> {
        use register_application as op;
        let data = self
            .graphql::<RegisterApplication>(
                &format!("registerApplication {}", desired.name),
                op::Variables {
                    in_: op::ApplicationRegisterInput {
                        name: desired.name.clone(),
                        provider_name: Some(PROVIDER_NAME.into()),
                        description: Some(desired.description.clone()),
                        labels: Some(desired.labels()),
                        base_url: None,
                        integration_system_id: desired.integration_system_id.clone(),
                        bundles: Some(vec![bundle_create_input!(op, desired)]),
                    },
                },
            )
            .await?;
        Ok(data.register_application.id)
    }

    /// Brings the application's own fields up to date.
    pub async fn update_application(&self, id: &str, desired: &Desired) -> Result<(), CallError> {
        use update_application as op;
        self.graphql::<UpdateApplication>(
            &format!("updateApplication {}", desired.name),
            op::Variables {
                id: id.into(),
                in_: op::ApplicationUpdateInput {
                    provider_name: Some(PROVIDER_NAME.into()),
                    description: Some(desired.description.clone()),
                    base_url: None,
                    integration_system_id: desired.integration_system_id.clone(),
                },
            },
        )
        .await
        .map(drop)
    }

    /// Brings the bundle (its default auth) up to date.
    pub async fn update_bundle(&self, bundle_id: &str, desired: &Desired) -> Result<(), CallError> {
        use update_bundle as op;
        self.graphql::<UpdateBundle>(
            &format!("updateBundle {}", desired.name),
            op::Variables {
                id: bundle_id.into(),
                in_: op::BundleUpdateInput {
                    name: desired.bundle_name.clone(),
                    description: Some(desired.description.clone()),
                    instance_auth_request_input_schema: None,
                    default_instance_auth: auth_input!(op, desired),
                },
            },
        )
        .await
        .map(drop)
    }

    /// Rewrites the API definition (its spec included).
    pub async fn update_api_definition(
        &self,
        api_id: &str,
        desired: &Desired,
    ) -> Result<(), CallError> {
        use update_api_definition as op;
        self.graphql::<UpdateAPIDefinition>(
            &format!("updateAPIDefinition {}", desired.name),
            op::Variables {
                id: api_id.into(),
                in_: api_definition_input!(op, desired),
            },
        )
        .await
        .map(drop)
    }

    /// Adds a bundle carrying the API definition to an application that has none.
    pub async fn add_bundle(
        &self,
        application_id: &str,
        desired: &Desired,
    ) -> Result<(), CallError> {
        use add_bundle as op;
        self.graphql::<AddBundle>(
            &format!("addBundle {}", desired.name),
            op::Variables {
                application_id: application_id.into(),
                in_: bundle_create_input!(op, desired),
            },
        )
        .await
        .map(drop)
    }

    /// Adds the API definition to a bundle that has none.
    pub async fn add_api_definition(
        &self,
        bundle_id: &str,
        desired: &Desired,
    ) -> Result<(), CallError> {
        use add_api_definition_to_bundle as op;
        self.graphql::<AddAPIDefinitionToBundle>(
            &format!("addAPIDefinitionToBundle {}", desired.name),
            op::Variables {
                bundle_id: bundle_id.into(),
                in_: api_definition_input!(op, desired),
            },
        )
        .await
        .map(drop)
    }

    /// Sets one label of an application.
    pub async fn set_label(
        &self,
        application_id: &str,
        name: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), CallError> {
        self.graphql::<SetApplicationLabel>(
            &format!("setApplicationLabel {name} {key}"),
            set_application_label::Variables {
                application_id: application_id.into(),
                key: key.into(),
                value,
            },
        )
        .await
        .map(drop)
    }

    /// Unregisters the application.
    pub async fn unregister(&self, id: &str, name: &str) -> Result<(), CallError> {
        self.graphql::<UnregisterApplication>(
            &format!("unregisterApplication {name}"),
            unregister_application::Variables { id: id.into() },
        )
        .await
        .map(drop)
    }
}

/// An application of the listing with a readable `open_connectors` label; others are
/// not the job's and are left out.
fn read_application(
    application: applications::ApplicationsApplicationsData,
) -> Option<Application> {
    let labels = application.labels.as_ref()?;
    let label = labels.get(LABEL)?;
    let context = label.get("connectorInstanceContext")?.as_str()?.to_owned();
    let instance_id = match label.get("connectorInstanceID")? {
        serde_json::Value::String(id) => id.clone(),
        serde_json::Value::Number(id) => id.to_string(),
        _ => return None,
    };
    let text_label = |key: &str| labels.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let fingerprint = text_label(FINGERPRINT_LABEL);
    let shard = text_label(SHARD_LABEL);
    let bundles = application.bundles.map(|b| b.data).unwrap_or_default();
    // The bundle with an API definition, else the first one.
    let with_api = bundles.iter().find_map(|bundle| {
        let api = bundle.api_definitions.as_ref()?.data.first()?;
        Some((bundle.id.clone(), api.id.clone()))
    });
    let (bundle_id, api_definition_id) = match with_api {
        Some((bundle, api)) => (Some(bundle), Some(api)),
        None => (bundles.first().map(|b| b.id.clone()), None),
    };
    Some(Application {
        id: application.id,
        name: application.name,
        context,
        instance_id,
        fingerprint,
        shard,
        bundle_id,
        api_definition_id,
    })
}
