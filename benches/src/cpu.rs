//! CPU time spent by each party of a run, read from /proc: the gateway process, the load
//! client's threads, a raw loop. On a host where the client shares the gateway's cores, a
//! rate alone cannot say whose work the cores did; CPU per operation can.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;

/// CPU seconds (user + system) used so far by the threads of `pid` whose name starts with
/// `prefix`, or by the whole process (threads that have exited included) when `prefix` is
/// `None`.
pub fn seconds(pid: u32, prefix: Option<&str>) -> anyhow::Result<f64> {
    let ticks = match prefix {
        None => parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?.1[0],
        Some(_) => per_thread(pid, prefix, "stat", parse_stat)?[0],
    };
    Ok(ticks as f64 / clock_ticks()?)
}

/// How often the threads of `pid` whose name starts with `prefix` (every thread when
/// `None`; threads that have exited are not counted) were switched out, from their
/// status(5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// Gave up the CPU to wait (`voluntary_ctxt_switches`): parked, or blocked on a lock
    /// or a read. Each such wait ends with a wake-up, which costs the waker a system
    /// call and, on a virtual machine, the sleeper's core a trip through the hypervisor.
    pub slept: u64,
    /// Preempted (`nonvoluntary_ctxt_switches`): switched out while it could still run.
    /// A thread preempted in the middle of a long call pays for it in cold caches too,
    /// which CPU time alone hides.
    pub preempted: u64,
}

impl Switches {
    /// Those since `earlier`.
    pub fn since(self, earlier: Switches) -> Switches {
        Switches {
            slept: self.slept.saturating_sub(earlier.slept),
            preempted: self.preempted.saturating_sub(earlier.preempted),
        }
    }
}

impl std::ops::Add for Switches {
    type Output = Switches;
    fn add(self, other: Switches) -> Switches {
        Switches {
            slept: self.slept + other.slept,
            preempted: self.preempted + other.preempted,
        }
    }
}

pub fn switches(pid: u32, prefix: Option<&str>) -> anyhow::Result<Switches> {
    let [slept, preempted] = per_thread(pid, prefix, "status", parse_status)?;
    Ok(Switches { slept, preempted })
}

/// Reads a thread's name and N counts from one of its `/proc` texts.
type Parse<const N: usize> = fn(&str) -> anyhow::Result<(String, [u64; N])>;

/// The sums, over the threads of `pid` whose name starts with `prefix` (all when `None`),
/// of the counts `parse` reads, with the thread's name, from its `/proc` `file`.
fn per_thread<const N: usize>(
    pid: u32,
    prefix: Option<&str>,
    file: &str,
    parse: Parse<N>,
) -> anyhow::Result<[u64; N]> {
    let mut sum = [0; N];
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(task?.path().join(file)) else {
            continue;
        };
        let (name, counts) = parse(&text)?;
        if prefix.is_none_or(|p| name.starts_with(p)) {
            for (s, c) in sum.iter_mut().zip(counts) {
                *s += c;
            }
        }
    }
    Ok(sum)
}

/// The name, `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` of one status(5)
/// text.
fn parse_status(text: &str) -> anyhow::Result<(String, [u64; 2])> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .with_context(|| format!("status: no {key}"))
    };
    Ok((
        field("Name:")?.to_string(),
        [
            field("voluntary_ctxt_switches:")?.parse()?,
            field("nonvoluntary_ctxt_switches:")?.parse()?,
        ],
    ))
}

/// The name and utime + stime, in clock ticks, of one stat(5) line.
fn parse_stat(text: &str) -> anyhow::Result<(String, [u64; 1])> {
    // The name is in parentheses and may itself hold spaces or parentheses.
    let open = text.find('(').context("stat: no name")?;
    let close = text.rfind(')').context("stat: no name")?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields.get(n - 3).context("stat: short")?.parse()?)
    };
    Ok((name, [field(14)? + field(15)?]))
}

fn clock_ticks() -> anyhow::Result<f64> {
    static TICKS: OnceLock<f64> = OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    let t: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(*TICKS.get_or_init(|| t))
}

/// CPU seconds of several parties over one stretch of a run.
pub struct Meter {
    parties: Vec<(u32, Option<String>, f64)>,
}

impl Meter {
    /// Starts counting for each (pid, thread-name prefix) party.
    pub fn start(parties: &[(u32, Option<&str>)]) -> anyhow::Result<Meter> {
        let parties = parties
            .iter()
            .map(|&(pid, prefix)| Ok((pid, prefix.map(String::from), seconds(pid, prefix)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Meter { parties })
    }

    /// CPU seconds each party used since `start`, in the order given there.
    pub fn read(&self) -> anyhow::Result<Vec<f64>> {
        self.parties
            .iter()
            .map(|(pid, prefix, from)| Ok(seconds(*pid, prefix.as_deref())? - from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_text_gives_its_voluntary_and_involuntary_switches() {
        let text =
            "Name:\tload-client\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t42\n";
        assert_eq!(
            parse_status(text).unwrap(),
            ("load-client".to_string(), [7, 42])
        );
        assert!(parse_status("Name:\tx\nvoluntary_ctxt_switches:\t7\n").is_err());
        assert!(parse_status("Name:\tx\nnonvoluntary_ctxt_switches:\t7\n").is_err());
        assert!(parse_status("nonvoluntary_ctxt_switches:\t7\n").is_err());
        // This process has a main thread whose status reads; a sleep is a voluntary switch.
        let before = switches(std::process::id(), None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = switches(std::process::id(), None).unwrap();
        assert!(after.since(before).slept >= 1, "{before:?} then {after:?}");
    }

    #[test]
    fn a_stat_line_gives_its_name_and_user_plus_system_ticks() {
        // A name with a space and a parenthesis of its own; utime 1234, stime 56.
        let line = "4242 (load (client) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 100 0 0";
        assert_eq!(
            parse_stat(line).unwrap(),
            ("load (client) 1".to_string(), [1290])
        );
        assert!(parse_stat("4242 (short) S 1 2").is_err());
        assert!(parse_stat("no name here").is_err());
    }

    #[test]
    fn a_named_thread_is_found_and_its_cpu_counted() {
        let pid = std::process::id();
        let (spun, done) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        // Spins until /proc says it has used 50 ms (at most 10 s: a reading stuck at 0
        // fails below), then stays alive until the main thread has read it.
        let busy = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(move || {
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
                let mut x = 0u64;
                while seconds(pid, Some("cpu-test-spin")).unwrap() < 0.05
                    && std::time::Instant::now() < give_up
                {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                spun.send(()).unwrap();
                let _ = wait.recv();
                x
            })
            .unwrap();
        done.recv().unwrap();
        let named = seconds(pid, Some("cpu-test-spin")).unwrap();
        let whole = seconds(pid, None).unwrap();
        release.send(()).unwrap();
        busy.join().unwrap();
        assert!(named >= 0.05, "the spinning thread used {named} s");
        // The kernel rounds the process's total and each thread's to whole ticks apart,
        // so the total may read one tick below a thread's own (seen: 0.04 against 0.05).
        let tick = 1.0 / clock_ticks().unwrap();
        assert!(whole + tick >= named, "{whole} + one tick < {named}");
        assert_eq!(seconds(pid, Some("no-such-thread")).unwrap(), 0.0);
    }
}
