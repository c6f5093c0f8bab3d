//! The bounded queue and the worker threads. Callers submit tasks (split into chunks of at
//! most `max_batch`), workers gather chunks into micro-batches, verify them and answer each
//! chunk on its own oneshot channel. Admission is all or nothing per call: when the items
//! already queued plus the new ones exceed `queue_items`, the call is refused at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use metrics::{counter, gauge, histogram};

use super::ecdsa::Verifier;
use super::keys::{KeyCache, ParsedKey};
use super::{ed25519, mb, Outcome, Reason, Task, VerifyConfig};
use crate::algorithm::Algorithm;
use crate::combine::{self, Combiner, Ticket};
use crate::metrics as m;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the verification queue is full ({queued} items waiting, limit {limit})")]
    Overloaded { queued: usize, limit: usize },
    #[error("the verification workers have stopped")]
    Stopped,
}

struct Job {
    tasks: Vec<Task>,
    reply: tokio::sync::oneshot::Sender<Vec<Outcome>>,
    enqueued: Instant,
}

struct Shared {
    queued: AtomicUsize,
    cache: KeyCache,
    /// Small calls, verified together on the callers' runtime threads (`run_inline`).
    inline: Combiner<Job>,
    /// The items of the jobs in `inline`.
    inline_items: AtomicUsize,
    /// The items of the small calls under way: from their start until their caller has
    /// its answer or is gone.
    inline_under_way: AtomicUsize,
    /// How long a small call waits for a set of lanes' worth of company (`lane_wait_us`;
    /// zero where the multi-buffer path does not run).
    lane_wait: Duration,
    verifier: Verifier,
    multi_buffer: bool,
}

/// Calls of up to this many items (one set of lanes) are verified on the runtime
/// thread, together with the other small calls queued meanwhile, instead of by a worker.
/// A worker cost each such call two wake-ups across threads: on the two shared cores,
/// 1-item secp256k1 calls took 44 µs of the gateway's CPU that way and 40 µs inline.
/// Larger calls still go to the workers, which spread them over the cores.
pub const INLINE_ITEMS: usize = 8;

pub struct Engine {
    tx: Sender<Job>,
    shared: Arc<Shared>,
    max_batch: usize,
    limit: usize,
    workers: usize,
}

