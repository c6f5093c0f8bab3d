//! `sign_with_session_copy` (SoftHSM2's profile): the gateway signs with a copy of each key
//! made inside the token. In process, because a session object is seen only by the
//! application that made it: the copy must be sensitive and unextractable like its
//! original, made once, invisible to every lookup of token objects (no key turns
//! ambiguous, the reconcile sees nothing new), and gone when the key is destroyed, or
//! soon after its token object is deleted by other means.
//! One test per binary: SoftHSM2 reads SOFTHSM2_CONF from this process's environment.

use std::net::SocketAddr;

use bsn_gateway::algorithm::Algorithm;
use bsn_gateway::custody::hsm::{Hsm, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;

fn objects(s: &Session, token: bool, id: &[u8]) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[Attribute::Token(token), Attribute::Id(id.to_vec())])
        .map_err(|e| HsmError::Load(e.to_string()))
}

fn verifies(point: &[u8], digest: &[u8], sig: &[u8]) -> bool {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let q = EcPoint::from_bytes(&group, point, &mut ctx).unwrap();
    let key = EcKey::from_public_key(&group, &q).unwrap();
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&sig[..32]).unwrap(),
        BigNum::from_slice(&sig[32..]).unwrap(),
    )
    .unwrap();
    sig.verify(digest, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sign_through_one_sensitive_session_copy_that_goes_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (config, dev) = bsn_gateway::dev::prepare(dir.path(), any, any, &[]).unwrap();
    let profile = config.hsm.profile().unwrap();
    assert!(
        profile.quirks.sign_with_session_copy,
        "SoftHSM2's profile signs with session copies"
    );
    let prepare: bsn_gateway::custody::Prepare =
        Box::new(move |pkcs11| bsn_gateway::dev::ensure_token(pkcs11, &dev));
    let hsm: std::sync::Arc<Hsm> = config.hsm.open_hsm(&profile, 4, Some(prepare)).unwrap();

    let id = b"copy-test-key".to_vec();
    let alg = Algorithm::EcdsaP256;
    let point = {
        let id = id.clone();
        hsm.run("generate", "ecdsa-p256", false, move |h, s| {
            h.generate(s, alg, &id, "copy-test")
        })
        .await
        .unwrap()
    };
    let count = |token: bool| {
        let (hsm, id) = (hsm.clone(), id.clone());
        async move {
            hsm.run("find", "any", false, move |_, s| {
                Ok(objects(s, token, &id)?.len())
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(count(false).await, 0, "no copy before the first signature");
    assert_eq!(count(true).await, 2, "the key pair on the token");

    let sign = |digest: [u8; 32]| {
        let (hsm, id) = (hsm.clone(), id.clone());
        async move {
            hsm.run_sign("sign", "ecdsa-p256", move |h, s| {
                h.sign(s, alg, &id, &[digest.to_vec()])
            })
            .await
        }
    };
    // Signatures from several sessions at once: still one copy.
    let digests: Vec<[u8; 32]> = (0..16u8).map(|i| [i; 32]).collect();
    let tasks: Vec<_> = digests.iter().map(|d| tokio::spawn(sign(*d))).collect();
    for (d, task) in digests.iter().zip(tasks) {
        let sig = task.await.unwrap().unwrap().remove(0);
        assert!(verifies(&point, d, &sig), "OpenSSL verifies the signature");
    }
    assert_eq!(count(false).await, 1, "exactly one session copy");
    assert_eq!(count(true).await, 2, "nothing new on the token");

    {
        let id = id.clone();
        let copy_attrs = hsm
            .run("attrs", "any", false, move |_, s| {
                let copy = objects(s, false, &id)?[0];
                let attrs = s
                    .get_attributes(
                        copy,
                        &[
                            AttributeType::Class,
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                            AttributeType::Token,
                        ],
                    )
                    .map_err(|e| HsmError::Load(e.to_string()))?;
                let value = s
                    .get_attributes(copy, &[AttributeType::Value])
                    .unwrap_or_default();
                Ok((attrs, value))
            })
            .await
            .unwrap();
        let (attrs, value) = copy_attrs;
        for want in [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Token(false),
        ] {
            assert!(attrs.contains(&want), "{want:?} in {attrs:?}");
        }
        assert!(
            !value.iter().any(|a| matches!(a, Attribute::Value(_))),
            "the copy's private value never leaves the token"
        );
    }

    // Lookups of token objects do not see the copy.
    {
        let key = id.clone();
        let (has, ids) = hsm
            .run("lookups", "any", false, move |h, s| {
                Ok((h.has_private_key(s, &key)?, h.object_ids(s)?))
            })
            .await
            .unwrap();
        assert!(has, "one private key, not an ambiguous two");
        let objs = ids.get(&id).copied().unwrap_or_default();
        assert_eq!((objs.total, objs.private), (2, 1), "{objs:?}");
        let warmed = hsm
            .run("warm", "any", false, move |h, s| h.warm_handles(s))
            .await
            .unwrap();
        assert_eq!(warmed, 1, "the copy is not a second private key");
    }

    // Destroying the key destroys the copy; signing then finds no key.
    {
        let id = id.clone();
        let destroyed = hsm
            .run("destroy", "any", true, move |h, s| h.destroy(s, &id))
            .await
            .unwrap();
        assert_eq!(destroyed, 2, "the token objects are counted, not the copy");
    }
    assert_eq!(count(false).await, 0, "the copy is gone");
    assert_eq!(count(true).await, 0);
    match sign([7; 32]).await {
        Err(HsmError::KeyMissing(_)) => {}
        other => panic!("signing with a destroyed key: {other:?}"),
    }

    // A key deleted from the token by other means (here through a session of our own,
    // not `destroy`) stops signing once its token object is looked at again.
    let other = b"copy-test-other".to_vec();
    {
        let other = other.clone();
        hsm.run("generate", "ecdsa-p256", false, move |h, s| {
            h.generate(s, alg, &other, "copy-test-other")
        })
        .await
        .unwrap();
    }
    let sign_other = || {
        let (hsm, other) = (hsm.clone(), other.clone());
        async move {
            hsm.run_sign("sign", "ecdsa-p256", move |h, s| {
                h.sign(s, alg, &other, &[vec![9; 32]])
            })
            .await
        }
    };
    sign_other().await.unwrap();
    {
        let other = other.clone();
        let deleted = hsm
            .run("delete behind", "any", false, move |_, s| {
                let found = objects(s, true, &other)?;
                for o in &found {
                    s.destroy_object(*o)
                        .map_err(|e| HsmError::Load(e.to_string()))?;
                }
                Ok(found.len())
            })
            .await
            .unwrap();
        assert_eq!(deleted, 2);
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    match sign_other().await {
        Err(HsmError::KeyMissing(_)) => {}
        other => panic!("signing with a key deleted from the token: {other:?}"),
    }
    let left = {
        let other = other.clone();
        hsm.run("find", "any", false, move |_, s| {
            Ok(objects(s, false, &other)?.len())
        })
        .await
        .unwrap()
    };
    assert_eq!(left, 0, "its session copy was destroyed too");
    hsm.shutdown();
}
