#![no_std]
// This library target exists so that `tracer` can name this crate as a build dependency and
// cargo rebuilds the eBPF object when it changes.
