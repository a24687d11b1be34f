//! Who is calling, and which tenants it may touch: a bearer token from the tokens file
//! (compared in constant time; the file is read again when it changes), or the identity
//! header nginx `auth_request` sets, believed only from a trusted proxy. Each caller has a
//! [`Scope`]: every tenant, or the tenants matching its [`Pattern`]s (a token's own, from
//! its line; an identity's, from `auth.identity_scopes`).

use std::{
    collections::BTreeMap,
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
/// The longest pattern (a tenant name has at most 63 characters).
const MAX_PATTERN: usize = 128;

/// A glob over tenant names: `*` stands for any run of characters (none included), `?`
/// for exactly one, and every other character (`a-z`, `0-9`, `_`) for itself. It
/// matches a whole name: `teamb_*` matches `teamb_app`, not `teambx` nor `x_teamb_app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern of `a-z`, `0-9`, `_`, `*` and `?`, not empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a pattern cannot be empty".into());
        }
        if text.len() > MAX_PATTERN {
            return Err(format!("a pattern has at most {MAX_PATTERN} characters"));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '*' | '?'))
        {
            return Err(format!(
                "{c:?} is not allowed in a pattern (only a-z, 0-9, _, * and ?)"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` (a checked tenant name: ASCII) matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let (pattern, name) = (self.0.as_bytes(), name.as_bytes());
        let (mut p, mut n) = (0, 0);
        // The last `*` seen and the position in the name it was tried from: on a
        // mismatch it takes one more character. At most |pattern| x |name| steps.
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match pattern.get(p) {
                Some(b'*') => {
                    star = Some((p, n));
                    p += 1;
                }
                Some(&c) if c == b'?' || c == name[n] => {
                    p += 1;
                    n += 1;
                }
                _ => match star {
                    Some((star_p, star_n)) => {
                        star = Some((star_p, star_n + 1));
                        p = star_p + 1;
                        n = star_n + 1;
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }

    /// The same pattern for SQL `LIKE` (whose escape character is `\`): `_` is
    /// `\_`, `*` is `%`, `?` is `_`. A pattern has no `%` or `\` of its own.
    pub fn to_like(&self) -> String {
        let mut like = String::with_capacity(self.0.len() + 4);
        for c in self.0.chars() {
            match c {
                '_' => like.push_str("\\_"),
                '*' => like.push('%'),
                '?' => like.push('_'),
                other => like.push(other),
            }
        }
        like
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenants a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant: a token line without patterns.
    All,
    /// The tenants matching one of these; none: no tenant at all.
    Patterns(Vec<Pattern>),
}

impl Scope {
    /// No tenant: an identity the operator gave no patterns.
    pub fn none() -> Self {
        Self::Patterns(Vec::new())
    }

    /// `pattern[,pattern...]`.
    pub fn parse_list(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(|p| {
                Pattern::parse(p.trim()).map_err(|why| format!("pattern {:?}: {why}", p.trim()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Patterns)
    }

    /// Whether the caller may touch `tenant` (a checked tenant name).
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            Self::All => true,
            Self::Patterns(patterns) => patterns.iter().any(|p| p.matches(tenant)),
        }
    }

    /// The SQL `LIKE` patterns a tenant must match one of (`tenant LIKE ANY($1)`); `None`
    /// for every tenant, no filter.
    pub fn like_patterns(&self) -> Option<Vec<String>> {
        match self {
            Self::All => None,
            Self::Patterns(patterns) => Some(patterns.iter().map(Pattern::to_like).collect()),
        }
    }
}

/// An authenticated caller: its name (for the audit log) and its scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub actor: String,
    pub scope: Scope,
}

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
    scope: Scope,
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
    /// Identity actor -> its scope (an actor not listed has no tenant).
    identity_scopes: BTreeMap<String, Scope>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The tokens of a file: `actor:token` (every tenant) or `actor:token:pattern[,pattern...]`
/// (the tenants matching one of the patterns) per line. A token has no `:`.
fn read_tokens(path: &Path) -> Result<Vec<Token>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut tokens = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: &str| format!("{} line {}: {why}", path.display(), number + 1);
        let mut fields = line.splitn(3, ':');
        let (Some(actor), Some(token)) = (fields.next(), fields.next()) else {
            return Err(at(
                "expected actor:token or actor:token:pattern[,pattern...]",
            ));
        };
        let (actor, token) = (actor.trim(), token.trim());
        if actor.is_empty() || actor.len() > MAX_ACTOR || token.len() < 16 {
            return Err(at(&format!(
                "an actor name (1-{MAX_ACTOR} characters) and a token of at least 16 characters"
            )));
        }
        let scope = match fields.next() {
            None => Scope::All,
            Some(patterns) => Scope::parse_list(patterns).map_err(|why| at(&why))?,
        };
        tokens.push(Token {
            actor: actor.to_owned(),
            token: SecretString::from(token.to_owned()),
            scope,
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
        let identity_scopes = config
            .identity_scopes
            .iter()
            .map(|(actor, patterns)| {
                let patterns = patterns
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|why| format!("identity_scopes.{actor}: {why}"))?;
                Ok((actor.clone(), Scope::Patterns(patterns)))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
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
            identity_scopes,
        })
    }

    /// The caller: its actor name and scope.
    pub fn authenticate(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Identity, Refused> {
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
                // Two values: a proxy that appends instead of replacing, with the client's
                // own value first. Neither is believed.
                if headers
                    .get_all(&self.identity_header)
                    .iter()
                    .nth(1)
                    .is_some()
                {
                    tracing::warn!(%peer, header = %self.identity_header, "identity header given twice: refused");
                    return Err(Refused::Wrong);
                }
                let actor = value.to_str().map_err(|_| Refused::Wrong)?.trim();
                if actor.is_empty()
                    || actor.len() > MAX_ACTOR
                    || actor.chars().any(|c| c.is_control())
                {
                    return Err(Refused::Wrong);
                }
                // An actor the operator gave no patterns is authenticated, for no tenant.
                let scope = self
                    .identity_scopes
                    .get(actor)
                    .cloned()
                    .unwrap_or_else(Scope::none);
                return Ok(Identity {
                    actor: actor.to_owned(),
                    scope,
                });
            }
            tracing::warn!(%peer, header = %self.identity_header, "identity header from an untrusted peer ignored");
        }
        Err(Refused::Missing)
    }

    fn token_actor(&self, presented: &str) -> Option<Identity> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.reload_if_changed(&mut loaded);
        // Every token is compared, in constant time: the time taken does not say which
        // token, or how much of one, matched.
        let mut found = None;
        for token in &loaded.tokens {
            if platform::secret::constant_time_eq(presented, &token.token) && found.is_none() {
                found = Some(Identity {
                    actor: token.actor.clone(),
                    scope: token.scope.clone(),
                });
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::try_from(*k).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    fn bearer(token: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    fn config(tokens_file: Option<PathBuf>) -> AuthConfig {
        AuthConfig {
            tokens_file,
            identity_header: "X-Auth-Request-User".into(),
            trusted_proxies: vec!["10.0.0.0/8".into()],
            identity_scopes: BTreeMap::new(),
        }
    }

    fn identity(actor: &str, scope: Scope) -> Result<Identity, Refused> {
        Ok(Identity {
            actor: actor.into(),
            scope,
        })
    }

    fn patterns(list: &[&str]) -> Scope {
        Scope::Patterns(
            list.iter()
                .map(|p| Pattern::parse(p).expect("pattern"))
                .collect(),
        )
    }

    #[test]
    fn tokens_identify_the_header_only_from_trusted_peers_and_the_file_is_reread() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# ops\nalice:alice-token-0123456789\n").expect("write");
        let auth = Authenticator::new(&config(Some(path.clone()))).expect("auth");
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let proxy: IpAddr = "10.0.0.5".parse().expect("ip");
        assert_eq!(
            auth.authenticate(&bearer("alice-token-0123456789"), local),
            identity("alice", Scope::All)
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
            identity("bob@example.com", Scope::none())
        );
        assert_eq!(auth.authenticate(&user, local), Err(Refused::Missing));

        // A rotated Secret: the old token stops working, the new one works, with the
        // scope its line gives now.
        std::fs::write(&path, "alice:rotated-token-9876543210xx:team_a_*\n").expect("write");
        auth.loaded.lock().expect("lock").checked = Instant::now() - RELOAD_CHECK;
        assert_eq!(
            auth.authenticate(&bearer("alice-token-0123456789"), local),
            Err(Refused::Wrong)
        );
        assert_eq!(
            auth.authenticate(&bearer("rotated-token-9876543210xx"), local),
            identity("alice", patterns(&["team_a_*"]))
        );
    }

    #[test]
    fn token_lines_carry_their_patterns_and_a_malformed_one_names_file_and_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "ops:ops-token-0123456789ab\n\nteamb : teamb-token-0123456789 : teamb_* , shared_?\n",
        )
        .expect("write");
        let tokens = read_tokens(&path).expect("tokens");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].scope, Scope::All);
        assert_eq!(tokens[1].actor, "teamb");
        assert_eq!(tokens[1].scope, patterns(&["teamb_*", "shared_?"]));

        for (line, expected) in [
            ("teamb:teamb-token-0123456789:", "cannot be empty"),
            ("teamb:teamb-token-0123456789:teamb_*,", "cannot be empty"),
            ("teamb:teamb-token-0123456789:TeamB*", "not allowed"),
            ("teamb:teamb-token-0123456789:teamb-*", "not allowed"),
            ("teamb:teamb-token-0123456789:a:b", "not allowed"),
            ("teamb:teamb-token-0123456789:%", "not allowed"),
            ("teamb-without-token", "expected actor:token"),
            ("teamb:short:teamb_*", "at least 16 characters"),
        ] {
            std::fs::write(&path, format!("ops:ops-token-0123456789ab\n{line}\n")).expect("write");
            let err = read_tokens(&path)
                .err()
                .unwrap_or_else(|| panic!("{line} accepted"));
            assert!(
                err.contains(&format!("{} line 2:", path.display())) && err.contains(expected),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn identity_actors_get_the_scope_the_config_gives_them_and_none_otherwise() {
        let mut config = config(None);
        config.identity_scopes = BTreeMap::from([
            ("alice@example.com".into(), vec!["team_a_*".into()]),
            ("root@example.com".into(), vec!["*".into()]),
        ]);
        let auth = Authenticator::new(&config).expect("auth");
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let as_user = |user: &str| {
            auth.authenticate(&headers(&[("x-auth-request-user", user)]), proxy)
                .expect("authenticated")
                .scope
        };
        let alice = as_user("alice@example.com");
        assert!(alice.allows("team_a_app") && !alice.allows("team_b_app"));
        assert!(as_user("root@example.com").allows("anything"));
        let nobody = as_user("mallory@example.com");
        assert!(!nobody.allows("team_a_app"));
        assert_eq!(nobody.like_patterns(), Some(Vec::new()));

        config.identity_scopes = BTreeMap::from([("a".into(), vec!["Team".into()])]);
        let err = Authenticator::new(&config).expect_err("a bad pattern");
        assert!(err.contains("identity_scopes.a"), "{err}");
    }

    #[test]
    fn globs_match_whole_names_and_translate_to_like() {
        let cases = [
            ("teamb_*", "teamb_app", true),
            ("teamb_*", "teamb_", true),
            ("teamb_*", "teambx", false),
            ("teamb_*", "x_teamb_app", false),
            ("t?_x", "ta_x", true),
            ("t?_x", "t_x", false),
            ("*_prod", "a_b_prod", true),
            ("a*b*c", "aXbYbc", true),
            ("a*b*c", "acb", false),
            ("*", "", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, name, expected) in cases {
            let pattern = Pattern::parse(pattern).expect("pattern");
            assert_eq!(pattern.matches(name), expected, "{pattern} on {name}");
        }
        assert_eq!(
            Pattern::parse("team_?b*").expect("pattern").to_like(),
            "team\\__b%"
        );
        assert_eq!(Scope::All.like_patterns(), None);
        assert!(Pattern::parse(&"a".repeat(129)).is_err());
    }
}
