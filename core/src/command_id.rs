//! Ids derived from other ids: the event ids of an idempotent command, and the command ids a
//! reactor derives from the event that triggered it.
//!
//! Both are name-based UUIDs (version 5, SHA-1) in a namespace of their own, so the same
//! inputs give the same id on every machine and in every process, and different inputs give
//! different ids.

use uuid::Uuid;

use crate::StreamId;

/// The namespace of [`derive_event_id`]: `uuid5(NAMESPACE_URL, "urn:annals:event-id")`.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5547_4bde_7e56_5fab_8981_e8ad_71dd_07c0);

/// The namespace of [`derive_id`]: `uuid5(NAMESPACE_URL, "urn:annals:derived-id")`.
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0xcd91_124c_529a_527e_8ce4_7f89_ef07_c114);

/// The id of the event number `index` (0 for the first) that the command `command_id` appends
/// to `stream`.
///
/// The [`Repository`](crate::Repository) gives these ids to the events of an idempotent
/// command (see [`CommandContext::idempotent()`](crate::CommandContext::idempotent())): a retry
/// of the command makes the same ids, and the store recognises them.
///
/// A UUID version 5 over the command id's 16 bytes, the stream id's bytes, a NUL byte (which
/// no stream id contains) and `index` as 4 big-endian bytes: distinct for every
/// `(command_id, stream, index)`.
///
/// ```
/// use annals::{StreamId, derive_event_id};
/// use uuid::Uuid;
///
/// let command = Uuid::now_v7();
/// let stream = StreamId::new("account-alice")?;
/// assert_eq!(derive_event_id(command, &stream, 0), derive_event_id(command, &stream, 0));
/// assert_ne!(derive_event_id(command, &stream, 0), derive_event_id(command, &stream, 1));
/// # Ok::<_, annals::Error>(())
/// ```
pub fn derive_event_id(command_id: Uuid, stream: &StreamId, index: u32) -> Uuid {
    let stream = stream.as_str().as_bytes();
    let mut name = Vec::with_capacity(16 + stream.len() + 1 + 4);
    name.extend_from_slice(command_id.as_bytes());
    name.extend_from_slice(stream);
    name.push(0);
    name.extend_from_slice(&index.to_be_bytes());
    Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
}

/// A stable id derived from a scope and some parts, the same wherever it is computed: a
/// reactor derives the command id of each step from (its name, the triggering event's id,
/// the step), so that handling the event again issues the very same, idempotent, commands.
///
/// A UUID version 5 over the scope and then each part, every one of them preceded by its
/// length as 8 big-endian bytes: the encoding is unambiguous, so `("a", [b"bc"])`,
/// `("ab", [b"c"])` and `("a", [b"b", b"c"])` give three different ids. Its namespace is not
/// that of [`derive_event_id`].
///
/// ```
/// use annals::derive_id;
///
/// let event_id = uuid::Uuid::now_v7();
/// let step = 0u32.to_be_bytes();
/// let a = derive_id("reactor", &[b"payouts", event_id.as_bytes(), &step]);
/// assert_eq!(a, derive_id("reactor", &[b"payouts", event_id.as_bytes(), &step]));
/// assert_ne!(a, derive_id("reactor", &[b"payouts", event_id.as_bytes(), &1u32.to_be_bytes()]));
/// ```
pub fn derive_id(scope: &str, parts: &[&[u8]]) -> Uuid {
    let len = 8 + scope.len() + parts.iter().map(|p| 8 + p.len()).sum::<usize>();
    let mut name = Vec::with_capacity(len);
    for part in std::iter::once(scope.as_bytes()).chain(parts.iter().copied()) {
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part);
    }
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_the_documented_name_based_ids() {
        assert_eq!(
            EVENT_ID_NAMESPACE,
            Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:annals:event-id")
        );
        assert_eq!(
            DERIVED_ID_NAMESPACE,
            Uuid::new_v5(&Uuid::NAMESPACE_URL, b"urn:annals:derived-id")
        );
    }

    #[test]
    fn ids_are_stable_across_releases() {
        // Computed independently (Python's hashlib). A change here would make the retry of a
        // command issued before it append its events again.
        let command = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
        let stream = StreamId::new("account-alice").unwrap();
        assert_eq!(
            derive_event_id(command, &stream, 0).to_string(),
            "de81de98-f7e5-58c9-ae44-66211f76d830"
        );
        let trigger = [1u8; 16];
        assert_eq!(
            derive_id("reactor", &[b"payouts", &trigger, &0u32.to_be_bytes()]).to_string(),
            "d1c88591-8bc9-5df2-9a34-be83c153dc59"
        );
    }

    #[test]
    fn the_encoding_of_derive_id_is_unambiguous() {
        let ids = [
            derive_id("a", &[b"bc"]),
            derive_id("ab", &[b"c"]),
            derive_id("a", &[b"b", b"c"]),
            derive_id("abc", &[]),
            derive_id("a", &[b"bc", b""]),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
