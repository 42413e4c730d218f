//! Errors the store reports to its callers, classified by what the caller
//! should do about them.

/// A store failure. The WIT layer maps each case to a `files.error` case.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The upload passed the configured size limit (bytes).
    #[error("upload larger than {0} bytes")]
    TooLarge(u64),
    /// The write would pass one of the site's limits; nothing was written.
    #[error("{0}")]
    LimitExceeded(super::quota::LimitExceeded),
    /// A conditional write found something other than what it expected.
    #[error("precondition failed")]
    PreconditionFailed,
    /// The caller's arguments were refused.
    #[error("{0}")]
    Invalid(String),
    /// The primary could not be reached or refused to take the write.
    #[error("primary unavailable during {op}")]
    Unavailable {
        op: &'static str,
        #[source]
        source: libsql::Error,
    },
    /// Any other database failure.
    #[error("database error during {op}")]
    Database {
        op: &'static str,
        #[source]
        source: libsql::Error,
    },
    /// Stored data contradicts itself.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// The same failure for another caller (a group commit answers each of
    /// its writes): same case and message.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::TooLarge(n) => StoreError::TooLarge(*n),
            StoreError::PreconditionFailed => StoreError::PreconditionFailed,
            StoreError::LimitExceeded(l) => StoreError::LimitExceeded(l.clone()),
            StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
            StoreError::Unavailable { op, source } => {
                StoreError::Unavailable { op, source: libsql::Error::ConnectionFailed(source.to_string()) }
            }
            StoreError::Database { op, source } => {
                StoreError::Database { op, source: libsql::Error::Misuse(source.to_string()) }
            }
            StoreError::Internal(s) => StoreError::Internal(s.clone()),
        }
    }

    /// A failed read, or any failure of the local database (or replica)
    /// itself: opening a connection, setting it up.
    pub fn read(op: &'static str, source: libsql::Error) -> Self {
        StoreError::Database { op, source }
    }

    /// A failed write: failures to reach the primary (or a busy database)
    /// are worth retrying, everything else is not.
    pub fn write(op: &'static str, source: libsql::Error) -> Self {
        let retryable = match &source {
            libsql::Error::WriteDelegation(_)
            | libsql::Error::Replication(_)
            | libsql::Error::Hrana(_)
            | libsql::Error::ConnectionFailed(_)
            | libsql::Error::Sync(_) => true,
            e => is_locked(e),
        };
        if retryable {
            StoreError::Unavailable { op, source }
        } else {
            StoreError::Database { op, source }
        }
    }

    /// Whether the write failed because another writer held the database's
    /// lock past its busy timeout: nothing was written, and the same write
    /// may well succeed a moment later.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Unavailable { source, .. } if is_locked(source))
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), primary code in the low byte. A
/// primary reports it as the extended code of a remote failure.
fn is_locked(e: &libsql::Error) -> bool {
    match e {
        libsql::Error::SqliteFailure(code, _) => matches!(code & 0xff, 5 | 6),
        libsql::Error::RemoteSqliteFailure(code, extended, _) => {
            matches!(code & 0xff, 5 | 6) || matches!(extended & 0xff, 5 | 6)
        }
        _ => false,
    }
}
