//! The PKCS#11 token: module, slot, one logged-in anchor session, and a bounded pool of
//! sessions checked out per operation. Sessions are `Send` but not `Sync`, so each
//! operation owns one for its duration, on a blocking thread, never on the async runtime.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;

use super::profile::{EcPointEncoding, Ed25519Params, Quirks, VendorMechanisms};
pub use super::rv::ReturnCode;
use crate::algorithm::Algorithm;
use crate::combine::{self, Combiner, Ticket};
use crate::metrics as m;
use crate::secret::Secret;

const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_SECP256K1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// sm2p256v1, 1.2.156.10197.1.301 (GM/T 0006).
const OID_SM2: &[u8] = &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
const PRINTABLE_EDWARDS25519: &[u8] = b"\x13\x0cedwards25519";
/// Session copies kept for signing (`sign_with_session_copy`); keys past it sign with the
/// token object. Each copy holds a key in the module's memory.
const MAX_SESSION_COPIES: usize = 4096;
/// How long a session copy signs before its token object is looked at again.
const COPY_CHECK: Duration = Duration::from_millis(100);
/// The token object holding the firmware's minimum security version.
const MIN_SV_LABEL: &str = "bsn-gateway-min-security-version";

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("cannot load PKCS#11 module: {0}")]
    Load(String),
    #[error("no token with {0}")]
    TokenNotFound(String),
    #[error("{0} matches more than one token")]
    TokenAmbiguous(String),
    /// The module lists no token that its store holds: SoftHSM2 leaves out a token whose
    /// file another process was writing as the module loaded. A fresh load may list it.
    #[error("{0}")]
    TokenNotListed(String),
    #[error("all {0} HSM sessions are busy")]
    Busy(usize),
    #[error("key object {0} is not on the token")]
    KeyMissing(String),
    #[error("key id {0} matches more than one object on the token")]
    KeyAmbiguous(String),
    #[error("the token returned a public key point it cannot parse ({0} bytes)")]
    BadPoint(usize),
    #[error("{function}: {code}")]
    Pkcs11 { function: String, code: ReturnCode },
    /// The library failed outside PKCS#11 (loading, a missing function).
    #[error("PKCS#11 library: {0}")]
    Library(String),
    #[error("HSM worker stopped")]
    Stopped,
    /// A wrapped key that does not open: altered, or bound to another key.
    #[error("a wrapped key does not open under the token's wrapping key")]
    Sealed,
    /// The device is lost (or refused our PIN); requests fail fast until it is back.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
}

impl HsmError {
    /// The token refused the PIN itself: trying again would only count against it.
    pub fn is_pin_refusal(&self) -> bool {
        matches!(
            self,
            HsmError::Pkcs11 { code, .. } if matches!(
                code.0,
                RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired | RvError::PinInvalid
            )
        )
    }

    /// A handle the module no longer knows (its object was destroyed, or its session).
    pub fn is_stale_handle(&self) -> bool {
        matches!(self, HsmError::Pkcs11 { code, .. } if code.stale_handle())
    }

    pub(crate) fn from_ck(e: CkError) -> Self {
        match &e {
            CkError::Pkcs11(rv, f) => HsmError::Pkcs11 {
                function: format!("C_{f:?}"),
                code: ReturnCode(*rv),
            },
            other => HsmError::Library(other.to_string()),
        }
    }
}

pub enum TokenSelector {
    Label(String),
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// Loads and initialises a module with OS locking, as a multi-threaded application must.
pub fn load_module(path: &std::path::Path) -> Result<Pkcs11, HsmError> {
    let p = Pkcs11::new(path).map_err(|e| HsmError::Load(format!("{}: {e}", path.display())))?;
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| HsmError::Load(format!("{}: {e}", path.display())))?;
    Ok(p)
}

/// The one slot whose token matches; zero or several matches are errors.
pub fn find_slot(pkcs11: &Pkcs11, selector: &TokenSelector) -> Result<Slot, HsmError> {
    let mut found = Vec::new();
    for slot in pkcs11.get_slots_with_token().map_err(HsmError::from_ck)? {
        let info = pkcs11.get_token_info(slot).map_err(HsmError::from_ck)?;
        if !info.token_initialized() {
            continue;
        }
        let hit = match selector {
            TokenSelector::Label(l) => info.label().trim() == l,
            TokenSelector::Serial(s) => info.serial_number().trim() == s,
        };
        if hit {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(HsmError::TokenNotFound(selector.to_string())),
        _ => Err(HsmError::TokenAmbiguous(selector.to_string())),
    }
}

pub fn auth_pin(pin: &Secret) -> AuthPin {
    AuthPin::from(pin.expose().to_string())
}

/// The token objects that share one CKA_ID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenObjects {
    pub total: usize,
    pub private: usize,
}

/// How to reach the token again after the device went away: the gateway finalises the
/// module and initialises it afresh, then finds the token and logs in.
pub struct Connector {
    pub module: std::path::PathBuf,
    pub selector: TokenSelector,
    pub pin: Secret,
}

/// One initialisation of the module: its sessions are good only with it.
struct Conn {
    pkcs11: Pkcs11,
    slot: Slot,
    /// Held open and logged in for the life of the connection: closing a module's last
    /// session logs the token out for every other session.
    anchor: Mutex<Option<Session>>,
    idle: Mutex<Vec<Session>>,
    /// CKA_ID -> private key (or a wrapped key's AES key) handle; cleared on destroy and
    /// on any session fault. A handle is only good with the module that gave it: so it
    /// lives here, and a new connection starts with none.
    handles: RwLock<HashMap<Vec<u8>, ObjectHandle>>,
    /// CKA_ID -> the key's session copy (`sign_with_session_copy`). The copies were made
    /// by the anchor session and die with it, or with the module: so they live here.
    /// Lock order: `anchor`, then `copies`.
    copies: RwLock<HashMap<Vec<u8>, SessionCopy>>,
    /// The origin of `SessionCopy::checked`.
    born: Instant,
}

