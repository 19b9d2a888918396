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

/// The algorithm identifier of an EC key inside PKCS#8 (`id-ecPublicKey`, 1.2.840.10045.2.1), as
/// DER: the OID's tag, length and value.
const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Where in a PKCS#8 document its algorithm identifier lies: after the outer SEQUENCE's header
/// (up to 4 bytes), the version INTEGER (3) and the AlgorithmIdentifier SEQUENCE's header (2).
const PKCS8_ALGORITHM_WITHIN: usize = 24;

/// `key` as rustls's signing key. An EC key goes straight to the ECDSA loader: rustls's
/// `any_supported_type` tries RSA first, and aws-lc parses (and checks) the whole EC key before
/// that attempt fails, so every EC key was parsed twice (14 % of the CPU time of loading
/// 10,000 files certificates, measured with perf). Anything else goes through the provider as before.
pub(crate) fn signing_key(
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    let ec = match &key {
        rustls_pki_types::PrivateKeyDer::Sec1(_) => true,
        rustls_pki_types::PrivateKeyDer::Pkcs8(der) => is_ec_pkcs8(der.secret_pkcs8_der()),
        _ => false,
    };
    if ec {
        return rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key);
    }
    rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
}

/// Whether the PKCS#8 document `der` holds an EC key (its algorithm is `id-ecPublicKey`).
fn is_ec_pkcs8(der: &[u8]) -> bool {
    der[..der.len().min(PKCS8_ALGORITHM_WITHIN)]
        .windows(ID_EC_PUBLIC_KEY.len())
        .any(|w| w == ID_EC_PUBLIC_KEY)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_loads_and_ec_keys_take_the_ecdsa_loader() {
        for kind in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let pair = kind.generate().unwrap();
            let der = rustls_pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into());
            assert_eq!(
                is_ec_pkcs8(&pair.serialize_der()),
                kind != KeyType::Rsa2048,
                "{kind:?}"
            );
            let key = signing_key(der).unwrap();
            let want = if kind == KeyType::Rsa2048 {
                rustls::SignatureAlgorithm::RSA
            } else {
                rustls::SignatureAlgorithm::ECDSA
            };
            assert_eq!(key.algorithm(), want, "{kind:?}");
        }
    }
}
