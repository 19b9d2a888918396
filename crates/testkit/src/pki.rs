//! Test certificate authorities and leaves generated with rcgen, plus certificate inspection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use aws_lc_rs::encoding::AsDer as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    PKCS_RSA_SHA256, RsaKeySize, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// The leaf key's algorithm and the PEM encoding its private key is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeafKey {
    /// ECDSA P-256, `BEGIN PRIVATE KEY` (PKCS#8).
    #[default]
    EcdsaP256Pkcs8,
    /// ECDSA P-256, `BEGIN EC PRIVATE KEY` (SEC1 / RFC 5915, with the curve parameters).
    EcdsaP256Sec1,
    /// ECDSA P-384, `BEGIN PRIVATE KEY` (PKCS#8).
    EcdsaP384Pkcs8,
    /// Ed25519, `BEGIN PRIVATE KEY` (PKCS#8).
    Ed25519Pkcs8,
    /// RSA 2048, `BEGIN PRIVATE KEY` (PKCS#8). Key generation takes ~0.1 s.
    Rsa2048Pkcs8,
    /// RSA 2048, `BEGIN RSA PRIVATE KEY` (PKCS#1).
    Rsa2048Pkcs1,
}

/// A generated CA and one leaf it signed; all fields are PEM.
#[derive(Clone)]
pub struct TestPki {
    /// The CA certificate (self-signed; the trust anchor).
    pub ca_pem: String,
    /// The CA's private key (PKCS#8), to sign more certificates with [`TestPki::issuer`].
    pub ca_key_pem: String,
    /// The leaf certificate alone (no chain).
    pub leaf_cert_pem: String,
    /// The leaf's private key in the format chosen by [`LeafKey`].
    pub leaf_key_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_pem", &self.ca_pem)
            .field("leaf_cert_pem", &self.leaf_cert_pem)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl TestPki {
    /// An rcgen issuer for this CA, to sign further leaves in a test.
    pub fn issuer(&self) -> anyhow::Result<rcgen::Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        Ok(rcgen::Issuer::from_ca_cert_pem(&self.ca_pem, key)?)
    }
}

/// A fresh test CA and a leaf for `names` (DNS names or IP addresses) with a PKCS#8 ECDSA P-256
/// key: `(ca_pem, leaf_cert_pem, leaf_key_pem)`.
///
/// # Panics
/// If rcgen fails, which only happens for invalid `names` (a bug in the calling test).
#[allow(clippy::expect_used)]
pub fn ca_and_leaf(names: &[&str]) -> (String, String, String) {
    let pki = ca_and_leaf_with(names, LeafKey::default()).expect("generate a test CA and leaf");
    (pki.ca_pem, pki.leaf_cert_pem, pki.leaf_key_pem)
}

/// Like [`ca_and_leaf`], choosing the leaf key's algorithm and encoding; returns the CA key too.
///
/// The leaf is valid from one hour ago for 30 days, has `serverAuth` EKU and its first name as
/// common name.
pub fn ca_and_leaf_with(names: &[&str], key: LeafKey) -> anyhow::Result<TestPki> {
    let first = names.first().context("a leaf needs at least one name")?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, unique_ca_name());
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    ca_params.not_before = (now - Duration::from_secs(3600)).into();
    ca_params.not_after = (now + Duration::from_secs(365 * 86400)).into();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut leaf_params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, *first);
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = (now - Duration::from_secs(3600)).into();
    leaf_params.not_after = (now + Duration::from_secs(30 * 86400)).into();
    let leaf_key = generate_key(key)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    Ok(TestPki {
        ca_pem: ca.pem(),
        ca_key_pem,
        leaf_cert_pem: leaf.pem(),
        leaf_key_pem: encode_key(&leaf_key, key)?,
    })
}

/// CAs need distinct subjects: a verifier that finds a same-named foreign CA reports
/// `BadSignature` instead of `UnknownIssuer`.
fn unique_ca_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("testkit CA {:x}-{nanos:x}-{n}", std::process::id())
}

fn generate_key(key: LeafKey) -> anyhow::Result<KeyPair> {
    let alg: &'static SignatureAlgorithm = match key {
        LeafKey::EcdsaP256Pkcs8 | LeafKey::EcdsaP256Sec1 => &PKCS_ECDSA_P256_SHA256,
        LeafKey::EcdsaP384Pkcs8 => &PKCS_ECDSA_P384_SHA384,
        LeafKey::Ed25519Pkcs8 => &PKCS_ED25519,
        LeafKey::Rsa2048Pkcs8 | LeafKey::Rsa2048Pkcs1 => {
            return Ok(KeyPair::generate_rsa_for(
                &PKCS_RSA_SHA256,
                RsaKeySize::_2048,
            )?);
        }
    };
    Ok(KeyPair::generate_for(alg)?)
}

