//! Private key types for certificates we obtain.

use serde::{Deserialize, Serialize};

/// The key type of a certificate fleetgate obtains. ECDSA P-256 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
}

impl KeyType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ecdsa-p256" | "p256" => Some(KeyType::EcdsaP256),
            "ecdsa-p384" | "p384" => Some(KeyType::EcdsaP384),
            "rsa-2048" | "rsa2048" => Some(KeyType::Rsa2048),
            _ => None,
        }
    }

    /// Generate a fresh key pair of this type.
    pub fn generate(self) -> crate::Result<rcgen::KeyPair> {
        let alg = match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        };
        rcgen::KeyPair::generate_for(alg).map_err(|e| crate::Error::Crypto(e.to_string()))
    }
}
