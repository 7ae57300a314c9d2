//! Binding [`SqlValue`]s to PostgreSQL statements.

use sqlx::{
    Postgres,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgArguments, PgTypeInfo, types::Oid},
    query::Query,
};

use crate::{
    SqlValue,
    error::{SqlError, SqlResult},
};

/// A NULL of no declared type: PostgreSQL infers it from the statement, so it fits a
/// column of any type.
struct Untyped;

impl sqlx::Type<Postgres> for Untyped {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for Untyped {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

/// Refuses text PostgreSQL cannot store.
pub(crate) fn check_text(text: &str) -> SqlResult<()> {
    if text.as_bytes().contains(&0) {
        Err(SqlError::NulByte)
    } else {
        Ok(())
    }
}

/// Binds `value` as the next parameter.
pub(crate) fn bind(
    query: Query<'static, Postgres, PgArguments>,
    value: SqlValue,
) -> SqlResult<Query<'static, Postgres, PgArguments>> {
    Ok(match value {
        SqlValue::Null => query.bind(Untyped),
        SqlValue::Bool(v) => query.bind(v),
        SqlValue::Int(v) => query.bind(v),
        SqlValue::Float(v) => query.bind(v),
        SqlValue::Text(v) => {
            check_text(&v)?;
            query.bind(v)
        }
        SqlValue::Json(v) => query.bind(sqlx::types::Json(v)),
        SqlValue::Bytes(v) => query.bind(v),
    })
}