impl Engine {
    /// Starts the workers. They stop when the engine is dropped and the queue is empty.
    pub fn start(config: &VerifyConfig) -> std::io::Result<Engine> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.queue_items);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            cache: KeyCache::new(config.key_cache_entries),
            inline: Combiner::default(),
            inline_items: AtomicUsize::new(0),
            inline_under_way: AtomicUsize::new(0),
            lane_wait: lane_wait(config),
            verifier: Verifier::default(),
            multi_buffer: config.multi_buffer_active(),
        });
        let workers = config.worker_count();
        let multi_buffer = shared.multi_buffer;
        for i in 0..workers {
            let rx = rx.clone();
            let shared = shared.clone();
            let max_batch = config.max_batch;
            let max_wait = Duration::from_micros(config.max_wait_us);
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || worker(rx, shared, max_batch, max_wait))?;
        }
        gauge!(m::VERIFY_WORKERS).set(workers as f64);
        gauge!(m::VERIFY_MULTI_BUFFER).set(if multi_buffer { 1.0 } else { 0.0 });
        for alg in [
            Algorithm::EcdsaP256,
            Algorithm::EcdsaSecp256k1,
            Algorithm::Sm2,
            Algorithm::Ed25519,
        ] {
            counter!(m::VERIFY_MULTI_BUFFER_LANES_TOTAL, "algorithm" => alg.as_str()).absolute(0);
        }
        gauge!(m::VERIFY_QUEUE_CAPACITY_ITEMS).set(config.queue_items as f64);
        gauge!(m::VERIFY_QUEUE_ITEMS).set(0.0);
        // Every series at zero from the first scrape, so dashboards and alerts see data.
        counter!(m::VERIFY_OVERLOADED_TOTAL).absolute(0);
        for alg in crate::algorithm::Algorithm::ALL {
            counter!(m::VERIFY_TOTAL, "algorithm" => alg.as_str(), "result" => "valid").absolute(0);
            for r in super::Reason::ALL {
                counter!(m::VERIFY_TOTAL, "algorithm" => alg.as_str(), "result" => r.as_str())
                    .absolute(0);
            }
        }
        let _ = histogram!(m::VERIFY_QUEUE_WAIT_SECONDS);
        let _ = histogram!(m::VERIFY_BATCH_SECONDS);
        let _ = histogram!(m::VERIFY_BATCH_ITEMS);
        Ok(Engine {
            tx,
            shared,
            max_batch: config.max_batch,
            limit: config.queue_items,
            workers,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Items admitted and not yet taken for verification.
    pub fn queued_items(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Verifies every task; outcomes come back in order.
    pub async fn run(&self, tasks: Vec<Task>) -> Result<Vec<Outcome>, EngineError> {
        let n = tasks.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let before = self.shared.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            counter!(m::VERIFY_OVERLOADED_TOTAL).increment(1);
            return Err(EngineError::Overloaded {
                queued: before,
                limit: self.limit,
            });
        }
        gauge!(m::VERIFY_QUEUE_ITEMS).set((before + n) as f64);
        if n <= INLINE_ITEMS {
            return self.run_inline(tasks).await;
        }
        let mut waiting = Vec::with_capacity(n.div_ceil(self.max_batch));
        let mut tasks = tasks;
        let mut unsent = n;
        while !tasks.is_empty() {
            let rest = tasks.split_off(tasks.len().min(self.max_batch));
            let chunk = std::mem::replace(&mut tasks, rest);
            let len = chunk.len();
            let (reply, rx) = tokio::sync::oneshot::channel();
            let job = Job {
                tasks: chunk,
                reply,
                enqueued: Instant::now(),
            };
            // Cannot be full: the channel holds as many jobs as the item limit.
            if self.tx.try_send(job).is_err() {
                self.shared.queued.fetch_sub(unsent, Ordering::AcqRel);
                return Err(EngineError::Stopped);
            }
            unsent -= len;
            waiting.push(rx);
        }
        let mut out = Vec::with_capacity(n);
        for rx in waiting {
            out.extend(rx.await.map_err(|_| EngineError::Stopped)?);
        }
        Ok(out)
    }

    /// A small call: queued, then verified with the calls queued beside it by whichever
    /// of their tasks gets there first (see `combine`), up to `max_batch` items at a time
    /// (with lanes, whole sets of them: see `Take`).
    async fn run_inline(&self, tasks: Vec<Task>) -> Result<Vec<Outcome>, EngineError> {
        let shared = &*self.shared;
        let n = tasks.len();
        let (reply, rx) = tokio::sync::oneshot::channel();
        let enqueued = Instant::now();
        shared.inline_under_way.fetch_add(n, Ordering::AcqRel);
        let _under_way = UnderWay { shared, n };
        shared.inline_items.fetch_add(n, Ordering::AcqRel);
        let ticket = shared.inline.push(Job {
            tasks,
            reply,
            enqueued,
        });
        // A caller that goes away while its job is still queued takes it back.
        let queued = Queued { shared, ticket, n };
        combine::settle().await;
        // On many cores each runtime thread holds only a few requests, and a yield finds
        // two or three jobs queued: below a set's minimum, they go to the scalar path at
        // several times the cost per item. So, while fewer than a set of lanes' items are
        // queued, yield again until there are, or `lane_wait` has passed; but only while
        // calls of at least a set's items are under way (queued, being verified, or
        // answered and not yet back with their callers). Fewer are too few callers to fill
        // a set soon, and a wait would only add to each request's time: waiting whenever
        // others were queued cost 4 connections a tenth of their rate on two cores.
        while {
            let queued = shared.inline_items.load(Ordering::Acquire);
            queued < mb::LANES && shared.inline_under_way.load(Ordering::Acquire) >= mb::LANES
        } && enqueued.elapsed() < shared.lane_wait
            && shared.inline.waiting(ticket)
        {
            combine::settle().await;
        }
        std::mem::forget(queued);
        let mut stats = Stats::default();
        while shared.inline.waiting(ticket) {
            let mut jobs = Vec::new();
            let mut take = Take::new(self.max_batch, shared.multi_buffer);
            while let Some(job) = shared
                .inline
                .take_if(ticket, |job, _| take.wants(job.tasks.len()))
            {
                take.add(job.tasks.iter().map(Task::algorithm));
                jobs.push(job);
            }
            shared.inline_items.fetch_sub(take.items, Ordering::AcqRel);
            run_jobs(shared, jobs, take.items, &mut stats);
        }
        rx.await.map_err(|_| EngineError::Stopped)
    }
}

/// A small call's job while its caller yields: taken back, and its items uncounted, if
/// the caller is dropped (its client went away) before the job was taken.
struct Queued<'a> {
    shared: &'a Shared,
    ticket: Ticket,
    n: usize,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.shared.inline.withdraw(self.ticket).is_some() {
            self.shared.inline_items.fetch_sub(self.n, Ordering::AcqRel);
            let left = self.shared.queued.fetch_sub(self.n, Ordering::AcqRel) - self.n;
            gauge!(m::VERIFY_QUEUE_ITEMS).set(left as f64);
        }
    }
}

