//! Which store failures mean "the database cannot be reached" (as opposed to a bad statement or a conflict):
//! the server then answers from its boot cache where it can and refuses changes with 503 (`boot::cache`).

use super::StoreError;

/// SQLite primary result codes that mean the file cannot be used at all: SQLITE_PERM (3), SQLITE_IOERR (10),
/// SQLITE_CORRUPT (11), SQLITE_FULL (13), SQLITE_CANTOPEN (14), SQLITE_NOTADB (26).
const SQLITE_UNUSABLE: [i64; 6] = [3, 10, 11, 13, 14, 26];

impl StoreError {
    /// True when the database is unreachable or unusable (connection refused or lost, pool timed out, the file
    /// cannot be opened or read), so retrying later may work and nothing was written.
    pub fn is_unreachable(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(d) => d.code().is_some_and(|c| unusable_code(&c)),
            _ => false,
        }
    }
}

/// A database error code that means unreachable: SQLite's numeric codes above (extended codes carry the
/// primary code in the low byte), PostgreSQL's class 08 (connection exception) and 57P0x (the server shuts
/// down or does not accept connections yet).
fn unusable_code(code: &str) -> bool {
    // SQLSTATEs are five characters, some all digits ("08006"); SQLite's codes never start with a zero.
    if code.len() == 5 && (code.starts_with("08") || code.starts_with("57P0")) {
        return true;
    }
    code.parse::<i64>()
        .is_ok_and(|n| !code.starts_with('0') && SQLITE_UNUSABLE.contains(&(n & 0xff)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_an_unusable_database() {
        assert!(unusable_code("14"));
        assert!(unusable_code("266")); // SQLITE_IOERR_READ
        assert!(unusable_code("08006"));
        assert!(unusable_code("57P01"));
        assert!(!unusable_code("2067")); // SQLITE_CONSTRAINT_UNIQUE
        assert!(!unusable_code("5")); // SQLITE_BUSY: locked, not gone
        assert!(!unusable_code("23505"));
        assert!(StoreError::Db(sqlx::Error::PoolTimedOut).is_unreachable());
        assert!(!StoreError::Db(sqlx::Error::RowNotFound).is_unreachable());
        assert!(!StoreError::Corrupt("x".into()).is_unreachable());
    }
}
