//! The log header: what was attached and how, what the kernel lacks, and the facts a reader
//! needs to judge the events (offsets, FOLL_* values, filters, clock slack).
use std::collections::BTreeMap;

use super::TraceArgs;
use crate::{
    events::{
        Header,
        schema::{SCHEMA, SCHEMA_MINOR},
    },
    probes::AttachPlan,
};

/// How far apart a seqcount access and its probe's timestamp may be, as a hint for the
/// validator. On bare metal the probe runs right next to the access with interrupts off
/// (100 us is generous); in a virtual machine the vCPU can be descheduled between the two for
/// milliseconds (measured up to ~13 ms under QEMU TCG on a loaded 2-core host), so 50 ms.
pub fn clock_slack_ns() -> u64 {
    let virtualized = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    });
    if virtualized { 50_000_000 } else { 100_000 }
}

pub fn header(plan: &AttachPlan, args: &TraceArgs) -> Header {
    let f = &plan.function.foll;
    let o = &plan.function.offsets;
    let mut extra = BTreeMap::new();
    extra.insert("minor".to_owned(), serde_json::json!(SCHEMA_MINOR));
    extra.insert("mode".to_owned(), serde_json::json!(plan.mode()));
    extra.insert("attach".to_owned(), serde_json::json!(plan.attach.as_str()));
    extra.insert(
        "foll".to_owned(),
        serde_json::json!({"pin": f.pin, "fast_only": f.fast_only, "longterm": f.longterm, "source": f.source.as_str()}),
    );
    extra.insert(
        "offsets".to_owned(),
        serde_json::json!({"task_mm": o.task_mm, "mm_seq": o.mm_seq, "vma_mm": o.vma_mm, "vma_flags": o.vma_flags, "vma_anon_vma": o.vma_anon_vma}),
    );
    extra.insert(
        "filter".to_owned(),
        serde_json::json!({"pid": args.pid, "comm": args.comm}),
    );
    extra.insert("ring_size".to_owned(), serde_json::json!(args.ring_size));
    extra.insert(
        "clock_slack_ns".to_owned(),
        serde_json::json!(clock_slack_ns()),
    );
    let notes: Vec<&String> = plan
        .function
        .missing
        .iter()
        .chain(&plan.site_notes)
        .collect();
    extra.insert("missing".to_owned(), serde_json::json!(notes));
    if let Some(d) = &plan.discovery {
        extra.insert("discovery".to_owned(), d.clone());
    }
    Header {
        schema: SCHEMA,
        tool: format!("tracer {}", env!("CARGO_PKG_VERSION")),
        kernel: plan.function.release.clone(),
        probes: plan.probe_infos(),
        extra,
    }
}
