//! Shared by the benches that need it (`backends.rs`, `pipeline.rs`, `receipts.rs`): the hyper
//! baseline's keep-alive connection, a child process's `RESULT key=value` lines,
//! `/proc/self/status` readings, per-thread CPU (schedstat) and medians. `pipeline.rs` keeps its own hyper connection (its baseline reads
//! `Retry-After` to resend after a 429).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// hyper's HTTP/1 client on one keep-alive connection: the baselines' sender.
pub(crate) struct HyperConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
}

impl HyperConnection {
    /// Connects to `url` (`http://host:port`, as the collector's `url("")` gives it).
    pub(crate) async fn open(url: &str) -> anyhow::Result<Self> {
        let authority = url.strip_prefix("http://").with_context(|| format!("not an http:// URL: {url}"))?.to_owned();
        let stream =
            tokio::net::TcpStream::connect(&authority).await.with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake")?;
        tokio::spawn(connection);
        Ok(HyperConnection { sender, authority })
    }

    /// POSTs a JSON body with `authorization`, reads the whole answer; `true` on a 2xx.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        authorization: &http::HeaderValue,
        body: bytes::Bytes,
    ) -> anyhow::Result<bool> {
        use http_body_util::BodyExt;
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, authorization)
            .body(http_body_util::Full::new(body))
            .context("building the request")?;
        self.sender.ready().await.context("the connection closed")?;
        let Ok(response) = self.sender.send_request(request).await else { return Ok(false) };
        let ok = response.status().is_success();
        let read = response.into_body().collect().await.is_ok();
        Ok(ok && read)
    }
}

/// A child's `RESULT key=value` lines.
pub(crate) struct PhaseResult(pub(crate) HashMap<String, String>);

impl PhaseResult {
    /// The number under `key`.
    pub(crate) fn get(&self, key: &str) -> anyhow::Result<u64> {
        let v = self.0.get(key).with_context(|| format!("the row's result has no {key}"))?;
        v.parse().with_context(|| format!("{key}={v:?} is not a number"))
    }

    /// The text under `key` (empty when absent).
    pub(crate) fn text(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }
}

/// Runs this binary again with `env` (the role and its inputs), its stderr shown, and reads
/// its `RESULT` lines.
pub(crate) fn run_child(what: &str, env: &[(&str, String)]) -> anyhow::Result<PhaseResult> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    run_child_of(&exe, what, env)
}

/// As [`run_child`], with another build of the same bench (an A/B against a build that differs).
pub(crate) fn run_child_of(exe: &std::path::Path, what: &str, env: &[(&str, String)]) -> anyhow::Result<PhaseResult> {
    let mut cmd = Command::new(exe);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {what} ({})", exe.display()))?;
    if !out.status.success() {
        bail!("{what} failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let map = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(PhaseResult(map))
}

/// Writes `RESULT key=value` lines for the parent.
pub(crate) fn report(results: &[(&str, String)]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for (k, v) in results {
        writeln!(out, "RESULT {k}={v}")?;
    }
    out.flush()?;
    Ok(())
}

/// A line of /proc/self/status in bytes (the kernel gives kB); 0 where there is none.
pub(crate) fn proc_status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The median of `values` (the lower middle for an even count); 0 for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// CPU time (ns) the kernel charged to each live thread of this process so far, by thread name
/// (`/proc/self/task/*/schedstat`, whose first field is the time on a CPU): unlike wall time,
/// this barely moves when other processes load the machine.
pub(crate) fn thread_cpu_ns() -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let dir = task.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
            let ns = std::fs::read_to_string(dir.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()?;
            Some((name, ns))
        })
        .collect()
}

/// CPU time (ns) of the live threads named `name` so far.
pub(crate) fn cpu_of(name: &str) -> u64 {
    thread_cpu_ns().iter().filter(|(n, _)| n == name).map(|(_, ns)| ns).sum()
}

/// CPU time (ns) of the calling thread so far (`/proc/thread-self/schedstat`): for a thread
/// that reports its own cost before it ends.
pub(crate) fn own_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
