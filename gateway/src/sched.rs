//! How the kernel schedules the gateway's own durable writers (audit, outbox).
//!
//! A writer is woken once per batch of lines. Under the default policy that wake preempts
//! whatever runs on the core, and on a busy core that is a runtime thread in the middle
//! of a request, often inside a SoftHSM2 signature: measured with the gateway on one core,
//! the audit writer preempted the runtime thread 7,500 times a second (4.4 times per
//! secp256k1 signature), took a sixth of the core in wake-ups and small fsyncs, and left
//! the signatures a tenth slower from the lost caches. Under `SCHED_BATCH` a writer keeps
//! its fair share (same nice value) but its wake no longer preempts: it runs when the
//! runtime thread waits or its time slice ends, and takes every line that came meanwhile
//! into one fsync. Pinned to one core, P-256 signing rose from 7.5k to 11.4k/s and
//! secp256k1 from 1.76k to 2.28k/s; verification, whose workers were tried the same way,
//! did not move, so the request threads and the verify workers keep the default policy.

/// Puts the calling thread under `SCHED_BATCH`. Needs no privilege; where the kernel
/// refuses (a seccomp filter without `@resources`), the thread keeps the default policy,
/// which is only slower.
pub fn background(thread: &'static str) {
    use preempt_rt::sched::{set_scheduler, Pid, Scheduler, SchedulerParams};
    if let Err(e) = set_scheduler(
        Pid::current_thread(),
        Scheduler::SCHED_BATCH,
        SchedulerParams { priority: 0 },
    ) {
        tracing::warn!(thread, error = %e, "cannot schedule the thread as SCHED_BATCH; it keeps the default policy");
    }
}

#[cfg(test)]
mod tests {
    use preempt_rt::sched::{get_scheduler, Pid, Scheduler};

    #[test]
    fn a_background_thread_runs_as_batch_and_others_do_not() {
        let policy = std::thread::spawn(|| {
            super::background("test");
            get_scheduler(Pid::current_thread()).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(policy, Scheduler::SCHED_BATCH);
        // The policy is the thread's own, not the process's.
        assert_eq!(
            get_scheduler(Pid::current_thread()).unwrap(),
            Scheduler::SCHED_NORMAL
        );
    }
}
