//! The tantivy read model: every transaction as a document (account, owner, counterparty,
//! memo, amount, time), full-text search on memo, owner and counterparty, filters by account
//! and amount range.
//!
//! The index lives in `search/<generation>/` of the data directory; the file `search/ACTIVE`
//! names the generation readers use. Each batch is one commit whose payload is the checkpoint,
//! so the index and its checkpoint never disagree. A rebuild fills the next generation, then
//! replaces `ACTIVE` (written beside and renamed) and removes the old directory.

use std::{
    collections::HashMap,
    fs,
    ops::Bound,
    path::{Path, PathBuf},
    time::Duration,
};

use annals::{LogPosition, RecordedEvent};
use tantivy::{
    Index, IndexReader, IndexWriter, TantivyDocument, Term,
    collector::TopDocs,
    query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery},
    schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value},
};

use super::{
    entry::{Entry, Transaction},
    runner::{ProjectionError, ReadModel, format_position, parse_position},
};
use crate::domain::AccountEvent;

const WRITER_MEMORY: usize = 50_000_000;

#[derive(Debug, Clone, Copy)]
struct Fields {
    kind: Field,
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
        kind: b.add_text_field("kind", STRING | STORED),
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

/// The search index at one generation.
pub struct SearchIndex {
    root: PathBuf,
    generation: u64,
    index: Index,
    reader: IndexReader,
    writer: Option<IndexWriter>,
    fields: Fields,
    /// Owner and currency per account, learnt from `Opened` (and from the index on a miss).
    owners: HashMap<String, (String, String)>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("root", &self.root)
            .field("generation", &self.generation)
            .finish()
    }
}

fn active_file(root: &Path) -> PathBuf {
    root.join("ACTIVE")
}

impl SearchIndex {
    /// Opens the active generation under `root`, creating the first one when there is none.
    ///
    /// # Errors
    /// I/O and tantivy failures.
    pub fn open(root: &Path) -> Result<Self, ProjectionError> {
        fs::create_dir_all(root)?;
        let generation = match fs::read_to_string(active_file(root)) {
            Ok(s) => s.trim().parse().unwrap_or(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_active(root, 1)?;
                1
            }
            Err(e) => return Err(e.into()),
        };
        Self::open_generation(root, generation)
    }

    fn open_generation(root: &Path, generation: u64) -> Result<Self, ProjectionError> {
        let dir = root.join(generation.to_string());
        fs::create_dir_all(&dir)?;
        let (schema, fields) = schema();
        let mut index = None;
        if dir.join("meta.json").exists() {
            let existing = Index::open_in_dir(&dir)?;
            if existing.schema() == schema {
                index = Some(existing);
            } else {
                // Written by another version of this example: a read model is rebuilt from
                // the log, so start this generation afresh.
                drop(existing);
                fs::remove_dir_all(&dir)?;
                fs::create_dir_all(&dir)?;
            }
        }
        let index = match index {
            Some(index) => index,
            None => Index::create_in_dir(&dir, schema)?,
        };
        let reader = index.reader()?;
        Ok(Self {
            root: root.to_owned(),
            generation,
            index,
            reader,
            writer: None,
            fields,
            owners: HashMap::new(),
        })
    }

    /// A fresh generation beside this one, for a blue/green rebuild.
    ///
    /// # Errors
    /// I/O and tantivy failures.
    pub fn next_generation(&self) -> Result<Self, ProjectionError> {
        let mut next = self.generation + 1;
        while self.root.join(next.to_string()).exists() {
            // A leftover of an interrupted rebuild: start it afresh.
            fs::remove_dir_all(self.root.join(next.to_string()))?;
            next += 1;
        }
        Self::open_generation(&self.root, next)
    }

    /// Makes this generation the active one and removes `old`'s directory.
    ///
    /// # Errors
    /// I/O failures.
    pub fn activate(mut self, old: Self) -> Result<Self, ProjectionError> {
        write_active(&self.root, self.generation)?;
        let old_dir = old.root.join(old.generation.to_string());
        drop(old);
        if old_dir != self.root.join(self.generation.to_string()) {
            fs::remove_dir_all(old_dir)?;
        }
        self.writer = None;
        Ok(self)
    }

