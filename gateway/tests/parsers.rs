//! Property tests of every decoder that client bytes reach (hex, base64, key ids, label
//! patterns, return codes, RLP transactions, envelope and transaction JSON, public keys as
//! points and PEM, signatures in DER, raw and Ethereum form): on any input, and on valid
//! inputs with random edits, each returns a value or its typed error and never panics.
//! examples/fuzz_parsers.rs runs the same for as long as asked.

#[path = "common/parsers.rs"]
mod parsers;

use parsers::{exercise, mutate, seeds};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes(input in prop::collection::vec(any::<u8>(), 0..1024)) {
        exercise(&input);
    }

    #[test]
    fn valid_inputs_with_random_edits(
        which in 0usize..8,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let seeds = seeds();
        exercise(&mutate(&seeds[which % seeds.len()], &edits));
    }
}

#[test]
fn the_seeds_themselves_decode() {
    let seeds = seeds();
    // Mutations start from inputs that decode, so edits reach past the first check.
    bsn_gateway::txn::ethereum::decode(&seeds[2]).unwrap();
    assert!(serde_json::from_slice::<bsn_gateway::admission::TxInput>(&seeds[3]).is_ok());
    assert!(bsn_gateway::crypto::pubkey::PublicKey::from_pem(
        bsn_gateway::algorithm::Algorithm::EcdsaP256,
        std::str::from_utf8(&seeds[1]).unwrap()
    )
    .is_ok());
    for s in &seeds {
        exercise(s);
    }
}
