//! Runs independent simulation jobs (seed × policy) on a few threads, with
//! one progress bar on stderr.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};

/// Upper bound on worker threads, whatever the machine says.
pub const THREADS_MAX: usize = 64;

/// Steps between progress-bar updates inside a job (keeps the bar cheap).
pub const PROGRESS_EVERY_STEPS: u64 = 16_384;

/// How jobs run: thread count and whether to draw a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Runner {
    /// Worker threads (≥ 1).
    pub threads: usize,
    /// Draw the progress bar (off in tests).
    pub progress: bool,
}

impl Runner {
    /// One thread per core (bounded), progress on.
    pub fn from_machine() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            threads: threads.clamp(1, THREADS_MAX),
            progress: true,
        }
    }

    /// Quiet, for tests.
    pub fn quiet(threads: usize) -> Self {
        Self {
            threads: threads.clamp(1, THREADS_MAX),
            progress: false,
        }
    }

    /// A progress bar counting `total_steps`, hidden when progress is off.
    pub fn bar(&self, label: &str, total_steps: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total_steps);
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {percent:>3}% eta {eta}",
        )
        .expect("the template is a valid literal");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(500));
        bar
    }

    /// Runs `work` on every job, up to `threads` at a time, and returns
    /// the results in job order. The first error wins.
    pub fn map<J, T, F>(&self, jobs: &[J], work: F) -> Result<Vec<T>>
    where
        J: Sync,
        T: Send,
        F: Fn(&J) -> Result<T> + Sync,
    {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<T>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        let workers = self.threads.min(jobs.len()).max(1);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let out = work(job);
                        let failed = out.is_err();
                        results.lock().expect("no worker panics while holding it")[i] = Some(out);
                        if failed {
                            next.store(jobs.len(), Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let results = results.into_inner().expect("workers have finished");
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(r.ok_or_else(|| anyhow!("job skipped after an earlier failure"))??);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_job_order() {
        let jobs: Vec<u64> = (0..20).collect();
        let out = Runner::quiet(3).map(&jobs, |&j| Ok(j * j)).unwrap();
        assert_eq!(out, jobs.iter().map(|j| j * j).collect::<Vec<_>>());
    }

    #[test]
    fn map_reports_errors() {
        let jobs = [1, 2, 3];
        let err = Runner::quiet(2)
            .map(
                &jobs,
                |&j| if j == 2 { Err(anyhow!("boom")) } else { Ok(j) },
            )
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
