//! Context vectors handed back from the engine to the reader thread that
//! decoded them, for the next records' contexts.
//!
//! A reader ahead of the engine (Kafka's, a file's) decodes each record's
//! context into a fresh vector on its own thread, and the engine frees it
//! on another once the sample is applied. With mimalloc a free from a
//! thread that does not own the page goes through the page's cross-thread
//! list, which the owner (or, for an abandoned page, the freeing thread)
//! collects later: 6 % of the engine thread's samples in bench 3's
//! logistic profile. Handed back, a vector is reused by the thread that
//! allocated it, and neither thread allocates or frees per record.
//!
//! Nothing here changes a result: a context is the same values in a
//! vector from the pool or a fresh one. The pool is bounded: a full
//! channel (a reader that does not keep up with what comes back) and a
//! reader that has stopped make the engine free the vectors as before.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

/// Vectors sent back together.
const RETURN_BATCH: usize = 256;

/// Sends of [`RETURN_BATCH`] vectors waiting for the reader; past them
/// the engine frees what it would send.
const RETURNS_IN_FLIGHT: usize = 4;

/// Vectors of larger capacity are freed, not handed back (a context far
/// longer than the usual would otherwise stay in circulation).
const MAX_CAPACITY: usize = 1024;

/// A channel for emptied context vectors: the engine's end and the
/// reader's.
pub fn channel() -> (ContextReturn, ContextSupply) {
    let (tx, rx) = sync_channel(RETURNS_IN_FLIGHT);
    (
        ContextReturn {
            spent: Vec::new(),
            tx,
        },
        ContextSupply {
            at_hand: Vec::new(),
            rx: Some(rx),
        },
    )
}

/// The engine's end: collects the contexts of applied samples and sends
/// them back 256 at a time. A clone starts with nothing
/// collected and sends to the same reader.
pub struct ContextReturn {
    spent: Vec<Vec<f32>>,
    tx: SyncSender<Vec<Vec<f32>>>,
}

impl Clone for ContextReturn {
    fn clone(&self) -> Self {
        Self {
            spent: Vec::new(),
            tx: self.tx.clone(),
        }
    }
}

impl std::fmt::Debug for ContextReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextReturn")
            .field("collected", &self.spent.len())
            .finish_non_exhaustive()
    }
}

impl ContextReturn {
    /// Takes a context that is no longer needed; one without room (a Beta
    /// sample's) or with too much is freed here.
    pub fn give(&mut self, context: Vec<f32>) {
        let capacity = context.capacity();
        if capacity == 0 || capacity > MAX_CAPACITY {
            return;
        }
        if self.spent.capacity() == 0 {
            self.spent.reserve_exact(RETURN_BATCH);
        }
        self.spent.push(context);
        if self.spent.len() >= RETURN_BATCH {
            // A full channel or a reader gone: the vectors are freed here.
            let _ = self.tx.try_send(std::mem::take(&mut self.spent));
        }
    }
}

/// The reader's end: hands out emptied vectors that came back, else
/// nothing (the decoder then allocates).
#[derive(Debug, Default)]
pub struct ContextSupply {
    at_hand: Vec<Vec<f32>>,
    rx: Option<Receiver<Vec<Vec<f32>>>>,
}

impl ContextSupply {
    /// A supply that never has a vector (for a reader without an engine
    /// that hands them back).
    pub fn none() -> Self {
        Self::default()
    }

    /// An empty vector with room, when one has come back (of any
    /// capacity).
    pub fn take(&mut self) -> Option<Vec<f32>> {
        if self.at_hand.is_empty() {
            let rx = self.rx.as_ref()?;
            match rx.try_recv() {
                // The emptied list came from the engine's thread: it is
                // dropped here, once per `RETURN_BATCH` vectors.
                Ok(batch) => self.at_hand = batch,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.rx = None;
                    return None;
                }
            }
        }
        let mut context = self.at_hand.pop()?;
        context.clear();
        Some(context)
    }

    /// An empty vector for `len` values: one that came back if its room
    /// fits (at least `len`, at most twice that or 16 values), else a new
    /// one. One that
    /// does not fit is freed: with versions of different dimensions, a
    /// large vector would otherwise hold a small context, and a buffered
    /// sample much more memory than its values.
    pub fn take_for(&mut self, len: usize) -> Vec<f32> {
        match self.take() {
            Some(context) if fits(context.capacity(), len) => context,
            _ => Vec::with_capacity(len),
        }
    }

    /// A fresh-context function for
    /// [`crate::sample::Sample::from_wire_fast_with`]: [`Self::take_for`].
    pub fn fresh(&mut self) -> impl FnMut(usize) -> Vec<f32> + '_ {
        move |len| self.take_for(len)
    }
}

