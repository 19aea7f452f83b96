//! Scheduling priority of the learner's helper threads.
//!
//! On a machine with few cores the checkpoint writer competes with the
//! ingest thread for a CPU (a RocksDB write encodes, logs and inserts into
//! the memtable on the calling thread); at equal priority the ingest
//! thread waits for whole time slices, and the wait shows as an ingestion
//! stall (bench 4's windows: "waiting for one"). A helper that runs at a
//! lower priority takes the CPU the ingest thread leaves and yields it
//! when ingestion wants it back. RocksDB's own flush and compaction
//! threads are started by the store's open and keep its priority.

/// The niceness of the checkpoint writer: Linux's CFS gives a thread at
/// nice 10 about a tenth of the CPU time of one at nice 0 when both want
/// the same CPU, and all of an otherwise idle one.
pub const HELPER_NICENESS: i32 = 10;

/// Lowers the calling thread's priority to `niceness` (Linux: niceness is
/// per thread); a thread already as nice or nicer (a learner started
/// under `nice`) is left alone. A process cannot raise its priority back
/// without privilege, so only helper threads call this, never the ingest
/// thread. Errors are returned, not fatal: a thread left at normal
/// priority is slower to yield, not wrong.
pub fn lower_this_thread(niceness: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if this_thread().is_some_and(|now| now >= niceness) {
            return Ok(());
        }
        // SAFETY: `setpriority` takes plain integers and touches no memory
        // of ours; `who = 0` with `PRIO_PROCESS` names the calling thread
        // on Linux.
        #[allow(unsafe_code)]
        let status = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, niceness) };
        if status != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = niceness;
    Ok(())
}

/// The calling thread's niceness (Linux), `None` where it cannot be read.
pub fn this_thread() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // After the command name: priority is field 18, nice field 19.
        stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(16)?
            .parse()
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_stays_lowered_and_others_do_not_follow() {
        let before = this_thread();
        let lowered = std::thread::spawn(|| {
            lower_this_thread(HELPER_NICENESS).expect("lowering needs no privilege");
            this_thread()
        })
        .join()
        .expect("thread");
        if cfg!(target_os = "linux") {
            let before = before.expect("/proc/thread-self/stat");
            assert_eq!(lowered, Some(HELPER_NICENESS.max(before)));
            assert_eq!(
                this_thread(),
                Some(before),
                "the caller's priority is its own"
            );
        }
    }
}
