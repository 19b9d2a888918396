//! Purchased certificates from files: key formats, errors that name the right file, change stamps.
//!
//! Needs the `openssl` CLI (to write PKCS#1 and SEC1 keys); a missing `openssl` fails the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use certs::files::{self, FileStamp};
use certs::{Error, SourceKind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Result<Self> {
        Ok(Fixture {
            dir: tempfile::tempdir()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.path(name);
        fs::write(&path, contents)?;
        Ok(path)
    }
}

/// A "purchased" chain: leaf for `names` signed by a throwaway CA. Returns (chain PEM, leaf key).
fn purchased(names: &[&str], alg: &'static SignatureAlgorithm) -> Result<(String, KeyPair)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Test Vendor CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate_for(alg)?;
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    Ok((format!("{}{}", leaf.pem(), ca_cert.pem()), leaf_key))
}

/// `openssl pkey -traditional`: PKCS#8 in, PKCS#1 (RSA) or SEC1 (EC) out.
fn traditional(fx: &Fixture, pkcs8_pem: &str, name: &str) -> Result<PathBuf> {
    let input = fx.write(&format!("{name}.pkcs8"), pkcs8_pem)?;
    let output = fx.path(name);
    let status = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(&input)
        .arg("-out")
        .arg(&output)
        .status()
        .context("running openssl (is it installed?)")?;
    if !status.success() {
        bail!("openssl pkey -traditional failed: {status}");
    }
    Ok(output)
}

#[test]
fn loads_pkcs8_pkcs1_and_sec1_keys() -> Result<()> {
    let fx = Fixture::new()?;
    let cases: [(&str, &'static SignatureAlgorithm, &str); 3] = [
        (
            "p256",
            &rcgen::PKCS_ECDSA_P256_SHA256,
            "-----BEGIN EC PRIVATE KEY-----",
        ),
        (
            "p384",
            &rcgen::PKCS_ECDSA_P384_SHA384,
            "-----BEGIN EC PRIVATE KEY-----",
        ),
        (
            "rsa",
            &rcgen::PKCS_RSA_SHA256,
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
    ];
    for (label, alg, traditional_header) in cases {
        let (chain, key) = purchased(&["shop.example.com", "www.shop.example.com"], alg)?;
        let cert_path = fx.write(&format!("{label}.crt"), &chain)?;

        let pkcs8 = fx.write(&format!("{label}.key"), &key.serialize_pem())?;
        let bundle = files::load(&cert_path, &pkcs8).with_context(|| format!("{label} PKCS#8"))?;
        assert_eq!(bundle.meta.source, SourceKind::Files);
        assert_eq!(
            bundle.meta.names,
            ["shop.example.com", "www.shop.example.com"]
        );
        assert!(
            bundle.meta.issuer.contains("Test Vendor CA"),
            "{}",
            bundle.meta.issuer
        );
        bundle.certified_key()?;

        let old_style = traditional(&fx, &key.serialize_pem(), &format!("{label}.trad.key"))?;
        let text = fs::read_to_string(&old_style)?;
        assert!(
            text.starts_with(traditional_header),
            "{label}: openssl wrote {}",
            text.lines().next().unwrap_or("")
        );
        let bundle =
            files::load(&cert_path, &old_style).with_context(|| format!("{label} traditional"))?;
        bundle.certified_key()?;
    }
    Ok(())
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch_naming_the_key_file() -> Result<()> {
    let fx = Fixture::new()?;
    let (chain, _) = purchased(&["shop.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (_, other_key) = purchased(&["shop.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = fx.write("shop.crt", &chain)?;
    let key = fx.write("other.key", &other_key.serialize_pem())?;
    match files::load(&cert, &key) {
        Err(Error::KeyMismatch { path }) => assert_eq!(path.as_deref(), Some(key.as_path())),
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    // Also across key types (SEC1 file of an RSA certificate's neighbour).
    let (rsa_chain, _) = purchased(&["shop.example.com"], &rcgen::PKCS_RSA_SHA256)?;
    let rsa_cert = fx.write("rsa.crt", &rsa_chain)?;
    let sec1 = traditional(&fx, &other_key.serialize_pem(), "other.sec1.key")?;
    match files::load(&rsa_cert, &sec1) {
        Err(Error::KeyMismatch { path }) => assert_eq!(path.as_deref(), Some(sec1.as_path())),
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    Ok(())
}

fn assert_invalid_naming(result: certs::Result<certs::CertBundle>, expected: &Path) {
    let err = match result {
        Err(err @ Error::InvalidCertificate { .. }) => err,
        other => panic!(
            "expected InvalidCertificate for {}, got {other:?}",
            expected.display()
        ),
    };
    if let Error::InvalidCertificate { path, .. } = &err {
        assert_eq!(path.as_deref(), Some(expected), "{err}");
    }
    assert!(
        err.to_string().contains(&expected.display().to_string()),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn garbage_is_invalid_and_names_the_file() -> Result<()> {
    let fx = Fixture::new()?;
    let (chain, key) = purchased(&["shop.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = fx.write("shop.crt", &chain)?;
    let key_path = fx.write("shop.key", &key.serialize_pem())?;
    let garbage = fx.write("garbage.pem", "this is not PEM\n")?;
    let binary = fx.path("binary.der");
    fs::write(&binary, [0x30, 0x82, 0xff, 0xfe, 0x00])?;

    assert_invalid_naming(files::load(&garbage, &key_path), &garbage);
    assert_invalid_naming(files::load(&binary, &key_path), &binary);
    assert_invalid_naming(files::load(&cert, &garbage), &garbage);
    assert_invalid_naming(files::load(&cert, &binary), &binary);
    // Swapped: the key file holds no key (it is a certificate).
    assert_invalid_naming(files::load(&key_path, &cert), &cert);
    // A corrupted certificate body.
    let broken = fx.write(
        "broken.crt",
        "-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
    )?;
    assert_invalid_naming(files::load(&broken, &key_path), &broken);
    Ok(())
}

#[test]
fn a_missing_file_is_io_naming_it() -> Result<()> {
    let fx = Fixture::new()?;
    let (chain, key) = purchased(&["shop.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = fx.write("shop.crt", &chain)?;
    let key_path = fx.write("shop.key", &key.serialize_pem())?;
    let missing = fx.path("missing.pem");
    for (c, k) in [(&missing, &key_path), (&cert, &missing)] {
        match files::load(c, k) {
            Err(Error::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn stamps_change_when_either_file_changes() -> Result<()> {
    let fx = Fixture::new()?;
    let (chain, key) = purchased(&["shop.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = fx.write("shop.crt", &chain)?;
    let key_path = fx.write("shop.key", &key.serialize_pem())?;

    let first: FileStamp = files::stamp(&cert, &key_path).context("no stamp")?;
    assert_eq!(
        files::stamp(&cert, &key_path),
        Some(first),
        "unchanged files, same stamp"
    );

    // Same length, new modification time (set explicitly: no waiting on clock granularity).
    let later = SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&cert)?
        .set_modified(later)?;
    let second = files::stamp(&cert, &key_path).context("no stamp")?;
    assert_ne!(second, first);

    // New length of the key file, modification time forced back to the previous value.
    let key_mtime = fs::metadata(&key_path)?.modified()?;
    fs::write(&key_path, format!("{}\n", key.serialize_pem()))?;
    fs::File::options()
        .write(true)
        .open(&key_path)?
        .set_modified(key_mtime)?;
    assert_ne!(files::stamp(&cert, &key_path), Some(second));

    // Replaced by rename (how most tools deploy), same content but a new file.
    let replacement = fx.write("shop.crt.new", &chain)?;
    fs::File::options()
        .write(true)
        .open(&replacement)?
        .set_modified(later + Duration::from_secs(5))?;
    let before = files::stamp(&cert, &key_path);
    fs::rename(&replacement, &cert)?;
    assert_ne!(files::stamp(&cert, &key_path), before);

    // Missing file: no stamp.
    fs::remove_file(&key_path)?;
    assert_eq!(files::stamp(&cert, &key_path), None);
    Ok(())
}
