//! Every decoder a client's bytes reach, run on one input. The property is the same for
//! each: it returns a value or its typed error, and never panics. Shared by the property
//! tests (tests/parsers.rs) and the open-ended fuzz loop (examples/fuzz_parsers.rs).

use std::str::FromStr;
use std::sync::OnceLock;

use bsn_gateway::admission::TxInput;
use bsn_gateway::algorithm::Algorithm;
use bsn_gateway::auth::Pattern;
use bsn_gateway::crypto::pubkey::PublicKey;
use bsn_gateway::crypto::SigFormat;
use bsn_gateway::custody::rv::ReturnCode;
use bsn_gateway::custody::KeyId;
use bsn_gateway::txn::envelope::Envelope;
use bsn_gateway::verify::ecdsa::Verifier;
use bsn_gateway::verify::keys::{parse_bytes, ParsedKey};
use bsn_gateway::verify::{Hash, Item, KeyInput, Message};

const ALGORITHMS: [Algorithm; 4] = Algorithm::ALL;

/// One valid public key per EC algorithm, so signature decoding is reached.
fn keys() -> &'static [(Algorithm, Vec<u8>, ParsedKey)] {
    static KEYS: OnceLock<Vec<(Algorithm, Vec<u8>, ParsedKey)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        use openssl::bn::BigNumContext;
        use openssl::ec::{EcGroup, EcKey, PointConversionForm};
        use openssl::nid::Nid;
        [
            (Algorithm::EcdsaP256, Nid::X9_62_PRIME256V1),
            (Algorithm::EcdsaSecp256k1, Nid::SECP256K1),
            (Algorithm::Sm2, Nid::SM2),
        ]
        .into_iter()
        .map(|(alg, nid)| {
            let group = EcGroup::from_curve_name(nid).unwrap();
            let k = EcKey::generate(&group).unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let point = k
                .public_key()
                .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
                .unwrap();
            let parsed = parse_bytes(alg, &point).unwrap();
            (alg, point, parsed)
        })
        .collect()
    })
}

/// Runs every decoder on `input` (as bytes, and as text where the decoder takes text).
pub fn exercise(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = bsn_gateway::util::unhex0x(&text);
    let _ = bsn_gateway::util::unbase64(&text);
    let _ = KeyId::from_str(&text);
    let _ = Pattern::parse(&text);
    let _ = ReturnCode::from_str(&text);
    // Transactions: RLP (every type byte reaches its decoder) and JSON request items.
    let _ = bsn_gateway::txn::ethereum::decode(input);
    if let Ok(env) = serde_json::from_slice::<Envelope>(input) {
        let _ = env.algorithm();
        let _ = env.payload();
    }
    let _ = serde_json::from_slice::<TxInput>(input);
    for alg in ALGORITHMS {
        // Public keys as points and as PEM.
        let _ = parse_bytes(alg, input);
        let _ = PublicKey::from_bytes(alg, input);
        let _ = PublicKey::from_pem(alg, &text);
    }
    // Signatures in every format against a real key: DER must be strict, raw exact.
    let verifier = Verifier::default();
    for (alg, point, parsed) in keys() {
        for format in [SigFormat::Der, SigFormat::Raw, SigFormat::Eth] {
            let item = Item {
                algorithm: *alg,
                key: KeyInput::Bytes(point.clone()),
                message: Message::Bytes(b"m".to_vec()),
                hash: Hash::Sha256,
                signature: input.to_vec(),
                format,
                require_low_s: true,
            };
            let _ = verifier.verify(&item, Some(parsed));
        }
    }
    if let Ok(sig) = <[u8; 65]>::try_from(input) {
        let _ = verifier.recover(&[7u8; 32], &sig, true);
    }
}

/// Valid inputs to start mutations from, so changes land deep inside each format.
pub fn seeds() -> Vec<Vec<u8>> {
    use alloy_rlp::{Encodable, Header};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    let key = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
    let der = openssl::ecdsa::EcdsaSig::sign(&openssl::sha::sha256(b"m"), &key)
        .unwrap()
        .to_der()
        .unwrap();
    let pem = key.public_key_to_pem().unwrap();
    // An EIP-1559 transaction's shape: type byte, then the RLP list of its fields.
    let mut fields = Vec::new();
    for v in [1u64, 0, 1, 1, 21_000] {
        v.encode(&mut fields);
    }
    [0x11u8; 20].as_slice().encode(&mut fields);
    0u64.encode(&mut fields);
    b"".as_slice().encode(&mut fields);
    Header {
        list: true,
        payload_length: 0,
    }
    .encode(&mut fields);
    1u64.encode(&mut fields);
    [1u8; 32].as_slice().encode(&mut fields);
    [2u8; 32].as_slice().encode(&mut fields);
    let mut tx = vec![0x02];
    Header {
        list: true,
        payload_length: fields.len(),
    }
    .encode(&mut tx);
    tx.extend(fields);
    let envelope = serde_json::json!({
        "envelope": {
            "algorithm": "ecdsa-p256",
            "key_id": "00112233445566778899aabbccddeeff",
            "payload_b64": "aGk=",
            "signature": format!("0x{}", hex::encode(&der)),
        }
    });
    vec![
        der,
        pem,
        tx,
        serde_json::to_vec(&envelope).unwrap(),
        serde_json::to_vec(&envelope["envelope"]).unwrap(),
        b"0x00112233445566778899aabbccddeeff".to_vec(),
        b"dapp-a-*".to_vec(),
        b"CKR_DEVICE_ERROR".to_vec(),
    ]
}

/// `seed` with each (position, byte) edit applied: an overwrite, or past the end a cut.
pub fn mutate(seed: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for (pos, byte) in edits {
        if out.is_empty() {
            out.push(*byte);
            continue;
        }
        let i = pos % (out.len() + 1);
        match byte % 4 {
            0 if i < out.len() => out.truncate(i),
            1 => out.insert(i, *byte),
            _ if i < out.len() => out[i] = *byte,
            _ => out.push(*byte),
        }
    }
    out
}
