//! CPU time and memory of processes and threads, read from Linux `/proc`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// Clock ticks per second of `/proc/<pid>/stat` when `getconf CLK_TCK` cannot be run (Linux's
/// value on every common architecture).
pub const DEFAULT_CLK_TCK: u64 = 100;

/// Ticks per second of the utime/stime fields.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(DEFAULT_CLK_TCK)
}

/// User + system CPU time of a whole process (all its threads), from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32, ticks_per_second: u64) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces; fields after it are
    // numbered from 3: utime is field 14, stime field 15.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("{path}: field {n} missing"))?
            .parse()
            .with_context(|| format!("{path}: field {n} is not a number"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / ticks_per_second,
    ))
}

/// CPU time of the calling thread (ns precision), from `/proc/thread-self/schedstat`.
pub fn thread_cpu() -> anyhow::Result<Duration> {
    let path = Path::new("/proc/thread-self/schedstat");
    let s = std::fs::read_to_string(path).context("reading /proc/thread-self/schedstat")?;
    let ns: u64 = s
        .split_whitespace()
        .next()
        .context("/proc/thread-self/schedstat is empty")?
        .parse()
        .context("/proc/thread-self/schedstat: not a number")?;
    Ok(Duration::from_nanos(ns))
}

/// Resident memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Current resident set size, bytes.
    pub rss: u64,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
}

/// Current and peak RSS from `/proc/<pid>/status`.
pub fn process_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("{path}: no {key}"))?;
        let v: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: {key} is not a number"))?;
        Ok(v * 1024)
    };
    let m = Memory {
        rss: kib("VmRSS:")?,
        peak_rss: kib("VmHWM:")?,
    };
    if m.peak_rss < m.rss {
        bail!("{path}: VmHWM below VmRSS");
    }
    Ok(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_thread() {
        let pid = std::process::id();
        let ticks = clock_ticks_per_second();
        assert!(ticks > 0);
        process_cpu(pid, ticks).unwrap();
        let m = process_memory(pid).unwrap();
        assert!(m.rss > 0 && m.peak_rss >= m.rss);
        let a = thread_cpu().unwrap();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu().unwrap() >= a);
    }
}
