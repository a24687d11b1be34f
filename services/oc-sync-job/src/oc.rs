//! The Open Connectors side: the tenant's instances (filtered by tags, every page) and
//! each instance's OpenAPI document.
//!
//! Base URL `<scheme>://<hostname>/elements/api-v2`; every call carries
//! `Authorization: User <userSecret>, Organization <organizationSecret>`.

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use url::Url;

use crate::{
    config::OpenConnectorsConfig,
    http::{CallError, Caller, RetryPolicy},
    plan::{Element, Instance, Token},
};

/// Instances asked for per page.
pub const PAGE_SIZE: usize = 200;
/// The most pages a listing follows (a cursor that never ends is an error, not a hang).
const MAX_PAGES: usize = 5_000;
/// The largest listing page and the largest OpenAPI document read.
const MAX_LISTING_BYTES: usize = 32 << 20;
const MAX_DOCS_BYTES: usize = 16 << 20;
/// The response header carrying the next page's cursor.
pub const NEXT_PAGE_HEADER: &str = "elements-next-page-token";

/// A client of one Open Connectors tenant.
#[derive(Debug, Clone)]
pub struct OpenConnectors {
    caller: Caller,
    docs_caller: Caller,
    /// `.../elements/api-v2/`.
    api: Url,
    authorization: SecretString,
    tags: Vec<String>,
}

impl OpenConnectors {
    pub fn new(
        config: &OpenConnectorsConfig,
        client: reqwest::Client,
        policy: RetryPolicy,
    ) -> Result<Self, String> {
        let api = api_url(config)?;
        let authorization = SecretString::from(format!(
            "User {}, Organization {}",
            config.user_secret.expose_secret(),
            config.organization_secret.expose_secret()
        ));
        let caller = Caller::new(client, config.timeout(), policy, MAX_LISTING_BYTES);
        Ok(Self {
            docs_caller: caller.with_max_body(MAX_DOCS_BYTES),
            caller,
            api,
            authorization,
            tags: config.tags.clone(),
        })
    }

    /// (calls, retries) so far.
    pub fn counts(&self) -> (u64, u64) {
        self.caller.counts()
    }

    /// Every instance with all the configured tags, following the pages to the end.
    pub async fn instances(&self) -> Result<Vec<Instance>, CallError> {
        let url = self.api.join("instances").expect("a relative path joins");
        let mut instances = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 1.. {
            if page > MAX_PAGES {
                return Err(refused(
                    "GET /instances",
                    format!("the listing has more than {MAX_PAGES} pages"),
                ));
            }
            let what = format!("GET /instances (page {page})");
            let reply = self
                .caller
                .call(&what, |client| {
                    let mut query: Vec<(&str, &str)> =
                        self.tags.iter().map(|t| ("tags[]", t.as_str())).collect();
                    let size = PAGE_SIZE.to_string();
                    query.push(("pageSize", &size));
                    if let Some(cursor) = &cursor {
                        query.push(("nextPage", cursor));
                    }
                    client
                        .get(url.clone())
                        .query(&query)
                        .header(
                            reqwest::header::AUTHORIZATION,
                            self.authorization.expose_secret(),
                        )
                        .header(reqwest::header::ACCEPT, "application/json")
                })
                .await?;
            let entries: Vec<serde_json::Value> = serde_json::from_slice(&reply.body)
                .map_err(|e| refused(&what, format!("not a JSON array of instances: {e}")))?;
            for (at, entry) in entries.into_iter().enumerate() {
                instances.push(instance(entry).map_err(|e| {
                    refused(
                        &what,
                        format!("instance {at} of the page cannot be read: {e}"),
                    )
                })?);
            }
            let next = reply
                .headers
                .get(NEXT_PAGE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            match next {
                Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                    return Err(refused(
                        &what,
                        "the server gave the same next-page cursor twice".into(),
                    ));
                }
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(instances)
    }

    /// The instance's OpenAPI document (`GET /instances/{id}/docs?version=-1`), checked to
    /// be a JSON object, as its text.
    pub async fn docs(&self, instance_id: i64) -> Result<String, CallError> {
        let what = format!("GET /instances/{instance_id}/docs");
        let url = self
            .api
            .join(&format!("instances/{instance_id}/docs"))
            .expect("a relative path joins");
        let reply = self
            .docs_caller
            .call(&what, |client| {
                client
                    .get(url.clone())
                    .query(&[("version", "-1")])
                    .header(
                        reqwest::header::AUTHORIZATION,
                        self.authorization.expose_secret(),
                    )
                    .header(reqwest::header::ACCEPT, "application/json")
            })
            .await?;
        match serde_json::from_slice::<serde_json::Value>(&reply.body) {
            Ok(serde_json::Value::Object(_)) => String::from_utf8(reply.body.to_vec())
                .map_err(|_| refused(&what, "the document is not UTF-8".into())),
            Ok(_) => Err(refused(&what, "the document is not a JSON object".into())),
            Err(e) => Err(refused(&what, format!("the document is not JSON: {e}"))),
        }
    }
}

/// `<base>/elements/api-v2/` of the configured host.
pub fn api_url(config: &OpenConnectorsConfig) -> Result<Url, String> {
    config
        .base_url()?
        .join("elements/api-v2/")
        .map_err(|e| e.to_string())
}

fn refused(what: &str, error: String) -> CallError {
    CallError::Refused {
        what: what.to_owned(),
        error,
    }
}

/// An instance as the listing gives it (other fields are ignored).
#[derive(Deserialize)]
struct Listed {
    id: i64,
    name: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default = "valid_by_default")]
    valid: bool,
    element: ListedElement,
}

#[derive(Deserialize)]
struct ListedElement {
    id: i64,
    name: String,
    key: String,
}

fn valid_by_default() -> bool {
    true
}

fn instance(entry: serde_json::Value) -> Result<Instance, String> {
    let id = entry.get("id").cloned();
    let listed: Listed = serde_json::from_value(entry).map_err(|e| match id {
        Some(id) => format!("instance {id}: {e}"),
        None => e.to_string(),
    })?;
    Ok(Instance {
        id: listed.id,
        name: listed.name,
        token: Token(listed.token.unwrap_or_default()),
        disabled: listed.disabled,
        valid: listed.valid,
        element: Element {
            id: listed.element.id,
            name: listed.element.name,
            key: listed.element.key,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_read_from_the_listing_s_json_and_its_other_fields_ignored() {
        let entry = serde_json::json!({
            "id": 42, "name": "crm", "token": "t0k", "tags": ["a"], "createdDate": "x",
            "element": {"id": 3, "name": "Salesforce", "key": "sfdc", "logo": "x"}
        });
        let read = instance(entry).expect("readable");
        assert_eq!((read.id, read.name.as_str()), (42, "crm"));
        assert!(read.valid && !read.disabled);
        assert_eq!(read.token.0, "t0k");
        assert_eq!(read.element.key, "sfdc");
        let broken = instance(serde_json::json!({"id": 7, "name": "x"})).expect_err("no element");
        assert!(broken.contains("instance 7"), "{broken}");
        assert!(broken.contains("element"), "{broken}");
    }
}
