//! The size bound of every string a client sends in a JSON body. The same numbers are the
//! `maxLength` of each field in `openapi.json` (a test holds the two together), so a client
//! learns them from the documented API instead of from a 400. The body as a whole is
//! bounded by `[limits] max_body_bytes` and arrays by `max_items`; these bounds say what a
//! single field may be, and are checked before the string is copied.

use std::fmt;

use serde::de::{Error, Visitor};
use serde::Deserializer;

pub const LABEL: usize = 64;
pub const ALGORITHM: usize = 32;
/// A client's principal name (`owner`).
pub const PRINCIPAL: usize = 128;
/// A key id (32 hex digits) with room for a mistake to be named, not truncated.
pub const KEY_ID: usize = 64;
pub const LEDGER: usize = 64;
/// An SM2 distinguishing ID (the standard allows 8191 bytes; real ones are short).
pub const SM2_ID: usize = 1024;
/// An X.500 subject in RFC 4514 form.
pub const SUBJECT: usize = 1024;
/// A certificate request in PEM.
pub const CSR_PEM: usize = 16_384;
/// One subject alternative name (a DNS name is at most 253 bytes).
pub const SAN: usize = 253;
/// `format`, `hash`: short enumerations.
pub const WORD: usize = 16;
/// A digest: `0x` and up to 64 bytes of hex.
pub const DIGEST: usize = 130;
/// Hex public keys (the largest, an uncompressed point, is 65 bytes).
pub const HEX_VALUE: usize = 512;
/// Hex signatures: room for a malformed DER signature of up to 8 KiB, so that the strict
/// DER reader names what is wrong with it (Wycheproof's longest is 4,172 bytes), not the
/// size bound.
pub const SIGNATURE: usize = 16_384;
/// An Ethereum address: `0x` and 40 hex digits.
pub const ADDRESS: usize = 42;
/// One public key in PEM (about 180 characters for an EC key).
pub const PUBLIC_KEY_PEM: usize = 4096;
/// A signer's certificate and its intermediates.
pub const CERTIFICATE_PEM: usize = 65536;
/// Messages and payloads, base64.
pub const BASE64_DATA: usize = 1_048_576;
/// A raw Ethereum transaction: `0x` and 128 KiB of hex (the size geth accepts).
pub const RAW_TRANSACTION: usize = 2 + 2 * 131_072;

/// The start of the message of a bound's error, by which the HTTP layer tells it apart.
pub const TOO_LONG: &str = "longer than";

struct Bounded<const MAX: usize>;

impl<'de, const MAX: usize> Visitor<'de> for Bounded<MAX> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string of at most {MAX} bytes")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
        if v.len() > MAX {
            return Err(E::custom(format!("{TOO_LONG} {MAX} bytes")));
        }
        Ok(v.to_owned())
    }
}

struct OptBounded<const MAX: usize>;

impl<'de, const MAX: usize> Visitor<'de> for OptBounded<MAX> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "null or a string of at most {MAX} bytes")
    }

    fn visit_none<E: Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        text::<MAX, D>(d).map(Some)
    }
}

/// `#[serde(deserialize_with = "crate::bounds::text::<N, _>")]`
pub fn text<'de, const MAX: usize, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_string(Bounded::<MAX>)
}

/// `#[serde(default, deserialize_with = "crate::bounds::opt::<N, _>")]`
pub fn opt<'de, const MAX: usize, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_option(OptBounded::<MAX>)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::text::<4, _>")]
        a: String,
        #[serde(default, deserialize_with = "super::opt::<4, _>")]
        b: Option<String>,
    }

    #[test]
    fn a_bound_admits_its_length_and_refuses_one_more() {
        let ok: T = serde_json::from_str(r#"{"a":"abcd","b":"wxyz"}"#).unwrap();
        assert_eq!((ok.a.as_str(), ok.b.as_deref()), ("abcd", Some("wxyz")));
        let none: T = serde_json::from_str(r#"{"a":"","b":null}"#).unwrap();
        assert_eq!(none.b, None);
        let absent: T = serde_json::from_str(r#"{"a":"é"}"#).unwrap();
        assert_eq!(absent.b, None);
        for body in [
            r#"{"a":"abcde"}"#,
            r#"{"a":"a","b":"abcde"}"#,
            r#"{"a":"ééé"}"#,
        ] {
            let e = serde_json::from_str::<T>(body).unwrap_err().to_string();
            assert!(e.starts_with("longer than 4 bytes"), "{body}: {e}");
        }
        // An escaped string is measured after unescaping, like any other.
        assert!(serde_json::from_str::<T>(r#"{"a":"\u0041\u0042\u0043\u0044"}"#).is_ok());
        assert!(serde_json::from_str::<T>(r#"{"a":5}"#).is_err());
    }
}
