//! PKCS#11 return codes as typed values. Errors are matched by value (parsec's
//! `utils.rs` does the same), never by comparing strings, and profiles name their
//! transient codes in the standard spelling (`CKR_DEVICE_ERROR`), parsed into this type
//! when the profile is read, so a typo fails `config check` instead of never matching.

use std::fmt;
use std::str::FromStr;

use cryptoki::error::{Rv, RvError};
use cryptoki_sys::*;
use serde::{Deserialize, Deserializer};

/// A PKCS#11 return code other than `CKR_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnCode(pub RvError);

/// Every standard code cryptoki knows (its own list), so parsing never meets an unknown one.
const STANDARD: &[CK_RV] = &[
    CKR_CANCEL,
    CKR_HOST_MEMORY,
    CKR_SLOT_ID_INVALID,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_NO_EVENT,
    CKR_NEED_TO_CREATE_THREADS,
    CKR_CANT_LOCK,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ACTION_PROHIBITED,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_FUNCTION_CANCELED,
    CKR_FUNCTION_NOT_PARALLEL,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_NOT_NEEDED,
    CKR_KEY_CHANGED,
    CKR_KEY_NEEDED,
    CKR_KEY_INDIGESTIBLE,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_KEY_NOT_WRAPPABLE,
    CKR_KEY_UNEXTRACTABLE,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    CKR_SESSION_READ_ONLY,
    CKR_SESSION_EXISTS,
    CKR_SESSION_READ_ONLY_EXISTS,
    CKR_SESSION_READ_WRITE_SO_EXISTS,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_SIZE_RANGE,
    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_TOO_MANY_TYPES,
    CKR_WRAPPED_KEY_INVALID,
    CKR_WRAPPED_KEY_LEN_RANGE,
    CKR_WRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_SIZE_RANGE,
    CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_RANDOM_SEED_NOT_SUPPORTED,
    CKR_RANDOM_NO_RNG,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_BUFFER_TOO_SMALL,
    CKR_SAVED_STATE_INVALID,
    CKR_INFORMATION_SENSITIVE,
    CKR_STATE_UNSAVEABLE,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_MUTEX_BAD,
    CKR_MUTEX_NOT_LOCKED,
    CKR_NEW_PIN_MODE,
    CKR_NEXT_OTP,
    CKR_EXCEEDED_MAX_ITERATIONS,
    CKR_FIPS_SELF_TEST_FAILED,
    CKR_LIBRARY_LOAD_FAILED,
    CKR_PIN_TOO_WEAK,
    CKR_PUBLIC_KEY_INVALID,
    CKR_FUNCTION_REJECTED,
];

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
            let v = CK_RV::from_str_radix(hex, 16).map_err(|_| unknown())?;
            if v < CKR_VENDOR_DEFINED {
                return Err(unknown());
            }
            return Ok(ReturnCode(RvError::VendorDefined(v)));
        }
        STANDARD
            .iter()
            .filter_map(|n| match Rv::from(*n) {
                Rv::Error(e) => Some(ReturnCode(e)),
                Rv::Ok => None,
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
    /// The codes the pool acts on (a session dropped, a login renewed).
    pub const ACTED_ON: &[ReturnCode] = &[
        ReturnCode(RvError::SessionHandleInvalid),
        ReturnCode(RvError::SessionClosed),
        ReturnCode(RvError::DeviceError),
        ReturnCode(RvError::DeviceRemoved),
        ReturnCode(RvError::TokenNotPresent),
        ReturnCode(RvError::UserNotLoggedIn),
        ReturnCode(RvError::OperationActive),
        ReturnCode(RvError::OperationNotInitialized),
        ReturnCode(RvError::ObjectHandleInvalid),
        ReturnCode(RvError::KeyHandleInvalid),
    ];

    /// The object handle is no longer good (the token was reset or failed over): look
    /// the object up again by CKA_ID.
    pub fn stale_handle(self) -> bool {
        matches!(
            self.0,
            RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid
        )
    }

    /// Codes about the module's or the session's state rather than the request: twice in
    /// a row, on a fresh session, they mean the module must start again.
    pub fn state_fault(self) -> bool {
        self.poisons_session()
            || matches!(
                self.0,
                RvError::GeneralError | RvError::FunctionFailed | RvError::OperationNotInitialized
            )
    }

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
                | RvError::OperationNotInitialized
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
    fn every_standard_code_has_a_name_that_parses_back() {
        for n in STANDARD {
            let Rv::Error(e) = Rv::from(*n) else {
                panic!("{n:#x} is CKR_OK")
            };
            let c = ReturnCode(e);
            assert_eq!(c.to_string().parse::<ReturnCode>(), Ok(c), "{n:#x}");
        }
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
