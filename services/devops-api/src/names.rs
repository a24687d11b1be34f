//! Names and literals in SQL: every name is checked against one rule before any SQL is
//! made, and quoted anyway where it is used.

/// The rule every tenant, schema, database, login and extension name follows:
/// `^[a-z_][a-z0-9_]{0,62}$` (a PostgreSQL identifier that never needs quoting, at most
/// 63 bytes).
pub fn check(what: &str, name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if first_ok && rest_ok && name.len() <= 63 {
        return Ok(());
    }
    let shown: String = name.chars().take(80).collect();
    Err(format!(
        "{what} {shown:?} is not a valid name: use lower-case letters, digits and '_', \
         starting with a letter or '_', at most 63 characters"
    ))
}

/// Why a schema name is reserved, if it is: PostgreSQL's own (`pg_*`,
/// `information_schema`), `public` (every database's, shared by everyone), and the API's
/// own schema. (A schema named like an existing role is refused too, after reading the
/// catalog: it would be on that role's `search_path` as `"$user"`.)
pub fn reserved_schema(name: &str) -> Option<&'static str> {
    if name.starts_with("pg_") {
        Some("names starting with pg_ are PostgreSQL's")
    } else if name == "information_schema" {
        Some("it is PostgreSQL's")
    } else if name == "public" {
        Some("every database's public schema is shared by everyone")
    } else if name == crate::store::SCHEMA {
        Some("it is the API's own schema")
    } else {
        None
    }
}

/// Why a database name is reserved, if it is: the templates every new database is copied
/// from. (A database marked as a template or closed to connections is refused too, after
/// reading the catalog.)
pub fn reserved_database(name: &str) -> Option<&'static str> {
    matches!(name, "template0" | "template1")
        .then_some("it is a template: every database created later would copy the tenant")
}

/// The rule extension names follow (`uuid-ossp` has a hyphen): lower-case letters,
/// digits, `_` and `-`, at most 63 characters.
pub fn check_extension(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    let shown: String = name.chars().take(80).collect();
    Err(format!(
        "extension {shown:?} is not a valid extension name: lower-case letters, digits, '_' and '-'"
    ))
}

/// `name` as a quoted identifier: `"name"`, inner quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a string literal: `'text'`, inner quotes doubled (standard-conforming
/// strings, which PostgreSQL has had on by default since 9.1; a backslash makes it an
/// escape-string literal, with backslashes doubled, so the text means the same whatever
/// the setting).
pub fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_lower_case_names_pass() {
        for good in ["acme", "_x", "a1_b2", &"a".repeat(63)] {
            assert!(check("tenant", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "1acme",
            "ac-me",
            "acme;drop",
            "a\"b",
            "é",
            &"a".repeat(64),
            "acme ",
        ] {
            let why = check("tenant", bad).expect_err(bad);
            assert!(why.starts_with("tenant "), "{why}");
        }
    }

    #[test]
    fn quoting_doubles_what_would_end_the_name_or_the_text() {
        assert_eq!(ident("acme"), "\"acme\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\'b"), "E'a\\\\''b'");
    }
}
