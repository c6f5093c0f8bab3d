//! Work the process owns rather than a request: key operations (token objects, record,
//! audit line), CA operations and transaction admission. They run in tasks of their own so a client that
//! goes away loses only the answer; they are counted, so that shutdown, after the
//! connections drain, waits for them too instead of dropping them with the runtime
//! (a key pair made in the token and never recorded).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static IDLE: Notify = Notify::const_new();

struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::AcqRel) == 1 {
            IDLE.notify_waiters();
        }
    }
}

/// Spawns `work` as owned work: counted until it completes (or panics).
pub fn spawn<F>(work: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RUNNING.fetch_add(1, Ordering::AcqRel);
    let counted = Counted;
    tokio::spawn(async move {
        let _counted = counted;
        work.await
    })
}

/// How many owned tasks are running.
pub fn running() -> usize {
    RUNNING.load(Ordering::Acquire)
}

/// Waits until no owned work runs, at most `within`; whether it got there.
pub async fn drained(within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let idle = IDLE.notified();
        tokio::pin!(idle);
        // Registered before the count is read, so a task ending in between still wakes us.
        idle.as_mut().enable();
        if running() == 0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            return running() == 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drained_waits_for_owned_work_and_gives_up_at_the_deadline() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let task = spawn(async move {
            let _ = wait.await;
        });
        assert!(!drained(Duration::from_millis(50)).await, "work still runs");
        go.send(()).unwrap();
        assert!(drained(Duration::from_secs(5)).await);
        task.await.unwrap();
    }
}