/// A checked-out session and the connection it was opened on. Key handles and session
/// copies are cached per connection: an operation reads and fills the caches of its own
/// session's connection, even where the link was replaced while it ran.
pub struct ConnSession<'a> {
    session: &'a Session,
    conn: &'a Conn,
}

impl std::ops::Deref for ConnSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        self.session
    }
}

/// A key's session copy, and when its token object was last seen.
struct SessionCopy {
    copy: ObjectHandle,
    token: ObjectHandle,
    /// Nanoseconds after `Conn::born`.
    checked: AtomicU64,
}

impl Conn {
    /// A pooled session, or a new one when `fresh` (a retry after a fault must not meet
    /// another session the fault left behind).
    fn checkout(&self, fresh: bool) -> Result<Session, HsmError> {
        if !fresh {
            if let Some(s) = self.idle.lock().expect("idle lock").pop() {
                return Ok(s);
            }
        }
        // Read-write, because key generation and destruction create and delete token objects.
        self.pkcs11
            .open_rw_session(self.slot)
            .map_err(HsmError::from_ck)
    }

    fn checkin(&self, session: Session) {
        self.idle.lock().expect("idle lock").push(session);
    }

    /// Changes the session copies under their write lock, and keeps the gauge of how
    /// many there are with them.
    fn edit_copies<R>(&self, f: impl FnOnce(&mut HashMap<Vec<u8>, SessionCopy>) -> R) -> R {
        let mut copies = self.copies.write().expect("copies lock");
        let r = f(&mut copies);
        metrics::gauge!(m::HSM_SESSION_COPIES).set(copies.len() as f64);
        r
    }

    fn open(pkcs11: Pkcs11, slot: Slot, pin: &Secret) -> Result<Conn, HsmError> {
        let anchor = pkcs11.open_rw_session(slot).map_err(HsmError::from_ck)?;
        login(&anchor, pin)?;
        metrics::gauge!(m::HSM_SESSION_COPIES).set(0.0);
        Ok(Conn {
            pkcs11,
            slot,
            anchor: Mutex::new(Some(anchor)),
            idle: Mutex::new(Vec::new()),
            handles: RwLock::new(HashMap::new()),
            copies: RwLock::new(HashMap::new()),
            born: Instant::now(),
        })
    }

    /// Closes the sessions, then finalises the module.
    fn close(self) {
        self.idle.lock().expect("idle lock").clear();
        self.anchor.lock().expect("anchor lock").take();
        if let Err(e) = self.pkcs11.finalize() {
            tracing::warn!(error = %e, "C_Finalize failed");
        }
    }
}

enum Link {
    Up(Arc<Conn>),
    /// Lost; a reconnect is under way.
    Down(String),
    /// The token refused the PIN: no login is tried again until a restart, so a changed
    /// PIN cannot use up the token's retry counter.
    Refused(String),
    Stopped,
}

pub struct Hsm {
    connector: Connector,
    quirks: Quirks,
    vendor: VendorMechanisms,
    link: RwLock<Link>,
    reconnecting: AtomicBool,
    permits: Arc<Semaphore>,
    pool_size: usize,
    wait: Duration,
    /// A scan of every token object never runs beside the creation or destruction of
    /// one: SoftHSM2's file store failed a C_GenerateKeyPair that met a scan in another
    /// session (CKR_GENERAL_ERROR at start-up, when the handle cache is filled). Scans
    /// take it exclusively, creation and destruction shared.
    objects: RwLock<()>,
    /// Inline signatures waiting to be signed back to back (`sign_queued`).
    signing: Combiner<SignJob>,
}

/// One queued inline signature: signs with the session pool of the `Hsm` it is given and
/// answers its caller.
type SignJob = Box<dyn FnOnce(&Arc<Hsm>) + Send>;

/// How long a task goes on signing later jobs once its own is taken.
const SIGN_DRAIN: Duration = Duration::from_millis(1);

/// Reconnect attempts back off from this...
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// ...up to this.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

