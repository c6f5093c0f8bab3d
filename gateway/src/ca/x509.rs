//! Certificates and CRLs, built with `x509-cert` and signed outside it: the builder gives
//! the DER to be signed, custody signs it in the HSM (or, for a wrapped SM2 key, through
//! the token's AES key), and the signature is assembled in. Nothing here holds a key.

use std::str::FromStr;
use std::time::Duration;

use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::{BitString, Ia5String, OctetString};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, EncodePem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey,
    SubjectPublicKeyInfoOwned,
};
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::algorithm::Algorithm;

/// ecdsa-with-SHA256 (RFC 5758).
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// SM2 signature with SM3 (GM/T 0006, used by GM/T 0015 certificates).
pub const SM2_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");
const EKU_SERVER: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const EKU_CLIENT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("subject: {0}")]
    Subject(String),
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("certificate: {0}")]
    Build(String),
    #[error("san: {0:?} is neither a DNS name nor an IP address")]
    San(String),
}

/// The signature algorithm a CA key signs certificates with.
pub fn signature_algorithm(alg: Algorithm) -> Option<AlgorithmIdentifierOwned> {
    let oid = match alg {
        Algorithm::EcdsaP256 => ECDSA_SHA256,
        Algorithm::Sm2 => SM2_SM3,
        _ => return None,
    };
    Some(AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    })
}

/// The issuer as the builder sees it: its public key and signature algorithm. It signs
/// nothing itself.
pub struct Issuer {
    spki: SubjectPublicKeyInfoOwned,
    algorithm: AlgorithmIdentifierOwned,
}

#[derive(Clone)]
pub struct IssuerKey(SubjectPublicKeyInfoOwned);

impl EncodePublicKey for IssuerKey {
    fn to_public_key_der(&self) -> x509_cert::spki::Result<x509_cert::der::Document> {
        Ok(x509_cert::der::Document::encode_msg(&self.0)?)
    }
}

impl signature::Keypair for Issuer {
    type VerifyingKey = IssuerKey;
    fn verifying_key(&self) -> IssuerKey {
        IssuerKey(self.spki.clone())
    }
}

impl DynSignatureAlgorithmIdentifier for Issuer {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.algorithm.clone())
    }
}

impl Issuer {
    pub fn new(public_key_pem: &str, alg: Algorithm) -> Result<Issuer, X509Error> {
        Ok(Issuer {
            spki: spki_from_pem(public_key_pem)?,
            algorithm: signature_algorithm(alg)
                .ok_or_else(|| X509Error::PublicKey(format!("{alg} cannot sign certificates")))?,
        })
    }
}

pub fn spki_from_pem(pem: &str) -> Result<SubjectPublicKeyInfoOwned, X509Error> {
    let der = openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| X509Error::PublicKey(e.to_string()))?;
    SubjectPublicKeyInfoOwned::from_der(&der).map_err(|e| X509Error::PublicKey(e.to_string()))
}

pub fn parse_name(subject: &str) -> Result<Name, X509Error> {
    let name = Name::from_str(subject).map_err(|e| X509Error::Subject(e.to_string()))?;
    if name.0.is_empty() {
        return Err(X509Error::Subject("empty".into()));
    }
    Ok(name)
}

/// What a new certificate is.
pub enum Kind<'a> {
    Root,
    SubCa {
        issuer: &'a Name,
        path_len: Option<u8>,
    },
    Leaf {
        issuer: &'a Name,
        server: bool,
        client: bool,
        san: &'a [String],
    },
}

/// A certificate ready to be signed: `tbs` is the DER the issuer signs.
pub struct Unsigned<'s> {
    builder: CertificateBuilder<'s, Issuer>,
    pub tbs: Vec<u8>,
}

pub fn new_serial() -> (SerialNumber, String) {
    // 16 random bytes, the top bit clear: a positive INTEGER of at most 20 octets.
    let mut b = crate::util::random_bytes(16);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    let hex = hex::encode(&b);
    (SerialNumber::new(&b).expect("16 bytes make a serial"), hex)
}

