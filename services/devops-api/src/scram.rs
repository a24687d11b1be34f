//! Passwords as PostgreSQL stores them: SCRAM-SHA-256 verifiers computed here, so a clear
//! password never appears in SQL text (nor, with `log_statement = all`, in the server's
//! log), and generated passwords from the operating system's random source.

use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;
/// Characters of a generated password (62 symbols: about 190 bits).
pub const GENERATED_LENGTH: usize = 32;

/// The verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` of
/// `password` with a fresh 16-byte salt (RFC 5802, RFC 7677).
pub fn verifier(password: &str) -> Result<String, getrandom::Error> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    Ok(verifier_with(password, &salt, ITERATIONS))
}

/// [`verifier`] with a given salt and iteration count.
pub fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations.max(1)).expect("at least one iteration"),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    )
}

/// Whether `text` has the form of a SCRAM-SHA-256 verifier (what a client may give
/// instead of a generated password).
pub fn is_verifier(text: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(rest) = text.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = params.split_once(':') else {
        return false;
    };
    let Some((stored, server)) = keys.split_once(':') else {
        return false;
    };
    iterations.parse::<u32>().is_ok_and(|i| i > 0)
        && b64.decode(salt).is_ok_and(|s| !s.is_empty())
        && b64.decode(stored).is_ok_and(|k| k.len() == 32)
        && b64.decode(server).is_ok_and(|k| k.len() == 32)
}

/// A new password: [`GENERATED_LENGTH`] letters and digits, uniformly drawn.
pub fn generate() -> Result<String, getrandom::Error> {
    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(GENERATED_LENGTH);
    let mut buffer = [0u8; 64];
    while out.len() < GENERATED_LENGTH {
        getrandom::fill(&mut buffer)?;
        // 248 = 4 x 62: bytes above it are dropped, so every symbol is equally likely.
        for &byte in buffer.iter().filter(|&&b| b < 248) {
            if out.len() == GENERATED_LENGTH {
                break;
            }
            out.push(SYMBOLS[usize::from(byte % 62)] as char);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_matches_an_independent_computation() {
        // Computed independently (Python's hashlib.pbkdf2_hmac and hmac, RFC 5802's
        // definitions) for password "pencil" and salt "QSXCR+Q6sek8bf92"; the tests
        // against PostgreSQL log in with verifiers made here.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("QSXCR+Q6sek8bf92")
            .expect("salt");
        let made = verifier_with("pencil", &salt, 4096);
        assert_eq!(
            made,
            "SCRAM-SHA-256$4096:QSXCR+Q6sek8bf92$FO+9jBb3MUukt6jJnzjPZOWc5ow/Pu6JtPyju0aqaE8=:qxJ1SbmSAi5EcS0J5Ck/cKAm/+Ixa+Kwp63f4OHDgzo="
        );
        assert!(is_verifier(&made));
        assert!(!is_verifier("pencil"));
        assert!(!is_verifier("SCRAM-SHA-256$4096:abc$def"));
    }

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_differ() {
        let a = generate().expect("random");
        let b = generate().expect("random");
        assert_eq!(a.len(), GENERATED_LENGTH);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_ne!(
            verifier("x").expect("random"),
            verifier("x").expect("random")
        );
    }
}
