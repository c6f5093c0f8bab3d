//! Who may sign an envelope by certificate: the certificate must chain to the ledger's
//! trust anchors, be valid now, be meant for signing, and not be revoked.
//!
//! Chains signed with ECDSA go through OpenSSL's X509 store. OpenSSL 3.0 checks SM2
//! certificate signatures with an empty ID unless each certificate is told otherwise, and
//! GM/T 0015 certificates (the gateway's own SM2 CAs among them) are signed with the GM/T
//! 0009 default ID: a chain with an SM2 signature in it is walked here instead, each link
//! checked with the issuer's key, validity, CA flag and path length.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{X509Crl, X509StoreContext, X509VerifyResult, X509};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};

use super::envelope::EnvelopeError;
use crate::ca::x509::SM2_SM3;

const EKU_CLIENT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
const EKU_ANY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
/// Longest chain walked (leaf, intermediates, root).
const MAX_DEPTH: usize = 8;

/// A ledger's trust anchors: roots are trusted, intermediates only help build chains,
/// CRLs name revoked certificates of the CAs that signed them.
pub struct TrustAnchors {
    store: X509Store,
    roots: Vec<X509>,
    intermediates: Vec<X509>,
    crls: Vec<X509Crl>,
}

/// A signer certificate that passed every check.
pub struct Signer {
    /// The leaf's public key, PEM SPKI.
    pub key_pem: String,
    /// The certificate that issued the leaf, DER, and the leaf's serial (big-endian):
    /// enough to find the leaf in an issuing CA's own register.
    pub issuer_der: Vec<u8>,
    pub serial: Vec<u8>,
}

fn read_pem_certs(p: &Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| format!("{}: {e}", p.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates", p.display()));
    }
    Ok(certs)
}

