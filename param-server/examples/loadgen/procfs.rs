//! What the kernel says about CPU time, memory and load: `/proc` reads,
//! no `unsafe`. CPU times are in clock ticks of 10 ms (`CLK_TCK` = 100
//! on Linux), so a measurement window should last seconds.

use std::time::Duration;

use anyhow::{Context, Result};

const TICK: Duration = Duration::from_millis(10);

/// User + system CPU time from a `/proc/…/stat` file.
fn stat_cpu(path: &str) -> Result<(String, Duration)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name is in parentheses and may hold spaces.
    let open = stat.find('(').context("stat has a command name")?;
    let (comm, rest) = stat[open + 1..]
        .rsplit_once(')')
        .context("stat has a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the name from 3.
    let ticks: u32 = fields[11].parse::<u32>()? + fields[12].parse::<u32>()?;
    Ok((comm.to_owned(), TICK * ticks))
}

/// CPU time of process `pid` (all its threads).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    Ok(stat_cpu(&format!("/proc/{pid}/stat"))?.1)
}

/// CPU time of this process's threads whose name starts with `prefix`,
/// and of the whole process.
pub fn own_cpu(prefix: &str) -> Result<(Duration, Duration)> {
    let mut matching = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").context("list threads")? {
        let path = task?.path().join("stat");
        // A thread may end between the listing and the read.
        if let Ok((comm, cpu)) = stat_cpu(&path.to_string_lossy())
            && comm.starts_with(prefix)
        {
            matching += cpu;
        }
    }
    Ok((matching, stat_cpu("/proc/self/stat")?.1))
}

/// This process's resident set, in bytes.
pub fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("read statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has a resident field")?
        .parse()?;
    Ok(pages * 4096)
}

/// The 1-minute load average.
pub fn load_average() -> Result<f64> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").context("read loadavg")?;
    Ok(loadavg
        .split_whitespace()
        .next()
        .context("loadavg is empty")?
        .parse()?)
}
