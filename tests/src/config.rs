//! Learner configs of the end-to-end tests: one model setup (a Beta and a
//! 4-dimensional logistic version, micro-batches, dedup) over a file, a
//! broker or the simulator, so every test checks the same rules.

use std::path::Path;

/// The allowed out-of-orderness every generated log is made for.
pub const OUT_OF_ORDERNESS_MS: i64 = 200;

/// Where the learner reads from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A JSONL file.
    File(&'a Path),
    /// The `samples` topic of a broker (`bootstrap.servers`).
    Kafka(&'a str),
    /// The simulator with this seed: `samples` samples, or unbounded.
    /// Its label delays (mean 50 ms, at most 1 s) exceed the allowed
    /// out-of-orderness now and then, so some samples are late.
    Simulator {
        /// The simulator's seed.
        seed: u64,
        /// Samples before the input ends; `None` = never.
        samples: Option<u64>,
    },
}

/// A learner config whose state and dead letters live in `dir` under
/// `name`, checkpointing every `checkpoint_every` records (and second);
/// `publish` names a broker whose `params` topic gets the updates.
pub fn learner_toml(
    dir: &Path,
    name: &str,
    source: Source<'_>,
    checkpoint_every: u64,
    publish: Option<&str>,
) -> String {
    let source = match source {
        Source::File(path) => format!(
            "kind = \"file\"\npath = \"{}\"\nformat = \"jsonl\"",
            path.display()
        ),
        Source::Kafka(bootstrap) => {
            format!("kind = \"kafka\"\nbrokers = \"{bootstrap}\"\ntopic = \"samples\"")
        }
        Source::Simulator { seed, samples } => format!(
            "kind = \"simulator\"\nseed = {seed}\n{}versions = [\"beta\", \"logistic\"]\n\
             docs = 5000\ndim = 4\ncandidates = 10\nctr = \"high\"\nstep_ms = 2\n\
             mean_label_delay_ms = 50\nmax_label_delay_ms = 1000",
            samples.map_or_else(String::new, |n| format!("samples = {n}\n")),
        ),
    };
    let publish = publish.map_or_else(String::new, |bootstrap| {
        format!(
            "[publish]\ninterval_ms = 50\n\n[publish.kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"params\"\n"
        )
    });
    format!(
        r#"
[state]
dir = "{state}"
checkpoint_every_records = {checkpoint_every}
checkpoint_every_ms = 1000

[source]
{source}

[order]
out_of_orderness_ms = {OUT_OF_ORDERNESS_MS}
reorder_capacity = 100000

[batch]
max_samples = 8
max_positives = 1
max_age_ms = 2000

[dedup]
window_ms = 60000
max_ids = 1000000

[dead_letter]
path = "{dead}"

{publish}
[[versions]]
name = "beta"
model = "beta"
reward_label = "click"

[[versions]]
name = "logistic"
model = "logistic"
dim = 4
prior_mean = [-3.0, 0.0, 0.0, 0.0]
reward_label = "click"
"#,
        state = dir.join(format!("{name}-state")).display(),
        dead = dir.join(format!("{name}-dead.jsonl")).display(),
    )
}

/// `text`, a [`learner_toml`], with its dead letters sent to `topic` of
/// the broker at `bootstrap` instead of its file.
///
/// # Panics
/// When `text` has no dead-letter file.
pub fn dead_letters_to_topic(text: &str, bootstrap: &str, topic: &str) -> String {
    let start = text
        .find("[dead_letter]\npath = ")
        .expect("a dead-letter file");
    let end = start + text[start..].find("\"\n").expect("the path ends its line") + 2;
    format!(
        "{}[dead_letter]\nkind = \"kafka\"\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\n{}",
        &text[..start],
        &text[end..]
    )
}