pub fn prepare<'s>(
    kind: Kind<'_>,
    serial: SerialNumber,
    not_after: std::time::SystemTime,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    issuer: &'s Issuer,
) -> Result<Unsigned<'s>, X509Error> {
    let err = |e: x509_cert::builder::Error| X509Error::Build(e.to_string());
    let now = std::time::SystemTime::now();
    let lifetime = not_after
        .duration_since(now)
        .unwrap_or(Duration::from_secs(1));
    let validity = Validity::from_now(lifetime).map_err(|e| X509Error::Build(e.to_string()))?;
    let profile = match &kind {
        Kind::Root => Profile::Root,
        Kind::SubCa { issuer, path_len } => Profile::SubCA {
            issuer: (*issuer).clone(),
            path_len_constraint: *path_len,
        },
        Kind::Leaf { issuer, .. } => Profile::Leaf {
            issuer: (*issuer).clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
    };
    let mut builder =
        CertificateBuilder::new(profile, serial, validity, subject, spki, issuer).map_err(err)?;
    if let Kind::Leaf {
        server,
        client,
        san,
        ..
    } = kind
    {
        let mut usages = Vec::new();
        if server {
            usages.push(EKU_SERVER);
        }
        if client {
            usages.push(EKU_CLIENT);
        }
        builder
            .add_extension(&ExtendedKeyUsage(usages))
            .map_err(err)?;
        if !san.is_empty() {
            let names = san
                .iter()
                .map(|s| general_name(s))
                .collect::<Result<Vec<_>, _>>()?;
            builder.add_extension(&SubjectAltName(names)).map_err(err)?;
        }
    }
    let tbs = builder
        .finalize()
        .map_err(|e| X509Error::Build(e.to_string()))?;
    Ok(Unsigned { builder, tbs })
}

fn general_name(s: &str) -> Result<GeneralName, X509Error> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        let bytes = match ip {
            std::net::IpAddr::V4(v) => v.octets().to_vec(),
            std::net::IpAddr::V6(v) => v.octets().to_vec(),
        };
        return OctetString::new(bytes)
            .map(GeneralName::IpAddress)
            .map_err(|_| X509Error::San(s.into()));
    }
    let dns = s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    if !dns {
        return Err(X509Error::San(s.into()));
    }
    Ia5String::new(s)
        .map(GeneralName::DnsName)
        .map_err(|_| X509Error::San(s.into()))
}

impl Unsigned<'_> {
    /// The certificate with the issuer's DER signature, as PEM.
    pub fn assemble(self, signature_der: &[u8]) -> Result<String, X509Error> {
        let signature =
            BitString::from_bytes(signature_der).map_err(|e| X509Error::Build(e.to_string()))?;
        let cert = self
            .builder
            .assemble(signature)
            .map_err(|e| X509Error::Build(e.to_string()))?;
        cert.to_pem(x509_cert::der::pem::LineEnding::LF)
            .map_err(|e| X509Error::Build(e.to_string()))
    }
}

pub fn subject_of(cert_pem: &str) -> Result<Name, X509Error> {
    use x509_cert::der::DecodePem;
    Certificate::from_pem(cert_pem.as_bytes())
        .map(|c| c.tbs_certificate.subject)
        .map_err(|e| X509Error::Build(e.to_string()))
}

/// A revoked certificate for the CRL: serial (hex) and when.
pub struct Revoked {
    pub serial: String,
    pub at: std::time::SystemTime,
}

/// A CRL ready to be signed (`tbs`), valid until `next_update`.
pub struct UnsignedCrl {
    tbs: x509_cert::crl::TbsCertList,
    pub der: Vec<u8>,
}

pub fn prepare_crl(
    issuer: &Name,
    alg: &AlgorithmIdentifierOwned,
    revoked: &[Revoked],
    next_update: std::time::SystemTime,
) -> Result<UnsignedCrl, X509Error> {
    let err = |e: x509_cert::der::Error| X509Error::Build(e.to_string());
    let time =
        |t: std::time::SystemTime| -> Result<Time, X509Error> { Time::try_from(t).map_err(err) };
    let entries = revoked
        .iter()
        .map(|r| {
            let bytes = hex::decode(&r.serial).map_err(|e| X509Error::Build(e.to_string()))?;
            Ok(x509_cert::crl::RevokedCert {
                serial_number: SerialNumber::new(&bytes).map_err(err)?,
                revocation_date: time(r.at)?,
                crl_entry_extensions: None,
            })
        })
        .collect::<Result<Vec<_>, X509Error>>()?;
    let tbs = x509_cert::crl::TbsCertList {
        version: x509_cert::Version::V2,
        signature: alg.clone(),
        issuer: issuer.clone(),
        this_update: time(std::time::SystemTime::now())?,
        next_update: Some(time(next_update)?),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: None,
    };
    let der = tbs.to_der().map_err(err)?;
    Ok(UnsignedCrl { tbs, der })
}

impl UnsignedCrl {
    pub fn assemble(self, signature_der: &[u8]) -> Result<String, X509Error> {
        let err = |e: x509_cert::der::Error| X509Error::Build(e.to_string());
        let crl = x509_cert::crl::CertificateList {
            signature_algorithm: self.tbs.signature.clone(),
            tbs_cert_list: self.tbs,
            signature: BitString::from_bytes(signature_der).map_err(err)?,
        };
        let der = crl.to_der().map_err(err)?;
        x509_cert::der::pem::encode_string("X509 CRL", x509_cert::der::pem::LineEnding::LF, &der)
            .map_err(|e| X509Error::Build(e.to_string()))
    }
}