/// A small call's items in `inline_under_way`, until the call ends or is dropped.
struct UnderWay<'a> {
    shared: &'a Shared,
    n: usize,
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.shared
            .inline_under_way
            .fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Zero where the multi-buffer path does not run: there are no lanes to fill.
fn lane_wait(config: &VerifyConfig) -> Duration {
    if config.multi_buffer_active() {
        Duration::from_micros(config.lane_wait_us)
    } else {
        Duration::ZERO
    }
}

/// What one take from the small calls' queue holds so far, and whether it should go on.
struct Take {
    items: usize,
    per_algorithm: [usize; Algorithm::ALL.len()],
    max_batch: usize,
    /// End the take once every algorithm's items fill whole sets of lanes.
    lane_sets: bool,
}

impl Take {
    fn new(max_batch: usize, lane_sets: bool) -> Take {
        Take {
            items: 0,
            per_algorithm: [0; Algorithm::ALL.len()],
            max_batch,
            lane_sets,
        }
    }

    /// Whether to take a job of `len` items too. With lanes, a take that already fills
    /// whole sets stops: the queue's next jobs are then taken, and verified, by the other
    /// runtime threads at the same time instead of after these on this one. Mixed
    /// algorithms rarely fill every set, and go on to `max_batch` as before.
    fn wants(&self, len: usize) -> bool {
        if self.items == 0 {
            return true;
        }
        let full = self.lane_sets && self.per_algorithm.iter().all(|n| n % mb::LANES == 0);
        !full && self.items + len <= self.max_batch
    }

    fn add(&mut self, algorithms: impl Iterator<Item = Algorithm>) {
        for algorithm in algorithms {
            self.items += 1;
            self.per_algorithm[algorithm as usize] += 1;
        }
    }
}

