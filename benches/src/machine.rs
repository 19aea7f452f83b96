//! Timing on a shared machine: a stopwatch that also reads the thread's
//! CPU time (so a phase starved by other work shows it), CPU time of any
//! process (the broker), the load average, and rate formatting.
//!
//! CPU times come from `/proc/<pid>/stat` (`utime + stime`, in ticks of
//! 1/100 s, Linux's `USER_HZ` on x86): coarse, so only phases of seconds
//! are read this way. [`SchedReader`] reads a thread's scheduler figures
//! instead (exact nanoseconds on a CPU and waiting for one, page faults,
//! the machine's stolen time), for intervals of milliseconds.

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

/// Where a thread's time went, from the scheduler's own accounting
/// (`/proc/thread-self/schedstat`, in nanoseconds, exact) and its fault
/// counts (`/proc/thread-self/stat`): what tells a stall the thread spent
/// working from one it spent waiting for a CPU or blocked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sched {
    /// Time on a CPU.
    pub on_cpu: Duration,
    /// Time runnable but waiting for a CPU (taken by other threads).
    pub runnable: Duration,
    /// Minor page faults (no I/O: a page mapped or zeroed).
    pub minor_faults: u64,
    /// Major page faults (a read from disk).
    pub major_faults: u64,
    /// CPU time the hypervisor gave to other guests, over all of this
    /// machine's CPUs (`/proc/stat`, in ticks of 10 ms): the thread loses
    /// it without the guest's scheduler seeing it, so it shows as blocked.
    pub stolen: Duration,
}

impl Sched {
    /// `self − earlier`, field by field (saturating).
    pub fn since(&self, earlier: &Sched) -> Sched {
        Sched {
            on_cpu: self.on_cpu.saturating_sub(earlier.on_cpu),
            runnable: self.runnable.saturating_sub(earlier.runnable),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            stolen: self.stolen.saturating_sub(earlier.stolen),
        }
    }

    /// Of `wall`, the time neither on a CPU nor waiting for one: blocked
    /// (I/O, a lock, a page fault's I/O), or stolen by the hypervisor.
    pub fn blocked(&self, wall: Duration) -> Duration {
        wall.saturating_sub(self.on_cpu + self.runnable)
    }

    /// Parses `schedstat` (`on_cpu_ns runnable_ns slices`), the thread's
    /// `stat` and the first line of `/proc/stat`.
    fn parse(schedstat: &str, stat: &str, system: &str) -> Option<Sched> {
        let mut ns = schedstat.split_whitespace().map(str::parse::<u64>);
        let on_cpu = Duration::from_nanos(ns.next()?.ok()?);
        let runnable = Duration::from_nanos(ns.next()?.ok()?);
        // After the command name: minflt is field 10, majflt field 12.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        Some(Sched {
            on_cpu,
            runnable,
            minor_faults: fields.get(7)?.parse().ok()?,
            major_faults: fields.get(9)?.parse().ok()?,
            // `cpu user nice system idle iowait irq softirq steal …`
            stolen: Duration::from_millis(
                system.split_whitespace().nth(8)?.parse::<u64>().ok()? * 1_000 / TICKS_PER_SECOND,
            ),
        })
    }
}

/// Reads the calling thread's [`Sched`] again and again (the files stay
/// open; a read costs a few microseconds). Only the thread that created
/// it is read, whichever thread reads.
#[derive(Debug)]
pub struct SchedReader {
    schedstat: std::fs::File,
    stat: std::fs::File,
    system: std::fs::File,
    buf: Vec<u8>,
}

impl SchedReader {
    /// Opens the calling thread's files; `None` where `/proc` lacks them.
    pub fn for_this_thread() -> Option<SchedReader> {
        let task = std::fs::read_link("/proc/thread-self").ok()?;
        let task = std::path::Path::new("/proc").join(task);
        Some(SchedReader {
            schedstat: std::fs::File::open(task.join("schedstat")).ok()?,
            stat: std::fs::File::open(task.join("stat")).ok()?,
            system: std::fs::File::open("/proc/stat").ok()?,
            buf: Vec::with_capacity(1024),
        })
    }

    /// The thread's figures now (zero if a read fails).
    pub fn read(&mut self) -> Sched {
        let schedstat = Self::read_file(&self.schedstat, &mut self.buf);
        let stat = Self::read_file(&self.stat, &mut self.buf);
        // The first line, the sum over CPUs, is all that is read.
        let system = Self::read_file(&self.system, &mut self.buf);
        Sched::parse(&schedstat, &stat, &system).unwrap_or_default()
    }

    fn read_file(file: &std::fs::File, buf: &mut Vec<u8>) -> String {
        use std::os::unix::fs::FileExt;
        buf.resize(buf.capacity().max(1024), 0);
        let n = file.read_at(buf, 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
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
    fn scheduler_figures_follow_the_thread() {
        let mut reader = SchedReader::for_this_thread().expect("Linux has /proc/thread-self");
        // Spinning adds time on a CPU (however long a busy machine makes
        // it wait for one), and touching fresh memory adds faults.
        let before = reader.read();
        let spin = Instant::now();
        let mut x = 0_u64;
        while reader.read().since(&before).on_cpu < Duration::from_millis(20)
            && spin.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let pages = vec![1_u8; 8 << 20];
        std::hint::black_box(&pages);
        let wall = spin.elapsed();
        let spent = reader.read().since(&before);
        assert!(spent.on_cpu >= Duration::from_millis(20), "{spent:?}");
        // The first read came a moment before the clock started.
        let slack = Duration::from_millis(1);
        assert!(
            spent.on_cpu + spent.runnable <= wall + slack,
            "{spent:?} in {wall:?}"
        );
        assert!(spent.minor_faults > 0, "8 MiB touched: {spent:?}");
        // Sleeping is neither on a CPU nor waiting for one.
        let before = reader.read();
        let asleep = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let wall = asleep.elapsed();
        let spent = reader.read().since(&before);
        assert!(
            spent.blocked(wall) >= Duration::from_millis(25),
            "{spent:?} in {wall:?}"
        );
        assert!(spent.on_cpu < Duration::from_millis(5), "{spent:?}");
    }

    #[test]
    fn scheduler_figures_parse() {
        let stat = "7 (a b) S 1 7 7 0 -1 4194560 120 0 3 0 5 6 0 0";
        let system = "cpu  1138857 1103 203008 3334913 10763 0 3551 2146 0 0\ncpu0 1 2";
        let sched = Sched::parse("159869 4200 1\n", stat, system).expect("parses");
        assert_eq!(sched.on_cpu, Duration::from_nanos(159_869));
        assert_eq!(sched.runnable, Duration::from_nanos(4_200));
        assert_eq!((sched.minor_faults, sched.major_faults), (120, 3));
        assert_eq!(sched.stolen, Duration::from_millis(21_460));
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
