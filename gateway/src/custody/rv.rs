//! PKCS#11 return codes as typed values. Errors are matched by value (parsec's
//! `utils.rs` does the same), never by comparing strings, and profiles name their
//! transient codes in the standard spelling (`CKR_DEVICE_ERROR`), parsed into this type
//! when the profile is read, so a typo fails `config check` instead of never matching.

use std::fmt;
use std::str::FromStr;

use cryptoki::error::{Rv, RvError};
use serde::{Deserialize, Deserializer};

/// A PKCS#11 return code other than `CKR_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnCode(pub RvError);

/// Standard codes end below this; vendor codes start at `CKR_VENDOR_DEFINED`.
const STANDARD_END: u64 = 0x200;
const VENDOR_DEFINED: u64 = 0x8000_0000;

impl fmt::Display for ReturnCode {
    /// `SessionHandleInvalid` -> `CKR_SESSION_HANDLE_INVALID`; vendor codes in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let RvError::VendorDefined(v) = self.0 {
            return write!(f, "CKR_VENDOR_DEFINED_0x{v:08X}");
        }
        f.write_str("CKR")?;
        for c in format!("{:?}", self.0).chars() {
            if c.is_ascii_uppercase() {
                f.write_str("_")?;
            }
            write!(f, "{}", c.to_ascii_uppercase())?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a PKCS#11 return code (CKR_..., or CKR_VENDOR_DEFINED_0x8...)")]
pub struct UnknownReturnCode(String);

impl FromStr for ReturnCode {
    type Err = UnknownReturnCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownReturnCode(s.chars().take(64).collect());
        if let Some(hex) = s.strip_prefix("CKR_VENDOR_DEFINED_0x") {
            let v = u64::from_str_radix(hex, 16).map_err(|_| unknown())?;
            return match Rv::from(v as std::ffi::c_ulong) {
                Rv::Error(e @ RvError::VendorDefined(_)) if v >= VENDOR_DEFINED => {
                    Ok(ReturnCode(e))
                }
                _ => Err(unknown()),
            };
        }
        (1..STANDARD_END)
            .filter_map(|n| match Rv::from(n as std::ffi::c_ulong) {
                Rv::Error(e) if !matches!(e, RvError::UnknownErrorCode(_)) => Some(ReturnCode(e)),
                _ => None,
            })
            .find(|c| c.to_string() == s)
            .ok_or_else(unknown)
    }
}

impl<'de> Deserialize<'de> for ReturnCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ReturnCode {
    /// After these the session is dropped rather than returned to the pool.
    pub fn poisons_session(self) -> bool {
        matches!(
            self.0,
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::OperationActive
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_pkcs11_and_parse_back() {
        let c = ReturnCode(RvError::SessionHandleInvalid);
        assert_eq!(c.to_string(), "CKR_SESSION_HANDLE_INVALID");
        assert_eq!("CKR_SESSION_HANDLE_INVALID".parse::<ReturnCode>(), Ok(c));
        assert_eq!(
            ReturnCode(RvError::DeviceError).to_string(),
            "CKR_DEVICE_ERROR"
        );
        let v = ReturnCode(RvError::VendorDefined(0x8000_0123));
        assert_eq!(v.to_string(), "CKR_VENDOR_DEFINED_0x80000123");
        assert_eq!(v.to_string().parse::<ReturnCode>(), Ok(v));
    }

    #[test]
    fn a_typo_is_an_error() {
        for bad in [
            "CKR_DEVICE_EROR",
            "device_error",
            "CKR_OK",
            "CKR_VENDOR_DEFINED_0x12",
        ] {
            assert!(bad.parse::<ReturnCode>().is_err(), "{bad}");
        }
    }
}
