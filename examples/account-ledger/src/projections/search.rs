//! The search read model: every transaction as a tantivy document (account, owner,
//! counterparty, memo, amount, time), upserted by event id; full-text search on memo, owner
//! and counterparty, filters by account and amount range.
//!
//! The index lives in `<root>/search/` (`TantivyReadModel`: a state file and one directory per
//! generation, each commit carrying the checkpoint). The owner and currency of a
//! transaction's account come from the account's `Opened` event, kept as a lookup.

use std::{ops::Bound, path::Path};

use annals::{BoxError, RecordedEvent};
use annals_projections::{
    EventFilter, LookupKeys, Projection, TantivyBatch, TantivyConfig, TantivyReadModel,
    TantivyView, WriteBatch,
};
use tantivy::{
    TantivyDocument, Term,
    query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery},
    schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value},
};

use super::{
    ReadError,
    entry::{Change, Transaction, declare},
};
use crate::domain::Account;

/// The projection's name: its status line, its lease, its directory.
pub const SEARCH: &str = "search";

/// The index's fields.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    id: Field,
    account: Field,
    owner: Field,
    currency: Field,
    counterparty: Field,
    memo: Field,
    amount: Field,
    abs_amount: Field,
    time: Field,
    position: Field,
    what: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        account: b.add_text_field("account", STRING | STORED),
        owner: b.add_text_field("owner", TEXT | STORED),
        currency: b.add_text_field("currency", STRING | STORED),
        counterparty: b.add_text_field("counterparty", TEXT | STORED),
        memo: b.add_text_field("memo", TEXT | STORED),
        amount: b.add_i64_field("amount", STORED),
        abs_amount: b.add_i64_field("abs_amount", INDEXED | FAST),
        time: b.add_i64_field("time", STORED | FAST),
        position: b.add_u64_field("position", STORED),
        what: b.add_text_field("what", STRING | STORED),
    };
    (b.build(), fields)
}

/// Opens the search read model under `root` (in `root/search/`).
///
/// # Errors
/// [`ReadError::Projection`] when the directory cannot be created.
pub fn open_index(root: &Path) -> Result<(TantivyReadModel, Fields), ReadError> {
    let (schema, fields) = schema();
    let config = TantivyConfig::new().with_memory_budget(64 << 20);
    let model = TantivyReadModel::open(root, SEARCH, schema, fields.id, config)?;
    Ok((model, fields))
}

/// The search projection: a document per transaction.
#[derive(Debug, Clone, Copy)]
pub struct SearchProjection {
    fields: Fields,
}

impl SearchProjection {
    /// The projection over the index's `fields` (from [`open_index`]).
    pub fn new(fields: Fields) -> Self {
        Self { fields }
    }
}

impl Projection for SearchProjection {
    type Model = TantivyReadModel;

    fn name(&self) -> &str {
        SEARCH
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Account>()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        declare(event, keys);
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut TantivyBatch) -> Result<(), BoxError> {
        let Some((account, Change::Moved { tx, info })) = Change::of(event, batch.lookups_mut())?
        else {
            return Ok(());
        };
        let f = self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.account, &account);
        doc.add_u64(f.position, tx.position);
        doc.add_i64(f.time, tx.time);
        doc.add_text(f.what, &tx.kind);
        doc.add_text(f.owner, &info.owner);
        doc.add_text(f.currency, &info.currency);
        doc.add_text(f.counterparty, &tx.counterparty);
        doc.add_text(f.memo, &tx.memo);
        doc.add_i64(f.amount, tx.amount);
        doc.add_i64(f.abs_amount, tx.amount.abs());
        batch.upsert(event.event_id.to_string(), doc);
        Ok(())
    }
}

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// tantivy's relevance score.
    pub score: f32,
    /// The transaction.
    pub transaction: Transaction,
    /// The account's owner.
    pub owner: String,
    /// The account's currency.
    pub currency: String,
}

/// Filters beside the full-text query.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this account.
    pub account: Option<String>,
    /// Amounts (absolute, minor units) at least this.
    pub min: Option<i64>,
    /// Amounts at most this.
    pub max: Option<i64>,
    /// The most hits to return.
    pub limit: usize,
}

fn term(field: Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

fn text(doc: &TantivyDocument, field: Field) -> String {
    doc.get_first(field)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Full-text search on memo, owner and counterparty (tantivy's query syntax; empty or `*`
/// matches everything), with the filters. Best matches first, then newest first.
///
/// # Errors
/// [`ReadError::Query`] for a query that does not parse; tantivy failures.
pub fn search(
    view: &TantivyView,
    f: &Fields,
    query: &str,
    filter: &Filter,
) -> Result<Vec<Hit>, ReadError> {
    let text_query: Box<dyn Query> = match query.trim() {
        "" | "*" => Box::new(AllQuery),
        q => QueryParser::for_index(
            view.searcher().index(),
            vec![f.memo, f.owner, f.counterparty],
        )
        .parse_query(q)
        .map_err(ReadError::Query)?,
    };
    let mut clauses = vec![(Occur::Must, text_query)];
    if let Some(account) = &filter.account {
        clauses.push((Occur::Must, term(f.account, account)));
    }
    if filter.min.is_some() || filter.max.is_some() {
        let bound = |v: Option<i64>| {
            v.map_or(Bound::Unbounded, |v| {
                Bound::Included(Term::from_field_i64(f.abs_amount, v))
            })
        };
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(bound(filter.min), bound(filter.max))),
        ));
    }
    let top = view
        .search(&BooleanQuery::new(clauses), filter.limit)
        .map_err(ReadError::Index)?;
    let mut hits: Vec<Hit> = top
        .into_iter()
        .map(|hit| {
            let doc = &hit.document;
            let int = |field| doc.get_first(field).and_then(|v| v.as_i64()).unwrap_or(0);
            Hit {
                score: hit.score,
                owner: text(doc, f.owner),
                currency: text(doc, f.currency),
                transaction: Transaction {
                    position: doc
                        .get_first(f.position)
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                    account: text(doc, f.account),
                    kind: text(doc, f.what),
                    amount: int(f.amount),
                    counterparty: text(doc, f.counterparty),
                    memo: text(doc, f.memo),
                    time: int(f.time),
                },
            }
        })
        .collect();
    // Equal scores in a stable order, whatever the index's segment layout: newest first.
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.transaction.position.cmp(&a.transaction.position))
    });
    Ok(hits)
}
