//! Upcasting: bringing stored events of older schema versions up to the latest shape on read.
//!
//! Stored bytes never change. Each event type has a latest schema version and a chain of
//! steps, each turning the JSON of version `n` into the JSON of version `n + 1`; reading runs
//! the steps from the stored version up to the latest.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use serde_json::Value;

use crate::{BoxError, Error, Payload, RecordedEvent, Result};

/// One step of an upcaster chain: the JSON of one schema version into the JSON of the next.
///
/// Any `Fn(Value) -> Result<Value, BoxError>` is an upcaster.
pub trait Upcaster: Send + Sync {
    /// Transforms a payload of version `n` into version `n + 1`.
    ///
    /// # Errors
    /// Whatever the step cannot handle; it is reported as [`Error::Upcast`] with the event's
    /// position.
    fn upcast(&self, payload: Value) -> Result<Value, BoxError>;
}

impl<F> Upcaster for F
where
    F: Fn(Value) -> Result<Value, BoxError> + Send + Sync,
{
    fn upcast(&self, payload: Value) -> Result<Value, BoxError> {
        self(payload)
    }
}

#[derive(Clone)]
struct TypeChain {
    latest: u32,
    /// `steps[&n]` upcasts version `n` to `n + 1`.
    steps: HashMap<u32, Arc<dyn Upcaster>>,
}

/// The registered event types with their latest schema versions and upcaster steps.
///
/// Built once (the derive macros build it for an event enum) and shared.
///
/// ```
/// use annals::UpcasterChain;
/// use serde_json::json;
///
/// let chain = UpcasterChain::builder()
///     .event_type("Deposited", 2)
///     .step("Deposited", 1, |mut v: serde_json::Value| {
///         v["memo"] = json!("");
///         Ok(v)
///     })
///     .build()
///     .unwrap();
/// assert_eq!(chain.latest_version("Deposited"), Some(2));
/// ```
#[derive(Clone, Default)]
pub struct UpcasterChain {
    /// A B-tree, not a hash map: every decoded event looks its type up here, and for the
    /// handful of types of a family a few short string comparisons beat hashing the name
    /// (about 7 % of a `DomainEvent::decode`, measured with `benches/benches/upcast.rs`).
    types: BTreeMap<String, TypeChain>,
}

impl fmt::Debug for UpcasterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, chain) in &self.types {
            let mut steps: Vec<_> = chain.steps.keys().copied().collect();
            steps.sort_unstable();
            map.entry(
                name,
                &format_args!("latest {} steps from {:?}", chain.latest, steps),
            );
        }
        map.finish()
    }
}

/// Collects event types and steps, then checks them in [`UpcasterChainBuilder::build`].
#[derive(Default)]
pub struct UpcasterChainBuilder {
    types: Vec<(String, u32)>,
    steps: Vec<(String, u32, Arc<dyn Upcaster>)>,
}

impl fmt::Debug for UpcasterChainBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpcasterChainBuilder")
            .field("types", &self.types)
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl UpcasterChainBuilder {
    /// Declares an event type and its latest schema version.
    pub fn event_type(mut self, name: impl Into<String>, latest: u32) -> Self {
        self.types.push((name.into(), latest));
        self
    }

    /// Adds the step that turns version `from` of `name` into version `from + 1`.
    pub fn step(
        mut self,
        name: impl Into<String>,
        from: u32,
        upcaster: impl Upcaster + 'static,
    ) -> Self {
        self.steps.push((name.into(), from, Arc::new(upcaster)));
        self
    }

    /// Checks and builds the chain.
    ///
    /// # Errors
    /// [`Error::InvalidUpcasterChain`] for a type declared twice, a version of 0, a step for an
    /// undeclared type, a step at or above the latest version, two steps from one version, or
    /// a gap: the steps of a type must lead without a hole up to its latest version.
    pub fn build(self) -> Result<UpcasterChain> {
        let invalid = |reason: String| Error::InvalidUpcasterChain { reason };
        let mut types: BTreeMap<String, TypeChain> = BTreeMap::new();
        for (name, latest) in self.types {
            if latest == 0 {
                return Err(invalid(format!("{name}: schema versions start at 1")));
            }
            let chain = TypeChain {
                latest,
                steps: HashMap::new(),
            };
            if types.insert(name.clone(), chain).is_some() {
                return Err(invalid(format!("{name} is declared twice")));
            }
        }
        for (name, from, step) in self.steps {
            let Some(chain) = types.get_mut(&name) else {
                return Err(invalid(format!("a step for undeclared type {name}")));
            };
            if from == 0 || from >= chain.latest {
                return Err(invalid(format!(
                    "{name}: a step from version {from} must be between 1 and {}",
                    chain.latest - 1
                )));
            }
            if chain.steps.insert(from, step).is_some() {
                return Err(invalid(format!("{name}: two steps from version {from}")));
            }
        }
        for (name, chain) in &types {
            if let Some(&lowest) = chain.steps.keys().min()
                && let Some(missing) = (lowest..chain.latest).find(|v| !chain.steps.contains_key(v))
            {
                return Err(invalid(format!(
                    "{name}: no step from version {missing} to {}",
                    missing + 1
                )));
            }
        }
        Ok(UpcasterChain { types })
    }
}

