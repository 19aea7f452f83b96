//! [`SharedState`]: a key's state as the engine shares it with the
//! publications and checkpoints that took it.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use super::KeyState;

/// A key's state, shared read-only: cloning it counts a reference, it
/// copies nothing. The engine's table holds one per key; a publish or a
/// checkpoint takes a clone, and the key's next update copies the state
/// first if such a clone is still alive (copy on write), so what was taken
/// never changes.
///
/// Unlike an `Arc`, it cannot be weakly referenced: no handle to it can
/// appear except by cloning an existing one. That is what lets
/// [`SharedState::make_mut`] tell that it holds the only handle from the
/// count alone, with a plain load, where `Arc::make_mut` needs a locked
/// compare-and-swap (which waits for every earlier store to reach the
/// cache) to rule out a weak pointer being upgraded meanwhile.
#[derive(Debug, Clone)]
pub struct SharedState(Arc<KeyState>);

impl SharedState {
    /// Shares `state`.
    pub fn new(state: KeyState) -> Self {
        Self(Arc::new(state))
    }

    /// Whether both handles share one state.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// Where the state lies (for prefetching).
    pub(crate) fn as_ptr(&self) -> *const KeyState {
        Arc::as_ptr(&self.0)
    }

    /// The state, to update: copied first if another handle to it is alive.
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn make_mut(&mut self) -> &mut KeyState {
        if Arc::strong_count(&self.0) == 1 {
            // Pairs with the release decrement of whichever thread dropped
            // the last other handle: its reads of the state happen before
            // the writes through the returned borrow.
            fence(Ordering::Acquire);
            // SAFETY: the count is 1, so `self` is the only handle; no
            // weak pointer exists (the `Arc` never leaves this type, and
            // this type makes none), and another handle can only be
            // cloned from `self`, which is borrowed mutably for as long
            // as the returned borrow lives. Nothing else reads or writes
            // the state meanwhile. `Arc::as_ptr` keeps the allocation's
            // write permission (it goes through no shared reference), as
            // `Arc::get_mut` does.
            return unsafe { &mut *Arc::as_ptr(&self.0).cast_mut() };
        }
        Arc::make_mut(&mut self.0)
    }
}

impl Deref for SharedState {
    type Target = KeyState;

    #[inline]
    fn deref(&self) -> &KeyState {
        &self.0
    }
}

impl PartialEq for SharedState {
    /// Equal states, shared or not.
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl From<KeyState> for SharedState {
    fn from(state: KeyState) -> Self {
        Self::new(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posterior::{BetaPrior, ModelKind, ModelSpec, Observation};

    fn bump(model: &ModelSpec, state: &mut SharedState) {
        state
            .make_mut()
            .update(model, &[Observation::new(&[], true)])
            .unwrap();
    }

    #[test]
    fn a_state_is_updated_in_place_only_when_no_other_handle_is_alive() {
        let model = ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM));
        let mut state = SharedState::new(KeyState::prior(&model));

        // The only handle: updated where it lies.
        let at = state.as_ptr();
        bump(&model, &mut state);
        assert_eq!(
            state.as_ptr(),
            at,
            "a state nobody else holds is not copied"
        );
        assert_eq!(state.seq, 1);

        // A publish holds it: copied, and the held one stays as it was.
        let held = state.clone();
        bump(&model, &mut state);
        assert!(!SharedState::ptr_eq(&state, &held));
        assert_eq!((held.seq, state.seq), (1, 2));
        drop(held);

        // Held by another thread, which reads it and lets go while this
        // one waits for the count (no join in between: the fence is what
        // orders its reads before the writes here).
        let held = state.clone();
        let reader = std::thread::spawn(move || assert_eq!(held.seq, 2));
        while Arc::strong_count(&state.0) > 1 {
            std::hint::spin_loop();
        }
        let at = state.as_ptr();
        bump(&model, &mut state);
        assert_eq!(state.as_ptr(), at, "unique again once the reader let go");
        assert_eq!(state.seq, 3);
        reader.join().unwrap();
    }

    #[test]
    fn handles_compare_by_state() {
        let model = ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM));
        let a = SharedState::new(KeyState::prior(&model));
        let b = SharedState::from(KeyState::prior(&model));
        assert!(!SharedState::ptr_eq(&a, &b));
        assert_eq!(a, b);
    }
}
