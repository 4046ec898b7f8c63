//! What the running (or a given) kernel is: its BTF layouts, its symbols, its FOLL_* values,
//! and which functions the probes attach to.
pub mod btf;
pub mod foll;
pub mod image;
pub mod kallsyms;
pub mod target;
pub mod tracepoints;
