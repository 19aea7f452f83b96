//! A cache prefetch hint.
//!
//! The engine releases samples in groups (everything below the new
//! watermark) and publishes changed keys in groups; each member needs
//! memory that is out of the caches (a buffered sample's context, its
//! key's state). Asking for all of it first, then processing, overlaps
//! those misses instead of waiting for each in turn. The param-server's
//! table reads a request's docs the same way.

/// How many records ahead of the one handed to the engine a source asks
/// for a record and its sample's context. A reader thread decoded them on
/// the other core, so the engine's first touch of one (copying it into the
/// sample log) would wait for its cache lines to come over: ~10 % of the
/// engine's thread in bench 3 at d = 32. A few records' work (about a
/// microsecond each at d = 32) is enough time for them to arrive. The
/// Kafka and file read-aheads use it, and bench 1's feed.
pub const RECORDS_AHEAD: usize = 4;

/// Asks the CPU to bring the cache line holding `target` into the caches.
/// A hint with no effect on the program's meaning: nothing is read, and a
/// pointer to freed or unmapped memory is harmless.
#[inline(always)]
pub fn prefetch<T: ?Sized>(target: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` does not access memory architecturally (it
    // cannot fault, even on an invalid address), and SSE is part of the
    // x86_64 baseline, so the instruction exists on every target this
    // compiles for.
    #[allow(unsafe_code)]
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(target.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = target;
}

/// Prefetches every cache line of `items` (a sample's context, a
/// posterior's vectors).
#[inline]
pub fn prefetch_slice<T>(items: &[T]) {
    const LINE: usize = 64;
    let bytes = std::mem::size_of_val(items);
    let start = items.as_ptr().cast::<u8>();
    for offset in (0..bytes).step_by(LINE) {
        prefetch(start.wrapping_add(offset));
    }
    // The steps start mid-line unless `items` is aligned: the last byte
    // can sit one line past the last step.
    if bytes > 0 {
        prefetch(start.wrapping_add(bytes - 1));
    }
}
