//! Signed Ethereum transactions: legacy (EIP-155), EIP-2930 and EIP-1559, decoded strictly
//! from their RLP (alloy-rlp does the RLP; the field layouts are the EIPs').
//!
//! alloy-consensus would give the same types but pulls in alloy-primitives, ruint and
//! friends (dozens of crates) to fill structs we only need to check and hash; here every
//! field is validated in place and the signing payload is rebuilt from the raw field
//! encodings, so nothing is copied or re-serialised beyond one buffer.

use alloy_rlp::{Encodable, Header};

/// What admission needs from a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthTx {
    /// keccak256 of the raw bytes: the id nodes and explorers use.
    pub hash: [u8; 32],
    /// 0 legacy, 1 EIP-2930, 2 EIP-1559.
    pub tx_type: u8,
    pub chain_id: u64,
    /// The digest the sender signed.
    pub signing_hash: [u8; 32],
    /// r || s || y-parity (0 or 1).
    pub signature: [u8; 65],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error("not a valid RLP transaction: {0}")]
    Rlp(alloy_rlp::Error),
    #[error("transaction type {0:#04x} is not supported (legacy, 0x01 and 0x02 are)")]
    UnsupportedType(u8),
    #[error("a pre-EIP-155 transaction carries no chain id and could be replayed on any chain")]
    NoChainId,
    #[error("field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
}

impl From<alloy_rlp::Error> for TxError {
    fn from(e: alloy_rlp::Error) -> Self {
        TxError::Rlp(e)
    }
}

impl TxError {
    /// The rejection code the API shows.
    pub fn code(&self) -> &'static str {
        match self {
            TxError::UnsupportedType(_) => "unsupported_type",
            TxError::NoChainId => "no_chain_id",
            TxError::Rlp(_) | TxError::Field { .. } => "bad_encoding",
        }
    }
}

const LEGACY: &[&str] = &[
    "nonce", "gasPrice", "gas", "to", "value", "data", "v", "r", "s",
];
const EIP2930: &[&str] = &[
    "chainId",
    "nonce",
    "gasPrice",
    "gas",
    "to",
    "value",
    "data",
    "accessList",
    "yParity",
    "r",
    "s",
];
const EIP1559: &[&str] = &[
    "chainId",
    "nonce",
    "maxPriorityFeePerGas",
    "maxFeePerGas",
    "gas",
    "to",
    "value",
    "data",
    "accessList",
    "yParity",
    "r",
    "s",
];

pub fn decode(raw: &[u8]) -> Result<EthTx, TxError> {
    match raw.first() {
        None => Err(TxError::Rlp(alloy_rlp::Error::InputTooShort)),
        Some(0xc0..=0xff) => legacy(raw),
        Some(1) => typed(raw, 1, EIP2930),
        Some(2) => typed(raw, 2, EIP1559),
        Some(&t) => Err(TxError::UnsupportedType(t)),
    }
}

fn legacy(raw: &[u8]) -> Result<EthTx, TxError> {
    let fields = list_fields(raw, LEGACY)?;
    check_common(&fields, LEGACY)?;
    let v = uint_u64(fields[6], "v")?;
    let (chain_id, parity) = match v {
        27 | 28 => return Err(TxError::NoChainId),
        v if v >= 35 => ((v - 35) / 2, ((v - 35) % 2) as u8),
        _ => {
            return Err(TxError::Field {
                field: "v",
                problem: "must be 27, 28 or chainId * 2 + 35/36",
            })
        }
    };
    // EIP-155: the signer hashed the six fields, then chainId, 0, 0.
    let mut tail = Vec::with_capacity(12);
    chain_id.encode(&mut tail);
    tail.extend_from_slice(&[0x80, 0x80]);
    let signing = list_of(&fields[..6], &tail, None);
    Ok(EthTx {
        hash: crate::util::keccak256(raw),
        tx_type: 0,
        chain_id,
        signing_hash: crate::util::keccak256(&signing),
        signature: signature(fields[7], fields[8], parity)?,
    })
}

