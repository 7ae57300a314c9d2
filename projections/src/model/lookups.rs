//! Lookups: values a projection keeps for itself beside its read model (an account's owner,
//! an order's customer), read while it handles later events.
//!
//! A handler cannot do I/O, and one read per event would be an N+1 anyway. So a projection
//! declares, per event, the keys it will read ([`Projection::lookups`]); before handing a
//! batch to the handler the runner loads every declared key the batch needs in one round
//! trip (or from its cache), and the handler reads them synchronously from the batch
//! ([`Lookups::get`]). Values the handler sets are written in the batch's one atomic write,
//! with its data, checkpoint and fence, and are visible to the events after it in the same
//! batch at once. They live in the generation being written, so a restart from a mid-log
//! checkpoint finds them, and a rebuild makes them again from the log.
//!
//! [`Projection::lookups`]: crate::Projection::lookups

use std::collections::HashMap;

use serde::{Serialize, de::DeserializeOwned};

/// Why a lookup could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The key was neither declared by [`Projection::lookups`](crate::Projection::lookups)
    /// for this batch's events nor set earlier in the batch, so it was not loaded.
    #[error(
        "lookup {key:?} was not loaded: declare it in Projection::lookups for the events that read it"
    )]
    NotLoaded {
        /// The key.
        key: String,
    },
    /// The stored value did not decode as the type asked for, or a value did not encode.
    #[error("lookup {key:?} does not (de)serialize")]
    Json {
        /// The key.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// The keys a projection will read while handling one event; see
/// [`Projection::lookups`](crate::Projection::lookups).
#[derive(Debug, Default)]
pub struct LookupKeys {
    keys: Vec<String>,
}

impl LookupKeys {
    /// Declares that handling the event reads `key`.
    pub fn add(&mut self, key: impl Into<String>) {
        self.keys.push(key.into());
    }

    pub(crate) fn clear(&mut self) {
        self.keys.clear();
    }

    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, String> {
        self.keys.drain(..)
    }
}

/// The lookups a batch can read and write: what was loaded for it, overlaid with what its
/// handler set so far (reads see the batch's own pending writes).
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    /// Loaded or written values (`None`: known to be absent).
    view: HashMap<String, Option<String>>,
    /// Every write, in order, with what the view held before it (for rollback).
    journal: Vec<(String, Option<Option<String>>)>,
}

