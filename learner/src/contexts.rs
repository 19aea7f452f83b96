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
/// them back [`RETURN_BATCH`] at a time. A clone starts with nothing
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

    /// An empty vector with room, when one has come back.
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

    /// A fresh-context function for [`crate::sample::Sample::from_wire_fast_with`]:
    /// a vector that came back, else a new empty one.
    pub fn fresh(&mut self) -> impl FnMut() -> Vec<f32> + '_ {
        move || self.take().unwrap_or_default()
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
