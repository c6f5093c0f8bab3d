//! The differential check of the vector path, shared by the unit tests (100,000 signatures
//! per curve) and the bench's long mode (`verify-mb diff N`): random keys and signatures
//! made by independent code (OpenSSL, libsecp256k1), each signature checked as made and
//! with one bit flipped in r, in s, in the digest, or under another key; every answer of
//! the vector path must equal the reference's (OpenSSL for P-256, libsecp256k1 for
//! secp256k1, the scalar `sm2p256` for SM2).

use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::pkey_ctx::PkeyCtx;

use super::{verify, Curve, Lane};
use crate::verify::sm2p256::Sm2Key;

/// Keys per run: each signature is made by one of them, and "another key" is the next.
const KEYS: usize = 64;
/// Signatures generated, checked and dropped at a time, so memory stays flat.
const CHUNK: usize = 2048;

#[derive(Debug, Default)]
pub struct Report {
    pub lanes: usize,
    pub valid: usize,
    /// Lanes the vector path declined (exceptional additions): the scalar path answers.
    pub declined: usize,
    /// The first disagreements, described.
    pub mismatches: Vec<String>,
    pub mismatch_count: usize,
    /// Time spent in the vector path alone.
    pub vector_seconds: f64,
}

enum Reference {
    P256(Vec<EcKey<openssl::pkey::Public>>),
    Secp256k1(
        secp256k1::Secp256k1<secp256k1::VerifyOnly>,
        Vec<secp256k1::PublicKey>,
    ),
    Sm2(Vec<Sm2Key>),
}

enum Signer {
    Ossl(Vec<EcKey<Private>>),
    Secp(
        secp256k1::Secp256k1<secp256k1::SignOnly>,
        Vec<secp256k1::SecretKey>,
    ),
}

fn pad(v: &BigNumRef) -> [u8; 32] {
    <[u8; 32]>::try_from(v.to_vec_padded(32).expect("below 2^256")).expect("32 bytes")
}

fn rand32() -> [u8; 32] {
    let mut b = [0u8; 32];
    openssl::rand::rand_bytes(&mut b).expect("CSPRNG");
    b
}

fn flip(mut v: [u8; 32], bit: usize) -> [u8; 32] {
    v[bit / 8] ^= 1 << (bit % 8);
    v
}

/// `signatures` random signatures on `curve`, each in five forms.
pub fn run(curve: Curve, signatures: usize) -> Report {
    let (signer, points, reference) = keys(curve);
    let mut report = Report::default();
    let mut done = 0;
    while done < signatures {
        let n = CHUNK.min(signatures - done);
        let mut lanes = Vec::with_capacity(n * 5);
        let mut owners = Vec::with_capacity(n * 5);
        for i in 0..n {
            let k = (done + i) % KEYS;
            let e = rand32();
            let (r, s) = sign(&signer, k, &e);
            let lane = Lane {
                qx: points[k].0,
                qy: points[k].1,
                r,
                s,
                e,
            };
            let bit = (rand32()[0] as usize) % 256;
            let other = (k + 1) % KEYS;
            lanes.extend([
                lane,
                Lane {
                    r: flip(r, bit),
                    ..lane
                },
                Lane {
                    s: flip(s, bit),
                    ..lane
                },
                Lane {
                    e: flip(e, bit),
                    ..lane
                },
                Lane {
                    qx: points[other].0,
                    qy: points[other].1,
                    ..lane
                },
            ]);
            owners.extend([k, k, k, k, other]);
        }
        compare(curve, &lanes, &owners, &reference, &mut report);
        done += n;
    }
    report
}

