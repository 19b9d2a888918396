//! ACME through instant-acme: one account per CA kept in storage, HTTP-01 and TLS-ALPN-01 solved
//! through the shared [`Challenges`](crate::Challenges), ARI renewal windows.
//! (Being written.)

use std::path::PathBuf;

use crate::ChallengeKind;

/// External account binding credentials.
#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    /// The HMAC key, base64url as CAs hand it out.
    pub hmac_key: String,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab").field("kid", &self.kid).field("hmac_key", &"<redacted>").finish()
    }
}

/// How to talk to one ACME CA.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    /// Trust this root (PEM file) for the directory's TLS instead of the system roots.
    pub ca_root: Option<PathBuf>,
    pub eab: Option<Eab>,
    /// Challenge types to use, in order of preference.
    pub challenges: Vec<ChallengeKind>,
}
