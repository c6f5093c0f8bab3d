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
        None => ticks(&format!("/proc/{pid}/stat"))?.1,
        Some(p) => {
            let mut sum = 0;
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let path = task?.path().join("stat");
                // A thread may end between the listing and the read.
                if let Ok((name, t)) = ticks(&path.to_string_lossy()) {
                    if name.starts_with(p) {
                        sum += t;
                    }
                }
            }
            sum
        }
    };
    Ok(ticks as f64 / clock_ticks()?)
}

/// The thread or process name and its utime + stime, in clock ticks.
fn ticks(path: &str) -> anyhow::Result<(String, u64)> {
    let text = std::fs::read_to_string(path)?;
    // The name is in parentheses and may itself hold spaces or parentheses.
    let open = text.find('(').context("stat: no name")?;
    let close = text.rfind(')').context("stat: no name")?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields.get(n - 3).context("stat: short")?.parse()?)
    };
    Ok((name, field(14)? + field(15)?))
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