impl Hsm {
    pub fn open(
        pkcs11: Pkcs11,
        slot: Slot,
        connector: Connector,
        quirks: Quirks,
        vendor: VendorMechanisms,
        pool_size: usize,
        wait: Duration,
    ) -> Result<Arc<Hsm>, HsmError> {
        let conn = Conn::open(pkcs11, slot, &connector.pin)?;
        metrics::gauge!(m::HSM_SESSION_POOL_SIZE).set(pool_size as f64);
        metrics::gauge!(m::HSM_SESSIONS_IN_USE).set(0.0);
        metrics::gauge!(m::HSM_UP).set(1.0);
        metrics::counter!(m::HSM_SESSION_WAIT_TIMEOUTS_TOTAL).absolute(0);
        for result in ["ok", "failed", "login_refused"] {
            metrics::counter!(m::HSM_RECONNECTS_TOTAL, "result" => result).absolute(0);
        }
        // The codes the gateway acts on, at zero from the first scrape.
        for code in quirks
            .transient_errors
            .iter()
            .chain(&quirks.reconnect_errors)
            .chain(ReturnCode::ACTED_ON)
        {
            metrics::counter!(m::HSM_ERRORS_TOTAL, "code" => code.to_string()).absolute(0);
        }
        Ok(Arc::new(Hsm {
            connector,
            quirks,
            vendor,
            link: RwLock::new(Link::Up(Arc::new(conn))),
            reconnecting: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(pool_size)),
            pool_size,
            wait,
            objects: RwLock::new(()),
            signing: Combiner::default(),
        }))
    }

    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The current connection, or why there is none.
    fn conn(&self) -> Result<Arc<Conn>, HsmError> {
        match &*self.link.read().expect("link lock") {
            Link::Up(c) => Ok(c.clone()),
            Link::Down(why) | Link::Refused(why) => Err(HsmError::Unavailable(why.clone())),
            Link::Stopped => Err(HsmError::Stopped),
        }
    }

    /// Whether the token offers every one of these mechanisms.
    pub fn has_mechanisms(&self, wanted: &[MechanismType]) -> Result<bool, HsmError> {
        let conn = self.conn()?;
        let offered = conn
            .pkcs11
            .get_mechanism_list(conn.slot)
            .map_err(HsmError::from_ck)?;
        Ok(wanted.iter().all(|w| offered.contains(w)))
    }

    /// Why the token cannot be used now, if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        self.conn().err().map(|e| e.to_string())
    }

    /// Whether the connection is up and its anchor session still answers. A failing
    /// anchor counts as a lost device.
    pub fn is_ready(self: &Arc<Self>) -> bool {
        let Ok(conn) = self.conn() else {
            return false;
        };
        let answered = conn
            .anchor
            .lock()
            .expect("anchor lock")
            .as_ref()
            .map(|s| s.get_session_info().map(|_| ()).map_err(HsmError::from_ck));
        match answered {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.lost(&conn, format!("the anchor session failed: {e}"));
                false
            }
            None => false,
        }
    }

    /// Runs `f` on a pooled session on a blocking thread. Waits at most the configured
    /// bound for a free session, then answers `Busy`; answers `Unavailable` at once while
    /// the device is lost. When `retry` is set, an operation that failed with a transient
    /// code runs once more on a fresh session.
    pub async fn run<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        alg: &'static str,
        retry: bool,
        f: F,
    ) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: Fn(&Hsm, &ConnSession) -> Result<T, HsmError> + Send + 'static,
    {
        self.conn()?;
        let permit = self.session_permit().await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _lease = Lease::new(&this, permit);
            this.run_blocking(op, alg, retry, &f)
        })
        .await
        .map_err(|_| HsmError::Stopped)?
    }

    /// `run` for signing, retried like it. A module that signs in the calling thread
    /// (`inline_sign`) is called right here, on the runtime's thread.
    pub async fn run_sign<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        alg: &'static str,
        f: F,
    ) -> Result<T, HsmError>
    where
        T: Send + 'static,
        F: Fn(&Hsm, &ConnSession) -> Result<T, HsmError> + Send + 'static,
    {
        if !self.quirks.inline_sign {
            return self.run(op, alg, true, f).await;
        }
        self.conn()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = self.signing.push(Box::new(move |hsm: &Arc<Hsm>| {
            let _ = tx.send(hsm.run_blocking(op, alg, true, &f));
        }));
        combine::settle().await;
        if self.signing.waiting(ticket) {
            match self.session_permit().await {
                Ok(permit) => {
                    let _lease = Lease::new(self, permit);
                    self.sign_queued(ticket);
                }
                Err(e) if self.signing.withdraw(ticket).is_some() => return Err(e),
                // Taken meanwhile by a task on another thread, which signs it now.
                Err(_) => {}
            }
        }
        rx.await.map_err(|_| HsmError::Stopped)?
    }

    /// Signs the queued jobs up to `ticket`'s, then later ones for up to `SIGN_DRAIN`,
    /// back to back on this thread and one session at a time. Called from the runtime:
    /// SoftHSM2 signs in tens of microseconds, and signing one request's job between
    /// other requests' network work ran each signature on cold caches (P-256 on the
    /// pinned core: 49 µs per signature that way, 45 µs back to back; 40 µs in a loop).
    fn sign_queued(self: &Arc<Self>, ticket: Ticket) {
        let started = Instant::now();
        while let Some(job) = self
            .signing
            .take_if(ticket, |_, due| due || started.elapsed() < SIGN_DRAIN)
        {
            // Another request's job: its panic must not end this task. Its channel
            // closes, so its own caller hears `Stopped`.
            if catch_unwind(AssertUnwindSafe(|| job(self))).is_err() {
                tracing::error!("a queued signature panicked; its request fails");
            }
        }
    }

    /// A free session's permit, waited for at most the configured bound.
    async fn session_permit(&self) -> Result<OwnedSemaphorePermit, HsmError> {
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(HsmError::Stopped),
            Err(_) => {
                metrics::counter!(m::HSM_SESSION_WAIT_TIMEOUTS_TOTAL).increment(1);
                Err(HsmError::Busy(self.pool_size))
            }
        }
    }

    fn run_blocking<T>(
        self: &Arc<Self>,
        op: &'static str,
        alg: &'static str,
        retry: bool,
        f: &dyn Fn(&Hsm, &ConnSession) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.conn()?;
            let session = match conn.checkout(attempt > 1) {
                Ok(s) => s,
                Err(e) => {
                    // No session from this module: the device or the module's link to it
                    // is gone.
                    let why = format!("cannot open a session: {e}");
                    self.lost(&conn, why.clone());
                    return Err(HsmError::Unavailable(why));
                }
            };
            let started = Instant::now();
            let result = f(
                self,
                &ConnSession {
                    session: &session,
                    conn: &conn,
                },
            );
            metrics::histogram!(m::HSM_OPERATION_SECONDS, "operation" => op, "algorithm" => alg)
                .record(started.elapsed().as_secs_f64());
            let code = match &result {
                Err(HsmError::Pkcs11 { code, .. }) => Some(*code),
                _ => None,
            };
            let Some(code) = code else {
                conn.checkin(session);
                return result;
            };
            metrics::counter!(m::HSM_ERRORS_TOTAL, "code" => code.to_string()).increment(1);
            if code.poisons_session() {
                tracing::warn!(%code, op, "dropping a faulted PKCS#11 session");
                drop(session);
                conn.handles.write().expect("handles lock").clear();
                if code.0 == RvError::UserNotLoggedIn {
                    self.relogin(&conn);
                }
            } else {
                conn.checkin(session);
            }
            if code.stale_handle() {
                // Looked up again by CKA_ID on the next attempt, once.
                conn.handles.write().expect("handles lock").clear();
                if attempt < 2 {
                    continue;
                }
                return result;
            }
            // A fault of the session, not of the request, is worth one more try too.
            let transient = self.quirks.transient_errors.contains(&code) || code.poisons_session();
            if retry && transient && attempt < 2 {
                continue;
            }
            // A fault of the module's state that a fresh session did not cure either: the
            // module's link to the device is broken, whatever code it chose to say so.
            if self.quirks.reconnect_errors.contains(&code) || (attempt > 1 && code.state_fault()) {
                let why = format!("{op}: {code}");
                self.lost(&conn, why.clone());
                return Err(HsmError::Unavailable(why));
            }
            return result;
        }
    }

    /// The connection `conn` is lost: later calls answer `Unavailable`, and one thread
    /// finalises the module and connects again, backing off.
    fn lost(self: &Arc<Self>, conn: &Arc<Conn>, why: String) {
        {
            let mut link = self.link.write().expect("link lock");
            match &*link {
                Link::Up(c) if Arc::ptr_eq(c, conn) => {}
                _ => return,
            }
            tracing::error!(reason = %why, "HSM lost; reconnecting");
            *link = Link::Down(why);
        }
        metrics::gauge!(m::HSM_UP).set(0.0);
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let old = conn.clone();
        std::thread::spawn(move || this.reconnect(old));
    }

    fn reconnect(self: Arc<Self>, old: Arc<Conn>) {
        // Operations still on the old connection end by themselves (each is one bounded
        // call that now fails fast); the module is finalised only after them.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut old = Some(old);
        while let Some(conn) = old.take() {
            match Arc::try_unwrap(conn) {
                Ok(conn) => conn.close(),
                Err(conn) if Instant::now() < deadline => {
                    old = Some(conn);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => tracing::warn!("old HSM connection still in use; not finalised"),
            }
        }
        let mut backoff = RECONNECT_FIRST;
        loop {
            if matches!(*self.link.read().expect("link lock"), Link::Stopped) {
                break;
            }
            match self.connect() {
                Ok(conn) => {
                    let mut link = self.link.write().expect("link lock");
                    if matches!(*link, Link::Stopped) {
                        drop(link);
                        conn.close();
                        break;
                    }
                    *link = Link::Up(Arc::new(conn));
                    metrics::gauge!(m::HSM_UP).set(1.0);
                    metrics::counter!(m::HSM_RECONNECTS_TOTAL, "result" => "ok").increment(1);
                    tracing::info!("HSM connection re-established");
                    break;
                }
                Err(e) if e.is_pin_refusal() => {
                    metrics::counter!(m::HSM_RECONNECTS_TOTAL, "result" => "login_refused")
                        .increment(1);
                    let why = format!("login refused, not retried until a restart: {e}");
                    tracing::error!(reason = %why, "HSM login refused");
                    *self.link.write().expect("link lock") = Link::Refused(why);
                    break;
                }
                Err(e) => {
                    metrics::counter!(m::HSM_RECONNECTS_TOTAL, "result" => "failed").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "HSM reconnect failed");
                    if let Link::Down(why) = &mut *self.link.write().expect("link lock") {
                        *why = format!("reconnecting: {e}");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
        self.reconnecting.store(false, Ordering::Release);
    }

    /// A fresh initialisation of the module, the token found again, logged in.
    fn connect(&self) -> Result<Conn, HsmError> {
        let pkcs11 = load_module(&self.connector.module)?;
        let slot = match find_slot(&pkcs11, &self.connector.selector) {
            Ok(slot) => slot,
            Err(e) => {
                let _ = pkcs11.finalize();
                return Err(e);
            }
        };
        Conn::open(pkcs11, slot, &self.connector.pin)
    }

    /// After the token forgot our login (a device reset), log the anchor in again; a PIN
    /// the token refuses stops all further logins.
    fn relogin(self: &Arc<Self>, conn: &Arc<Conn>) {
        let mut anchor = conn.anchor.lock().expect("anchor lock");
        let fresh = match anchor.take() {
            Some(s) if s.get_session_info().is_ok() => Ok(s),
            _ => {
                // The old anchor is closed, and the session copies it made are gone.
                conn.edit_copies(|c| c.clear());
                conn.pkcs11.open_rw_session(conn.slot)
            }
        };
        match fresh.map_err(HsmError::from_ck).and_then(|s| {
            login(&s, &self.connector.pin)?;
            Ok(s)
        }) {
            Ok(s) => *anchor = Some(s),
            Err(e) if e.is_pin_refusal() => {
                drop(anchor);
                let why = format!("login refused, not retried until a restart: {e}");
                tracing::error!(reason = %why, "HSM login refused");
                *self.link.write().expect("link lock") = Link::Refused(why);
                metrics::gauge!(m::HSM_UP).set(0.0);
            }
            Err(e) => tracing::error!(error = %e, "cannot log in to the token again"),
        }
    }

    // === key operations, each run on a checked-out session ===

    /// Generates a key pair inside the token; returns the public point (bare, not DER).
    pub fn generate(
        &self,
        session: &ConnSession,
        alg: Algorithm,
        id: &[u8],
        label: &str,
    ) -> Result<Vec<u8>, HsmError> {
        let (mechanism, params) =
            keygen_mechanism(alg, &self.quirks, &self.vendor).ok_or_else(|| HsmError::Pkcs11 {
                function: "C_GenerateKeyPair".into(),
                code: ReturnCode(RvError::MechanismInvalid),
            })?;
        let (public, private) =
            keypair_templates(alg, params, &self.quirks, &self.vendor, Some((id, label)));
        let _objects = self.objects.read().expect("objects lock");
        let (pub_handle, priv_handle) = session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(HsmError::from_ck)?;
        if self.quirks.ec_private_decrypt_fixed {
            // The module refuses CKA_DECRYPT in the template; clear it afterwards where it
            // lets us (CKA_ALLOWED_MECHANISMS already names the one signing mechanism).
            if let Err(e) = session.update_attributes(priv_handle, &[Attribute::Decrypt(false)]) {
                tracing::debug!(error = %e, "the token keeps CKA_DECRYPT on EC private keys");
            }
        }
        session
            .conn
            .handles
            .write()
            .expect("handles lock")
            .insert(id.to_vec(), priv_handle);
        self.read_point(session, pub_handle, alg)
    }

    /// A public key object's CKA_EC_POINT, unwrapped as the profile says.
    fn read_point(
        &self,
        session: &Session,
        handle: ObjectHandle,
        alg: Algorithm,
    ) -> Result<Vec<u8>, HsmError> {
        let attrs = session
            .get_attributes(handle, &[AttributeType::EcPoint])
            .map_err(HsmError::from_ck)?;
        let point = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or(HsmError::BadPoint(0))?;
        unwrap_point(alg, &point, self.quirks.ec_point)
    }

    /// Signs each input with the private key whose CKA_ID is `id`.
    pub fn sign(
        &self,
        session: &ConnSession,
        alg: Algorithm,
        id: &[u8],
        inputs: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, HsmError> {
        let mechanism = sign_mechanism(alg, &self.vendor).ok_or_else(|| HsmError::Pkcs11 {
            function: "C_SignInit".into(),
            code: ReturnCode(RvError::MechanismInvalid),
        })?;
        let sign_each = |key| {
            inputs
                .iter()
                .map(|data| {
                    session
                        .sign(&mechanism, key, data)
                        .map_err(HsmError::from_ck)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if !self.quirks.sign_with_session_copy {
            return sign_each(self.private_handle(session, id)?);
        }
        let signed = sign_each(self.session_copy(session, id)?);
        if signed.as_ref().is_err_and(HsmError::is_stale_handle) {
            // Made again from the token object on the retry, if it is still there.
            session.conn.edit_copies(|c| c.remove(id));
        }
        signed
    }

    /// Destroys every object (private and public) with this CKA_ID.
    pub fn destroy(&self, session: &ConnSession, id: &[u8]) -> Result<usize, HsmError> {
        let _objects = self.objects.read().expect("objects lock");
        let conn = session.conn;
        conn.handles.write().expect("handles lock").remove(id);
        conn.edit_copies(|c| c.remove(id));
        let destroy_all = |token: bool| -> Result<usize, HsmError> {
            let objects = session
                .find_objects(&[Attribute::Token(token), Attribute::Id(id.to_vec())])
                .map_err(HsmError::from_ck)?;
            for o in &objects {
                session.destroy_object(*o).map_err(HsmError::from_ck)?;
            }
            Ok(objects.len())
        };
        // A session copy made for signing carries the same CKA_ID: it goes first, and is
        // not counted (it was never on the token).
        destroy_all(false)?;
        destroy_all(true)
    }

    /// The public point of the key pair with this CKA_ID, or None when the token has no
    /// public key object for it.
    pub fn public_point(
        &self,
        session: &Session,
        alg: Algorithm,
        id: &[u8],
    ) -> Result<Option<Vec<u8>>, HsmError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(HsmError::from_ck)?;
        let handle = match found.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => return Err(HsmError::KeyAmbiguous(hex::encode(id))),
        };
        self.read_point(session, handle, alg).map(Some)
    }

    /// Whether the private key with this CKA_ID is on the token (exactly one).
    pub fn has_private_key(&self, session: &ConnSession, id: &[u8]) -> Result<bool, HsmError> {
        match self.private_handle(session, id) {
            Ok(_) => Ok(true),
            Err(HsmError::KeyMissing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every token object by CKA_ID: how many objects carry it, and how many of those are
    /// private keys (the reconcile's view).
    pub fn object_ids(
        &self,
        session: &Session,
    ) -> Result<HashMap<Vec<u8>, TokenObjects>, HsmError> {
        let _objects = self.objects.write().expect("objects lock");
        let all = session
            .find_objects(&[Attribute::Token(true)])
            .map_err(HsmError::from_ck)?;
        let mut ids: HashMap<Vec<u8>, TokenObjects> = HashMap::new();
        for o in all {
            let attrs = session
                .get_attributes(o, &[AttributeType::Id, AttributeType::Class])
                .map_err(HsmError::from_ck)?;
            let mut id = Vec::new();
            let mut private = false;
            let mut key = false;
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = v,
                    Attribute::Class(c) => {
                        private = c == ObjectClass::PRIVATE_KEY;
                        key = [
                            ObjectClass::PRIVATE_KEY,
                            ObjectClass::PUBLIC_KEY,
                            ObjectClass::SECRET_KEY,
                        ]
                        .contains(&c);
                    }
                    _ => {}
                }
            }
            // Keys only: the firmware's counter and other data objects are not keys.
            if !key {
                continue;
            }
            let entry = ids.entry(id).or_default();
            entry.total += 1;
            entry.private += usize::from(private);
        }
        Ok(ids)
    }

    /// Makes the key's own AES-256 key in the token (CKA_ID the key's id: destroying the
    /// key destroys it, and with it every copy of the wrapped private key, journal lines
    /// included) and seals `plain` under it with AES-GCM: a fresh 96-bit nonce, `aad`
    /// bound in; nonce || ciphertext || tag. The AES key is sensitive, never
    /// extractable, encrypt and decrypt only.
    pub fn seal_new(
        &self,
        session: &ConnSession,
        id: &[u8],
        label: &str,
        plain: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let key = {
            let _objects = self.objects.read().expect("objects lock");
            session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Wrap(false),
                        Attribute::Unwrap(false),
                        Attribute::Sign(false),
                        Attribute::Derive(false),
                        Attribute::ValueLen(32.into()),
                        Attribute::Id(id.to_vec()),
                        Attribute::Label(label.as_bytes().to_vec()),
                    ],
                )
                .map_err(HsmError::from_ck)?
        };
        session
            .conn
            .handles
            .write()
            .expect("handles lock")
            .insert(id.to_vec(), key);
        let mut iv = crate::util::random_bytes(12);
        let nonce = iv.clone();
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(HsmError::from_ck)?;
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), key, plain)
            .map_err(HsmError::from_ck)?;
        let mut out = nonce;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what `seal` made; the plaintext is zeroised when dropped.
    pub fn unseal(
        &self,
        session: &ConnSession,
        id: &[u8],
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, HsmError> {
        if sealed.len() < 12 + 16 {
            return Err(HsmError::Sealed);
        }
        let key = self.object_handle(session, id, ObjectClass::SECRET_KEY)?;
        let (nonce, body) = sealed.split_at(12);
        let mut iv = nonce.to_vec();
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(HsmError::from_ck)?;
        match session.decrypt(&Mechanism::AesGcm(params), key, body) {
            Ok(plain) => Ok(zeroize::Zeroizing::new(plain)),
            // A tag that does not match: the blob or its binding was altered. SoftHSM2
            // says so with CKR_GENERAL_ERROR.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError,
                _,
            )) => Err(HsmError::Sealed),
            Err(e) => Err(HsmError::from_ck(e)),
        }
    }

    /// The firmware's minimum security version, kept in the token (a private data object)
    /// so that neither a disk edit nor an old signed bundle can go below it; 0 when none.
    pub fn min_security_version(&self, session: &Session) -> Result<u64, HsmError> {
        Ok(self.min_sv_object(session)?.map_or(0, |(_, v)| v))
    }

    /// Raises the minimum to `to` (never lowers it); returns the minimum now in force.
    pub fn raise_min_security_version(&self, session: &Session, to: u64) -> Result<u64, HsmError> {
        let _objects = self.objects.write().expect("objects lock");
        match self.min_sv_object(session)? {
            Some((_, current)) if current >= to => Ok(current),
            Some((handle, _)) => {
                session
                    .update_attributes(handle, &[Attribute::Value(to.to_be_bytes().to_vec())])
                    .map_err(HsmError::from_ck)?;
                Ok(to)
            }
            None => {
                session
                    .create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Modifiable(true),
                        Attribute::Application(MIN_SV_LABEL.as_bytes().to_vec()),
                        Attribute::Label(MIN_SV_LABEL.as_bytes().to_vec()),
                        Attribute::Value(to.to_be_bytes().to_vec()),
                    ])
                    .map_err(HsmError::from_ck)?;
                Ok(to)
            }
        }
    }

    fn min_sv_object(&self, session: &Session) -> Result<Option<(ObjectHandle, u64)>, HsmError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(MIN_SV_LABEL.as_bytes().to_vec()),
            ])
            .map_err(HsmError::from_ck)?;
        let handle = match found.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => return Err(HsmError::KeyAmbiguous(MIN_SV_LABEL.into())),
        };
        let value = session
            .get_attributes(handle, &[AttributeType::Value])
            .map_err(HsmError::from_ck)?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => v.try_into().ok().map(u64::from_be_bytes),
                _ => None,
            })
            .ok_or(HsmError::BadPoint(0))?;
        Ok(Some((handle, value)))
    }

    /// Fills the handle cache with every private key on the token, in one search: with
    /// thousands of keys a search per first use costs a token scan each (tens of ms on
    /// SoftHSM2). Returns how many were cached. Ids with more than one private key are
    /// left out, so they are looked up (and refused) one by one.
    pub fn warm_handles(&self, session: &ConnSession) -> Result<usize, HsmError> {
        let _objects = self.objects.write().expect("objects lock");
        let found = session
            .find_objects(&[
                Attribute::Token(true),
                Attribute::Class(ObjectClass::PRIVATE_KEY),
            ])
            .map_err(HsmError::from_ck)?;
        let mut by_id: HashMap<Vec<u8>, Option<ObjectHandle>> = HashMap::new();
        for handle in found {
            let attrs = session
                .get_attributes(handle, &[AttributeType::Id])
                .map_err(HsmError::from_ck)?;
            let Some(id) = attrs.into_iter().find_map(|a| match a {
                Attribute::Id(v) => Some(v),
                _ => None,
            }) else {
                continue;
            };
            by_id
                .entry(id)
                .and_modify(|h| *h = None)
                .or_insert(Some(handle));
        }
        let mut handles = session.conn.handles.write().expect("handles lock");
        let mut cached = 0;
        for (id, handle) in by_id {
            if let Some(h) = handle {
                handles.entry(id).or_insert(h);
                cached += 1;
            }
        }
        Ok(cached)
    }

    /// The key's session copy (`sign_with_session_copy`), made on first use by the anchor
    /// session (a pooled session may be dropped after a fault, and its objects with it).
    /// The token object is looked at again at most every `COPY_CHECK`: a key deleted from
    /// the token by another application stops signing within that, as with a token
    /// handle. Where the module will not copy the key, or the copies are at their bound,
    /// the token object signs.
    fn session_copy(&self, session: &ConnSession, id: &[u8]) -> Result<ObjectHandle, HsmError> {
        let conn = session.conn;
        let now = conn.born.elapsed().as_nanos() as u64;
        let known = conn
            .copies
            .read()
            .expect("copies lock")
            .get(id)
            .map(|c| (c.copy, c.token, c.checked.load(Ordering::Relaxed)));
        if let Some((copy, token, checked)) = known {
            if now.saturating_sub(checked) < COPY_CHECK.as_nanos() as u64 {
                return Ok(copy);
            }
            return match session.get_attributes(token, &[AttributeType::Class]) {
                Ok(_) => {
                    if let Some(c) = conn.copies.read().expect("copies lock").get(id) {
                        c.checked.store(now, Ordering::Relaxed);
                    }
                    Ok(copy)
                }
                Err(e) => {
                    let e = HsmError::from_ck(e);
                    if e.is_stale_handle() {
                        conn.edit_copies(|c| c.remove(id));
                        if copy != token {
                            let _ = session.destroy_object(copy);
                        }
                    }
                    Err(e)
                }
            };
        }
        let token = self.private_handle(session, id)?;
        if conn.copies.read().expect("copies lock").len() >= MAX_SESSION_COPIES {
            return Ok(token);
        }
        let anchor = conn.anchor.lock().expect("anchor lock");
        let Some(anchor) = anchor.as_ref() else {
            // No anchor (its login failed): the token object, until it is back.
            return Ok(token);
        };
        if let Some(c) = conn.copies.read().expect("copies lock").get(id) {
            return Ok(c.copy);
        }
        let copy = match anchor.copy_object(token, &[Attribute::Token(false)]) {
            Ok(copy) => copy,
            Err(e) => {
                let e = HsmError::from_ck(e);
                if e.is_stale_handle() {
                    // A cached handle gone stale: looked up again on the retry.
                    return Err(e);
                }
                // Remembered as its own copy, so it is not tried (and logged) each time.
                tracing::warn!(key = %hex::encode(id), error = %e, "the token will not copy this key; signing with the token object");
                token
            }
        };
        conn.edit_copies(|c| {
            c.insert(
                id.to_vec(),
                SessionCopy {
                    copy,
                    token,
                    checked: AtomicU64::new(now),
                },
            )
        });
        Ok(copy)
    }

    fn private_handle(&self, session: &ConnSession, id: &[u8]) -> Result<ObjectHandle, HsmError> {
        self.object_handle(session, id, ObjectClass::PRIVATE_KEY)
    }

    /// The one object of `class` with this CKA_ID (a key's private key, or a wrapped key's
    /// AES key: an id is one or the other), cached.
    fn object_handle(
        &self,
        session: &ConnSession,
        id: &[u8],
        class: ObjectClass,
    ) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = session.conn.handles.read().expect("handles lock").get(id) {
            return Ok(*h);
        }
        let found = session
            .find_objects(&[
                Attribute::Token(true),
                Attribute::Class(class),
                Attribute::Id(id.to_vec()),
            ])
            .map_err(HsmError::from_ck)?;
        match found.as_slice() {
            [one] => {
                session
                    .conn
                    .handles
                    .write()
                    .expect("handles lock")
                    .insert(id.to_vec(), *one);
                Ok(*one)
            }
            [] => Err(HsmError::KeyMissing(hex::encode(id))),
            _ => Err(HsmError::KeyAmbiguous(hex::encode(id))),
        }
    }

    /// Closes every session and finalises the module; a reconnect under way gives up.
    pub fn shutdown(self: Arc<Self>) {
        let link = std::mem::replace(&mut *self.link.write().expect("link lock"), Link::Stopped);
        if let Link::Up(conn) = link {
            match Arc::try_unwrap(conn) {
                Ok(conn) => conn.close(),
                Err(_) => tracing::warn!("HSM still in use at shutdown; not finalising"),
            }
        }
    }
}