/// rcgen only writes PKCS#8; SEC1 comes from aws-lc-rs, PKCS#1 is the RSAPrivateKey that PKCS#8
/// wraps in its `privateKey` OCTET STRING.
fn encode_key(key: &KeyPair, format: LeafKey) -> anyhow::Result<String> {
    let pkcs8 = key.serialized_der();
    let (tag, der) = match format {
        LeafKey::EcdsaP256Sec1 => {
            let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                pkcs8,
            )
            .map_err(|e| anyhow!("re-read the P-256 key: {e}"))?;
            let sec1 = pair
                .private_key()
                .as_der()
                .map_err(|e| anyhow!("encode SEC1: {e}"))?;
            ("EC PRIVATE KEY", sec1.as_ref().to_vec())
        }
        LeafKey::Rsa2048Pkcs1 => ("RSA PRIVATE KEY", pkcs8_inner_key(pkcs8)?),
        _ => return Ok(key.serialize_pem()),
    };
    Ok(pem::encode(&pem::Pem::new(tag, der)))
}

fn pkcs8_inner_key(pkcs8: &[u8]) -> anyhow::Result<Vec<u8>> {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::parse_der_sequence;
    let (_, seq) = parse_der_sequence(pkcs8).map_err(|e| anyhow!("parse PKCS#8: {e}"))?;
    let items = seq
        .as_sequence()
        .map_err(|e| anyhow!("PKCS#8 is not a SEQUENCE: {e}"))?;
    match items.get(2).map(|o| &o.content) {
        Some(BerObjectContent::OctetString(inner)) => Ok(inner.to_vec()),
        _ => bail!("PKCS#8 has no privateKey OCTET STRING"),
    }
}

/// Every `CERTIFICATE` block in `pem`, in order.
pub fn pem_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parse PEM certificates")?;
    if certs.is_empty() {
        bail!("no CERTIFICATE in PEM");
    }
    Ok(certs)
}

/// The fields of a certificate that tests usually assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number as lowercase hex without leading zeros (Pebble's `cert-status-by-serial`
    /// form).
    pub serial_hex: String,
    /// Subject alternative names of type DNS.
    pub dns_names: Vec<String>,
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// Issuer distinguished name, RFC 4514 style.
    pub issuer: String,
}

/// Parses a DER certificate into [`CertInfo`].
pub fn cert_info(der: &[u8]) -> anyhow::Result<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| anyhow!("parse certificate: {e}"))?;
    let to_system = |t: x509_parser::time::ASN1Time| -> SystemTime {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
        serial_hex: format!("{:x}", cert.serial),
        dns_names,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_key_format_loads_into_rustls() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        for (format, tag) in [
            (LeafKey::EcdsaP256Pkcs8, "PRIVATE KEY"),
            (LeafKey::EcdsaP256Sec1, "EC PRIVATE KEY"),
            (LeafKey::EcdsaP384Pkcs8, "PRIVATE KEY"),
            (LeafKey::Ed25519Pkcs8, "PRIVATE KEY"),
            (LeafKey::Rsa2048Pkcs8, "PRIVATE KEY"),
            (LeafKey::Rsa2048Pkcs1, "RSA PRIVATE KEY"),
        ] {
            let pki = ca_and_leaf_with(&["a.test", "127.0.0.1"], format).unwrap();
            assert!(
                pki.leaf_key_pem
                    .starts_with(&format!("-----BEGIN {tag}-----")),
                "{format:?}: {}",
                pki.leaf_key_pem
            );
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes())
                .unwrap();
            assert_eq!(
                matches!(key, rustls_pki_types::PrivateKeyDer::Sec1(_)),
                format == LeafKey::EcdsaP256Sec1
            );
            assert_eq!(
                matches!(key, rustls_pki_types::PrivateKeyDer::Pkcs1(_)),
                format == LeafKey::Rsa2048Pkcs1
            );
            provider.key_provider.load_private_key(key).unwrap();
            let leaf = pem_certs(&pki.leaf_cert_pem).unwrap();
            let info = cert_info(&leaf[0]).unwrap();
            assert_eq!(info.dns_names, vec!["a.test".to_owned()]);
            assert!(info.issuer.contains("testkit CA"), "{}", info.issuer);
        }
    }
}
