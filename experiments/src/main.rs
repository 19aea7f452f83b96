//! `experiments`: runs one scenario, prints its table and writes
//! `summary.json`, curve CSVs and PNG plots. See the crate docs.

use anyhow::Result;
use clap::Parser;
use posterior_experiments::cli::Cli;
use posterior_experiments::run::run;

fn main() -> Result<()> {
    run(Cli::parse())
}