fn read_pem_crls(p: &Path) -> Result<Vec<X509Crl>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    const END: &str = "-----END X509 CRL-----";
    let crls = text
        .split_inclusive(END)
        .filter(|block| block.contains(END))
        .map(|block| X509Crl::from_pem(block.trim_start().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if crls.is_empty() {
        return Err(format!("{}: no CRLs", p.display()));
    }
    Ok(crls)
}

impl TrustAnchors {
    pub fn load(
        roots: &Path,
        intermediates: Option<&Path>,
        crls: Option<&Path>,
    ) -> Result<TrustAnchors, String> {
        let roots = read_pem_certs(roots)?;
        let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for c in &roots {
            builder.add_cert(c.clone()).map_err(|e| e.to_string())?;
        }
        Ok(TrustAnchors {
            store: builder.build(),
            roots,
            intermediates: intermediates
                .map(read_pem_certs)
                .transpose()?
                .unwrap_or_default(),
            crls: crls.map(read_pem_crls).transpose()?.unwrap_or_default(),
        })
    }

    /// Checks a signer's certificate (PEM: the leaf, then any intermediates).
    pub fn verify(&self, pem: &str) -> Result<Signer, EnvelopeError> {
        let bad = |e: openssl::error::ErrorStack| EnvelopeError::BadCertificate(e.to_string());
        let mut certs = X509::stack_from_pem(pem.as_bytes())
            .map_err(bad)?
            .into_iter();
        let leaf = certs
            .next()
            .ok_or_else(|| EnvelopeError::BadCertificate("no certificate in PEM".into()))?;
        let extra: Vec<X509> = certs.chain(self.intermediates.iter().cloned()).collect();
        signer_usage(&leaf)?;
        let uses_sm2 = std::iter::once(&leaf)
            .chain(&extra)
            .any(|c| signature_oid(c) == Some(SM2_SM3));
        let issuer = if uses_sm2 {
            self.walk(&leaf, &extra)?
        } else {
            self.openssl_chain(&leaf, &extra)?
        };
        self.check_crls(&leaf, &issuer)?;
        let key = leaf.public_key().map_err(bad)?;
        let key_pem = String::from_utf8(key.public_key_to_pem().map_err(bad)?)
            .map_err(|_| EnvelopeError::BadCertificate("key PEM".into()))?;
        Ok(Signer {
            key_pem,
            issuer_der: issuer.to_der().map_err(bad)?,
            serial: leaf.serial_number().to_bn().map_err(bad)?.to_vec(),
        })
    }

    /// OpenSSL's verification; the leaf's issuer from the chain it built.
    fn openssl_chain(&self, leaf: &X509, extra: &[X509]) -> Result<X509, EnvelopeError> {
        let bad = |e: openssl::error::ErrorStack| EnvelopeError::BadCertificate(e.to_string());
        let mut chain = Stack::new().map_err(bad)?;
        for c in extra {
            chain.push(c.clone()).map_err(bad)?;
        }
        let mut ctx = X509StoreContext::new().map_err(bad)?;
        let verdict = ctx
            .init(&self.store, leaf, &chain, |c| {
                if !c.verify_cert()? {
                    return Ok(Err(c.error()));
                }
                // The verified chain runs leaf first; a self-signed leaf is its own issuer.
                let built = c
                    .chain()
                    .map(|s| s.iter().map(|x| x.to_owned()).collect::<Vec<_>>());
                Ok(Ok(built.unwrap_or_default()))
            })
            .map_err(bad)?;
        let built = verdict.map_err(|e| EnvelopeError::Untrusted(e.error_string().to_string()))?;
        Ok(built
            .get(1)
            .or_else(|| built.first())
            .cloned()
            .unwrap_or_else(|| leaf.clone()))
    }

    /// The chain walked link by link, for chains with SM2 signatures.
    fn walk(&self, leaf: &X509, extra: &[X509]) -> Result<X509, EnvelopeError> {
        let untrusted = |why: &str| EnvelopeError::Untrusted(why.to_string());
        valid_now(leaf)?;
        let mut current = leaf.clone();
        let mut issuer_of_leaf = None;
        // `below`: intermediates between the current certificate and the leaf.
        for below in 0..MAX_DEPTH {
            if let Some(root) = self.roots.iter().find(|r| issues(r, &current)) {
                valid_now(root)?;
                if matches!(ca_path_len(root), Some(Some(limit)) if below > limit as usize) {
                    return Err(untrusted("path length constraint exceeded"));
                }
                return Ok(issuer_of_leaf.unwrap_or_else(|| root.clone()));
            }
            let next = extra
                .iter()
                .find(|i| issues(i, &current))
                .ok_or_else(|| untrusted("unable to get local issuer certificate"))?;
            valid_now(next)?;
            match ca_path_len(next) {
                None => return Err(untrusted("an issuer in the chain is not a CA")),
                Some(Some(limit)) if below > limit as usize => {
                    return Err(untrusted("path length constraint exceeded"))
                }
                Some(_) => {}
            }
            issuer_of_leaf.get_or_insert_with(|| next.clone());
            current = next.clone();
        }
        Err(untrusted("certificate chain too long"))
    }

    /// Configured CRLs: one signed by the leaf's issuer that lists the leaf refuses it.
    fn check_crls(&self, leaf: &X509, issuer: &X509) -> Result<(), EnvelopeError> {
        let name = |n: &openssl::x509::X509NameRef| n.to_der().ok();
        for crl in &self.crls {
            if name(crl.issuer_name()) != name(leaf.issuer_name()) || !crl_signed_by(crl, issuer) {
                continue;
            }
            if let openssl::x509::CrlStatus::Revoked(_) = crl.get_by_cert(leaf) {
                return Err(EnvelopeError::Revoked(
                    "the certificate is revoked in a configured CRL".into(),
                ));
            }
        }
        Ok(())
    }
}

/// What the certificate itself allows: signing, by an end entity, for a client's purpose.
fn signer_usage(leaf: &X509) -> Result<(), EnvelopeError> {
    let not = |why: &str| EnvelopeError::NotASigner(why.to_string());
    let der = leaf
        .to_der()
        .map_err(|e| EnvelopeError::BadCertificate(e.to_string()))?;
    let cert = x509_cert::Certificate::from_der(&der)
        .map_err(|e| EnvelopeError::BadCertificate(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let ext = |e: x509_cert::der::Error| EnvelopeError::BadCertificate(e.to_string());
    if let Some((_, bc)) = tbs.get::<BasicConstraints>().map_err(ext)? {
        if bc.ca {
            return Err(not("a CA certificate is never an envelope signer"));
        }
    }
    if let Some((_, ku)) = tbs.get::<KeyUsage>().map_err(ext)? {
        if !ku.digital_signature() {
            return Err(not("its key usage does not allow digital signatures"));
        }
    }
    if let Some((_, eku)) = tbs.get::<ExtendedKeyUsage>().map_err(ext)? {
        if !eku.0.iter().any(|p| *p == EKU_CLIENT || *p == EKU_ANY) {
            return Err(not(
                "its extended key usage names neither clientAuth nor anyExtendedKeyUsage",
            ));
        }
    }
    Ok(())
}

fn valid_now(c: &X509) -> Result<(), EnvelopeError> {
    let now =
        Asn1Time::days_from_now(0).map_err(|e| EnvelopeError::BadCertificate(e.to_string()))?;
    if c.not_before() > now {
        return Err(EnvelopeError::Untrusted(
            "certificate is not yet valid".into(),
        ));
    }
    if c.not_after() < now {
        return Err(EnvelopeError::Untrusted("certificate has expired".into()));
    }
    Ok(())
}

/// None: not a CA. Some(limit): a CA, with its path length constraint if it has one.
fn ca_path_len(c: &X509) -> Option<Option<u8>> {
    let der = c.to_der().ok()?;
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    let (_, bc) = cert.tbs_certificate.get::<BasicConstraints>().ok()??;
    bc.ca.then_some(bc.path_len_constraint)
}

fn signature_oid(c: &X509) -> Option<ObjectIdentifier> {
    let der = c.to_der().ok()?;
    Some(
        x509_cert::Certificate::from_der(&der)
            .ok()?
            .signature_algorithm
            .oid,
    )
}

/// Whether `issuer` issued `child`: names match and the issuer's key made the signature.
fn issues(issuer: &X509, child: &X509) -> bool {
    if issuer.issued(child) != X509VerifyResult::OK {
        return false;
    }
    let Ok(der) = child.to_der() else {
        return false;
    };
    let Ok(cert) = x509_cert::Certificate::from_der(&der) else {
        return false;
    };
    signed_by(
        issuer,
        cert.signature_algorithm.oid,
        cert.tbs_certificate.to_der(),
        cert.signature.as_bytes(),
        |key| child.verify(key),
    )
}

fn crl_signed_by(crl: &X509Crl, issuer: &X509) -> bool {
    let Ok(der) = crl.to_der() else {
        return false;
    };
    let Ok(list) = x509_cert::crl::CertificateList::from_der(&der) else {
        return false;
    };
    signed_by(
        issuer,
        list.signature_algorithm.oid,
        list.tbs_cert_list.to_der(),
        list.signature.as_bytes(),
        |key| crl.verify(key),
    )
}

/// A signature by `issuer`'s key over `tbs`: SM2 with SM3 by the gateway's own check
/// (either ID), anything else by OpenSSL (`openssl_verify`).
fn signed_by(
    issuer: &X509,
    algorithm: ObjectIdentifier,
    tbs: Result<Vec<u8>, x509_cert::der::Error>,
    signature: Option<&[u8]>,
    openssl_verify: impl FnOnce(
        &openssl::pkey::PKeyRef<openssl::pkey::Public>,
    ) -> Result<bool, openssl::error::ErrorStack>,
) -> bool {
    if algorithm != SM2_SM3 {
        return issuer
            .public_key()
            .is_ok_and(|key| openssl_verify(&key).unwrap_or(false));
    }
    let (Ok(tbs), Some(sig), Ok(point)) = (tbs, signature, sm2_point(issuer)) else {
        return false;
    };
    crate::verify::keys::sm2_signed(&point, &tbs, sig)
}

/// The issuer's public key as a SEC1 uncompressed point.
fn sm2_point(issuer: &X509) -> Result<Vec<u8>, ()> {
    let der = issuer.to_der().map_err(|_| ())?;
    let cert = x509_cert::Certificate::from_der(&der).map_err(|_| ())?;
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or(())
}
