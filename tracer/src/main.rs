//! `tracer`: observe `mm->write_protect_seq` (fork's COW copy vs. GUP-fast) in a live kernel.
//!
//! Exit status: 0 success (or a clean verdict), 1 violations found, 2 bad input or an
//! environment that cannot be traced (one sentence on stderr), 3 inconclusive verdict.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version,
    about = "Trace and validate the write_protect_seq protocol between fork and GUP-fast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach the probes and write the event log (JSON Lines, schema 1).
    Record(tracer::record::Args),
    /// Print the attach plan: every probe and instruction site, and what this kernel lacks.
    Sites(tracer::sites::Args),
    /// Replay an event log through the protocol model and judge it.
    Validate(tracer::validate::Args),
    /// Explore the protocol model exhaustively (and its broken variants).
    Model(tracer::model::Args),
    /// Live terminal UI (or --replay a recorded log).
    Tui(tracer::tui::Args),
    /// Workload: fork a process with dirty private memory while pinning pages through GUP-fast.
    Stress(tracer::stress::Args),
    /// Validate this kernel in one command: record `stress`, judge the log, write a report.
    Check(tracer::check::Args),
    /// Print, as JSON, what a tracer could have left in the kernel (BPF programs and maps,
    /// kprobes, memory): for tests that attach and detach many times.
    #[command(hide = true)]
    Leftovers,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(a) => tracer::record::main(a),
        Command::Sites(a) => tracer::sites::main(a),
        Command::Validate(a) => tracer::validate::main(a),
        Command::Model(a) => tracer::model::main(a),
        Command::Tui(a) => tracer::tui::main(a),
        Command::Stress(a) => tracer::stress::main(a),
        Command::Check(a) => tracer::check::main(a),
        Command::Leftovers => serde_json::to_string(&tracer::probes::leftovers::collect())
            .map(|j| {
                println!("{j}");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            ExitCode::from(2)
        }
    }
}
