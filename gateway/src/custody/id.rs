//! A key's id: the 16 random bytes of its CKA_ID on the token, written as 32 lowercase hex
//! digits in the API, the journal and the audit log. Parsed once at the edge: anything
//! else a client sends is simply no key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 16]);

impl KeyId {
    pub fn random() -> KeyId {
        let mut b = [0u8; 16];
        b.copy_from_slice(&crate::util::random_bytes(16));
        KeyId(b)
    }

    /// The CKA_ID bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn from_bytes(b: &[u8]) -> Option<KeyId> {
        b.try_into().ok().map(KeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a key id is 32 hex digits")]
pub struct BadKeyId;

impl FromStr for KeyId {
    type Err = BadKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(BadKeyId);
        }
        let b = hex::decode(s).map_err(|_| BadKeyId)?;
        KeyId::from_bytes(&b).ok_or(BadKeyId)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_anything_else_is_refused() {
        let id = KeyId::random();
        assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
        assert_eq!(
            serde_json::from_str::<KeyId>(&serde_json::to_string(&id).unwrap()).unwrap(),
            id
        );
        let upper = id.to_string().to_uppercase();
        assert_eq!(upper.parse::<KeyId>(), Ok(id), "hex is case-blind");
        for bad in [
            "",
            "00",
            &"0".repeat(31),
            &"0".repeat(33),
            &"g".repeat(32),
            "../../etc",
        ] {
            assert_eq!(bad.parse::<KeyId>(), Err(BadKeyId), "{bad:?}");
        }
    }
}
