//! systemd readiness (`Type=notify`): datagrams to `$NOTIFY_SOCKET` as sd_notify(3)
//! sends them, through std's Unix datagram socket. Without the variable it does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends one notification, e.g. "READY=1". Failures are logged, never fatal: a gateway
/// that serves but cannot tell systemd is better than one that stops.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
