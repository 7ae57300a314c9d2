//! The names an inbox is built from: checked before any I/O, so that no caller-given text
//! reaches SQL or a Redis key unchecked.

use crate::InboxError;

/// The longest consumer name or key prefix.
pub(crate) const MAX_NAME: usize = 128;

/// Checks a consumer name or a Redis key prefix: 1 to 128 ASCII letters, digits, `_`, `-`
/// and `.`. No `:`, braces, quotes, spaces or control characters, so that a Redis key
/// `{prefix}:inbox:consumer:id` is read back one way only and a name is never SQL.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), InboxError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME {
        Some("it is longer than 128 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        Some("only ASCII letters, digits, '_', '-' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InboxError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a PostgreSQL schema name: a plain identifier (ASCII letters, digits and `_`, not
/// starting with a digit, at most 63 bytes), always quoted where it is used.
#[cfg(feature = "postgres")]
pub(crate) fn check_schema(name: &str) -> Result<(), InboxError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if plain {
        Ok(())
    } else {
        Err(InboxError::InvalidName {
            what: "schema",
            name: name.to_owned(),
            reason: "a schema must be a plain identifier: ASCII letters, digits and '_', \
                     not starting with a digit, at most 63 bytes",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names() {
        for good in ["billing", "billing-v2", "a.b_c", "X", &"a".repeat(128)] {
            assert!(check_name("consumer", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a:b",
            "{a}",
            "a b",
            "a'; DROP TABLE x; --",
            "a\"b",
            "a\0b",
            "é",
            &"a".repeat(129),
        ] {
            let error = check_name("consumer", bad).unwrap_err();
            assert!(
                matches!(&error, InboxError::InvalidName { name, what: "consumer", .. } if name == bad),
                "{bad:?}: {error}"
            );
            assert!(!error.is_transient());
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn schema_names() {
        for good in ["inbox", "_x", "App_2", &"s".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a.b",
            "x\"; DROP SCHEMA public CASCADE; --",
            &"s".repeat(64),
        ] {
            assert!(
                matches!(
                    check_schema(bad),
                    Err(InboxError::InvalidName { what: "schema", .. })
                ),
                "{bad:?}"
            );
        }
    }
}