impl UpcasterChain {
    /// Starts a chain.
    pub fn builder() -> UpcasterChainBuilder {
        UpcasterChainBuilder::default()
    }

    /// The latest schema version of `event_type`, or `None` if it is not registered.
    pub fn latest_version(&self, event_type: &str) -> Option<u32> {
        self.types.get(event_type).map(|c| c.latest)
    }

    /// Whether `event_type` is registered.
    pub fn knows(&self, event_type: &str) -> bool {
        self.types.contains_key(event_type)
    }

    /// Brings a stored event up to the latest schema version of its type. An event already at
    /// the latest version is returned as it is, without parsing its payload.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`] for an unregistered type, [`Error::UnknownSchemaVersion`]
    /// for a version above the latest or below the first step, [`Error::Upcast`] when a step
    /// fails, and [`Error::Decode`] when the stored payload is not JSON. Each names the
    /// event's type, version and position.
    pub fn upcast(&self, mut event: RecordedEvent) -> Result<RecordedEvent> {
        let Some(chain) = self.types.get(event.event_type.as_str()) else {
            return Err(Error::UnknownEventType {
                event_type: event.event_type.to_string(),
                schema_version: event.schema_version,
                position: event.position,
            });
        };
        if event.schema_version == chain.latest {
            return Ok(event);
        }
        let unknown = |event: &RecordedEvent| Error::UnknownSchemaVersion {
            event_type: event.event_type.to_string(),
            schema_version: event.schema_version,
            latest: chain.latest,
            position: event.position,
        };
        if event.schema_version > chain.latest || !chain.steps.contains_key(&event.schema_version) {
            return Err(unknown(&event));
        }
        let mut value: Value =
            serde_json::from_str(event.payload.as_str()).map_err(|source| Error::Decode {
                event_type: event.event_type.to_string(),
                schema_version: event.schema_version,
                position: event.position,
                source,
            })?;
        for from in event.schema_version..chain.latest {
            // Present by the gap check in `build`.
            let Some(step) = chain.steps.get(&from) else {
                return Err(unknown(&event));
            };
            value = step.upcast(value).map_err(|source| Error::Upcast {
                event_type: event.event_type.to_string(),
                from_version: from,
                position: event.position,
                source,
            })?;
        }
        event.payload = Payload::from_serialize(&value)?;
        event.schema_version = chain.latest;
        Ok(event)
    }
}

impl UpcasterChain {
    /// The registered type names, in name order.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn id(v: Value) -> Result<Value, BoxError> {
        Ok(v)
    }

    fn reason(builder: UpcasterChainBuilder) -> String {
        match builder.build() {
            Err(Error::InvalidUpcasterChain { reason }) => reason,
            other => panic!("expected an invalid chain, got {other:?}"),
        }
    }

    #[test]
    fn inconsistent_chains_are_refused_with_a_reason() {
        let b = || UpcasterChain::builder().event_type("E", 3);
        assert!(reason(UpcasterChain::builder().event_type("E", 0)).contains("start at 1"));
        assert!(reason(b().event_type("E", 2)).contains("declared twice"));
        assert!(reason(b().step("F", 1, id)).contains("undeclared"));
        assert!(reason(b().step("E", 3, id)).contains("between 1 and 2"));
        assert!(reason(b().step("E", 0, id)).contains("between 1 and 2"));
        assert!(reason(b().step("E", 1, id).step("E", 1, id)).contains("two steps"));
        assert!(reason(b().step("E", 1, id)).contains("no step from version 2"));
        assert!(b().step("E", 1, id).step("E", 2, id).build().is_ok());
        assert!(
            b().step("E", 2, id).build().is_ok(),
            "v1 may simply be unknown"
        );
    }

    #[test]
    fn a_failing_step_names_the_event() {
        let chain = UpcasterChain::builder()
            .event_type("E", 2)
            .step("E", 1, |_: Value| -> Result<Value, BoxError> {
                Err("no luck".into())
            })
            .build()
            .unwrap();
        let event = RecordedEvent {
            position: crate::LogPosition::serial(9),
            stream_id: crate::StreamId::new("s").unwrap(),
            stream_version: 1,
            event_id: uuid::Uuid::now_v7(),
            event_type: crate::EventType::new("E").unwrap(),
            schema_version: 1,
            payload: Payload::from_json("{}").unwrap(),
            metadata: crate::Metadata::default(),
            recorded_at: time::OffsetDateTime::now_utc(),
        };
        let err = chain.upcast(event.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "upcasting event type E from version 1 at position 9 failed"
        );
        let mut broken = event;
        broken.payload = Payload::from_stored("{not json".into());
        assert!(matches!(chain.upcast(broken), Err(Error::Decode { .. })));
    }
}