    /// The generation this handle reads and writes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of transaction documents.
    pub fn documents(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn writer(&mut self) -> Result<&mut IndexWriter, ProjectionError> {
        if self.writer.is_none() {
            // Another `ledger` process may hold the index's one writer for a moment.
            let mut tries = 0;
            let writer = loop {
                match self.index.writer(WRITER_MEMORY) {
                    Ok(w) => break w,
                    Err(tantivy::TantivyError::LockFailure(..)) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            // Segment files that no commit lists (after a crash) are removed on open.
            let _ = writer.garbage_collect_files().wait();
            self.writer = Some(writer);
        }
        self.writer
            .as_mut()
            .ok_or(ProjectionError::BadCheckpoint(String::new()))
    }

    fn stored_checkpoint(&self) -> Result<Option<LogPosition>, ProjectionError> {
        match self.index.load_metas()?.payload {
            Some(p) if !p.is_empty() => parse_position(&p).map(Some),
            _ => Ok(None),
        }
    }

    fn owner_of(&mut self, account: &str) -> Result<(String, String), ProjectionError> {
        if let Some(o) = self.owners.get(account) {
            return Ok(o.clone());
        }
        let f = self.fields;
        let query = BooleanQuery::new(vec![
            (Occur::Must, term(f.kind, "account")),
            (Occur::Must, term(f.account, account)),
        ]);
        let searcher = self.reader.searcher();
        let owner = match searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())?
            .first()
        {
            Some((_, addr)) => {
                let doc: TantivyDocument = searcher.doc(*addr)?;
                (text(&doc, f.owner), text(&doc, f.currency))
            }
            None => (String::new(), String::new()),
        };
        self.owners.insert(account.to_owned(), owner.clone());
        Ok(owner)
    }

    fn document(&mut self, entry: &Entry) -> Result<Option<TantivyDocument>, ProjectionError> {
        let f = self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.account, &entry.account);
        doc.add_u64(f.position, entry.position.sequence);
        doc.add_i64(f.time, entry.time.unix_timestamp());
        if let AccountEvent::Opened { owner, currency } = &entry.event {
            self.owners.insert(
                entry.account.clone(),
                (owner.clone(), currency.as_str().to_owned()),
            );
            doc.add_text(f.kind, "account");
            doc.add_text(f.owner, owner);
            doc.add_text(f.currency, currency.as_str());
            return Ok(Some(doc));
        }
        let Some(tx) = entry.transaction() else {
            return Ok(None);
        };
        let (owner, currency) = self.owner_of(&entry.account)?;
        doc.add_text(f.kind, "tx");
        doc.add_text(f.what, &tx.kind);
        doc.add_text(f.owner, &owner);
        doc.add_text(f.currency, &currency);
        doc.add_text(f.counterparty, &tx.counterparty);
        doc.add_text(f.memo, &tx.memo);
        doc.add_i64(f.amount, tx.amount);
        doc.add_i64(f.abs_amount, tx.amount.abs());
        Ok(Some(doc))
    }

    /// Full-text search on memo, owner and counterparty (tantivy's query syntax; empty or `*`
    /// matches everything), with the filters. Best matches first, then newest first.
    ///
    /// # Errors
    /// [`ProjectionError::Query`] for a query that does not parse; tantivy failures.
    pub fn search(&self, query: &str, filter: &Filter) -> Result<Vec<Hit>, ProjectionError> {
        let f = self.fields;
        let text_query: Box<dyn Query> = match query.trim() {
            "" | "*" => Box::new(AllQuery),
            q => QueryParser::for_index(&self.index, vec![f.memo, f.owner, f.counterparty])
                .parse_query(q)?,
        };
        let mut clauses = vec![(Occur::Must, text_query), (Occur::Must, term(f.kind, "tx"))];
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
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(filter.limit.max(1)).order_by_score(),
        )?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let int = |field| doc.get_first(field).and_then(|v| v.as_i64()).unwrap_or(0);
            hits.push(Hit {
                score,
                owner: text(&doc, f.owner),
                currency: text(&doc, f.currency),
                transaction: Transaction {
                    position: doc
                        .get_first(f.position)
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                    account: text(&doc, f.account),
                    kind: text(&doc, f.what),
                    amount: int(f.amount),
                    counterparty: text(&doc, f.counterparty),
                    memo: text(&doc, f.memo),
                    time: int(f.time),
                },
            });
        }
        // Equal scores in a stable order, whatever the index's segment layout: newest first.
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.transaction.position.cmp(&a.transaction.position))
        });
        Ok(hits)
    }
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

fn write_active(root: &Path, generation: u64) -> Result<(), ProjectionError> {
    let tmp = root.join("ACTIVE.tmp");
    fs::write(&tmp, generation.to_string())?;
    fs::rename(tmp, active_file(root))?;
    Ok(())
}

impl ReadModel for SearchIndex {
    fn name(&self) -> &'static str {
        "search"
    }

    async fn checkpoint(&mut self) -> Result<Option<LogPosition>, ProjectionError> {
        self.stored_checkpoint()
    }

    async fn apply(
        &mut self,
        from: Option<LogPosition>,
        batch: &[RecordedEvent],
    ) -> Result<bool, ProjectionError> {
        let Some(last) = batch.last() else {
            return Ok(true);
        };
        self.writer()?;
        // Holding the index's only writer, check that nobody committed meanwhile.
        if self.stored_checkpoint()? != from {
            self.owners.clear();
            return Ok(false);
        }
        let mut docs = Vec::new();
        for recorded in batch {
            if let Some(entry) = Entry::decode(recorded)?
                && let Some(doc) = self.document(&entry)?
            {
                docs.push(doc);
            }
        }
        let writer = self.writer()?;
        for doc in docs {
            writer.add_document(doc)?;
        }
        let mut commit = writer.prepare_commit()?;
        commit.set_payload(&format_position(last.position));
        commit.commit()?;
        self.reader.reload()?;
        Ok(true)
    }
}