/// A vendor-defined mechanism without parameters.
fn vendor_mechanism(code: u64) -> Option<Mechanism<'static>> {
    let kind = MechanismType::new_vendor_defined(code as _).ok()?;
    Some(Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
        kind, None,
    )))
}

/// The key-pair mechanism and CKA_EC_PARAMS for an algorithm; None where the token has
/// none (SM2 without the profile's vendor mechanisms).
pub(super) fn keygen_mechanism(
    alg: Algorithm,
    quirks: &Quirks,
    vendor: &VendorMechanisms,
) -> Option<(Mechanism<'static>, &'static [u8])> {
    Some(match alg {
        Algorithm::EcdsaP256 => (Mechanism::EccKeyPairGen, OID_P256),
        Algorithm::EcdsaSecp256k1 => (Mechanism::EccKeyPairGen, OID_SECP256K1),
        Algorithm::Ed25519 => (
            Mechanism::EccEdwardsKeyPairGen,
            match quirks.ed25519_params {
                Ed25519Params::Oid => OID_ED25519,
                Ed25519Params::Printable => PRINTABLE_EDWARDS25519,
            },
        ),
        Algorithm::Sm2 => (vendor_mechanism(vendor.sm2()?.0)?, OID_SM2),
    })
}

/// Key-pair templates: the private key sensitive, never extractable, sign-only. With an
/// id and label the pair is a token object (custody); without, a session object that
/// vanishes with its session (the probe's sign test).
pub(super) fn keypair_templates(
    alg: Algorithm,
    params: &[u8],
    quirks: &Quirks,
    vendor: &VendorMechanisms,
    persistent: Option<(&[u8], &str)>,
) -> (Vec<Attribute>, Vec<Attribute>) {
    let sign_mechanism_type = match alg {
        Algorithm::Ed25519 => MechanismType::EDDSA,
        Algorithm::Sm2 => vendor
            .sm2()
            .and_then(|(_, sign)| MechanismType::new_vendor_defined(sign as _).ok())
            .unwrap_or(MechanismType::ECDSA),
        _ => MechanismType::ECDSA,
    };
    // Every usage is named: a token's defaults differ (tpm2-pkcs11 marks an EC private
    // key decrypt as well as sign), and a signing key must do nothing else.
    let mut public = vec![
        Attribute::Token(persistent.is_some()),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(params.to_vec()),
    ];
    let mut private = vec![
        Attribute::Token(persistent.is_some()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![sign_mechanism_type]),
    ];
    if !quirks.ec_private_decrypt_fixed {
        private.push(Attribute::Decrypt(false));
    }
    if let Some((id, label)) = persistent {
        for t in [&mut public, &mut private] {
            t.push(Attribute::Id(id.to_vec()));
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
    }
    (public, private)
}

/// Pure EdDSA, ECDSA over a digest the caller made, or the vendor's SM2 over the e the
/// caller made (Z and SM3 stay in the gateway, so any ID and a caller's digest work).
pub(super) fn sign_mechanism(
    alg: Algorithm,
    vendor: &VendorMechanisms,
) -> Option<Mechanism<'static>> {
    Some(match alg {
        Algorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        Algorithm::Sm2 => vendor_mechanism(vendor.sm2()?.1)?,
        _ => Mechanism::Ecdsa,
    })
}

