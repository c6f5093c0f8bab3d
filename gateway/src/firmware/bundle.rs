//! The update bundle: one tar file (the `tar` crate) holding `manifest.json`, the payloads
//! under `payload/`, and once signed `manifest.sig` (ECDSA P-256 over SHA-256 of the
//! manifest's exact bytes, DER) and `release.pem` (the release key's certificate, then any
//! intermediates). The manifest names every payload with its SHA-256, so the one signature
//! covers them all; the release certificate must chain to the pinned vendor root.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const PRODUCT: &str = "bsn-gateway";
const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.sig";
const RELEASE: &str = "release.pem";
const PAYLOAD: &str = "payload/";
/// Larger entries are refused before they are read.
const MAX_ENTRY: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub product: String,
    pub version: String,
    pub security_version: u64,
    /// RFC 3339.
    pub build_time: String,
    /// Payload path (under `payload/`) -> SHA-256, hex.
    pub payloads: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0}")]
    Io(#[from] std::io::Error),
    #[error("bundle: {0}")]
    Format(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("trust chain: {0}")]
    Chain(String),
    #[error("payload {0}: its SHA-256 does not match the manifest")]
    Payload(String),
    #[error("product {0:?} is not {PRODUCT}")]
    Product(String),
}

/// A bundle read into memory: every entry by name.
pub struct Bundle {
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl Bundle {
    pub fn read(path: &Path) -> Result<Bundle, BundleError> {
        let mut archive = tar::Archive::new(std::fs::File::open(path)?);
        let mut entries = BTreeMap::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path()?.to_string_lossy().into_owned();
            let safe = !name.starts_with('/')
                && name
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !safe {
                return Err(BundleError::Format(format!(
                    "entry {name:?} leaves the bundle"
                )));
            }
            if entry.size() > MAX_ENTRY {
                return Err(BundleError::Format(format!("entry {name:?} is too large")));
            }
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data)?;
            if entries.insert(name.clone(), data).is_some() {
                return Err(BundleError::Format(format!("entry {name:?} twice")));
            }
        }
        Ok(Bundle { entries })
    }

    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        let tmp = path.with_extension("tmp");
        {
            let file = std::fs::File::create(&tmp)?;
            let mut builder = tar::Builder::new(file);
            for (name, data) in &self.entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(if name.ends_with("/bsn-gateway") {
                    0o755
                } else {
                    0o644
                });
                header.set_mtime(0);
                header.set_cksum();
                builder.append_data(&mut header, name, data.as_slice())?;
            }
            builder.into_inner()?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn manifest_bytes(&self) -> Result<&[u8], BundleError> {
        self.entries
            .get(MANIFEST)
            .map(Vec::as_slice)
            .ok_or_else(|| BundleError::Format("no manifest.json".into()))
    }

    pub fn manifest(&self) -> Result<Manifest, BundleError> {
        serde_json::from_slice(self.manifest_bytes()?)
            .map_err(|e| BundleError::Format(format!("manifest.json: {e}")))
    }

    /// The payloads, by their path under `payload/`.
    pub fn payloads(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries
            .iter()
            .filter_map(|(n, d)| n.strip_prefix(PAYLOAD).map(|p| (p, d.as_slice())))
    }

    /// A new, unsigned bundle of these payloads.
    pub fn build(
        version: &str,
        security_version: u64,
        payloads: Vec<(String, Vec<u8>)>,
    ) -> Result<Bundle, BundleError> {
        let mut entries = BTreeMap::new();
        let mut hashes = BTreeMap::new();
        for (name, data) in payloads {
            hashes.insert(name.clone(), hex::encode(crate::util::sha256(&data)));
            entries.insert(format!("{PAYLOAD}{name}"), data);
        }
        let manifest = Manifest {
            product: PRODUCT.into(),
            version: version.into(),
            security_version,
            build_time: crate::util::now_rfc3339(),
            payloads: hashes,
        };
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
        entries.insert(MANIFEST.into(), bytes);
        Ok(Bundle { entries })
    }

    /// Adds the signature and the release certificate chain.
    pub fn attach(&mut self, signature_der: Vec<u8>, release_pem: &str) {
        self.entries.insert(SIGNATURE.into(), signature_der);
        self.entries
            .insert(RELEASE.into(), release_pem.as_bytes().to_vec());
    }

    /// Checks the chain to `root_pem`, the signature, the product, every payload's hash,
    /// and that nothing is in the bundle that the manifest does not name.
    pub fn verify(&self, root_pem: &[u8]) -> Result<Manifest, BundleError> {
        use openssl::x509::store::X509StoreBuilder;
        use openssl::x509::{X509StoreContext, X509};
        let release = self
            .entries
            .get(RELEASE)
            .ok_or_else(|| BundleError::Signature("unsigned: no release.pem".into()))?;
        let signature = self
            .entries
            .get(SIGNATURE)
            .ok_or_else(|| BundleError::Signature("unsigned: no manifest.sig".into()))?;
        let chain = X509::stack_from_pem(release)
            .map_err(|e| BundleError::Chain(format!("release.pem: {e}")))?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| BundleError::Chain("release.pem holds no certificate".into()))?;
        let roots = X509::stack_from_pem(root_pem)
            .map_err(|e| BundleError::Chain(format!("vendor root: {e}")))?;
        let mut store = X509StoreBuilder::new().map_err(|e| BundleError::Chain(e.to_string()))?;
        for r in roots {
            store
                .add_cert(r)
                .map_err(|e| BundleError::Chain(e.to_string()))?;
        }
        let store = store.build();
        let mut untrusted =
            openssl::stack::Stack::new().map_err(|e| BundleError::Chain(e.to_string()))?;
        for c in intermediates {
            untrusted
                .push(c.clone())
                .map_err(|e| BundleError::Chain(e.to_string()))?;
        }
        let mut ctx = X509StoreContext::new().map_err(|e| BundleError::Chain(e.to_string()))?;
        let chained = ctx
            .init(&store, leaf, &untrusted, |c| {
                let ok = c.verify_cert()?;
                Ok((ok, c.error().error_string().to_string()))
            })
            .map_err(|e| BundleError::Chain(e.to_string()))?;
        if !chained.0 {
            return Err(BundleError::Chain(format!(
                "the release certificate does not chain to the vendor root: {}",
                chained.1
            )));
        }
        let key = leaf
            .public_key()
            .and_then(|k| k.ec_key())
            .map_err(|_| BundleError::Signature("the release key is not an EC key".into()))?;
        let digest = crate::util::sha256(self.manifest_bytes()?);
        let valid = openssl::ecdsa::EcdsaSig::from_der(signature)
            .and_then(|s| s.verify(&digest, &key))
            .unwrap_or(false);
        if !valid {
            return Err(BundleError::Signature(
                "manifest.sig does not verify with the release key".into(),
            ));
        }
        let manifest = self.manifest()?;
        if manifest.product != PRODUCT {
            return Err(BundleError::Product(manifest.product));
        }
        let mut seen = 0;
        for (name, data) in self.payloads() {
            let want = manifest.payloads.get(name).ok_or_else(|| {
                BundleError::Format(format!("payload {name} is not in the manifest"))
            })?;
            if &hex::encode(crate::util::sha256(data)) != want {
                return Err(BundleError::Payload(name.into()));
            }
            seen += 1;
        }
        if seen != manifest.payloads.len() {
            return Err(BundleError::Format(
                "a payload the manifest names is missing".into(),
            ));
        }
        for name in self.entries.keys() {
            if !(name.starts_with(PAYLOAD)
                || [MANIFEST, SIGNATURE, RELEASE].contains(&name.as_str()))
            {
                return Err(BundleError::Format(format!("unexpected entry {name:?}")));
            }
        }
        Ok(manifest)
    }
}
