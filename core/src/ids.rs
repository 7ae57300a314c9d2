//! Validated names: stream ids and event type names.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// The longest stream id or event type name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Why a stream id or event type name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name was the empty string.
    #[error("it is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("it is {len} bytes long, more than the limit of {MAX_NAME_BYTES}")]
    TooLong {
        /// The length of the rejected name in bytes.
        len: usize,
    },
    /// The name contains a NUL character, which no store can keep faithfully.
    #[error("it contains a NUL character at byte {at}")]
    ContainsNul {
        /// Byte offset of the first NUL.
        at: usize,
    },
}

fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    if let Some(at) = name.bytes().position(|b| b == 0) {
        return Err(NameError::ContainsNul { at });
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $variant:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `name` (non-empty, at most [`MAX_NAME_BYTES`] bytes, no NUL).
            ///
            /// # Errors
            #[doc = concat!("[`Error::", stringify!($variant), "`] when a rule is broken; nothing else is checked.")]
            pub fn new(name: impl AsRef<str>) -> Result<Self> {
                let name = name.as_ref();
                check_name(name).map_err(|reason| Error::$variant { reason })?;
                Ok(Self(Arc::from(name)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// The id of an event stream: non-empty, at most 256 bytes of UTF-8, no NUL.
    ///
    /// Any other byte is allowed and stored byte-identically, including quotes, `%`, `_`,
    /// backslashes and emoji: stores only ever bind it as a parameter.
    ///
    /// ```
    /// use annals::StreamId;
    /// assert!(StreamId::new("account-42").is_ok());
    /// assert!(StreamId::new("").is_err());
    /// assert!(StreamId::new("a\0b").is_err());
    /// ```
    StreamId,
    InvalidStreamId
);

validated_name!(
    /// The stored name of an event type, validated like [`StreamId`].
    EventType,
    InvalidEventType
);

impl StreamId {
    /// The stream of one aggregate instance: `"{aggregate_type}-{id}"`.
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`] when the joined id breaks the rules.
    pub fn for_aggregate(aggregate_type: &str, id: &str) -> Result<Self> {
        Self::new(format!("{aggregate_type}-{id}"))
    }

    /// The stream's category: the part before the first `-` (`"account"` for
    /// `"account-alice"`, the aggregate type of [`StreamId::for_aggregate`]'s streams), or the
    /// whole id when it has no `-`.
    ///
    /// ```
    /// use annals::StreamId;
    /// assert_eq!(StreamId::new("account-alice-2").unwrap().category(), "account");
    /// assert_eq!(StreamId::new("settings").unwrap().category(), "settings");
    /// ```
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(c, _)| c)
    }

    /// The part after the category: the aggregate id of
    /// [`StreamId::for_aggregate`]`(type, id)`, everything after the first `-` (empty when
    /// there is none).
    ///
    /// ```
    /// use annals::StreamId;
    /// assert_eq!(StreamId::new("account-alice-2").unwrap().instance(), "alice-2");
    /// assert_eq!(StreamId::new("settings").unwrap().instance(), "");
    /// ```
    pub fn instance(&self) -> &str {
        self.0.split_once('-').map_or("", |(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_in_bytes() {
        assert!(StreamId::new("é".repeat(128)).is_ok());
        let err = StreamId::new("é".repeat(129)).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidStreamId {
                reason: NameError::TooLong { len: 258 }
            }
        ));
        assert!(matches!(
            EventType::new("").unwrap_err(),
            Error::InvalidEventType {
                reason: NameError::Empty
            }
        ));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<StreamId>("\"\"").is_err());
        let id: StreamId = serde_json::from_str("\"'; DROP TABLE events; --\"").unwrap();
        assert_eq!(id, "'; DROP TABLE events; --");
    }
}
