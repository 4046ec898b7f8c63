//! The tracer as a library: each module is one stage of the data flow
//!
//! `kernel` (what the running kernel is: BTF, kallsyms, FOLL_* values) → `sites` (where the
//! seqcount is touched, found in machine code) → `probes` (attach plan, eBPF load, ring buffer)
//! → `events` (decode and the schema-1 log) → `session` (plan, header, the tracing loop) →
//! `record` (JSON Lines writer) / `model` + `validate` (the protocol, replayed) → `export`
//! (Perfetto, CSV, the report) / `tui` (live view). `stress` is the workload that makes the kernel fork and pin; `check` runs it under
//! the recorder and judges the kernel.
pub mod check;
pub mod cli;
pub mod events;
pub mod export;
pub mod kernel;
pub mod model;
pub mod outfile;
pub mod probes;
pub mod record;
pub mod session;
pub mod sites;
pub mod stress;
pub mod tui;
pub mod validate;