fn login(session: &Session, pin: &Secret) -> Result<(), HsmError> {
    match session.login(UserType::User, Some(&auth_pin(pin))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(HsmError::from_ck(e)),
    }
}

/// Strips the DER OCTET STRING that PKCS#11 puts around CKA_EC_POINT, where there is one.
pub fn unwrap_point(
    alg: Algorithm,
    value: &[u8],
    encoding: EcPointEncoding,
) -> Result<Vec<u8>, HsmError> {
    let bare_len = match alg {
        Algorithm::Ed25519 => 32,
        _ => 65,
    };
    let wrapped = value.len() == bare_len + 2 && value[0] == 0x04 && value[1] as usize == bare_len;
    let bare = match encoding {
        EcPointEncoding::Der if wrapped => &value[2..],
        EcPointEncoding::Raw if value.len() == bare_len => value,
        EcPointEncoding::Auto if wrapped => &value[2..],
        EcPointEncoding::Auto if value.len() == bare_len => value,
        _ => return Err(HsmError::BadPoint(value.len())),
    };
    Ok(bare.to_vec())
}

/// Keeps the sessions-in-use gauge true for as long as a permit is held.
struct Lease<'a> {
    hsm: &'a Hsm,
    _permit: OwnedSemaphorePermit,
}

impl<'a> Lease<'a> {
    fn new(hsm: &'a Hsm, permit: OwnedSemaphorePermit) -> Self {
        let lease = Lease {
            hsm,
            _permit: permit,
        };
        lease.report(1);
        lease
    }

    fn report(&self, pending_release: usize) {
        let free = self.hsm.permits.available_permits();
        let in_use = self.hsm.pool_size - free - 1 + pending_release;
        metrics::gauge!(m::HSM_SESSIONS_IN_USE).set(in_use as f64);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.report(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unwrapped_per_quirk() {
        let mut der = vec![0x04, 65, 0x04];
        der.extend([7u8; 64]);
        let bare = unwrap_point(Algorithm::EcdsaP256, &der, EcPointEncoding::Der).unwrap();
        assert_eq!(bare.len(), 65);
        assert_eq!(
            unwrap_point(Algorithm::EcdsaP256, &bare, EcPointEncoding::Auto).unwrap(),
            bare
        );
        assert!(unwrap_point(Algorithm::EcdsaP256, &bare, EcPointEncoding::Der).is_err());
        let mut ed = vec![0x04, 32];
        ed.extend([9u8; 32]);
        assert_eq!(
            unwrap_point(Algorithm::Ed25519, &ed, EcPointEncoding::Der)
                .unwrap()
                .len(),
            32
        );
    }
}
