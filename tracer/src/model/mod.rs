//! `tracer model`: the `write_protect_seq` protocol as step machines ([`machine`]), an
//! exhaustive explorer of their interleavings ([`explore`]), and logs generated from them
//! ([`generate`]).
//!
//! `tracer model check` proves, for a configuration, that no FOLL_PIN GUP-fast keeps a pin
//! taken while a COW write section of the same mm was open (nor one on a page fork shared
//! with the child meanwhile), and prints a shortest counterexample for each broken variant.
pub mod explore;
pub mod generate;
pub mod machine;

use std::{
    io::{self, BufWriter, Write},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Subcommand;
pub use explore::{Counterexample, Outcome, explore};
pub use machine::{Broken, Config, State, Step, Variant, What, Who};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Explore every interleaving; print the proof, or the shortest counterexample.
    Check(CheckArgs),
    /// Write a random schema-1 log from the model (for tests, benchmarks and demos).
    Generate(GenerateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Which protocol to explore; by default all, expecting the correct one to hold and every
    /// broken variant to fail.
    #[arg(long, value_enum)]
    pub variant: Option<Variant>,
    /// Forking threads (each copies the COW VMA once, serialized by mmap_lock).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub writers: u8,
    /// GUP-fast threads pinning the VMA's page.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub readers: u8,
    /// Readers use FOLL_FAST_ONLY (no slow-path fallback).
    #[arg(long)]
    pub fast_only: bool,
    /// With one --variant: print the counterexample as a schema-1 event log instead (pipe it
    /// to `tracer validate -`).
    #[arg(long, requires = "variant")]
    pub log: bool,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Number of events (at most 10^10).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000_000))]
    pub events: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Processes (one mm each; 1-1024).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub mms: u32,
    /// Forking threads per process (1-16).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub writers: u8,
    /// Pinning threads per process (1-64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub readers: u8,
    #[arg(long, value_enum, default_value_t = Variant::Correct)]
    pub variant: Variant,
    #[arg(long)]
    pub fast_only: bool,
    /// Only function-level kinds (no write_*, read_*, retry_fail).
    #[arg(long)]
    pub function_level: bool,
    /// Delivery order is shuffled within blocks of this many events (at most 65536).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=65_536))]
    pub jitter: usize,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<String>,
}

/// The text report of one exploration.
pub fn render(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = format!(
        "variant {}: {}\n  {} writer(s) x {} reader(s){}: {} states, {} transitions, {} final states\n",
        c.variant,
        c.variant.describe(),
        c.writers,
        c.readers,
        if c.fast_only { " (FOLL_FAST_ONLY)" } else { "" },
        o.states,
        o.transitions,
        o.terminal
    );
    match &o.counterexample {
        None => s.push_str(
            "  property holds: no FOLL_PIN GUP-fast keeps a pin taken while a COW write section was open, \
             nor one on a page fork shared with its child meanwhile\n",
        ),
        Some(cx) => {
            s.push_str(&format!("  COUNTEREXAMPLE ({} steps): {}\n", cx.steps.len(), cx.broken));
            for (i, st) in cx.steps.iter().enumerate() {
                let ev = if st.what.kind().is_some() { " " } else { "*" };
                s.push_str(&format!("  {:>3}{ev} {st}\n", i + 1));
            }
            if let Some(d) = &o.damage {
                s.push_str(&format!("  and the damage it leads to ({} steps): {}\n", d.steps.len(), d.broken));
                for (i, st) in d.steps.iter().enumerate() {
                    let ev = if st.what.kind().is_some() { " " } else { "*" };
                    s.push_str(&format!("  {:>3}{ev} {st}\n", i + 1));
                }
            }
            s.push_str("  (* = internal step, no event in the log)\n");
        }
    }
    s
}

fn check(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let cfg = |variant| Config {
        variant,
        writers: a.writers,
        readers: a.readers,
        fast_only: a.fast_only,
    };
    let mut out = io::stdout().lock();
    if let Some(v) = a.variant {
        let o = explore(&cfg(v))?;
        if a.log {
            let Some(cx) = &o.counterexample else {
                anyhow::bail!("variant {v} has no counterexample to print as a log");
            };
            generate::write_path_log(&mut out, &o.config, &cx.steps)?;
            return Ok(ExitCode::SUCCESS);
        }
        write!(out, "{}", render(&o))?;
        return Ok(ExitCode::from(u8::from(o.counterexample.is_some())));
    }
    // All variants: success means the model behaves as the kernel argument says it must.
    let mut as_expected = true;
    for v in Variant::ALL {
        let o = explore(&cfg(v))?;
        writeln!(out, "{}", render(&o))?;
        let expected_broken = v != Variant::Correct;
        as_expected &= o.counterexample.is_some() == expected_broken;
    }
    writeln!(
        out,
        "{}",
        if as_expected {
            "as expected: the protocol holds and each broken variant has a counterexample"
        } else {
            "UNEXPECTED: see above"
        }
    )?;
    Ok(ExitCode::from(u8::from(!as_expected)))
}

fn generate_cmd(a: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let opts = generate::GenOptions {
        events: a.events,
        seed: a.seed,
        mms: a.mms,
        writers: a.writers,
        readers: a.readers,
        variant: a.variant,
        fast_only: a.fast_only,
        instruction_sites: !a.function_level,
        jitter: a.jitter,
        extras: true,
    };
    match &a.output {
        Some(p) => {
            let f = crate::outfile::create(std::path::Path::new(p), false)
                .with_context(|| format!("cannot create {p}"))?;
            let mut w = BufWriter::new(f);
            generate::generate(&mut w, &opts)?;
            w.flush()?;
        }
        None => {
            let mut w = io::stdout().lock();
            generate::generate(&mut w, &opts)?;
            w.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        ModelCommand::Check(a) => check(a),
        ModelCommand::Generate(a) => generate_cmd(a),
    }
}