fn typed(raw: &[u8], ty: u8, names: &[&'static str]) -> Result<EthTx, TxError> {
    let fields = list_fields(&raw[1..], names)?;
    check_common(&fields, names)?;
    let n = names.len();
    let chain_id = uint_u64(fields[0], "chainId")?;
    let parity = match fields[n - 3] {
        [0x80] => 0,
        [0x01] => 1,
        _ => {
            return Err(TxError::Field {
                field: "yParity",
                problem: "must be 0 or 1",
            })
        }
    };
    let signing = list_of(&fields[..n - 3], &[], Some(ty));
    Ok(EthTx {
        hash: crate::util::keccak256(raw),
        tx_type: ty,
        chain_id,
        signing_hash: crate::util::keccak256(&signing),
        signature: signature(fields[n - 2], fields[n - 1], parity)?,
    })
}

/// Splits one RLP list that must fill `buf` exactly into the raw encodings of its fields.
fn list_fields<'a>(buf: &'a [u8], names: &[&str]) -> Result<Vec<&'a [u8]>, TxError> {
    let mut rest = buf;
    let header = Header::decode(&mut rest)?;
    if !header.list {
        return Err(TxError::Rlp(alloy_rlp::Error::UnexpectedString));
    }
    if rest.len() != header.payload_length {
        return Err(TxError::Field {
            field: "transaction",
            problem: "bytes after the end of the transaction",
        });
    }
    let mut fields = Vec::with_capacity(names.len());
    while !rest.is_empty() {
        fields.push(next_item(&mut rest)?);
    }
    if fields.len() != names.len() {
        return Err(TxError::Rlp(alloy_rlp::Error::ListLengthMismatch {
            expected: names.len(),
            got: fields.len(),
        }));
    }
    Ok(fields)
}

/// The raw encoding (header and payload) of the next item, advancing `buf`.
fn next_item<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], TxError> {
    let start = *buf;
    let h = Header::decode(buf)?;
    *buf = &buf[h.payload_length..];
    Ok(&start[..start.len() - buf.len()])
}

