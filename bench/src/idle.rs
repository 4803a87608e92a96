//! What a running sidecar costs with no traffic: CPU time and thread wake-ups of tracekeeper on
//! its embedded default configuration (ports moved to free ones), over a window of idle time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procs::{Proc, free_port, http_get, wait_ready};
use crate::procstat;

/// Time after readiness before the window opens (start-up work settles).
const SETTLE: Duration = Duration::from_secs(2);

/// One binary's idle cost.
#[derive(Debug, Clone, Copy)]
pub struct IdleCost {
    /// Length of the window.
    pub window: Duration,
    /// User + system CPU of the process in the window.
    pub cpu: Duration,
    /// Context switches of all its threads in the window (each is a thread going to sleep or
    /// being put to sleep: about one per wake-up).
    pub switches: u64,
    /// Threads at the end of the window.
    pub threads: usize,
}

impl IdleCost {
    /// CPU time as a share of one CPU, in percent.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// Context switches per second.
    pub fn switches_per_second(&self) -> f64 {
        self.switches as f64 / self.window.as_secs_f64()
    }
}

/// Voluntary plus involuntary context switches of every thread of `pid`, with the number of
/// threads, from `/proc/<pid>/task/*/status`.
pub fn context_switches(pid: u32) -> anyhow::Result<(u64, usize)> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    let mut threads = 0usize;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("status");
        // A thread that ended since the listing has no status any more.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        threads += 1;
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v
                    .trim()
                    .parse::<u64>()
                    .with_context(|| format!("{}: {line}", path.display()))?;
            }
        }
    }
    Ok((total, threads))
}

/// The embedded default configuration with its listening addresses moved to free loopback
/// ports (so the measurement runs beside anything using the standard ones).
pub fn default_config_on_free_ports() -> anyhow::Result<(String, String)> {
    let mut config = tracekeeper::config::DEFAULT_CONFIG.to_string();
    let mut health = String::new();
    for standard in [
        "0.0.0.0:4317",
        "0.0.0.0:4318",
        "127.0.0.1:13133",
        "127.0.0.1:8888",
    ] {
        anyhow::ensure!(
            config.contains(standard),
            "the embedded default configuration no longer listens on {standard}"
        );
        let port = free_port()?.to_string();
        if standard.ends_with(":13133") {
            health = port.clone();
        }
        config = config.replace(standard, &port);
    }
    Ok((config, health))
}

/// Starts `binary` on the default configuration, waits until it is ready and [`SETTLE`] more,
/// then measures `window` of idle time; stops it.
pub async fn measure(binary: &Path, window: Duration, work_dir: &Path) -> anyhow::Result<IdleCost> {
    let (config, health) = default_config_on_free_ports()?;
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let config_path = work_dir.join("tracekeeper-idle.yaml");
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg("run").arg("--config").arg(&config_path);
    let log = work_dir.join("tracekeeper-idle.log");
    let mut proc = Proc::spawn("tracekeeper", cmd, &log)?;
    let url = format!("http://{health}/");
    wait_ready(&mut proc, || async {
        matches!(http_get(&url).await, Ok((s, _)) if s.is_success())
    })
    .await
    .with_context(|| format!("starting {} (log: {})", binary.display(), log.display()))?;
    tokio::time::sleep(SETTLE).await;
    let pid = proc.pid();
    let ticks = procstat::clock_ticks_per_second();
    let cpu0 = procstat::process_cpu(pid, ticks)?;
    let (switches0, _) = context_switches(pid)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let cpu1 = procstat::process_cpu(pid, ticks)?;
    let (switches1, threads) = context_switches(pid)?;
    let elapsed = start.elapsed();
    proc.check_alive()?;
    proc.stop()?;
    Ok(IdleCost {
        window: elapsed,
        cpu: cpu1.saturating_sub(cpu0),
        switches: switches1.saturating_sub(switches0),
        threads,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_switches_and_moves_every_port() {
        let (a, threads) = context_switches(std::process::id()).unwrap();
        assert!(threads >= 1);
        std::thread::sleep(Duration::from_millis(5));
        let (b, _) = context_switches(std::process::id()).unwrap();
        assert!(b > a, "sleeping switched out the thread: {a} -> {b}");
        let (config, health) = default_config_on_free_ports().unwrap();
        for standard in [":4317", ":4318", ":13133", ":8888"] {
            assert!(!config.contains(standard), "{standard} left in:\n{config}");
        }
        assert!(health.starts_with("127.0.0.1:"));
        assert!(config.contains(&health));
    }
}