impl Lookups {
    /// An empty set: nothing loaded, nothing written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, decoded; `None` when no value is stored.
    ///
    /// # Errors
    /// [`LookupError::NotLoaded`] for a key the batch did not load (not declared),
    /// [`LookupError::Json`] when the stored value is not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LookupError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(text) => {
                serde_json::from_str(text)
                    .map(Some)
                    .map_err(|source| LookupError::Json {
                        key: key.to_owned(),
                        source,
                    })
            }
        }
    }

    /// The stored JSON text of `key`; `None` when no value is stored.
    ///
    /// # Errors
    /// [`LookupError::NotLoaded`].
    pub fn get_raw(&self, key: &str) -> Result<Option<&str>, LookupError> {
        match self.view.get(key) {
            Some(value) => Ok(value.as_deref()),
            None => Err(LookupError::NotLoaded {
                key: key.to_owned(),
            }),
        }
    }

    /// Sets `key` to `value`, written with the batch; later events of the batch read it.
    ///
    /// # Errors
    /// [`LookupError::Json`] when `value` does not serialize.
    pub fn set<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), LookupError> {
        let key = key.into();
        let text = serde_json::to_string(value).map_err(|source| LookupError::Json {
            key: key.clone(),
            source,
        })?;
        self.write(key, Some(text));
        Ok(())
    }

    /// Removes `key`, with the batch.
    pub fn remove(&mut self, key: impl Into<String>) {
        self.write(key.into(), None);
    }

    fn write(&mut self, key: String, value: Option<String>) {
        let before = self.view.insert(key.clone(), value);
        self.journal.push((key, before));
    }

    /// A mark to roll the writes back to.
    pub fn savepoint(&self) -> usize {
        self.journal.len()
    }

    /// Undoes every write made after `savepoint`.
    pub fn rollback_to(&mut self, savepoint: usize) {
        while self.journal.len() > savepoint {
            let Some((key, before)) = self.journal.pop() else {
                break;
            };
            match before {
                Some(value) => {
                    self.view.insert(key, value);
                }
                None => {
                    self.view.remove(&key);
                }
            }
        }
    }

    /// True when the handler wrote nothing.
    pub fn is_unchanged(&self) -> bool {
        self.journal.is_empty()
    }

    /// The final value of every key written (`None`: removed), each once, in the order of
    /// their first write. What a read model stores with the batch.
    pub fn changes(&self) -> Vec<(&str, Option<&str>)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (key, _) in &self.journal {
            if seen.insert(key.as_str()) {
                let value = self.view.get(key).and_then(|v| v.as_deref());
                out.push((key.as_str(), value));
            }
        }
        out
    }

    /// Whether `key` is loaded or written.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.view.contains_key(key)
    }

    /// Records a loaded value (not a write).
    pub(crate) fn load(&mut self, key: String, value: Option<String>) {
        self.view.entry(key).or_insert(value);
    }

    /// Replaces a value recorded by [`Lookups::load`] with the one the read model returned
    /// (only before any handler ran on the batch).
    pub(crate) fn replace_loaded(&mut self, key: String, value: Option<String>) {
        self.view.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_see_pending_writes_and_undeclared_keys_are_errors() {
        let mut l = Lookups::new();
        l.load("a".into(), Some("1".into()));
        l.load("b".into(), None);
        assert_eq!(l.get::<i32>("a").unwrap(), Some(1));
        assert_eq!(l.get::<i32>("b").unwrap(), None);
        assert!(matches!(
            l.get::<i32>("c"),
            Err(LookupError::NotLoaded { .. })
        ));
        l.set("c", &3).unwrap();
        assert_eq!(l.get::<i32>("c").unwrap(), Some(3));
        assert!(matches!(
            l.get::<String>("a"),
            Err(LookupError::Json { .. })
        ));
        assert_eq!(l.changes(), [("c", Some("3"))]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Set(u8, u8),
        Remove(u8),
        Mark,
        Rollback,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4, any::<u8>()).prop_map(|(k, v)| Step::Set(k, v)),
            (0u8..4).prop_map(Step::Remove),
            Just(Step::Mark),
            Just(Step::Rollback),
        ]
    }

    proptest! {
        /// Rolling back to a savepoint restores exactly the view at the savepoint, and
        /// `changes` always equals the net effect of the writes kept.
        #[test]
        fn rollback_restores_the_view(steps in proptest::collection::vec(step(), 0..40)) {
            let mut l = Lookups::new();
            l.load("k0".into(), Some("100".into()));
            let mut marks: Vec<(usize, HashMap<String, Option<String>>)> = Vec::new();
            let mut model: HashMap<String, Option<String>> = HashMap::from([("k0".to_owned(), Some("100".to_owned()))]);
            for s in steps {
                match s {
                    Step::Set(k, v) => {
                        l.set(format!("k{k}"), &v).unwrap();
                        model.insert(format!("k{k}"), Some(v.to_string()));
                    }
                    Step::Remove(k) => {
                        l.remove(format!("k{k}"));
                        model.insert(format!("k{k}"), None);
                    }
                    Step::Mark => marks.push((l.savepoint(), model.clone())),
                    Step::Rollback => {
                        if let Some((sp, saved)) = marks.pop() {
                            l.rollback_to(sp);
                            model = saved;
                        }
                    }
                }
                for (k, v) in &model {
                    prop_assert_eq!(l.get_raw(k).unwrap(), v.as_deref());
                }
                for (k, v) in l.changes() {
                    let expected = model.get(k).cloned().flatten();
                    prop_assert_eq!(expected.as_deref(), v);
                }
            }
        }
    }
}
