//! The private keys the gateway generates are sensitive and not extractable, read from the
//! token itself through PKCS#11 (cryptoki), not from the gateway's own metadata.
//! One test per binary: SoftHSM2 reads SOFTHSM2_CONF from this process's environment.

mod common;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

#[test]
fn generated_private_keys_are_sensitive_and_never_extractable() {
    let mut g = common::Gateway::start_dev();
    let ids: Vec<(String, String)> = ["ecdsa-p256", "ecdsa-secp256k1", "ed25519"]
        .iter()
        .map(|alg| {
            let k = g.create_key(&format!("attr-{alg}"), alg);
            (k["id"].as_str().unwrap().to_string(), alg.to_string())
        })
        .collect();
    assert!(g.terminate().success());

    std::env::set_var("SOFTHSM2_CONF", g.dir.join("softhsm2.conf"));
    let p = Pkcs11::new(common::module_path()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label() == "bsn-gateway-dev")
        .unwrap();
    let session = p.open_ro_session(slot).unwrap();
    let pin = std::fs::read_to_string(g.dir.join("user.pin")).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(pin.trim().to_string())))
        .unwrap();
    for (id, alg) in ids {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(hex::decode(&id).unwrap()),
            ])
            .unwrap();
        assert_eq!(
            found.len(),
            1,
            "{alg}: exactly one private key with id {id}"
        );
        let attrs = session
            .get_attributes(
                found[0],
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                    AttributeType::Label,
                ],
            )
            .unwrap();
        assert!(
            attrs.contains(&Attribute::Sensitive(true)),
            "{alg}: {attrs:?}"
        );
        assert!(
            attrs.contains(&Attribute::Extractable(false)),
            "{alg}: {attrs:?}"
        );
        assert!(attrs.contains(&Attribute::Token(true)), "{alg}: {attrs:?}");
        assert!(
            attrs.contains(&Attribute::Label(format!("attr-{alg}").into_bytes())),
            "{alg}: {attrs:?}"
        );
        // The token refuses to reveal the private value.
        let value = session
            .get_attributes(found[0], &[AttributeType::Value])
            .unwrap_or_default();
        assert!(
            !value.iter().any(|a| matches!(a, Attribute::Value(_))),
            "{alg}: private value readable"
        );
    }
}
