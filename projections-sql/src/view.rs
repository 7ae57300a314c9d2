//! What readers get: the real names of one generation's tables.

use annals_projections::Generation;

use crate::{SqlError, schema::Names};

/// The tables of one generation, for readers' own queries: [`SqlView::table`] gives a
/// table's SQL name (quoted, qualified), [`SqlView::sql`] expands placeholders in a whole
/// query.
///
/// A view names the generation that served when it was taken; a rebuild may switch to
/// another and drop this one (after the runner's retire grace), so take a new view per
/// request.
#[derive(Debug, Clone)]
pub struct SqlView {
    generation: Generation,
    names: Names,
}

impl SqlView {
    pub(crate) fn new(generation: Generation, names: Names) -> Self {
        Self { generation, names }
    }

    /// The generation this view reads.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The SQL name of declared table `name`, to put in a query (PostgreSQL:
    /// `"ns_projection_g3"."accounts"`, SQLite: `"projection__g3__accounts"`).
    ///
    /// # Errors
    /// [`SqlError::UnknownTable`].
    pub fn table(&self, name: &str) -> Result<&str, SqlError> {
        self.names.get(name)
    }

    /// `sql` with every `{table}` placeholder replaced by the table's SQL name, as in a
    /// batch's statements.
    ///
    /// # Errors
    /// [`SqlError::UnknownTable`], [`SqlError::Placeholder`].
    pub fn sql(&self, sql: &str) -> Result<String, SqlError> {
        self.names.expand(sql)
    }
}
