//! Leases and fencing tokens.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::LockName;

/// Grows with every grant of a lock name; a write carrying an older token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A granted lock: proof that `owner` held `name` with `token` until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: LockName,
    pub owner: String,
    pub token: FencingToken,
    pub expires: SystemTime,
}

/// Who holds a lock, as reported to a caller that did not get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub name: LockName,
    pub owner: String,
    pub token: FencingToken,
    pub expires: SystemTime,
}