fn worker(rx: Receiver<Job>, shared: Arc<Shared>, max_batch: usize, max_wait: Duration) {
    let mut stats = Stats::default();
    while let Ok(first) = rx.recv() {
        let mut n = first.tasks.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while n < max_batch {
            match rx.recv_deadline(deadline) {
                Ok(job) => {
                    n += job.tasks.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        run_jobs(&shared, jobs, n, &mut stats);
    }
}

/// Verifies one micro-batch of `n` items and answers each job.
fn run_jobs(shared: &Shared, jobs: Vec<Job>, n: usize, stats: &mut Stats) {
    let left = shared.queued.fetch_sub(n, Ordering::AcqRel) - n;
    gauge!(m::VERIFY_QUEUE_ITEMS).set(left as f64);
    let started = Instant::now();
    for job in &jobs {
        histogram!(m::VERIFY_QUEUE_WAIT_SECONDS)
            .record(started.duration_since(job.enqueued).as_secs_f64());
    }
    let results = catch_unwind(AssertUnwindSafe(|| {
        verify_batch(&shared.verifier, &shared.cache, &jobs, shared.multi_buffer)
    }))
    .unwrap_or_else(|_| {
        tracing::error!("a verification batch panicked; its items are answered `internal`");
        jobs.iter()
            .map(|j| vec![Outcome::Invalid(Reason::Internal); j.tasks.len()])
            .collect()
    });
    histogram!(m::VERIFY_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    histogram!(m::VERIFY_BATCH_ITEMS).record(n as f64);
    for (job, outcomes) in jobs.into_iter().zip(results) {
        for (task, o) in job.tasks.iter().zip(&outcomes) {
            stats.add(task.algorithm(), o);
        }
        // The caller may have gone (client disconnected): nothing to do then.
        let _ = job.reply.send(outcomes);
    }
    stats.flush();
}

/// Verifies all tasks of all jobs: Ed25519 items together; ECDSA-style items eight at a
/// time on the multi-buffer path where it runs (`multi_buffer`), else one by one.
fn verify_batch(
    verifier: &Verifier,
    cache: &KeyCache,
    jobs: &[Job],
    multi_buffer: bool,
) -> Vec<Vec<Outcome>> {
    let mut out: Vec<Vec<Outcome>> = jobs
        .iter()
        .map(|j| vec![Outcome::Invalid(Reason::Internal); j.tasks.len()])
        .collect();
    let mut ed_at = Vec::new();
    let mut ed_keys = Vec::new();
    let mut ed_points = Vec::new();
    let mut ed_msgs: Vec<&[u8]> = Vec::new();
    let mut ed_sigs = Vec::new();
    let mut lanes = Lanes::default();
    let mut recoveries: Vec<Pending<mb::Recovery>> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (t, task) in job.tasks.iter().enumerate() {
            let item = match task {
                Task::Recover {
                    digest,
                    signature,
                    require_low_s,
                } => {
                    if multi_buffer {
                        match super::ecdsa::recovery_lane(digest, signature, *require_low_s) {
                            Ok(lane) => recoveries.push((lane, (j, t), None)),
                            Err(r) => out[j][t] = Outcome::Invalid(r),
                        }
                        continue;
                    }
                    out[j][t] = match verifier.recover(digest, signature, *require_low_s) {
                        Ok(pk) => Outcome::Recovered(pk),
                        Err(r) => Outcome::Invalid(r),
                    };
                    continue;
                }
                Task::Verify(item) => item,
            };
            let prepared = item.check().and_then(|()| match &item.key {
                super::KeyInput::Address(_) => Ok(None),
                k => cache.get(item.algorithm, k).map(Some),
            });
            let key = match prepared {
                Ok(k) => k,
                Err(r) => {
                    out[j][t] = Outcome::Invalid(r);
                    continue;
                }
            };
            if item.algorithm == Algorithm::Ed25519 {
                let (Some(ParsedKey::Ed25519 { key: vk, point }), super::Message::Bytes(msg)) =
                    (key.as_deref(), &item.message)
                else {
                    out[j][t] = Outcome::Invalid(Reason::Internal);
                    continue;
                };
                match ed25519::parse_signature(&item.signature) {
                    Ok(sig) => {
                        ed_at.push((j, t));
                        ed_keys.push(*vk);
                        ed_points.push(point.filter(|_| multi_buffer));
                        ed_msgs.push(msg);
                        ed_sigs.push(sig);
                    }
                    Err(r) => out[j][t] = Outcome::Invalid(r),
                }
                continue;
            }
            if multi_buffer && item.format == super::SigFormat::Eth {
                let lane = super::ecdsa::eth_signature(item).and_then(|sig| {
                    super::ecdsa::recovery_lane(&item.ecdsa_digest(), sig, item.require_low_s)
                });
                match lane {
                    Ok(lane) => recoveries.push((lane, (j, t), key)),
                    Err(r) => out[j][t] = Outcome::Invalid(r),
                }
                continue;
            }
            if multi_buffer {
                match verifier.lane(item, key.as_deref()) {
                    Ok(Some((curve, lane))) => {
                        lanes.push(curve, lane, (j, t), key);
                        continue;
                    }
                    Ok(None) => {}
                    Err(r) => {
                        out[j][t] = Outcome::Invalid(r);
                        continue;
                    }
                }
            }
            out[j][t] = scalar(verifier, item, key.as_deref());
        }
    }
    for (curve, group) in lanes.by_curve {
        let take = mb::vector_share(curve, group.lanes.len());
        let answers = mb::verify(curve, &group.lanes[..take]);
        let vectored = answers.iter().filter(|a| a.is_some()).count();
        counter!(m::VERIFY_MULTI_BUFFER_LANES_TOTAL, "algorithm" => algorithm_of(curve).as_str())
            .increment(vectored as u64);
        for (i, ((j, t), key)) in group.at.into_iter().zip(group.keys).enumerate() {
            out[j][t] = match answers.get(i).copied().flatten() {
                Some(true) => Outcome::Valid,
                Some(false) => Outcome::Invalid(Reason::BadSignature),
                // The tail, and lanes that met an exceptional addition.
                None => match &jobs[j].tasks[t] {
                    Task::Verify(item) => scalar(verifier, item, key.as_deref()),
                    Task::Recover { .. } => Outcome::Invalid(Reason::Internal),
                },
            };
        }
    }
    recover_all(verifier, jobs, recoveries, &mut out);
    // Ed25519: eight at a time on the multi-buffer path where every item of the set has
    // its point (the path runs), the rest in one batch.
    let mut vectored: Vec<_> = ed_points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
        .collect();
    vectored.truncate(mb::ed25519_share(vectored.len()));
    let lanes: Vec<mb::EdLane> = vectored
        .iter()
        .map(|&(i, point)| {
            mb::ed25519_lane(
                &ed_keys[i].to_bytes(),
                point,
                ed_msgs[i],
                &ed_sigs[i].to_bytes(),
            )
        })
        .collect();
    let answers = mb::verify_ed25519(&lanes);
    let mut answered = vec![None; ed_at.len()];
    for (&(i, _), answer) in vectored.iter().zip(&answers) {
        answered[i] = *answer;
    }
    counter!(m::VERIFY_MULTI_BUFFER_LANES_TOTAL, "algorithm" => Algorithm::Ed25519.as_str())
        .increment(answers.iter().filter(|a| a.is_some()).count() as u64);
    let rest: Vec<usize> = (0..ed_at.len())
        .filter(|&i| answered[i].is_none())
        .collect();
    let valid = ed25519::verify_all(
        &rest.iter().map(|i| ed_keys[*i]).collect::<Vec<_>>(),
        &rest.iter().map(|i| ed_msgs[*i]).collect::<Vec<_>>(),
        &rest.iter().map(|i| ed_sigs[*i]).collect::<Vec<_>>(),
    );
    for (&i, ok) in rest.iter().zip(valid) {
        answered[i] = Some(ok);
    }
    for ((j, t), ok) in ed_at.into_iter().zip(answered) {
        out[j][t] = if ok == Some(true) {
            Outcome::Valid
        } else {
            Outcome::Invalid(Reason::BadSignature)
        };
    }
    out
}

/// A lane waiting for the multi-buffer path: where its answer goes (job, task) and the
/// key the scalar path needs if the lane is declined.
type Pending<L> = (L, (usize, usize), Option<Arc<ParsedKey>>);

/// Public-key recoveries (Ethereum's r||s||v) eight at a time; the short tail and
/// declined lanes on libsecp256k1.
fn recover_all(
    verifier: &Verifier,
    jobs: &[Job],
    recoveries: Vec<Pending<mb::Recovery>>,
    out: &mut [Vec<Outcome>],
) {
    let take = mb::vector_share(mb::Curve::Secp256k1, recoveries.len());
    let lanes: Vec<mb::Recovery> = recoveries[..take].iter().map(|r| r.0).collect();
    let answers = mb::recover(&lanes);
    let vectored = answers.iter().filter(|a| a.is_some()).count();
    counter!(m::VERIFY_MULTI_BUFFER_LANES_TOTAL, "algorithm" => Algorithm::EcdsaSecp256k1.as_str())
        .increment(vectored as u64);
    for (i, (_, (j, t), key)) in recoveries.into_iter().enumerate() {
        let answer = answers.get(i).copied().flatten();
        out[j][t] = match (&jobs[j].tasks[t], answer) {
            (Task::Recover { .. }, Some(Some(pk))) => Outcome::Recovered(pk),
            (Task::Verify(item), Some(Some(pk))) => {
                match super::ecdsa::eth_matches(item, key.as_deref(), &pk) {
                    Ok(()) => Outcome::Valid,
                    Err(r) => Outcome::Invalid(r),
                }
            }
            (_, Some(None)) => Outcome::Invalid(Reason::BadSignature),
            // The tail, and lanes that met an exceptional addition.
            (
                Task::Recover {
                    digest,
                    signature,
                    require_low_s,
                },
                None,
            ) => match verifier.recover(digest, signature, *require_low_s) {
                Ok(pk) => Outcome::Recovered(pk),
                Err(r) => Outcome::Invalid(r),
            },
            (Task::Verify(item), None) => scalar(verifier, item, key.as_deref()),
        };
    }
}

fn scalar(verifier: &Verifier, item: &super::Item, key: Option<&ParsedKey>) -> Outcome {
    match verifier.verify(item, key) {
        Ok(()) => Outcome::Valid,
        Err(r) => Outcome::Invalid(r),
    }
}

fn algorithm_of(curve: mb::Curve) -> Algorithm {
    match curve {
        mb::Curve::P256 => Algorithm::EcdsaP256,
        mb::Curve::Secp256k1 => Algorithm::EcdsaSecp256k1,
        mb::Curve::Sm2 => Algorithm::Sm2,
    }
}

/// One micro-batch's multi-buffer lanes, per curve, with where each answer goes and the
/// key the scalar path needs if the lane comes back declined.
#[derive(Default)]
struct Lanes {
    by_curve: Vec<(mb::Curve, CurveLanes)>,
}

#[derive(Default)]
struct CurveLanes {
    lanes: Vec<mb::Lane>,
    at: Vec<(usize, usize)>,
    keys: Vec<Option<Arc<ParsedKey>>>,
}

impl Lanes {
    fn push(
        &mut self,
        curve: mb::Curve,
        lane: mb::Lane,
        at: (usize, usize),
        key: Option<Arc<ParsedKey>>,
    ) {
        let i = match self.by_curve.iter().position(|(c, _)| *c == curve) {
            Some(i) => i,
            None => {
                self.by_curve.push((curve, CurveLanes::default()));
                self.by_curve.len() - 1
            }
        };
        let group = &mut self.by_curve[i].1;
        group.lanes.push(lane);
        group.at.push(at);
        group.keys.push(key);
    }
}

/// Counts per algorithm and result, flushed once per micro-batch: a labelled counter
/// lookup per item would cost more than some verifications.
#[derive(Default)]
struct Stats {
    counts: std::collections::HashMap<(Algorithm, &'static str), u64>,
}

impl Stats {
    fn add(&mut self, alg: Algorithm, o: &Outcome) {
        let result = match o {
            Outcome::Valid | Outcome::Recovered(_) => "valid",
            Outcome::Invalid(r) => r.as_str(),
        };
        *self.counts.entry((alg, result)).or_default() += 1;
    }

    fn flush(&mut self) {
        for ((alg, result), n) in self.counts.drain() {
            counter!(m::VERIFY_TOTAL, "algorithm" => alg.as_str(), "result" => result).increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(max_batch: usize, lane_sets: bool, jobs: &[(usize, Algorithm)]) -> usize {
        let mut take = Take::new(max_batch, lane_sets);
        for &(len, alg) in jobs {
            if !take.wants(len) {
                break;
            }
            take.add(std::iter::repeat_n(alg, len));
        }
        take.items
    }

    #[test]
    fn with_lanes_a_take_ends_when_its_sets_are_full() {
        use Algorithm::*;
        let ones = [(1, EcdsaP256); 40];
        assert_eq!(take(64, true, &ones), 8);
        assert_eq!(take(64, false, &ones), 40, "without lanes: up to max_batch");
        assert_eq!(take(32, false, &ones), 32);
        // Three-item jobs fill whole sets at 24.
        assert_eq!(take(64, true, &[(3, Sm2); 20]), 24);
        // A set of P-256 and one of Ed25519.
        let two: Vec<_> = (0..20)
            .map(|i| (1, if i % 2 == 0 { EcdsaP256 } else { Ed25519 }))
            .collect();
        assert_eq!(take(64, true, &two), 16);
        let three: Vec<_> = (0..100)
            .map(|i| (1, [EcdsaP256, EcdsaSecp256k1, Sm2][i % 3]))
            .collect();
        assert_eq!(take(64, true, &three), 24);
        // Sets that never come out whole go on to max_batch, as before.
        let odd: Vec<_> = std::iter::once((1, EcdsaSecp256k1))
            .chain([(1, EcdsaP256); 99])
            .collect();
        assert_eq!(take(64, true, &odd), 64);
        // The first job is always taken, and a job that would pass max_batch is not.
        assert_eq!(take(4, true, &[(6, Ed25519), (1, Ed25519)]), 6);
        assert_eq!(take(8, true, &[(5, Ed25519), (4, Ed25519)]), 5);
    }

    #[test]
    fn no_lane_wait_where_there_are_no_lanes() {
        let off = VerifyConfig {
            multi_buffer: false,
            lane_wait_us: 500,
            ..VerifyConfig::default()
        };
        assert_eq!(lane_wait(&off), Duration::ZERO);
        let on = VerifyConfig {
            lane_wait_us: 500,
            ..VerifyConfig::default()
        };
        let expected = if mb::available() { 500 } else { 0 };
        assert_eq!(lane_wait(&on), Duration::from_micros(expected));
    }
}
