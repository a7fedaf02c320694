//! CPU time and resident memory from `/proc`, for this process, one of its threads, or the
//! server under test.

use std::time::Instant;

/// Clock ticks per second of `/proc/*/stat` times. Linux has used 100 on every architecture
/// for decades; reading it would need `sysconf`, which this crate (no `unsafe`) avoids.
const CLOCK_TICKS: u64 = 100;

/// CPU time (user + system, all threads) of the process whose `stat` file is `path`, in ns.
fn stat_cpu_ns(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses: fields restart after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // Counting from the state (field 3): utime is field 14, stime field 15.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) * 1_000_000_000 / CLOCK_TICKS)
}

/// CPU time of a process, in ns.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    stat_cpu_ns(&format!("/proc/{pid}/stat"))
}

/// CPU time of this whole process, in ns.
pub fn own_cpu_ns() -> u64 {
    stat_cpu_ns("/proc/self/stat").unwrap_or(0)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Resident memory of this process, in KiB.
pub fn own_rss_kib() -> Option<u64> {
    status_field("/proc/self/status", "VmRSS:")
}

fn status_field(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU use over a measured window: this process and, if known, the server's.
pub struct CpuWindow {
    started: Instant,
    own: u64,
    server_pid: Option<u32>,
    server: Option<u64>,
}

impl CpuWindow {
    /// Starts measuring now.
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            started: Instant::now(),
            own: own_cpu_ns(),
            server_pid,
            server: server_pid.and_then(process_cpu_ns),
        }
    }

    /// The window's length and CPU use as percentages of one core, as JSON.
    pub fn finish(&self) -> serde_json::Value {
        let seconds = self.started.elapsed().as_secs_f64();
        let percent = |ns: u64| round1(ns as f64 / 1e9 / seconds * 100.0);
        let server = match (self.server_pid.and_then(process_cpu_ns), self.server) {
            (Some(now), Some(then)) => Some(percent(now.saturating_sub(then))),
            _ => None,
        };
        serde_json::json!({
            "window_s": round3(seconds),
            "bench_pct": percent(own_cpu_ns().saturating_sub(self.own)),
            "server_pct": server,
            "cores": cores(),
        })
    }
}

/// `x` rounded to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `x` rounded to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
