//! The values a handler binds to its statements.

/// A value bound to a statement's parameter (`$1`, `$2`, … in both PostgreSQL and SQLite).
///
/// Values are sent typed: PostgreSQL receives `boolean`, `bigint`, `double precision`,
/// `text`, `jsonb` or `bytea` (cast in SQL where a column has another type, e.g.
/// `$1::uuid`; an `INTEGER` column takes a `bigint` by assignment); a [`SqlValue::Null`] is
/// sent untyped, so it fits a column of any type. SQLite stores booleans as 0 and 1 and JSON
/// as text.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// Text.
    Text(String),
    /// A JSON document (`jsonb` in PostgreSQL, text in SQLite).
    Json(serde_json::Value),
    /// Bytes (`bytea`, `BLOB`).
    Bytes(Vec<u8>),
}

impl SqlValue {
    /// The text this value holds, if it is [`SqlValue::Text`].
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

macro_rules! ints {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(v: $t) -> Self {
                Self::Int(i64::from(v))
            }
        }
    )*};
}
ints!(i8, i16, i32, i64, u8, u16, u32);

impl From<f32> for SqlValue {
    fn from(v: f32) -> Self {
        Self::Float(f64::from(v))
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<serde_json::Value> for SqlValue {
    fn from(v: serde_json::Value) -> Self {
        Self::Json(v)
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(v)
    }
}

impl From<&[u8]> for SqlValue {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(v.to_vec())
    }
}

/// A UUID is sent as its text (`$1::uuid` in PostgreSQL for a `uuid` column).
impl From<uuid::Uuid> for SqlValue {
    fn from(v: uuid::Uuid) -> Self {
        Self::Text(v.to_string())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(SqlValue::from(5), SqlValue::Int(5));
        assert_eq!(SqlValue::from(5u32), SqlValue::Int(5));
        assert_eq!(SqlValue::from("a"), SqlValue::Text("a".into()));
        assert_eq!(SqlValue::from(None::<i64>), SqlValue::Null);
        assert_eq!(SqlValue::from(Some(true)), SqlValue::Bool(true));
        assert_eq!(SqlValue::from(1.5), SqlValue::Float(1.5));
        assert_eq!(SqlValue::from(vec![1u8]), SqlValue::Bytes(vec![1]));
        assert_eq!(
            SqlValue::from(serde_json::json!({"a": 1})),
            SqlValue::Json(serde_json::json!({"a": 1}))
        );
        assert_eq!(SqlValue::from("a").as_text(), Some("a"));
    }
}
