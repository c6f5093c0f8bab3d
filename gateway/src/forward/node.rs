//! One ledger node: its health (from periodic checks), requests in flight, and a circuit
//! breaker that stops sending to it after repeated failures until a trial succeeds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::Uri;

use crate::metrics as m;

pub struct Node {
    /// For logs and metric labels: scheme, host and port only.
    pub name: String,
    /// Where transactions go, and what the health check asks (for Ethereum both are the
    /// JSON-RPC endpoint).
    pub submit: Uri,
    pub health: Uri,
    ledger: String,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: usize,
    breaker: Mutex<Breaker>,
}

/// Closed (sending), open (not sending until `open_until`), then half-open: one trial
/// request decides between closed and open again.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    trial: bool,
}

impl Node {
    pub fn new(ledger: &str, submit: Uri, health: Uri, max_in_flight: usize) -> Node {
        let name = format!(
            "{}://{}",
            submit.scheme_str().unwrap_or("http"),
            submit.authority().map_or("", |a| a.as_str())
        );
        let n = Node {
            name,
            submit,
            health,
            ledger: ledger.to_string(),
            healthy: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            breaker: Mutex::new(Breaker::default()),
        };
        n.set_healthy(false);
        n.publish_breaker(0.0);
        n
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, up: bool) {
        let was = self.healthy.swap(up, Ordering::Relaxed);
        if was != up {
            tracing::info!(ledger = %self.ledger, node = %self.name, up, "ledger node health changed");
        }
        metrics::gauge!(m::LEDGER_NODE_UP, "ledger" => self.ledger.clone(), "node" => self.name.clone())
            .set(if up { 1.0 } else { 0.0 });
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a request may go to this node now; a half-open breaker lets one through.
    pub fn try_claim(&self) -> Option<Claim<'_>> {
        if !self.is_healthy() || self.in_flight() >= self.max_in_flight {
            return None;
        }
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match b.open_until {
            None => {}
            Some(t) if Instant::now() < t => return None,
            Some(_) if b.trial => return None,
            Some(_) => {
                b.trial = true;
                self.publish_breaker(1.0);
            }
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Claim { node: self })
    }

    fn succeeded(&self) {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        if b.open_until.is_some() {
            tracing::info!(ledger = %self.ledger, node = %self.name, "circuit breaker closed");
        }
        *b = Breaker::default();
        self.publish_breaker(0.0);
    }

    fn failed(&self, threshold: u32, open_for: Duration) {
        let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        b.failures += 1;
        if b.trial || b.failures >= threshold {
            if b.open_until.is_none() || b.trial {
                tracing::warn!(ledger = %self.ledger, node = %self.name, failures = b.failures, "circuit breaker open");
            }
            b.open_until = Some(Instant::now() + open_for);
            b.trial = false;
            self.publish_breaker(2.0);
        }
    }

    fn publish_breaker(&self, state: f64) {
        metrics::gauge!(m::LEDGER_NODE_BREAKER_STATE, "ledger" => self.ledger.clone(), "node" => self.name.clone())
            .set(state);
    }
}

/// A request in flight to a node; reports its result to the breaker.
pub struct Claim<'a> {
    pub node: &'a Node,
}

impl Claim<'_> {
    pub fn succeeded(self) {
        self.node.succeeded();
    }

    pub fn failed(self, threshold: u32, open_for: Duration) {
        self.node.failed(threshold, open_for);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_failures_and_a_trial_closes_it() {
        let uri: Uri = "http://127.0.0.1:1".parse().unwrap();
        let n = Node::new("l", uri.clone(), uri, 2);
        assert!(n.try_claim().is_none(), "not healthy until checked");
        n.set_healthy(true);
        let (a, b) = (n.try_claim().unwrap(), n.try_claim().unwrap());
        assert!(n.try_claim().is_none(), "in-flight limit");
        a.failed(2, Duration::from_millis(50));
        assert!(n.try_claim().is_some(), "one failure of two allowed");
        b.failed(2, Duration::from_millis(50));
        assert!(n.try_claim().is_none(), "open");
        std::thread::sleep(Duration::from_millis(60));
        let trial = n.try_claim().expect("half-open trial");
        assert!(n.try_claim().is_none(), "one trial at a time");
        trial.failed(2, Duration::from_millis(50));
        assert!(n.try_claim().is_none(), "a failed trial opens it again");
        std::thread::sleep(Duration::from_millis(60));
        n.try_claim().unwrap().succeeded();
        let (_x, _y) = (n.try_claim().unwrap(), n.try_claim().unwrap());
        assert_eq!(n.in_flight(), 2);
    }
}
