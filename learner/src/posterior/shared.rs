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
/// appear except by cloning an existing one. That is what lets the
/// engine's copy on write tell from the count alone, with a plain load,
/// that its handle is the only one, where `Arc::make_mut` needs a locked
/// compare-and-swap (which waits for every earlier store to reach the
/// cache) to rule out a weak pointer being upgraded meanwhile.
#[derive(Clone)]
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

    /// Whether no other handle to the state is alive (a plain load; see
    /// the type's documentation).
    #[inline]
    pub(crate) fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// The state, to update: copied first if another handle to it is
    /// alive. Measured in BENCHMARKS.md, "Updates without a locked
    /// instruction".
    #[inline]
    #[allow(unsafe_code)]
    pub(crate) fn make_mut(&mut self) -> &mut KeyState {
        if self.is_unique() {
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

impl std::fmt::Debug for SharedState {
    /// As the state itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
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
        assert!(state.is_unique());
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
        assert!(!state.is_unique() && !held.is_unique());
        bump(&model, &mut state);
        assert!(!SharedState::ptr_eq(&state, &held));
        assert_eq!((held.seq, state.seq), (1, 2));
        drop(held);

        // Held by another thread, which reads it and lets go while this
        // one waits for the count (no join in between: the fence is what
        // orders its reads before the writes here; on x86 a missing fence
        // shows only to a race detector such as Miri, which this project's
        // toolchains do not include).
        let held = state.clone();
        let reader = std::thread::spawn(move || assert_eq!(held.seq, 2));
        while !state.is_unique() {
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
        assert_eq!(format!("{a:?}"), format!("{:?}", KeyState::prior(&model)));
    }
}
