//! Secret-holding config values: never logged, redacted when printed.

use std::{fmt, str::FromStr};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a redacted value prints as.
pub const REDACTED: &str = "[redacted]";

/// `#[serde(serialize_with = "platform::secret::redact")]` for `SecretString` fields.
pub fn redact<S: Serializer>(_: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(REDACTED)
}

/// `#[serde(serialize_with = "platform::secret::redact_all")]` for lists of secrets:
/// shows how many there are, never what they are.
pub fn redact_all<S: Serializer>(
    secrets: &[SecretString],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(secrets.len()))?;
    for _ in secrets {
        seq.serialize_element(REDACTED)?;
    }
    seq.end()
}

/// Compares a presented secret with a known one in time that does not depend on where
/// they differ.
pub fn constant_time_eq(presented: &str, known: &SecretString) -> bool {
    use subtle::ConstantTimeEq;
    // Unequal lengths compare unequal at once: the length of a secret is not secret here.
    bool::from(presented.as_bytes().ct_eq(known.expose_secret().as_bytes()))
}

/// A connection URL that may carry a password (`postgres://user:pass@host/db`).
///
/// `Debug`, `Display` and `Serialize` show it with the password and any secret-looking
/// query parameter replaced by `***`; [`SecretUrl::expose`] gives the real value to the
/// driver.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// A URL from a literal (built-in defaults).
    pub fn from_static(url: &'static str) -> Self {
        Self(SecretString::from(url))
    }

    /// The real URL, for the driver only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The scheme (`postgres`, `sqlite`, ...), lowercased; empty when there is none.
    pub fn scheme(&self) -> String {
        self.expose()
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The URL with its secrets replaced by `***`.
    pub fn redacted(&self) -> String {
        let raw = self.expose();
        let Ok(mut url) = url::Url::parse(raw) else {
            // Not a URL we can take apart: showing it could show a secret.
            return REDACTED.to_owned();
        };
        if url.password().is_some() && url.set_password(Some("***")).is_err() {
            return REDACTED.to_owned();
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = ["password", "secret", "token", "key"]
                        .iter()
                        .any(|word| k.to_ascii_lowercase().contains(word));
                    (
                        k.into_owned(),
                        if secret {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl FromStr for SecretUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        if !trimmed.contains(':') {
            return Err("must be a URL such as postgres://user@host/db or sqlite://file.db".into());
        }
        Ok(Self(SecretString::from(trimmed.to_owned())))
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl schemars::JsonSchema for SecretUrl {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretUrl".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "uri" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> SecretUrl {
        s.parse().expect("valid url")
    }

    #[test]
    fn password_and_secret_query_parameters_are_redacted() {
        let u = url("postgres://admin:s3cr3t@db.internal:5432/agg?sslmode=require&password=other");
        let shown = u.redacted();
        assert_eq!(
            shown,
            "postgres://admin:***@db.internal:5432/agg?sslmode=require&password=***"
        );
        assert!(!format!("{u:?} {u}").contains("s3cr3t"));
        assert_eq!(
            u.expose(),
            "postgres://admin:s3cr3t@db.internal:5432/agg?sslmode=require&password=other"
        );
        assert_eq!(u.scheme(), "postgres");
    }

    #[test]
    fn urls_without_secrets_are_shown_as_they_are() {
        assert_eq!(
            url("sqlite://provisioner.db").redacted(),
            "sqlite://provisioner.db"
        );
        assert_eq!(
            url("postgres://admin@db/agg").redacted(),
            "postgres://admin@db/agg"
        );
    }

    #[test]
    fn secrets_compare_by_content_only() {
        let known = SecretString::from("s3cr3t");
        assert!(constant_time_eq("s3cr3t", &known));
        assert!(!constant_time_eq("s3cr3T", &known));
        assert!(!constant_time_eq("s3cr3", &known));
        assert!(!constant_time_eq("", &known));
    }

    #[test]
    fn empty_or_schemeless_values_are_rejected() {
        assert!("".parse::<SecretUrl>().is_err());
        assert!("provisioner.db".parse::<SecretUrl>().is_err());
    }
}
