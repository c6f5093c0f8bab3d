//! Work of concurrent requests, done together on the runtime thread of whichever request
//! gets there first, with no thread hand-off.
//!
//! A task queues its job and yields once (`settle`): the tasks that are ready meanwhile
//! run and queue theirs. Then it takes jobs from the front of the queue, its own among
//! them, and does them in one go; each job's owner hears on a channel of its own. Signing
//! (SoftHSM2 signs in the calling thread) and small verification calls use it: back to
//! back, a signature finds its caches warm, and the verification lanes fill from several
//! requests, without the two wake-ups across threads that a worker costs each request.
//!
//! Every job is done exactly once: jobs leave the queue in the order they came, and a
//! task keeps taking until its own job has been taken (by itself, or by a task on another
//! runtime thread, which does it at once), so no job waits for a taker that never comes.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

pub struct Combiner<J> {
    queue: Mutex<Queue<J>>,
}

struct Queue<J> {
    jobs: VecDeque<(Ticket, J)>,
    next: u64,
}

/// A queued job's place in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

impl<J> Default for Combiner<J> {
    fn default() -> Self {
        Combiner {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                next: 0,
            }),
        }
    }
}

impl<J> Combiner<J> {
    fn lock(&self) -> MutexGuard<'_, Queue<J>> {
        // Jobs are done outside the lock: a poisoned lock only means a panic between two
        // pushes or pops, and the queue itself is whole.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, job: J) -> Ticket {
        let mut q = self.lock();
        let ticket = Ticket(q.next);
        q.next += 1;
        q.jobs.push_back((ticket, job));
        ticket
    }

    /// Whether `ticket`'s job is still queued.
    pub fn waiting(&self, ticket: Ticket) -> bool {
        self.lock().jobs.front().is_some_and(|(t, _)| *t <= ticket)
    }

    /// Takes `ticket`'s job back, if no one has taken it yet.
    pub fn withdraw(&self, ticket: Ticket) -> Option<J> {
        let mut q = self.lock();
        let i = q.jobs.iter().position(|(t, _)| *t == ticket)?;
        q.jobs.remove(i).map(|(_, j)| j)
    }

    /// Takes the oldest job if `take` says so; `take` is told whether that job is
    /// `ticket`'s or came before it (which a task waiting for `ticket` must take).
    pub fn take_if(&self, ticket: Ticket, take: impl FnOnce(&J, bool) -> bool) -> Option<J> {
        let mut q = self.lock();
        let (t, job) = q.jobs.front()?;
        if take(job, *t <= ticket) {
            q.jobs.pop_front().map(|(_, j)| j)
        } else {
            None
        }
    }
}

/// Lets the tasks that are ready now run once, so they can queue their jobs beside ours.
pub async fn settle() {
    tokio::task::yield_now().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_leave_in_order_and_a_waiter_sees_its_own_taken() {
        let c = Combiner::default();
        let t: Vec<Ticket> = (0..4u32).map(|i| c.push(i)).collect();
        assert!(c.waiting(t[0]) && c.waiting(t[3]));
        // A waiter for the third job must take the first two and its own...
        let mine = t[2];
        let mut taken = Vec::new();
        while let Some(j) = c.take_if(mine, |_, due| due) {
            taken.push(j);
        }
        assert_eq!(taken, vec![0, 1, 2]);
        assert!(!c.waiting(mine), "its own job is gone from the queue");
        assert!(c.waiting(t[3]), "a later job is still queued");
        // ...and may take later ones only when it chooses to.
        assert_eq!(c.take_if(mine, |_, due| due), None);
        assert_eq!(c.take_if(mine, |j, _| *j == 3), Some(3));
        assert!(!c.waiting(t[3]));
        assert_eq!(c.take_if(t[3], |_, _| true), None, "empty");
    }

    #[test]
    fn the_rule_sees_which_jobs_are_due() {
        let c = Combiner::default();
        let first = c.push("a");
        let second = c.push("b");
        let mut seen = Vec::new();
        while let Some(j) = c.take_if(first, |j, due| {
            seen.push((*j, due));
            true
        }) {
            let _ = j;
        }
        assert_eq!(seen, vec![("a", true), ("b", false)]);
        assert!(!c.waiting(second));
    }

    #[test]
    fn a_withdrawn_job_is_never_taken() {
        let c = Combiner::default();
        let first = c.push(1);
        let second = c.push(2);
        assert_eq!(c.withdraw(first), Some(1));
        assert_eq!(c.withdraw(first), None, "only once");
        assert!(c.waiting(second));
        assert_eq!(c.take_if(second, |_, due| due), Some(2));
        assert_eq!(c.withdraw(second), None, "already taken");
    }

    #[test]
    fn takers_on_many_threads_take_every_job_exactly_once() {
        let c = std::sync::Arc::new(Combiner::default());
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    for i in 0..1000u32 {
                        let mine = c.push(k * 1000 + i);
                        while c.waiting(mine) {
                            if let Some(j) = c.take_if(mine, |_, due| due || i % 3 == 0) {
                                done.push(j);
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        let mut all: Vec<u32> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        // What the last pushes left behind (taken only when due for some ticket).
        while let Some(j) = c.take_if(Ticket(u64::MAX), |_, _| true) {
            all.push(j);
        }
        all.sort_unstable();
        assert_eq!(all, (0..4000).collect::<Vec<_>>());
    }
}
