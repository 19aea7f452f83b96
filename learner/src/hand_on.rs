//! Handing items on to a bounded channel without blocking in `send`: the
//! readers ahead of the engine (Kafka's and the files') use it.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

/// How long a reader naps before it tries again to hand on a batch to a
/// full channel (see [`hand_on`]): well under what the Kafka read-ahead's
/// batches last the engine (8 × 256 records, ~0.7 ms at 3 M records/s).
const FULL_NAP: Duration = Duration::from_micros(200);

/// Hands `item` on through `tx` without blocking on a full channel.
/// Blocked in `send`, a reader that is ahead of the engine (the usual
/// case) made every `recv` of the engine wake it: a futex call on the
/// engine's thread per batch, 2 % of its samples in bench 3. Instead, the
/// reader naps [`FULL_NAP`] (or until unparked) and tries again, so the
/// engine never has a sender to wake. False when the receiver is gone or
/// `stopped` says so.
pub(crate) fn hand_on<T>(tx: &SyncSender<T>, mut item: T, stopped: impl Fn() -> bool) -> bool {
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if stopped() {
                    return false;
                }
                item = back;
                std::thread::park_timeout(FULL_NAP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::sync_channel;

    use super::*;

    /// A full channel: the hand-on waits for room (naps, tries again) and
    /// delivers in order; it gives up when the receiver goes or when told
    /// to stop, instead of napping for ever.
    #[test]
    fn a_hand_on_to_a_full_channel_waits_for_room_or_gives_up() {
        let (tx, rx) = sync_channel(1);
        assert!(hand_on(&tx, 1, || false));
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let taken = (rx.recv().unwrap(), rx.recv().unwrap());
            (taken, rx)
        });
        assert!(hand_on(&tx, 2, || false), "room came after the nap");
        let ((first, second), rx) = taker.join().unwrap();
        assert_eq!((first, second), (1, 2));

        assert!(hand_on(&tx, 3, || false));
        let stop = AtomicBool::new(false);
        let stopper = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                stop.store(true, Ordering::Relaxed);
            });
            hand_on(&tx, 4, || stop.load(Ordering::Relaxed))
        });
        assert!(!stopper, "told to stop while the channel stayed full");
        assert_eq!(rx.try_recv(), Ok(3), "the refused item was not sent");
        assert!(rx.try_recv().is_err());

        assert!(hand_on(&tx, 5, || false));
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(rx);
        });
        assert!(!hand_on(&tx, 6, || false), "the receiver went");
        dropper.join().unwrap();
    }
}
