//! The processes under test: the release `tracekeeper` binary with a generated configuration,
//! and Rotel (installed from PyPI when missing) as an OTLP→OTLP pass-through.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a process may take to become ready (tracekeeper compiles its guest at start).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process may take to exit after SIGTERM before it is killed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for readiness or exit.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one HTTP request to a metrics or health endpoint.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A free loopback port (bound and released; the small race is acceptable on a test machine).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?)
}

/// A child process that is stopped (SIGTERM, then kill) when dropped.
#[derive(Debug)]
pub struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr in `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc { name, child })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit (kills after [`SHUTDOWN_TIMEOUT`]).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let until = Instant::now() + SHUTDOWN_TIMEOUT;
        while Instant::now() < until {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!(
            "{} did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM",
            self.name
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GETs `url`; returns the status and body.
pub async fn http_get(url: &str) -> anyhow::Result<(http::StatusCode, String)> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: http::Uri = url.parse()?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.get(uri))
        .await
        .with_context(|| format!("GET {url}: timed out"))??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of an unlabelled Prometheus sample (`name value`), or the sum over its labels.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Waits until `ready` answers true, checking that `proc` is alive.
pub async fn wait_ready<F, Fut>(proc: &mut Proc, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < until {
        proc.check_alive()?;
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    bail!("{} was not ready within {STARTUP_TIMEOUT:?}", proc.name)
}

/// The Rotel binary: `--rotel`, else `rotel` on PATH, else the agent inside the `rotel` Python
/// package, installed with `pip install rotel` when missing.
pub fn find_rotel(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if Command::new("rotel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(PathBuf::from("rotel"));
    }
    let locate = || -> Option<PathBuf> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && p.is_file()).then_some(p)
    };
    if let Some(p) = locate() {
        return Ok(p);
    }
    eprintln!("rotel is missing: pip install rotel");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "rotel"])
        .status()
        .context("running pip install rotel")?;
    if !status.success() {
        bail!("pip install rotel failed ({status})");
    }
    locate().context("rotel was installed but its agent binary was not found in the package")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_values_plain_and_labelled() {
        let text = "# HELP x\nx_total{a=\"1\"} 3\nx_total{a=\"2\"} 4\nx 7\nxy 9\n";
        assert_eq!(prometheus_value(text, "x_total"), Some(7.0));
        assert_eq!(prometheus_value(text, "x"), Some(7.0));
        assert_eq!(prometheus_value(text, "z"), None);
    }
}