/// Whether a vector with room for `capacity` values is reused for `len`.
fn fits(capacity: usize, len: usize) -> bool {
    capacity >= len && capacity <= len.saturating_mul(2).max(MIN_FIT)
}

/// Room up to which a vector fits any shorter context.
const MIN_FIT: usize = 16;

impl ContextSupply {
    /// Vectors at hand (for tests).
    #[cfg(test)]
    fn at_hand(&self) -> usize {
        self.at_hand.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors given on one end come out empty, with their room, on the
    /// other, once a whole batch is collected; the ones without room or
    /// with too much are not handed back.
    #[test]
    fn given_vectors_come_back_empty_a_batch_at_a_time() {
        let (mut back, mut supply) = channel();
        back.give(Vec::new());
        back.give(Vec::with_capacity(MAX_CAPACITY + 1));
        let pointers: Vec<*const f32> = (0..RETURN_BATCH)
            .map(|i| {
                let v = vec![i as f32; 32];
                let p = v.as_ptr();
                back.give(v);
                if i + 1 < RETURN_BATCH {
                    assert_eq!(supply.take(), None, "sent only once a batch is full");
                }
                p
            })
            .collect();
        let mut came_back = Vec::new();
        while let Some(v) = supply.take() {
            assert!(v.is_empty() && v.capacity() >= 32);
            came_back.push(v.as_ptr());
        }
        came_back.reverse();
        assert_eq!(came_back, pointers, "the same allocations, every one once");
    }

    /// A vector is reused only for a context it fits: not one too small
    /// (it would grow), not one far too large (it would hold a small
    /// context in much more memory); a misfit is freed and a new vector
    /// of the right room is given.
    #[test]
    fn a_vector_is_reused_only_for_a_context_it_fits() {
        let (mut back, mut supply) = channel();
        for i in 0..RETURN_BATCH {
            back.give(Vec::with_capacity(if i % 2 == 0 { 800 } else { 8 }));
        }
        // Taken last first: capacities 8, 800, 8, 800, ...
        let small = supply.take_for(8);
        assert_eq!(small.capacity(), 8, "a fitting vector is reused");
        let large = supply.take_for(8);
        assert_eq!(large.capacity(), 8, "an 800-room vector is not given for 8");
        let grown = supply.take_for(800);
        assert!(
            grown.capacity() >= 800,
            "an 8-room vector is not given for 800"
        );
        assert_eq!(supply.take_for(800).capacity(), 800, "a fitting one is");
        assert_eq!(supply.at_hand(), RETURN_BATCH - 4);
        assert!(fits(16, 1) && fits(16, 16) && fits(32, 16) && !fits(33, 16) && !fits(7, 8));
        let mut none = ContextSupply::none();
        assert_eq!(none.take(), None);
        assert_eq!(none.take_for(5).capacity(), 5);
    }

    /// Past the sends in flight the engine's end frees what it would send,
    /// and a stopped reader makes it do so from then on, without an error.
    #[test]
    fn a_full_channel_or_a_gone_reader_frees_the_vectors() {
        let (mut back, mut supply) = channel();
        for _ in 0..(RETURNS_IN_FLIGHT + 2) * RETURN_BATCH {
            back.give(vec![0.0; 4]);
        }
        let mut n = 0;
        while supply.take().is_some() {
            n += 1;
        }
        assert_eq!(n, RETURNS_IN_FLIGHT * RETURN_BATCH);
        drop(supply);
        for _ in 0..2 * RETURN_BATCH {
            back.give(vec![0.0; 4]);
        }
        let (mut unused, mut gone) = channel();
        drop(unused.clone());
        unused.give(vec![1.0]);
        drop(unused);
        assert_eq!(gone.take(), None, "nothing came back, the sender is gone");
        assert_eq!(gone.take(), None);
    }
}
