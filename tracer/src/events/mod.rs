//! The event log (schema 1): the typed records every part of the tracer exchanges.
//!
//! Data flow: the BPF ring buffer yields `RawEvent`s, [`decode`] turns them into [`Event`]s
//! (naming mms, decoding FOLL_* flags), the recorder writes them as JSON Lines with
//! [`schema`], and the validator and the TUI read the same lines back. The schema is documented
//! in `docs/event-log.md`. Every reader and writer of logs goes through [`log`]; [`text`]
//! is the one-line-per-event form people read (the TUI's tail, `tracer record` on a terminal).
pub mod decode;
pub mod fast;
pub mod log;
pub mod schema;
pub mod text;

pub use schema::{Body, Bracket, CopyFn, Event, Header, Kind, ProbeInfo, Record, Summary};
