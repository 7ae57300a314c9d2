//! The document changes a tantivy projection's handler adds for a run of events.

use tantivy::{
    TantivyDocument,
    schema::{Field, Schema},
};

use crate::{DeadLetter, Lookups, WriteBatch};

/// One change to the index.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Upsert(String, TantivyDocument),
    Delete(String),
    Park(DeadLetter),
    Unpark(uuid::Uuid),
}

/// Document upserts and deletes by id, applied to the generation's single `IndexWriter` and
/// committed with the checkpoint and fence in the commit payload.
#[derive(Debug, Clone)]
pub struct TantivyBatch {
    schema: Schema,
    id_field: Field,
    pub(crate) ops: Vec<Op>,
    pub(crate) lookups: Lookups,
}

impl TantivyBatch {
    pub(crate) fn new(schema: Schema, id_field: Field) -> Self {
        Self {
            schema,
            id_field,
            ops: Vec::new(),
            lookups: Lookups::new(),
        }
    }

    /// The index schema, to build documents with.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The id field (set by [`TantivyBatch::upsert`]; leave it out of the document).
    pub fn id_field(&self) -> Field {
        self.id_field
    }

    /// Replaces the document with this id (deletes any earlier one, adds this one).
    pub fn upsert(&mut self, id: impl Into<String>, mut document: TantivyDocument) {
        let id = id.into();
        document.add_text(self.id_field, &id);
        self.ops.push(Op::Upsert(id, document));
    }

    /// Deletes the document with this id, if any.
    pub fn delete(&mut self, id: impl Into<String>) {
        self.ops.push(Op::Delete(id.into()));
    }

    /// The number of changes added.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no change was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl WriteBatch for TantivyBatch {
    fn savepoint(&self) -> usize {
        self.ops.len()
    }

    fn rollback_to(&mut self, savepoint: usize) {
        self.ops.truncate(savepoint);
    }

    fn park(&mut self, letter: DeadLetter) {
        self.ops.push(Op::Park(letter));
    }

    fn unpark(&mut self, event_id: uuid::Uuid) {
        self.ops.push(Op::Unpark(event_id));
    }

    fn is_empty(&self) -> bool {
        TantivyBatch::is_empty(self) && self.lookups.is_unchanged()
    }

    fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    fn lookups_mut(&mut self) -> &mut Lookups {
        &mut self.lookups
    }
}
