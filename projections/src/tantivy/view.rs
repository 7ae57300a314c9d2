//! Reading a tantivy read model: the current generation, searched with scores.

use annals::LogPosition;
use tantivy::{
    Index, Searcher, TantivyDocument, Term,
    collector::TopDocs,
    query::{Query, QueryParser, TermQuery},
    schema::{Field, IndexRecordOption},
};

use super::{TantivyReadModel, writer::read_payload};
use crate::{DeadLetter, Error, Generation, Result, model::decode_checkpoint};

/// A search hit: the stored document and its score.
#[derive(Debug, Clone)]
pub struct TantivyHit {
    /// The BM25 score (higher is better).
    pub score: f32,
    /// The stored fields.
    pub document: TantivyDocument,
}

/// A consistent, point-in-time view of the generation that served when it was taken; it
/// stays valid (and unchanged) while a rebuild switches generations.
#[derive(Clone)]
pub struct TantivyView {
    generation: Generation,
    index: Index,
    searcher: Searcher,
    id_field: Field,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for TantivyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyView")
            .field("generation", &self.generation)
            .field("num_docs", &self.searcher.num_docs())
            .finish()
    }
}

impl TantivyReadModel {
    /// A view of the generation readers should use now (`None` before the first build has
    /// completed), reflecting its latest commit. Blocking (it may open the index); cheap once
    /// the generation's reader is open.
    ///
    /// # Errors
    /// [`Error::Tantivy`], [`Error::Io`], [`Error::Corrupt`].
    pub fn view(&self) -> Result<Option<TantivyView>> {
        let Some((generation, index, reader)) = self.inner.current_reader()? else {
            return Ok(None);
        };
        Ok(Some(TantivyView {
            generation,
            index,
            searcher: reader.searcher(),
            id_field: self.inner.id_field,
            dir: self.inner.generation_dir(generation),
        }))
    }
}

impl TantivyView {
    /// The generation this view reads.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The underlying tantivy searcher, for collectors the helpers do not cover.
    pub fn searcher(&self) -> &Searcher {
        &self.searcher
    }

    /// The number of documents.
    pub fn num_docs(&self) -> u64 {
        self.searcher.num_docs()
    }

    /// The `limit` best documents for `query`, best first, with their scores.
    ///
    /// # Errors
    /// [`Error::Tantivy`].
    pub fn search(&self, query: &dyn Query, limit: usize) -> Result<Vec<TantivyHit>> {
        let top = self
            .searcher
            .search(query, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        top.into_iter()
            .take(limit)
            .map(|(score, address)| {
                Ok(TantivyHit {
                    score,
                    document: self.searcher.doc(address)?,
                })
            })
            .collect()
    }

    /// Parses `text` with tantivy's query language over `default_fields` and searches.
    ///
    /// # Errors
    /// [`Error::Query`] for a query that does not parse, [`Error::Tantivy`].
    pub fn search_text(
        &self,
        text: &str,
        default_fields: &[Field],
        limit: usize,
    ) -> Result<Vec<TantivyHit>> {
        let parser = QueryParser::for_index(&self.index, default_fields.to_vec());
        let query = parser.parse_query(text).map_err(Error::Query)?;
        self.search(query.as_ref(), limit)
    }

    /// The document with this id.
    ///
    /// # Errors
    /// [`Error::Tantivy`].
    pub fn get(&self, id: &str) -> Result<Option<TantivyDocument>> {
        let query = TermQuery::new(
            Term::from_field_text(self.id_field, id),
            IndexRecordOption::Basic,
        );
        Ok(self.search(&query, 1)?.pop().map(|hit| hit.document))
    }

    /// The checkpoint of the commit this view reads (or a later one).
    ///
    /// # Errors
    /// [`Error::Tantivy`], [`Error::Corrupt`].
    pub fn checkpoint(&self) -> Result<Option<LogPosition>> {
        decode_checkpoint(&read_payload(&self.index)?.checkpoint)
    }

    /// Events parked in this generation's dead-letter list, oldest first.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Corrupt`].
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        // The committed journal of the commit this view reads (or a later one).
        let committed = read_payload(&self.index)?.journal;
        Ok(super::journal::read(&self.dir, committed)?.letters())
    }
}