/// Checks each field's shape by name: integers canonical and in range, addresses 20
/// bytes, access lists well formed.
fn check_common(fields: &[&[u8]], names: &[&'static str]) -> Result<(), TxError> {
    for (raw, &name) in fields.iter().zip(names) {
        match name {
            "nonce" | "gas" | "chainId" | "v" => {
                uint(raw, 8, name)?;
            }
            "gasPrice" | "value" | "maxPriorityFeePerGas" | "maxFeePerGas" | "r" | "s" => {
                uint(raw, 32, name)?;
            }
            "to" => {
                let to = string(raw, name)?;
                if !(to.is_empty() || to.len() == 20) {
                    return Err(TxError::Field {
                        field: name,
                        problem: "must be empty (contract creation) or 20 bytes",
                    });
                }
            }
            "data" => {
                string(raw, name)?;
            }
            "accessList" => access_list(raw)?,
            _ => {}
        }
    }
    Ok(())
}

fn access_list(raw: &[u8]) -> Result<(), TxError> {
    let bad = |problem| TxError::Field {
        field: "accessList",
        problem,
    };
    let mut buf = raw;
    let mut entries = Header::decode_bytes(&mut buf, true)?;
    while !entries.is_empty() {
        let mut entry = Header::decode_bytes(&mut entries, true)?;
        let address = Header::decode_bytes(&mut entry, false)?;
        let mut keys = Header::decode_bytes(&mut entry, true)?;
        if address.len() != 20 || !entry.is_empty() {
            return Err(bad("each entry must be [address, [storage keys]]"));
        }
        while !keys.is_empty() {
            if Header::decode_bytes(&mut keys, false)?.len() != 32 {
                return Err(bad("storage keys must be 32 bytes"));
            }
        }
    }
    Ok(())
}

fn string<'a>(raw: &'a [u8], field: &'static str) -> Result<&'a [u8], TxError> {
    let mut buf = raw;
    Header::decode_bytes(&mut buf, false).map_err(|e| match e {
        alloy_rlp::Error::UnexpectedList => TxError::Field {
            field,
            problem: "must be a byte string, not a list",
        },
        e => TxError::Rlp(e),
    })
}

/// A big-endian unsigned integer of at most `max` bytes without leading zeros.
fn uint<'a>(raw: &'a [u8], max: usize, field: &'static str) -> Result<&'a [u8], TxError> {
    let b = string(raw, field)?;
    if b.len() > max {
        return Err(TxError::Field {
            field,
            problem: "integer too large",
        });
    }
    if b.first() == Some(&0) {
        return Err(TxError::Field {
            field,
            problem: "integer with a leading zero",
        });
    }
    Ok(b)
}

fn uint_u64(raw: &[u8], field: &'static str) -> Result<u64, TxError> {
    Ok(uint(raw, 8, field)?
        .iter()
        .fold(0u64, |v, &b| v << 8 | u64::from(b)))
}

fn signature(r: &[u8], s: &[u8], parity: u8) -> Result<[u8; 65], TxError> {
    let mut sig = [0u8; 65];
    for (raw, at, name) in [(r, 0, "r"), (s, 32, "s")] {
        let b = uint(raw, 32, name)?;
        sig[at + 32 - b.len()..at + 32].copy_from_slice(b);
    }
    sig[64] = parity;
    Ok(sig)
}

/// `[type] || rlp([fields..., tail...])`: fields and tail are already RLP encoded.
fn list_of(fields: &[&[u8]], tail: &[u8], ty: Option<u8>) -> Vec<u8> {
    let payload_length = fields.iter().map(|f| f.len()).sum::<usize>() + tail.len();
    let mut out = Vec::with_capacity(payload_length + 10);
    out.extend(ty);
    Header {
        list: true,
        payload_length,
    }
    .encode(&mut out);
    for f in fields {
        out.extend_from_slice(f);
    }
    out.extend_from_slice(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // EIP-155's own example: nonce 9, 20 gwei, 21000 gas, 1 ether to 0x3535..., chain 1.
    const EIP155_RAW: &str = "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83";
    const EIP155_SIGNING_HASH: &str =
        "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53";

    #[test]
    fn the_eip155_example_decodes_to_its_signing_hash() {
        let raw = hex::decode(EIP155_RAW).unwrap();
        let tx = decode(&raw).unwrap();
        assert_eq!(tx.chain_id, 1);
        assert_eq!(tx.tx_type, 0);
        assert_eq!(hex::encode(tx.signing_hash), EIP155_SIGNING_HASH);
        assert_eq!(tx.signature[64], 0, "v = 37 is parity 0 on chain 1");
        assert_eq!(tx.hash, crate::util::keccak256(&raw));
    }

    #[test]
    fn malformed_transactions_are_refused_with_a_reason() {
        let raw = hex::decode(EIP155_RAW).unwrap();
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(TxError::Field { .. })));
        assert!(decode(&raw[..raw.len() - 1]).is_err());
        assert_eq!(decode(&[3, 0xc0]), Err(TxError::UnsupportedType(3)));
        assert!(decode(&[]).is_err());
        assert!(decode(&[0xc0]).is_err(), "an empty list has no fields");
        // v = 27: no chain id.
        let mut pre155 = raw.clone();
        let v_at = raw.len() - 67;
        assert_eq!(pre155[v_at], 0x25);
        pre155[v_at] = 0x1b;
        assert_eq!(decode(&pre155), Err(TxError::NoChainId));
        // A list where the nonce should be.
        let mut listy = raw.clone();
        listy[2] = 0xc0;
        assert!(decode(&listy).is_err());
    }
}
