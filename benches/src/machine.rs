//! Timing on a shared machine: a stopwatch that also reads the thread's
//! CPU time (so a phase starved by other work shows it), CPU time of any
//! process (the broker), the load average, and rate formatting.
//!
//! CPU times come from `/proc/<pid>/stat` (`utime + stime`, in ticks of
//! 1/100 s, Linux's `USER_HZ` on x86): coarse, so only phases of seconds
//! are read this way.

use std::time::{Duration, Instant};

/// Linux's `USER_HZ`: the unit of `/proc/*/stat` CPU times.
const TICKS_PER_SECOND: u64 = 100;

/// User + system CPU time of a `/proc` entry (`self`, `thread-self`, a pid).
pub fn cpu_time(proc_entry: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{proc_entry}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1_000 / TICKS_PER_SECOND))
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    cpu_time("thread-self").unwrap_or_default()
}

/// CPU time of this process (all its threads, librdkafka's included).
pub fn process_cpu() -> Duration {
    cpu_time("self").unwrap_or_default()
}

/// The 1-, 5- and 15-minute load averages as printed by the kernel.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The CPU this runs on, for a report's header: `model name` with the
/// family, model and clock of `/proc/cpuinfo` (on cloud machines the name
/// alone, e.g. "AMD EPYC", covers CPUs generations apart), and the core
/// count. Empty fields where `/proc/cpuinfo` lacks them.
pub fn cpu_description() -> String {
    describe_cpu(
        &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}

/// [`cpu_description`] of a `/proc/cpuinfo` text (its first processor).
fn describe_cpu(cpuinfo: &str, cores: usize) -> String {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim())
            })
            .unwrap_or_default()
    };
    let mhz = field("cpu MHz").split('.').next().unwrap_or_default();
    format!(
        "{} (family {}, model {}, {mhz} MHz), {cores} cores",
        field("model name"),
        field("cpu family"),
        field("model"),
    )
}

/// Accumulates wall and thread CPU time over start/stop intervals.
#[derive(Debug, Default)]
pub struct Stopwatch {
    wall: Duration,
    cpu: Duration,
    running: Option<(Instant, Duration)>,
}

impl Stopwatch {
    /// A stopped stopwatch at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts (or keeps running).
    pub fn start(&mut self) {
        if self.running.is_none() {
            self.running = Some((Instant::now(), thread_cpu()));
        }
    }

    /// Stops, adding the interval.
    pub fn stop(&mut self) {
        if let Some((wall, cpu)) = self.running.take() {
            self.wall += wall.elapsed();
            self.cpu += thread_cpu().saturating_sub(cpu);
        }
    }

    /// Wall time so far (including a running interval).
    pub fn wall(&self) -> Duration {
        self.wall + self.running.map_or(Duration::ZERO, |(t, _)| t.elapsed())
    }

    /// Thread CPU time so far (including a running interval).
    pub fn cpu(&self) -> Duration {
        self.cpu
            + self
                .running
                .map_or(Duration::ZERO, |(_, c)| thread_cpu().saturating_sub(c))
    }

    /// CPU time as a share of wall time, in percent (stopped intervals).
    pub fn cpu_percent(&self) -> f64 {
        percent(self.cpu, self.wall)
    }
}

/// `part / whole` in percent (0 when `whole` is zero).
pub fn percent(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        100.0 * part.as_secs_f64() / whole.as_secs_f64()
    }
}

/// Events per second.
pub fn rate(events: u64, time: Duration) -> f64 {
    events as f64 / time.as_secs_f64().max(1e-9)
}

/// A rate with three significant digits and a k/M/G suffix.
pub fn human(per_s: f64) -> String {
    for (scale, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if per_s >= scale {
            return format!("{:.3} {suffix}", per_s / scale);
        }
    }
    format!("{per_s:.3}")
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read() {
        let start = thread_cpu();
        let spin = Instant::now();
        let mut x = 0_u64;
        while spin.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu() > start, "60 ms of spinning shows as CPU time");
        assert!(process_cpu() >= thread_cpu());
    }

    #[test]
    fn cpu_description_names_family_model_and_clock() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\n\
                       model\t\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 1996.250\n\n\
                       processor\t: 1\ncpu family\t: 99\n";
        assert_eq!(
            describe_cpu(cpuinfo, 2),
            "AMD EPYC (family 23, model 1, 1996 MHz), 2 cores"
        );
    }

    #[test]
    fn rates_are_human() {
        assert_eq!(human(1_234_567.0), "1.235 M");
        assert_eq!(human(999.0), "999.000");
        assert!((rate(10, Duration::from_secs(2)) - 5.0).abs() < 1e-12);
    }
}
