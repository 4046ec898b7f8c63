//! `cargo xtask test` and `cargo xtask run`.
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct TestArgs {}

#[derive(clap::Args)]
pub struct RunArgs {}

pub fn test(_a: TestArgs) -> Result<ExitCode> {
    anyhow::bail!("not yet")
}

pub fn run(_a: RunArgs) -> Result<ExitCode> {
    anyhow::bail!("not yet")
}
