//! A projection's status read from its read model and its store alone: for a status command
//! or an admin page in another process than the runner's.

use std::fmt;

use annals::{EventStore, LogHold, LogPosition};
use time::OffsetDateTime;

use crate::{Generations, ReadModel, Result};

/// What a read model and its store say about a projection, whoever runs it; see
/// [`inspect`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReadModelStatus {
    /// The projection.
    pub name: String,
    /// Its generations (serving, being built, retired) and the store it records.
    pub generations: Generations,
    /// Whether the read model was built from this store (`None`: it records none yet).
    pub built_from_this_store: Option<bool>,
    /// The serving generation's committed checkpoint.
    pub checkpoint: Option<LogPosition>,
    /// The checkpoint of the generation being built, if any.
    pub building_checkpoint: Option<LogPosition>,
    /// The store's head.
    pub head: Option<LogPosition>,
    /// Events after the serving checkpoint up to the head, counted by the store.
    pub lag: u64,
    /// What holds the store's visible log back, if anything.
    pub held_by: Option<LogHold>,
    /// The serving generation's dead letters.
    pub dead_letters: u64,
    /// When this was read.
    pub measured_at: OffsetDateTime,
}

/// Reads a projection's status from its read model and its store, without claiming or
/// changing anything: what a status command or an admin page in another process shows. It
/// knows what is stored, not what a runner is doing right now (that is
/// [`ProjectionRunner::status`](crate::ProjectionRunner::status), in the runner's process).
///
/// # Errors
/// The read model or the store failed.
pub async fn inspect<S: EventStore, M: ReadModel>(store: &S, model: &M) -> Result<ReadModelStatus> {
    let generations = model.peek_generations().await?;
    let this_store = store.store_id().await?;
    let checkpoint = match generations.current {
        Some(g) => model.peek_checkpoint(g).await?,
        None => None,
    };
    let building_checkpoint = match generations.building {
        Some(g) => model.peek_checkpoint(g).await?,
        None => None,
    };
    let held_by = store.log_hold().await?;
    let (head, lag) = head_and_lag(store, checkpoint).await?;
    let dead_letters = model.dead_letters().await?.len() as u64;
    Ok(ReadModelStatus {
        name: model.projection().to_owned(),
        built_from_this_store: generations.store.map(|s| s == this_store),
        generations,
        checkpoint,
        building_checkpoint,
        head,
        lag,
        held_by,
        dead_letters,
        measured_at: OffsetDateTime::now_utc(),
    })
}

/// The store's head and the events after `checkpoint` up to it: a follower's exact lag.
pub(crate) async fn head_and_lag<S: EventStore>(
    store: &S,
    checkpoint: Option<LogPosition>,
) -> annals::Result<(Option<LogPosition>, u64)> {
    let head = store.head_position().await?;
    let lag = match head {
        Some(h) => {
            store
                .count_events(checkpoint.unwrap_or_default(), h)
                .await?
        }
        None => 0,
    };
    Ok((head, lag))
}

impl fmt::Display for ReadModelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        match self.generations.current {
            Some(g) => write!(f, "{g}")?,
            None => f.write_str("not built yet")?,
        }
        match self.checkpoint {
            Some(c) => write!(f, ", at {c}")?,
            None => f.write_str(", at nothing yet")?,
        }
        write!(f, ", lag {} event(s)", self.lag)?;
        if let Some(g) = self.generations.building {
            write!(f, ", building {g}")?;
            if let Some(c) = self.building_checkpoint {
                write!(f, " (at {c})")?;
            }
        }
        if self.dead_letters > 0 {
            write!(f, ", {} dead letter(s)", self.dead_letters)?;
        }
        if self.built_from_this_store == Some(false) {
            f.write_str(", BUILT FROM ANOTHER STORE")?;
        }
        if let Some(hold) = &self.held_by {
            write!(f, ", waiting behind {hold}")?;
        }
        Ok(())
    }
}
