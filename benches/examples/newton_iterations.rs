//! How many Newton iterations a diagonal d = 32 update takes, for a young
//! state (512 samples, where `posterior_update` starts timing) and for the
//! same state after it has absorbed more samples, as it has late in a
//! criterion measurement. Explains why the in-hand and `_fresh` figures of
//! `posterior_update` differ.
//!
//! Run: `cargo run --release -p posterior-benches --example newton_iterations`

use posterior_benches::{BatchCycle, ObservationPool, WARM_UP_SAMPLES, warm_diagonal};

const DIM: usize = 32;
/// Samples absorbed at each checkpoint of the table, after the warm-up.
const CHECKPOINTS: [usize; 4] = [0, 16_384, 262_144, 4_194_304];
/// Updates averaged at each checkpoint (not absorbed into the state).
const PROBES: usize = 256;

fn main() {
    let pool = ObservationPool::standard(DIM);
    let observations = pool.observations();
    println!("diagonal d={DIM}: mean Newton iterations per update");
    println!(
        "{:>10} {:>8} {:>8} {:>8}",
        "samples", "batch1", "batch16", "batch64"
    );
    for checkpoint in CHECKPOINTS {
        let mut row = format!("{:>10}", WARM_UP_SAMPLES + checkpoint);
        for batch in [1, 16, 64] {
            let (prior, mut post) = warm_diagonal(&pool);
            let mut cycle = BatchCycle::new(observations.len(), batch);
            for _ in 0..checkpoint / batch {
                post.update(&prior, None, 0, &observations[cycle.next_range()])
                    .expect("pool observations are valid");
            }
            let iterations: u32 = (0..PROBES)
                .map(|_| {
                    let mut probe = post.clone();
                    probe
                        .update(&prior, None, 0, &observations[cycle.next_range()])
                        .expect("pool observations are valid")
                        .newton_iterations
                })
                .sum();
            row += &format!(" {:>8.2}", f64::from(iterations) / PROBES as f64);
        }
        println!("{row}");
    }
}