/// Runs `lanes` (key `owners[i]` each) through both paths into `report`.
fn compare(
    curve: Curve,
    lanes: &[Lane],
    owners: &[usize],
    reference: &Reference,
    report: &mut Report,
) {
    let started = std::time::Instant::now();
    let got = verify(curve, lanes);
    report.vector_seconds += started.elapsed().as_secs_f64();
    for ((lane, &k), answer) in lanes.iter().zip(owners).zip(got) {
        let want = check(reference, k, lane);
        report.lanes += 1;
        report.valid += want as usize;
        match answer {
            None => report.declined += 1,
            Some(v) if v != want => {
                report.mismatch_count += 1;
                if report.mismatches.len() < 5 {
                    report.mismatches.push(format!(
                        "{curve:?}: vector {v}, reference {want}: r {} s {} e {} q {}{}",
                        hex::encode(lane.r),
                        hex::encode(lane.s),
                        hex::encode(lane.e),
                        hex::encode(lane.qx),
                        hex::encode(lane.qy)
                    ));
                }
            }
            Some(_) => {}
        }
    }
}

/// A public key's affine (x, y), big-endian.
type Point = ([u8; 32], [u8; 32]);

fn secp_keys() -> Vec<secp256k1::SecretKey> {
    (0..KEYS)
        .map(|_| loop {
            if let Ok(sk) = secp256k1::SecretKey::from_byte_array(rand32()) {
                break sk;
            }
        })
        .collect()
}

fn keys(curve: Curve) -> (Signer, Vec<Point>, Reference) {
    let mut ctx = BigNumContext::new().expect("BN context");
    match curve {
        Curve::Secp256k1 => {
            let secp = secp256k1::Secp256k1::new();
            let sks = secp_keys();
            let pks: Vec<_> = sks.iter().map(|sk| sk.public_key(&secp)).collect();
            let points = pks
                .iter()
                .map(|pk| {
                    let u = pk.serialize_uncompressed();
                    (
                        u[1..33].try_into().expect("x"),
                        u[33..].try_into().expect("y"),
                    )
                })
                .collect();
            (
                Signer::Secp(secp256k1::Secp256k1::signing_only(), sks),
                points,
                Reference::Secp256k1(secp256k1::Secp256k1::verification_only(), pks),
            )
        }
        Curve::P256 | Curve::Sm2 => {
            let nid = if curve == Curve::P256 {
                Nid::X9_62_PRIME256V1
            } else {
                Nid::SM2
            };
            let group = EcGroup::from_curve_name(nid).expect("curve");
            let sks: Vec<_> = (0..KEYS)
                .map(|_| EcKey::generate(&group).expect("keygen"))
                .collect();
            let points: Vec<Point> = sks
                .iter()
                .map(|k| {
                    let (mut x, mut y) = (BigNum::new().expect("bn"), BigNum::new().expect("bn"));
                    k.public_key()
                        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                        .expect("affine");
                    (pad(&x), pad(&y))
                })
                .collect();
            let reference = if curve == Curve::P256 {
                Reference::P256(
                    sks.iter()
                        .map(|k| {
                            EcKey::from_public_key(&group, k.public_key()).expect("public key")
                        })
                        .collect(),
                )
            } else {
                Reference::Sm2(points.iter().map(|(x, y)| Sm2Key::new(x, y)).collect())
            };
            (Signer::Ossl(sks), points, reference)
        }
    }
}

fn sign(signer: &Signer, k: usize, e: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    match signer {
        Signer::Secp(secp, sks) => {
            let sig = secp.sign_ecdsa(secp256k1::Message::from_digest(*e), &sks[k]);
            let c = sig.serialize_compact();
            (
                c[..32].try_into().expect("r"),
                c[32..].try_into().expect("s"),
            )
        }
        Signer::Ossl(sks) if sks[k].group().curve_name() == Some(Nid::SM2) => {
            // OpenSSL signs the given e as SM2's final e (no Z, no SM3 here).
            let pkey = PKey::from_ec_key(sks[k].clone()).expect("pkey");
            let mut ctx = PkeyCtx::new(&pkey).expect("pkey ctx");
            ctx.sign_init().expect("sign init");
            let mut der = Vec::new();
            ctx.sign_to_vec(e, &mut der).expect("SM2 sign");
            let sig = EcdsaSig::from_der(&der).expect("DER");
            (pad(sig.r()), pad(sig.s()))
        }
        Signer::Ossl(sks) => {
            let sig = EcdsaSig::sign(e, &sks[k]).expect("ECDSA sign");
            (pad(sig.r()), pad(sig.s()))
        }
    }
}

