//! `tracer`: observe `mm->write_protect_seq` (fork's COW copy vs. GUP-fast) in a live kernel.
//!
//! Exit status: 0 success (or a clean verdict), 1 violations found, 2 bad input or an
//! environment that cannot be traced (one sentence on stderr), 3 inconclusive verdict.
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version,
    about = "Trace and validate the write_protect_seq protocol between fork and GUP-fast"
)]
struct Cli {
    /// More diagnostics on stderr: -v adds what the tool is doing, -vv debugging detail.
    /// Warnings (e.g. the eBPF programs' own diagnostics) show without it; RUST_LOG, when set,
    /// overrides (e.g. RUST_LOG=tracer=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Routes `log` records (ours, and the eBPF programs' through aya-log) to stderr, one line
/// each. While the TUI runs, stderr is its messages pane.
fn init_logging(verbose: u8) {
    use std::io::Write as _;
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, r| {
            // aya-log gives the eBPF programs' records the eBPF crate's name as their target;
            // userspace records come from `tracer::<module>`.
            let from = if r.target() == "tracer" { " bpf:" } else { "" };
            writeln!(
                buf,
                "tracer: {}:{from} {}",
                r.level().as_str().to_ascii_lowercase(),
                r.args()
            )
        })
        .init();
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
    /// Write a log as a Perfetto/chrome://tracing timeline, a CSV table or a filtered log.
    Export(tracer::export::Args),
    /// Write a Markdown report with SVG charts and the validator's verdict.
    Report(tracer::export::report::Args),
    /// Workload: fork a process with dirty private memory while pinning pages through GUP-fast.
    Stress(tracer::stress::Args),
    /// Validate this kernel in one command: record `stress`, judge the log, write a report.
    Check(tracer::check::Args),
    /// Print, as JSON, what a tracer could have left in the kernel (BPF programs and maps,
    /// kprobes, memory): for tests that attach and detach many times.
    #[command(hide = true)]
    Leftovers,
    /// One operation in a loop (fork, or a GUP-fast pin), timed: what `cargo xtask bench`
    /// measures with and without tracing.
    #[command(hide = true)]
    Workload(tracer::stress::load::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Record(a) => tracer::record::main(a),
        Command::Sites(a) => tracer::sites::main(a),
        Command::Validate(a) => tracer::validate::main(a),
        Command::Model(a) => tracer::model::main(a),
        Command::Tui(a) => tracer::tui::main(a),
        Command::Export(a) => tracer::export::main(a),
        Command::Report(a) => tracer::export::report::main(a),
        Command::Stress(a) => tracer::stress::main(a),
        Command::Check(a) => tracer::check::main(a),
        Command::Workload(a) => tracer::stress::load::main(a),
        Command::Leftovers => serde_json::to_string(&tracer::probes::leftovers::collect())
            .map_err(anyhow::Error::from)
            .and_then(|j| tracer::outfile::print(&(j + "\n")).context("writing to standard output"))
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracer: {e:#}");
            ExitCode::from(2)
        }
    }
}
