//! `learner` binary. The streaming pipeline (sources, watermarks,
//! checkpoints) lands with the learner-pipeline issue; until then this
//! binary only reports what it is.

fn main() {
    println!(
        "posterior learner {}: the streaming pipeline is not built yet; \
         run `experiments headline` for the learning core",
        env!("CARGO_PKG_VERSION")
    );
}
