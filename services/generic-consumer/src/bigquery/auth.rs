//! Google access tokens from the mounted service-account key file: a JWT signed with the
//! file's key is exchanged at the file's own `token_uri` (`gcp_auth`), the token cached
//! and refreshed before it expires; a request answered 401 / UNAUTHENTICATED drops the
//! cached token once so that the next one is fresh. When that fresh token is refused
//! too before any request accepted it, the key is refused for good: the sink stops the
//! instance rather than asking for tokens forever.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use gcp_auth::{CustomServiceAccount, Token, TokenProvider as _};

/// What the sink asks for: BigQuery, tables and data.
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/bigquery"];
/// How long a token exchange may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// The credentials of one key file and its cached token.
pub struct Auth {
    path: PathBuf,
    /// The file's text, kept to start over with an empty cache after a 401.
    key: String,
    account: Mutex<Arc<CustomServiceAccount>>,
    state: Mutex<State>,
}

/// What is known of the tokens handed out.
#[derive(Default)]
struct State {
    /// The last token handed out (refreshes are counted by it changing).
    last: Option<Arc<Token>>,
    /// A token was refused and dropped; the next one is a renewal.
    dropped: bool,
    /// The last token is a renewal that no request has accepted yet.
    unproven: bool,
    /// A renewed token was refused: the key is refused.
    key_refused: bool,
}

/// What a refusal of a token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token was dropped (or already had been): the next one is new.
    Renewed,
    /// A renewed token was refused before anything accepted it: the key is refused.
    KeyRefused,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Reads and parses the key file; the error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let key = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "GOOGLE_APPLICATION_CREDENTIALS: cannot read {}: {e}",
                path.display()
            )
        })?;
        let account = parse(path, &key)?;
        Ok(Self {
            path: path.to_owned(),
            key,
            account: Mutex::new(Arc::new(account)),
            state: Mutex::default(),
        })
    }

    /// The service account's email (`client_email`), for messages.
    pub fn describe(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.key)
            .ok()
            .and_then(|v| v.get("client_email")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// A valid access token: the cached one, or a new one from `token_uri`.
    pub async fn token(&self) -> Result<Arc<Token>, AuthError> {
        let account = Arc::clone(&self.account.lock().unwrap_or_else(|e| e.into_inner()));
        let token = tokio::time::timeout(TOKEN_TIMEOUT, account.token(SCOPES))
            .await
            .map_err(|_| {
                AuthError(format!(
                    "no access token within {} s from the key file's token_uri",
                    TOKEN_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| AuthError(format!("cannot get an access token: {}", super::chain(&e))))?;
        let mut state = self.state();
        if state.last.as_ref().is_none_or(|t| !Arc::ptr_eq(t, &token)) {
            metrics::counter!("bigquery_token_refreshes_total").increment(1);
            state.last = Some(Arc::clone(&token));
            state.unproven = std::mem::take(&mut state.dropped);
        }
        Ok(token)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a renewed token was refused before anything accepted it.
    pub fn key_refused(&self) -> bool {
        self.state().key_refused
    }

    /// A request with `token` succeeded: a renewed token is proven.
    pub fn accepted(&self, token: &Arc<Token>) {
        let mut state = self.state();
        if state.unproven && state.last.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            state.unproven = false;
        }
    }

    /// `token` was refused (401 / UNAUTHENTICATED): drops it, so the next
    /// [`Auth::token`] fetches a new one. Several requests refused with the same token
    /// drop it once. A renewed token refused before anything accepted it means the key
    /// is refused.
    pub fn refused(&self, token: &Arc<Token>) -> Refusal {
        let mut state = self.state();
        if !state.last.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            return Refusal::Renewed;
        }
        if state.unproven {
            state.key_refused = true;
            return Refusal::KeyRefused;
        }
        if let Ok(fresh) = parse(&self.path, &self.key) {
            *self.account.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
            state.last = None;
            state.dropped = true;
        }
        Refusal::Renewed
    }
}

fn parse(path: &Path, key: &str) -> Result<CustomServiceAccount, String> {
    CustomServiceAccount::from_json(key).map_err(|e| {
        format!(
            "GOOGLE_APPLICATION_CREDENTIALS: {} is not a service-account key file: {e}",
            path.display()
        )
    })
}
