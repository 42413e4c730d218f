//! Query helpers: rows copied out of their statements, with typed getters.

use super::error::StoreError;
use libsql::{Connection, Value};

/// One result row, copied out of the statement. (A local libSQL `Row` is a
/// view of its statement's current step, so rows cannot be kept as they are.)
pub(crate) struct Record(Vec<Value>);

impl Record {
    fn value(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.value(i) {
            Value::Null => Ok(None),
            Value::Integer(n) => Ok(Some(*n)),
            other => Err(StoreError::Internal(format!("column {i}: expected an integer, found {other:?}"))),
        }
    }

    pub fn i64(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_i64(i)?.ok_or_else(|| StoreError::Internal(format!("column {i}: unexpected NULL")))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.value(i) {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t.clone())),
            other => Err(StoreError::Internal(format!("column {i}: expected text, found {other:?}"))),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| StoreError::Internal(format!("column {i}: unexpected NULL")))
    }

    /// A blob column; text is taken as its UTF-8 bytes (rows written by hand
    /// may store bodies as text).
    pub fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        blob(i, self.value(i).clone())
    }

    /// [`Record::opt_blob`] without a copy: the value moves out of the row.
    pub fn take_blob(&mut self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        blob(i, self.0.get_mut(i).map_or(Value::Null, |v| std::mem::replace(v, Value::Null)))
    }
}

fn blob(i: usize, value: Value) -> Result<Option<Vec<u8>>, StoreError> {
    match value {
        Value::Null => Ok(None),
        Value::Blob(b) => Ok(Some(b)),
        Value::Text(t) => Ok(Some(t.into_bytes())),
        other => Err(StoreError::Internal(format!("column {i}: expected a blob, found {other:?}"))),
    }
}

impl super::Store {
    /// The first column of a read's first row (0 when there is no row or
    /// it is NULL), on a pooled connection.
    pub(crate) async fn read_i64(
        &self,
        op: &'static str,
        sql: &str,
        params: impl libsql::params::IntoParams,
    ) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let rows = query_all(&conn, sql, params).await.map_err(|e| StoreError::read(op, e));
        self.put_back(conn);
        Ok(rows?.first().map(|r| r.opt_i64(0)).transpose()?.flatten().unwrap_or(0))
    }
}

/// Runs a query and reads every row: a `Rows` left unfinished keeps a read
/// snapshot open on its connection, hiding later syncs.
pub(crate) async fn query_all(
    conn: &Connection,
    sql: &str,
    params: impl libsql::params::IntoParams,
) -> Result<Vec<Record>, libsql::Error> {
    let mut rows = conn.query(sql, params).await?;
    let columns = rows.column_count();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await? {
        out.push(Record((0..columns).map(|i| row.get_value(i)).collect::<Result<_, _>>()?));
    }
    Ok(out)
}
