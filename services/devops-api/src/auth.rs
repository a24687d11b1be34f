//! Who is calling: a bearer token from the tokens file (compared in constant time; the
//! file is read again when it changes), or the identity header nginx `auth_request` sets,
//! believed only from a trusted proxy.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use axum::http::{HeaderMap, HeaderName, header::AUTHORIZATION};
use secrecy::SecretString;

use crate::config::AuthConfig;

/// How often the tokens file is looked at for a change, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// The longest actor name taken from a token line or the identity header.
const MAX_ACTOR: usize = 128;

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `::1/128`, or a bare address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| "not an IP address".to_owned())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { address, prefix })
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, peer) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 401: nothing that could identify the caller.
    #[error(
        "a credential is required: Authorization: Bearer <token>, or the identity header from a trusted proxy"
    )]
    Missing,
    /// 403: a credential that is not valid.
    #[error("the credential is not valid")]
    Wrong,
}

struct Token {
    actor: String,
    token: SecretString,
}

/// The tokens file as last read.
struct Loaded {
    tokens: Vec<Token>,
    /// (modified, length) of the file when it was read.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The configured ways in.
pub struct Authenticator {
    tokens_file: Option<PathBuf>,
    loaded: Mutex<Loaded>,
    identity_header: HeaderName,
    trusted: Vec<Network>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The tokens of a file: `actor:token` per line.
fn read_tokens(path: &Path) -> Result<Vec<Token>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut tokens = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((actor, token)) = line.split_once(':') else {
            return Err(format!(
                "{} line {}: expected actor:token",
                path.display(),
                number + 1
            ));
        };
        let (actor, token) = (actor.trim(), token.trim());
        if actor.is_empty() || actor.len() > MAX_ACTOR || token.len() < 16 {
            return Err(format!(
                "{} line {}: an actor name (1-{MAX_ACTOR} characters) and a token of at least 16 characters",
                path.display(),
                number + 1
            ));
        }
        tokens.push(Token {
            actor: actor.to_owned(),
            token: SecretString::from(token.to_owned()),
        });
    }
    Ok(tokens)
}

impl Authenticator {
    /// Reads the tokens file (an unreadable or malformed one is an error: the API does not
    /// start without its credentials).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let (tokens, file_stamp) = match &config.tokens_file {
            Some(path) => (read_tokens(path)?, stamp(path)),
            None => (Vec::new(), None),
        };
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|p| Network::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tokens_file: config.tokens_file.clone(),
            loaded: Mutex::new(Loaded {
                tokens,
                stamp: file_stamp,
                checked: Instant::now(),
            }),
            identity_header: HeaderName::try_from(config.identity_header.as_str())
                .map_err(|e| e.to_string())?,
            trusted,
        })
    }

    /// The caller's actor name.
    pub fn authenticate(&self, headers: &HeaderMap, peer: IpAddr) -> Result<String, Refused> {
        if let Some(value) = headers.get(AUTHORIZATION) {
            let presented = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or(Refused::Wrong)?;
            return self.token_actor(presented).ok_or(Refused::Wrong);
        }
        if let Some(value) = headers.get(&self.identity_header) {
            if self.trusted.iter().any(|n| n.contains(peer)) {
                let actor = value.to_str().map_err(|_| Refused::Wrong)?.trim();
                if actor.is_empty()
                    || actor.len() > MAX_ACTOR
                    || actor.chars().any(|c| c.is_control())
                {
                    return Err(Refused::Wrong);
                }
                return Ok(actor.to_owned());
            }
            tracing::warn!(%peer, header = %self.identity_header, "identity header from an untrusted peer ignored");
        }
        Err(Refused::Missing)
    }

    fn token_actor(&self, presented: &str) -> Option<String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_if_changed(&mut loaded);
        // Every token is compared, in constant time: the time taken does not say which
        // token, or how much of one, matched.
        let mut found = None;
        for token in &loaded.tokens {
            if platform::secret::constant_time_eq(presented, &token.token) && found.is_none() {
                found = Some(token.actor.clone());
            }
        }
        found
    }

    fn reload_if_changed(&self, loaded: &mut Loaded) {
        let Some(path) = &self.tokens_file else {
            return;
        };
        if loaded.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        loaded.checked = Instant::now();
        let now = stamp(path);
        if now == loaded.stamp {
            return;
        }
        match read_tokens(path) {
            Ok(tokens) => {
                tracing::info!(path = %path.display(), tokens = tokens.len(), "tokens file read again");
                loaded.tokens = tokens;
                loaded.stamp = now;
            }
            // A half-written file: keep the tokens in force, try again at the next check.
            Err(error) => {
                tracing::error!(%error, "tokens file unreadable; the previous tokens stay in force")
            }
        }
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens_file", &self.tokens_file)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let net = Network::parse("10.1.0.0/16").expect("net");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(
            Network::parse("127.0.0.1")
                .expect("ip")
                .contains("::ffff:127.0.0.1".parse().expect("ip"))
        );
        assert!(
            Network::parse("0.0.0.0/0")
                .expect("all")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nope").is_err());
    }

    #[test]
    fn tokens_identify_the_header_only_from_trusted_peers_and_the_file_is_reread() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# ops\nalice:alice-token-0123456789\n").expect("write");
        let auth = Authenticator::new(&AuthConfig {
            tokens_file: Some(path.clone()),
            identity_header: "X-Auth-Request-User".into(),
            trusted_proxies: vec!["10.0.0.0/8".into()],
        })
        .expect("auth");
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let proxy: IpAddr = "10.0.0.5".parse().expect("ip");
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(
                    HeaderName::try_from(*k).expect("name"),
                    v.parse().expect("value"),
                );
            }
            map
        };
        let bearer = |t: &str| headers(&[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(
            auth.authenticate(&bearer("alice-token-0123456789"), local),
            Ok("alice".into())
        );
        assert_eq!(
            auth.authenticate(&bearer("wrong"), local),
            Err(Refused::Wrong)
        );
        assert_eq!(
            auth.authenticate(&headers(&[]), local),
            Err(Refused::Missing)
        );
        let user = headers(&[("x-auth-request-user", "bob@example.com")]);
        assert_eq!(
            auth.authenticate(&user, proxy),
            Ok("bob@example.com".into())
        );
        assert_eq!(auth.authenticate(&user, local), Err(Refused::Missing));

        // A rotated Secret: the old token stops working, the new one works.
        std::fs::write(&path, "alice:rotated-token-9876543210xx\n").expect("write");
        auth.loaded.lock().expect("lock").checked = Instant::now() - RELOAD_CHECK;
        assert_eq!(
            auth.authenticate(&bearer("alice-token-0123456789"), local),
            Err(Refused::Wrong)
        );
        assert_eq!(
            auth.authenticate(&bearer("rotated-token-9876543210xx"), local),
            Ok("alice".into())
        );
    }
}
