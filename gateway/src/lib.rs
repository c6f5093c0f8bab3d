//! bsn-gateway: an edge appliance that keeps keys in a PKCS#11 token, checks signatures and
//! forwards vetted transactions. `app` is the one place where the parts are wired together.

pub mod admission;
pub mod algorithm;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bounds;
pub mod ca;
pub mod combine;
pub mod config;
pub mod crypto;
pub mod custody;
pub mod dev;
pub mod firmware;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod owned;
pub mod sched;
pub mod secret;
pub mod txn;
pub mod util;
pub mod verify;