fn check(reference: &Reference, k: usize, lane: &Lane) -> bool {
    match reference {
        Reference::P256(keys) => {
            let (Ok(r), Ok(s)) = (BigNum::from_slice(&lane.r), BigNum::from_slice(&lane.s)) else {
                return false;
            };
            let Ok(sig) = EcdsaSig::from_private_components(r, s) else {
                return false;
            };
            sig.verify(&lane.e, &keys[k]).unwrap_or(false)
        }
        Reference::Secp256k1(secp, keys) => {
            let mut compact = [0u8; 64];
            compact[..32].copy_from_slice(&lane.r);
            compact[32..].copy_from_slice(&lane.s);
            // libsecp256k1 takes only low S; validity is the same for s and n - s.
            let Ok(mut sig) = secp256k1::ecdsa::Signature::from_compact(&compact) else {
                return false;
            };
            sig.normalize_s();
            secp.verify_ecdsa(secp256k1::Message::from_digest(lane.e), &sig, &keys[k])
                .is_ok()
        }
        Reference::Sm2(keys) => keys[k].verify(&lane.e, &lane.r, &lane.s),
    }
}

/// Recovery: `signatures` recoverable secp256k1 signatures from libsecp256k1, each as
/// made and with one bit flipped in r, in s, in the digest, or the parity flipped; every
/// key the vector path recovers (or fails to) must equal libsecp256k1's.
pub fn run_recovery(signatures: usize) -> Report {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let secp = secp256k1::Secp256k1::new();
    let sks = secp_keys();
    let mut report = Report::default();
    let mut done = 0;
    while done < signatures {
        let n = CHUNK.min(signatures - done);
        let mut lanes = Vec::with_capacity(n * 5);
        for i in 0..n {
            let e = rand32();
            let sig = secp.sign_ecdsa_recoverable(
                secp256k1::Message::from_digest(e),
                &sks[(done + i) % KEYS],
            );
            let (id, compact) = sig.serialize_compact();
            let lane = super::Recovery {
                r: compact[..32].try_into().expect("r"),
                s: compact[32..].try_into().expect("s"),
                e,
                odd: i32::from(id) == 1,
            };
            let bit = (rand32()[0] as usize) % 256;
            lanes.extend([
                lane,
                super::Recovery {
                    r: flip(lane.r, bit),
                    ..lane
                },
                super::Recovery {
                    s: flip(lane.s, bit),
                    ..lane
                },
                super::Recovery {
                    e: flip(lane.e, bit),
                    ..lane
                },
                super::Recovery {
                    odd: !lane.odd,
                    ..lane
                },
            ]);
        }
        let started = std::time::Instant::now();
        let got = super::recover(&lanes);
        report.vector_seconds += started.elapsed().as_secs_f64();
        for (lane, answer) in lanes.iter().zip(got) {
            let mut compact = [0u8; 64];
            compact[..32].copy_from_slice(&lane.r);
            compact[32..].copy_from_slice(&lane.s);
            let want = RecoveryId::try_from(i32::from(lane.odd))
                .ok()
                .and_then(|id| RecoverableSignature::from_compact(&compact, id).ok())
                .and_then(|sig| {
                    secp.recover_ecdsa(secp256k1::Message::from_digest(lane.e), &sig)
                        .ok()
                })
                .map(|pk| pk.serialize_uncompressed());
            report.lanes += 1;
            report.valid += want.is_some() as usize;
            match answer {
                None => report.declined += 1,
                Some(got) if got != want => {
                    report.mismatch_count += 1;
                    if report.mismatches.len() < 5 {
                        report.mismatches.push(format!(
                            "recovery: vector {:?}, reference {:?}: r {} s {} e {} odd {}",
                            got.map(hex::encode),
                            want.map(hex::encode),
                            hex::encode(lane.r),
                            hex::encode(lane.s),
                            hex::encode(lane.e),
                            lane.odd
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        done += n;
    }
    report
}

/// The Ed25519 lane of a signature, or None where the engine's strict checks refuse it
/// before any curve arithmetic (non-canonical or small-order R or A, s ≥ L). `point`:
/// A's affine coordinates from `ed25519_decompress`.
pub fn ed25519_lane(
    key: &[u8; 32],
    point: &([u8; 32], [u8; 32]),
    message: &[u8],
    signature: &[u8; 64],
) -> Option<super::EdLane> {
    crate::verify::ed25519::parse_signature(signature).ok()?;
    Some(super::ed25519_lane(key, point, message, signature))
}

/// Ed25519 against ed25519-dalek's `verify_strict`: each signature as made, with one bit
/// flipped in R, in s or in the message, and under another key. A form the strict checks
/// refuse before the curve arithmetic (`ed25519_lane` gives None) must be one that
/// `verify_strict` refuses too; every other answer of the vector path must equal it.
pub fn run_ed25519(signatures: usize) -> Report {
    use ed25519_dalek::{Signer as _, SigningKey};
    let signers: Vec<SigningKey> = (0..KEYS)
        .map(|_| SigningKey::from_bytes(&rand32()))
        .collect();
    let keys: Vec<[u8; 32]> = signers
        .iter()
        .map(|k| k.verifying_key().to_bytes())
        .collect();
    let points: Vec<([u8; 32], [u8; 32])> = keys
        .iter()
        .map(|k| super::ed25519_decompress(k).expect("a real key decompresses"))
        .collect();
    let mut report = Report::default();
    let mut done = 0;
    while done < signatures {
        let n = CHUNK.min(signatures - done);
        let mut lanes = Vec::with_capacity(n * 5);
        let mut expected = Vec::with_capacity(n * 5);
        for i in 0..n {
            let k = (done + i) % KEYS;
            let other = (k + 1) % KEYS;
            let message = rand32();
            let sig = signers[k].sign(&message).to_bytes();
            let bit = (rand32()[0] as usize) % 256;
            let mut flipped_r = sig;
            flipped_r[bit / 8] ^= 1 << (bit % 8);
            let mut flipped_s = sig;
            flipped_s[32 + bit / 8] ^= 1 << (bit % 8);
            let mut flipped_m = message;
            flipped_m[bit / 8] ^= 1 << (bit % 8);
            for (key, msg, s) in [
                (k, message, sig),
                (k, message, flipped_r),
                (k, message, flipped_s),
                (k, flipped_m, sig),
                (other, message, sig),
            ] {
                let reference = signers[key]
                    .verifying_key()
                    .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&s))
                    .is_ok();
                report.lanes += 1;
                report.valid += reference as usize;
                match ed25519_lane(&keys[key], &points[key], &msg, &s) {
                    Some(lane) => {
                        lanes.push(lane);
                        expected.push((reference, key, bit));
                    }
                    None if reference => {
                        report.mismatch_count += 1;
                        report.mismatches.push(format!(
                            "strict checks refused a valid signature of key {key}"
                        ));
                    }
                    None => {}
                }
            }
        }
        let started = std::time::Instant::now();
        let answers = super::verify_ed25519(&lanes);
        report.vector_seconds += started.elapsed().as_secs_f64();
        for (answer, (reference, key, bit)) in answers.iter().zip(&expected) {
            match answer {
                None => report.declined += 1,
                Some(a) if a != reference => {
                    report.mismatch_count += 1;
                    if report.mismatches.len() < 8 {
                        report.mismatches.push(format!(
                            "key {key}, bit {bit}: vector {a}, verify_strict {reference}"
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        done += n;
    }
    report
}
