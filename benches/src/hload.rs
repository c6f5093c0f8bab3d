//! A low-overhead HTTP/1.1 load client: keep-alive connections on hyper, each sending its
//! request again as soon as the answer is read. A blocking client per thread tops out near
//! 14k requests/s on this machine, below what the gateway serves; this one reaches wrk's
//! rate, so the figures measure the gateway. Every harness prints this client's own rate
//! on `GET /healthz` beside its results.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::cpu;

/// One request, sent again and again; or several bodies, sent in turn over every
/// connection, the turn going on from one run to the next.
#[derive(Clone)]
pub struct LoadRequest {
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    bodies: Arc<[Bytes]>,
    next: Arc<AtomicUsize>,
}

impl LoadRequest {
    pub fn new(method: Method, path: &str, token: Option<&str>, bodies: Vec<Bytes>) -> Self {
        assert!(
            !bodies.is_empty(),
            "a load request needs a body, if an empty one"
        );
        LoadRequest {
            method,
            path: path.into(),
            token: token.map(str::to_string),
            bodies: bodies.into(),
            next: Arc::default(),
        }
    }

    pub fn get(path: &str) -> LoadRequest {
        Self::new(Method::GET, path, None, vec![Bytes::new()])
    }

    pub fn post_json(path: &str, token: &str, body: &serde_json::Value) -> LoadRequest {
        Self::post_json_each(path, token, std::slice::from_ref(body))
    }

    /// The bodies in turn: each request the next one, across connections and runs.
    pub fn post_json_each(path: &str, token: &str, bodies: &[serde_json::Value]) -> LoadRequest {
        let bodies = bodies.iter().map(|b| Bytes::from(b.to_string())).collect();
        Self::new(Method::POST, path, Some(token), bodies)
    }

    fn body(&self) -> Bytes {
        match &*self.bodies {
            [one] => one.clone(),
            many => many[self.next.fetch_add(1, Ordering::Relaxed) % many.len()].clone(),
        }
    }
}

/// Answers/s over `conns` connections driven by `threads` client threads for `seconds`.
/// `check` sees each status and body; one it refuses fails the run, since a rate of
/// errors measures nothing.
pub fn http_load<C>(
    addr: &str,
    req: &LoadRequest,
    conns: usize,
    threads: usize,
    seconds: u64,
    check: C,
) -> anyhow::Result<f64>
where
    C: Fn(u16, &[u8]) -> bool + Send + Sync + 'static,
{
    Ok(http_load_metered(addr, req, conns, threads, seconds, None, check)?.rate)
}

/// A load run's rate and the CPU its two sides used over the same timed stretch.
pub struct Metered {
    pub rate: f64,
    pub seconds: f64,
    /// CPU seconds of this client's threads.
    pub client_cpu: f64,
    /// CPU seconds of the server party named to `http_load_metered`.
    pub server_cpu: f64,
    /// How often the server party's threads slept and were preempted (`cpu::switches`).
    pub server_switches: cpu::Switches,
}

impl Metered {
    /// Two runs of the same configuration as one: answers, seconds and CPU summed.
    pub fn pooled(self, other: Metered) -> Metered {
        let seconds = self.seconds + other.seconds;
        Metered {
            rate: (self.rate * self.seconds + other.rate * other.seconds) / seconds,
            seconds,
            client_cpu: self.client_cpu + other.client_cpu,
            server_cpu: self.server_cpu + other.server_cpu,
            server_switches: self.server_switches + other.server_switches,
        }
    }

    /// `run` added to the runs pooled so far in `total` (none before the first).
    pub fn pool_into(total: &mut Option<Metered>, run: Metered) {
        *total = Some(match total.take() {
            Some(before) => before.pooled(run),
            None => run,
        });
    }

    /// CPU microseconds per answer: (client, server).
    pub fn per_answer_us(&self, items: f64) -> (f64, f64) {
        let n = self.rate * self.seconds * items;
        (1e6 * self.client_cpu / n, 1e6 * self.server_cpu / n)
    }
}

/// `http_load`, also counting the CPU of the client's threads and of `server` (a process,
/// or the threads of one whose names start with a prefix) over the timed stretch.
pub fn http_load_metered<C>(
    addr: &str,
    req: &LoadRequest,
    conns: usize,
    threads: usize,
    seconds: u64,
    server: Option<(u32, Option<&str>)>,
    check: C,
) -> anyhow::Result<Metered>
where
    C: Fn(u16, &[u8]) -> bool + Send + Sync + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let check = Arc::new(check);
    let addr: Arc<str> = addr.into();
    let mut parties = vec![(std::process::id(), Some(CLIENT_THREADS))];
    parties.extend(server);
    let (measured, results) = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let (stop, count, check) = (stop.clone(), count.clone(), check.clone());
            let (addr, req) = (addr.clone(), req.clone());
            tasks.spawn(async move { connection(&addr, &req, &stop, &count, &*check).await });
        }
        // The timed stretch starts once the connections are up and have had an answer
        // or so each: short runs (the paired rounds) would otherwise count the set-up.
        let warm = Instant::now() + WARM_UP;
        while count.load(Ordering::Relaxed) < conns as u64 && Instant::now() < warm {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let switches_now = || {
            server.map_or(Ok(cpu::Switches::default()), |(pid, p)| {
                cpu::switches(pid, p)
            })
        };
        let meter = cpu::Meter::start(&parties);
        let switches_from = switches_now();
        let (started, from) = (Instant::now(), count.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let answers = count.load(Ordering::Relaxed) - from;
        let used = meter.and_then(|m| m.read());
        let switches = switches_from.and_then(|from| Ok(switches_now()?.since(from)));
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        ((answers, elapsed, used, switches), tasks.join_all().await)
    });
    for r in results {
        r?;
    }
    let (answers, elapsed, used, switches) = measured;
    let used = used?;
    Ok(Metered {
        rate: answers as f64 / elapsed.as_secs_f64(),
        seconds: elapsed.as_secs_f64(),
        client_cpu: used[0],
        server_cpu: used.get(1).copied().unwrap_or(0.0),
        server_switches: switches?,
    })
}

/// At most this long before a run's timed stretch starts.
const WARM_UP: Duration = Duration::from_millis(300);

/// The name of the load client's threads, by which their CPU is told from a server's
/// running in the same process.
const CLIENT_THREADS: &str = "load-client";

async fn connection(
    addr: &str,
    req: &LoadRequest,
    stop: &AtomicBool,
    count: &AtomicU64,
    check: &(dyn Fn(u16, &[u8]) -> bool + Send + Sync),
) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let auth = req.token.as_ref().map(|t| format!("Bearer {t}"));
    while !stop.load(Ordering::Relaxed) {
        let mut r = Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(HOST, addr);
        if let Some(a) = &auth {
            r = r.header(AUTHORIZATION, a.as_str());
        }
        let body = req.body();
        if !body.is_empty() {
            r = r.header(CONTENT_TYPE, "application/json");
        }
        let resp = sender.send_request(r.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        if !check(status, &body) {
            bail!(
                "{} {}: {status} {}",
                req.method,
                req.path,
                String::from_utf8_lossy(&body)
            );
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// This client's rate on the cheapest route, the floor every other figure is read against.
pub fn healthz_rate(addr: &str, conns: usize, threads: usize, seconds: u64) -> anyhow::Result<f64> {
    http_load(
        addr,
        &LoadRequest::get("/healthz"),
        conns,
        threads,
        seconds,
        |status, _| status == 200,
    )
}
