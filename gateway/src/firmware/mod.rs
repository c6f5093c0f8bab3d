//! `bsn-gateway firmware ...`: signed A/B updates. A bundle (`bundle`) is signed by a
//! release key held in custody (through a running gateway's sign API) whose certificate
//! chains to the pinned vendor root; it is installed into the inactive slot (`slots`), and
//! committing raises the minimum security version kept in the HSM, which an old bundle,
//! however validly signed, can then never go below.

pub mod bundle;
pub mod cli;
pub mod slots;
