//! Raw tantivy baseline: the ledger search documents indexed directly.

use std::path::Path;

use tantivy::{
    Index, TantivyDocument,
    schema::{Field, INDEXED, STORED, STRING, Schema, TEXT},
};

use crate::{BenchResult, ledger::Deposited};

/// The writer's memory budget, for the framework and the baseline alike.
pub(crate) const MEMORY_BUDGET: usize = 128 * 1024 * 1024;

/// The search document's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// Event id (the document id).
    pub(crate) id: Field,
    /// Account id.
    pub(crate) account: Field,
    /// Currency code.
    pub(crate) currency: Field,
    /// Memo, full text.
    pub(crate) memo: Field,
    /// Counterparty, full text.
    pub(crate) counterparty: Field,
    /// Amount.
    pub(crate) amount: Field,
    /// The account's first counterparty (from the lookup).
    pub(crate) first: Field,
}

/// The schema of the deposit search index.
pub(crate) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        account: b.add_text_field("account", STRING | STORED),
        currency: b.add_text_field("currency", STRING),
        memo: b.add_text_field("memo", TEXT | STORED),
        counterparty: b.add_text_field("counterparty", TEXT),
        amount: b.add_i64_field("amount", INDEXED | STORED),
        first: b.add_text_field("first_counterparty", STRING),
    };
    (b.build(), fields)
}

/// The document of one deposit, without its id (the projection's upsert adds it), with the
/// account's first counterparty.
pub(crate) fn document(fields: &Fields, d: &Deposited, first: &str) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(fields.first, first);
    doc.add_text(fields.account, &d.account);
    doc.add_text(fields.currency, &d.currency);
    doc.add_text(fields.memo, &d.memo);
    doc.add_text(fields.counterparty, &d.counterparty);
    doc.add_i64(fields.amount, d.amount);
    doc
}

/// Indexes `(id, deposit)` pairs into a new index in `dir` with one writer and one commit
/// at the end; returns the number of documents searchable afterwards.
///
/// # Errors
/// tantivy failures.
pub(crate) fn index_directly(dir: &Path, docs: &[(String, Deposited)]) -> BenchResult<u64> {
    let (schema, fields) = schema();
    let index = Index::create_in_dir(dir, schema)?;
    let mut writer = index.writer::<TantivyDocument>(MEMORY_BUDGET)?;
    // The same lookup as the projection's, in a map.
    let mut first: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (id, d) in docs {
        let first = *first.entry(&d.account).or_insert(&d.counterparty);
        let mut doc = document(&fields, d, first);
        doc.add_text(fields.id, id);
        writer.add_document(doc)?;
    }
    writer.commit()?;
    let reader = index.reader()?;
    Ok(reader.searcher().num_docs())
}
