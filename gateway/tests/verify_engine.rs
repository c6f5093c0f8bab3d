//! The verification engine as a library: every Wycheproof vector, mixed batches, overload
//! and Ethereum recovery. Signatures to check come from openssl and libsecp256k1 directly.

mod common;

use bsn_gateway::algorithm::Algorithm;
use bsn_gateway::verify::{
    Engine, EngineError, Hash, Item, KeyInput, Message, Outcome, Reason, SigFormat, Task,
    VerifyConfig,
};
use common::wycheproof;

fn engine(workers: usize, max_batch: usize) -> Engine {
    engine_with(workers, max_batch, true)
}

fn engine_with(workers: usize, max_batch: usize, multi_buffer: bool) -> Engine {
    Engine::start(&VerifyConfig {
        workers,
        max_batch,
        multi_buffer,
        ..VerifyConfig::default()
    })
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn task(c: &wycheproof::Case, pem: bool) -> Task {
    Task::Verify(Item {
        algorithm: c.algorithm.parse().unwrap(),
        key: if pem {
            KeyInput::Pem(c.key_pem.clone())
        } else {
            KeyInput::Bytes(hex::decode(&c.key_hex).unwrap())
        },
        message: Message::Bytes(c.msg.clone()),
        hash: Hash::Sha256,
        signature: c.sig.clone(),
        format: SigFormat::parse(c.format).unwrap(),
        require_low_s: c.require_low_s,
    })
}

/// Through the scalar path and, where the CPU has AVX-512 IFMA, the multi-buffer one (on a
/// CPU without it both runs take the scalar path, and the test says so).
#[test]
fn every_wycheproof_vector_gets_its_verdict() {
    let cases = wycheproof::all();
    if !bsn_gateway::verify::mb::available() {
        eprintln!("this CPU has no AVX-512 IFMA: the multi-buffer run takes the scalar path");
    }
    let rt = rt();
    // Keys as bytes and as PEM; all cases in one call so batches mix algorithms.
    for (multi_buffer, pem) in [(false, false), (false, true), (true, false), (true, true)] {
        let e = engine_with(2, 64, multi_buffer);
        let tasks: Vec<Task> = cases.iter().map(|c| task(c, pem)).collect();
        let out = rt.block_on(e.run(tasks)).unwrap();
        assert_eq!(out.len(), cases.len());
        let mut wrong = Vec::new();
        for (c, o) in cases.iter().zip(&out) {
            if (*o == Outcome::Valid) != c.valid {
                wrong.push(format!(
                    "{} #{} expected valid={} got {o:?}",
                    c.file, c.id, c.valid
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} wrong (pem={pem}, multi_buffer={multi_buffer}):\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
    let valid = cases.iter().filter(|c| c.valid).count();
    assert!(
        valid > 500 && cases.len() - valid > 500,
        "both kinds are exercised"
    );
}

#[test]
fn ed25519_batches_single_out_exactly_the_bad_items() {
    let cases: Vec<_> = wycheproof::load("ed25519_test.json", "ed25519", "raw", false);
    let good: Vec<_> = cases.iter().filter(|c| c.valid).collect();
    let bad: Vec<_> = cases.iter().filter(|c| !c.valid).collect();
    let e = engine(1, 256);
    let rt = rt();
    // Several mixes: bad items at the ends, in the middle, clustered, and none.
    for stride in [0usize, 1, 3, 7, 31] {
        let mut mix = Vec::new();
        let mut expect = Vec::new();
        for (i, g) in good.iter().enumerate() {
            if stride > 0 && i % stride == 0 {
                let b = bad[i % bad.len()];
                mix.push(task(b, false));
                expect.push(false);
            }
            mix.push(task(g, false));
            expect.push(true);
        }
        let out = rt.block_on(e.run(mix)).unwrap();
        let got: Vec<bool> = out.iter().map(|o| *o == Outcome::Valid).collect();
        assert_eq!(got, expect, "stride {stride}");
    }
}

fn p256_item(key: &openssl::ec::EcKey<openssl::pkey::Private>, msg: &[u8]) -> Item {
    let digest = openssl::sha::sha256(msg);
    let sig = openssl::ecdsa::EcdsaSig::sign(&digest, key).unwrap();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let point = key
        .public_key()
        .to_bytes(
            key.group(),
            openssl::ec::PointConversionForm::COMPRESSED,
            &mut ctx,
        )
        .unwrap();
    Item {
        algorithm: Algorithm::EcdsaP256,
        key: KeyInput::Bytes(point),
        message: Message::Bytes(msg.to_vec()),
        hash: Hash::Sha256,
        signature: sig.to_der().unwrap(),
        format: SigFormat::Der,
        require_low_s: false,
    }
}

#[test]
fn any_one_bit_change_fails_and_mixed_batches_name_the_bad_ones() {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let e = engine(2, 16);
    let rt = rt();
    let mut tasks = Vec::new();
    let mut expect = Vec::new();
    for i in 0..200usize {
        let key = openssl::ec::EcKey::generate(&group).unwrap();
        let msg = bsn_gateway::util::random_bytes(1 + i % 97);
        let mut item = p256_item(&key, &msg);
        // Every third item is damaged: one bit of the signature, message or key.
        let bad = i % 3 == 0;
        if bad {
            let bit = i * 7;
            match i % 9 {
                0 => {
                    let n = item.signature.len();
                    item.signature[bit / 8 % n] ^= 1 << (bit % 8);
                }
                3 => {
                    if let Message::Bytes(m) = &mut item.message {
                        let n = m.len();
                        m[bit / 8 % n] ^= 1 << (bit % 8);
                    }
                }
                _ => {
                    if let KeyInput::Bytes(k) = &mut item.key {
                        k[1 + bit / 8 % 32] ^= 1 << (bit % 8);
                    }
                }
            }
        }
        tasks.push(Task::Verify(item));
        expect.push(!bad);
    }
    let out = rt.block_on(e.run(tasks)).unwrap();
    let got: Vec<bool> = out.iter().map(|o| *o == Outcome::Valid).collect();
    assert_eq!(got, expect);
}

#[test]
fn secp256k1_policies_recovery_and_addresses() {
    use secp256k1::{Message as M, Secp256k1, SecretKey};
    let secp = Secp256k1::new();
    let sk = SecretKey::from_byte_array([7u8; 32]).unwrap();
    let pk = sk.public_key(&secp);
    let msg = b"transfer 10 to bob";
    let digest = bsn_gateway::util::keccak256(msg);
    let rsig = secp.sign_ecdsa_recoverable(M::from_digest(digest), &sk);
    let (id, rs) = rsig.serialize_compact();
    let mut eth = rs.to_vec();
    eth.push(27 + i32::from(id) as u8);
    let addr = bsn_gateway::crypto::ecdsa::eth_address(&pk.serialize_uncompressed()).unwrap();
    let low_der = secp256k1::ecdsa::Signature::from_compact(&rs)
        .unwrap()
        .serialize_der()
        .to_vec();
    // High-S twin of the same signature: s' = n - s, with n from OpenSSL.
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP256K1).unwrap();
    let mut n = openssl::bn::BigNum::new().unwrap();
    group
        .order(&mut n, &mut openssl::bn::BigNumContext::new().unwrap())
        .unwrap();
    let mut s = openssl::bn::BigNum::new().unwrap();
    s.checked_sub(&n, &openssl::bn::BigNum::from_slice(&rs[32..]).unwrap())
        .unwrap();
    let mut high_raw = rs.to_vec();
    high_raw[32..].copy_from_slice(&s.to_vec_padded(32).unwrap());

    let base = Item {
        algorithm: Algorithm::EcdsaSecp256k1,
        key: KeyInput::Bytes(pk.serialize().to_vec()),
        message: Message::Bytes(msg.to_vec()),
        hash: Hash::Keccak256,
        signature: low_der,
        format: SigFormat::Der,
        require_low_s: true,
    };
    let with = |f: &dyn Fn(&mut Item)| {
        let mut i = base.clone();
        f(&mut i);
        Task::Verify(i)
    };
    let tasks = vec![
        with(&|_| {}),
        with(&|i| {
            i.signature = high_raw.clone();
            i.format = SigFormat::Raw;
        }),
        with(&|i| {
            i.signature = high_raw.clone();
            i.format = SigFormat::Raw;
            i.require_low_s = false;
        }),
        with(&|i| {
            i.signature = eth.clone();
            i.format = SigFormat::Eth;
        }),
        with(&|i| {
            i.signature = eth.clone();
            i.format = SigFormat::Eth;
            i.key = KeyInput::Address(addr);
        }),
        with(&|i| {
            i.signature = eth.clone();
            i.format = SigFormat::Eth;
            i.key = KeyInput::Address([1u8; 20]);
        }),
        with(&|i| i.hash = Hash::Sha256),
        with(&|i| i.message = Message::Digest(digest)),
        with(&|i| i.key = KeyInput::Address(addr)),
        with(&|i| i.signature.push(0)),
        Task::Recover {
            digest,
            signature: eth.clone().try_into().unwrap(),
            require_low_s: true,
        },
    ];
    let out = rt().block_on(engine(1, 64).run(tasks.clone())).unwrap();
    let expected = vec![
        Outcome::Valid,
        Outcome::Invalid(Reason::HighS),
        Outcome::Valid,
        Outcome::Valid,
        Outcome::Valid,
        Outcome::Invalid(Reason::BadSignature),
        Outcome::Invalid(Reason::BadSignature),
        Outcome::Valid,
        Outcome::Invalid(Reason::InvalidItem),
        Outcome::Invalid(Reason::BadEncoding),
        Outcome::Recovered(pk.serialize_uncompressed()),
    ];
    assert_eq!(out, expected);
    // Eight copies in one call: enough recoveries and lanes for full register sets of the
    // multi-buffer path (where the CPU has it), which must answer alike.
    let many: Vec<Task> = (0..8).flat_map(|_| tasks.clone()).collect();
    let out = rt().block_on(engine(1, 128).run(many)).unwrap();
    let expected: Vec<Outcome> = (0..8).flat_map(|_| expected.clone()).collect();
    assert_eq!(out, expected);
}

/// Calls of up to `INLINE_ITEMS` are verified on the callers' runtime threads, several
/// calls in one micro-batch: each call must get back exactly its own verdicts, in order.
#[test]
fn small_calls_at_once_each_get_their_own_verdicts() {
    use bsn_gateway::verify::INLINE_ITEMS;
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let keys: Vec<_> = (0..16)
        .map(|_| openssl::ec::EcKey::generate(&group).unwrap())
        .collect();
    let e = std::sync::Arc::new(engine(1, 64));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for c in 0..300usize {
            let mut tasks = Vec::new();
            let mut expect = Vec::new();
            for i in 0..1 + c % INLINE_ITEMS {
                let mut item =
                    p256_item(&keys[(c + i) % keys.len()], format!("{c}/{i}").as_bytes());
                // One item in five carries another call's signature.
                let bad = (c * 7 + i) % 5 == 0;
                if bad {
                    item.signature = p256_item(&keys[0], b"another call").signature;
                }
                tasks.push(Task::Verify(item));
                expect.push(!bad);
            }
            let e = e.clone();
            calls.spawn(async move {
                let out = e.run(tasks).await.unwrap();
                let got: Vec<bool> = out.iter().map(|o| *o == Outcome::Valid).collect();
                (got, expect)
            });
        }
        calls.join_all().await
    });
    assert_eq!(results.len(), 300);
    for (got, expect) in results {
        assert_eq!(got, expect);
    }
    assert_eq!(e.queued_items(), 0);
}

/// A small call whose caller goes away (its client disconnected) before its job was taken
/// leaves nothing queued and nothing counted against the queue's bound.
#[test]
fn a_small_call_dropped_while_queued_takes_its_job_back() {
    use std::future::Future;
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = openssl::ec::EcKey::generate(&group).unwrap();
    let item = p256_item(&key, b"x");
    let e = engine(1, 8);
    let rt = rt();
    for _ in 0..100 {
        // Polled once, the call queues its job and yields; then it is dropped.
        let mut call = Box::pin(e.run(vec![Task::Verify(item.clone()); 2]));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert_eq!(e.queued_items(), 2);
        drop(call);
    }
    assert_eq!(e.queued_items(), 0, "every dropped job was taken back");
    let again = rt.block_on(e.run(vec![Task::Verify(item)])).unwrap();
    assert_eq!(again, vec![Outcome::Valid]);
}

/// With the lanes running (`lane_wait_us`): a small call does not wait while fewer than
/// a set of lanes' items are under way; with a set's worth under way and fewer queued, it
/// yields again instead of taking, and if its caller goes away then, its job goes with it.
#[test]
fn a_small_call_waits_for_company_only_when_enough_are_under_way() {
    use std::future::Future;
    use std::task::Poll;
    if !bsn_gateway::verify::mb::available() {
        eprintln!("skipped: this CPU has no AVX-512 IFMA (or BSN_NO_IFMA is set): small calls never wait for lanes");
        return;
    }
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = openssl::ec::EcKey::generate(&group).unwrap();
    let item = p256_item(&key, b"x");
    let valid = |p: Poll<Result<Vec<Outcome>, EngineError>>, n: usize| matches!(p, Poll::Ready(Ok(ref o)) if *o == vec![Outcome::Valid; n]);
    let wait = std::time::Duration::from_millis(10);
    let e = Engine::start(&VerifyConfig {
        workers: 1,
        lane_wait_us: wait.as_micros() as u64,
        ..VerifyConfig::default()
    })
    .unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let call = |n: usize| Box::pin(e.run(vec![Task::Verify(item.clone()); n]));
    // Two calls, three items under way: the second poll takes both and answers.
    let mut first = call(2);
    let mut second = call(1);
    assert!(first.as_mut().poll(&mut cx).is_pending());
    assert!(second.as_mut().poll(&mut cx).is_pending());
    assert!(
        valid(first.as_mut().poll(&mut cx), 2),
        "too few under way to wait for"
    );
    assert!(valid(second.as_mut().poll(&mut cx), 1));
    // Eight calls verified together whose callers have not yet come back for the answers:
    // eight items under way.
    let mut answered: Vec<_> = (0..8).map(|_| call(1)).collect();
    for c in &mut answered {
        assert!(c.as_mut().poll(&mut cx).is_pending());
    }
    assert!(answered[7].as_mut().poll(&mut cx).is_ready());
    assert_eq!(e.queued_items(), 0);
    // Now two more calls, with nine items under way and two queued: the first yields again
    // instead of taking, unless its wait ran out meanwhile.
    let started = std::time::Instant::now();
    let mut waiting = call(1);
    let mut other = call(1);
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    assert!(other.as_mut().poll(&mut cx).is_pending());
    if waiting.as_mut().poll(&mut cx).is_ready() {
        assert!(
            started.elapsed() >= wait,
            "the call took the queue without waiting for more"
        );
        eprintln!("this thread was held up past the wait: its drop is not checked");
        return;
    }
    drop(waiting);
    assert_eq!(e.queued_items(), 1, "the dropped call's items left with it");
    // The answered callers come back; with one call under way, the other does not wait.
    for mut c in answered.drain(..7) {
        assert!(valid(c.as_mut().poll(&mut cx), 1));
    }
    assert!(valid(other.as_mut().poll(&mut cx), 1));
    assert_eq!(e.queued_items(), 0);
}

#[test]
fn a_full_queue_refuses_at_once_and_memory_stays_bounded() {
    let e = std::sync::Arc::new(
        Engine::start(&VerifyConfig {
            workers: 1,
            max_batch: 8,
            queue_items: 64,
            ..VerifyConfig::default()
        })
        .unwrap(),
    );
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = openssl::ec::EcKey::generate(&group).unwrap();
    let item = p256_item(&key, b"x");
    let rt = rt();
    // More than the queue holds in one call: refused whole, nothing half-done.
    let too_many: Vec<Task> = (0..65).map(|_| Task::Verify(item.clone())).collect();
    assert!(matches!(
        rt.block_on(e.run(too_many)),
        Err(EngineError::Overloaded { limit: 64, .. })
    ));
    // Many concurrent callers: each is answered, either fully or with Overloaded.
    let results = rt.block_on(async {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (e, batch) = (e.clone(), vec![Task::Verify(item.clone()); 16]);
            calls.spawn(async move { e.run(batch).await });
        }
        calls.join_all().await
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(EngineError::Overloaded { .. })))
        .count();
    assert_eq!(ok + refused, 50);
    assert!(ok >= 4, "at least the queue's worth is served");
    for r in results.into_iter().flatten() {
        assert!(r.iter().all(|o| *o == Outcome::Valid));
    }
    // Once drained, the queue admits again.
    let again = rt.block_on(e.run(vec![Task::Verify(item)])).unwrap();
    assert_eq!(again, vec![Outcome::Valid]);
}
