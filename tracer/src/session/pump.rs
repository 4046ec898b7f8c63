//! The tracing loop shared by `tracer record` and the live TUI: attach, run the workload, drain
//! the ring buffer through the decoder into a [`Sink`], report losses as they happen, and end
//! with a summary on every exit path (duration, workload exit, the consumer's [`Cancel`]).
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tracer_common::{PROBE_COUNT, Probe};

use super::{Cancel, TraceArgs, header};
use crate::{
    events::{
        Body, CopyFn, Event, Record, Summary,
        decode::{Decoded, Decoder},
    },
    kernel::target::Hook,
    probes::{AttachPlan, Losses, Options, Raw, Session},
};

/// Test hook: with this variable set (to anything), tracing starts with `copy_page_range`'s
/// pairing map full, which provokes the eBPF side's "pairing map full" diagnostic (the copies'
/// exits then carry null seqs). The VM tests use it to see a BPF diagnostic reach stderr and
/// the TUI; an environment variable, so that no command line grows a test-only option.
pub const TEST_FULL_PAIRING_MAP: &str = "TRACER_TEST_FULL_PAIRING_MAP";

/// Test hook: with this variable set, the return probes are left out of the plan (and so of
/// the header's `probes`), so every thread's last call is still open in the kernel when
/// tracing stops. The VM tests use it to see the calls the end of tracing interrupted reach
/// the log (`open_at_end`), which otherwise happens only when a call is running at that
/// instant.
pub const TEST_NO_RETURN_PROBES: &str = "TRACER_TEST_NO_RETURN_PROBES";

/// Where decoded output goes. `put` may wait (backpressure): the ring buffer then fills and
/// the kernel counts the losses, which reach the sink as `lost` records.
#[allow(async_fn_in_trait)]
pub trait Sink {
    async fn put(&mut self, rec: Record) -> Result<()>;
    /// One event. Sinks that only write it out take it by reference, so the decoder's
    /// buffers are reused from record to record; the default hands over a copy.
    async fn put_event(&mut self, e: &Event) -> Result<()> {
        self.put(Record::Event(e.clone())).await
    }
    /// Called after each ring-buffer batch.
    async fn batch_done(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a finished trace did.
pub struct PumpStats {
    pub events: u64,
    pub lost: u64,
    pub duration: Duration,
    pub command_status: Option<String>,
    /// CPU seconds this process spent while tracing (attach and plan excluded).
    pub cpu_s: Option<f64>,
    /// What was lost, per probe and cause.
    pub losses: Losses,
}

struct Counts {
    events: u64,
    mm_freed: u64,
    invalid: u64,
    hugetlb: u64,
    /// Records from before every probe was attached or after the first was stopped.
    outside: u64,
}

/// `CLOCK_MONOTONIC` in ns: the clock of the events' `ts` (`bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// The part of the kernel's records that was made with every probe attached. Probes attach and
/// detach one at a time; a fork traced by half of them (its copy seen, its write section not)
/// would read as a protocol violation, so what the kernel recorded before the last attach or
/// after the first detach is counted and left out.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn holds(self, ts: u64) -> bool {
        (self.start..=self.end).contains(&ts)
    }
}

async fn take<S: Sink>(
    decoder: &mut Decoder,
    counts: &mut Counts,
    window: Window,
    raw: &Raw,
    sink: &mut S,
) -> Result<()> {
    match decoder.feed(raw) {
        Decoded::Events => {
            for e in decoder.events() {
                // Each event of a call record by its own time: a call that straddles the
                // window keeps only the stages traced with every probe attached.
                if !window.holds(e.ts) {
                    counts.outside += 1;
                    continue;
                }
                counts.events += 1;
                if matches!(
                    e.body,
                    Body::CopyEnter {
                        func: CopyFn::Hugetlb,
                        ..
                    } | Body::CopyExit {
                        func: CopyFn::Hugetlb,
                        ..
                    }
                ) {
                    counts.hugetlb += 1;
                }
                sink.put_event(e).await?;
            }
        }
        Decoded::MmFreed => counts.mm_freed += 1,
        Decoded::Invalid(_) => counts.invalid += 1,
    }
    Ok(())
}

/// Sends a `lost` record for every probe whose losses (of any cause) grew since `seen`, and
/// returns the latest counts.
async fn report_lost<S: Sink>(
    session: &mut Session,
    seen: &mut [u64; PROBE_COUNT],
    sink: &mut S,
) -> Result<Losses> {
    let now = session.losses()?;
    for (p, s) in Probe::ALL.iter().zip(seen.iter_mut()) {
        let n = now.total(*p);
        if n > *s {
            sink.put(Record::Lost {
                probe: p.name().to_owned(),
                count: n - *s,
            })
            .await?;
            *s = n;
        }
    }
    Ok(now)
}

/// Attaches `plan`, sends the header, every event, `lost` records and the summary to `sink`.
/// `workload_to_stderr` keeps the workload's stdout off a log written to stdout. The trace
/// ends when the duration is up, the workload exits, or `cancel` is cancelled (the consumer's
/// Ctrl-C, SIGTERM, or quit).
pub async fn pump<S: Sink>(
    plan: &AttachPlan,
    args: &TraceArgs,
    raw_pointers: bool,
    workload_to_stderr: bool,
    sink: &mut S,
    cancel: &Cancel,
) -> Result<PumpStats> {
    let without_returns;
    let plan = if std::env::var_os(TEST_NO_RETURN_PROBES).is_some() {
        let mut p = plan.clone();
        p.function.probes.retain(|p| p.hook != Hook::Return);
        without_returns = p;
        &without_returns
    } else {
        plan
    };
    let opts = Options {
        pid: args.pid,
        comm: args.comm.clone(),
        ring_size: args.ring_size,
        maxactive: args.maxactive,
        fill_pairing_map: std::env::var_os(TEST_FULL_PAIRING_MAP).is_some(),
    };
    let mut session = Session::attach(plan, &opts)?;
    let mut window = Window {
        start: monotonic_ns(),
        end: u64::MAX,
    };
    for g in &session.removed_stale {
        eprintln!("tracer: removed kprobe {g}, left behind by a tracer that is gone");
    }
    let mut h = header(plan, args);
    // Which losses this trace can count: the validator cannot call a trace complete whose
    // kprobe misses went uncounted.
    h.extra.insert(
        "loss_accounting".to_owned(),
        serde_json::json!({
            "ring": true,
            "kprobe_missed": session.uncounted.is_none(),
            "skipped_runs": session.uncounted.is_none(),
            "why_not": session.uncounted,
        }),
    );
    if let Some(u) = &session.uncounted {
        eprintln!("tracer: {u}");
    }
    sink.put(Record::Header(h)).await?;
    let mut decoder = Decoder::new(plan.function.foll, raw_pointers);
    let mut counts = Counts {
        events: 0,
        mm_freed: 0,
        invalid: 0,
        hugetlb: 0,
        outside: 0,
    };

    let mut child = if args.command.is_empty() {
        None
    } else {
        let mut c = tokio::process::Command::new(&args.command[0]);
        c.args(&args.command[1..]);
        if workload_to_stderr {
            c.stdout(std::io::stderr());
        }
        Some(
            c.spawn()
                .with_context(|| format!("cannot run workload {:?}", args.command[0]))?,
        )
    };

    let started = Instant::now();
    let cpu0 = super::self_usage().map(|(c, _)| c);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The kernel side wakes us only when the ring is an eighth full; below that, this timer
    // collects what is waiting (and bounds the latency the TUI sees).
    let mut drain_tick = tokio::time::interval(Duration::from_millis(50));
    let mut lost_seen = [0u64; PROBE_COUNT];
    let mut command_status: Option<String> = None;
    let mut batch: Vec<Raw> = Vec::with_capacity(4096);

    loop {
        let sleep_until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = session.next_batch(&mut batch) => { r?; }
            _ = drain_tick.tick() => {
                session.drain_now(&mut batch);
                session.flush_logs();
            }
            _ = tick.tick() => {
                report_lost(&mut session, &mut lost_seen, sink).await?;
            }
            () = cancel.cancelled() => break,
            _ = sleep_until => break,
            status = child_exit => {
                command_status = Some(status.map_or("unknown".to_owned(), |s| s.to_string()));
                child = None;
                break;
            }
        }
        for raw in batch.drain(..) {
            take(&mut decoder, &mut counts, window, &raw, sink).await?;
        }
        sink.batch_done().await?;
    }
    if let Some(mut c) = child {
        // The duration or the consumer ended the trace first; stop the workload too.
        let _ = c.start_kill();
        if let Ok(s) = c.wait().await {
            command_status = Some(s.to_string());
        }
    }
    // Records already reserved in the kernel are delivered; take them before the summary.
    // With the programs stopped first, the loss counts below are final and exact.
    window.end = monotonic_ns();
    session.stop_programs();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // What is left, a bounded batch at a time (programs attached without tracefs may still
    // be producing).
    for _ in 0..256 {
        if session.drain_now(&mut batch) == 0 {
            break;
        }
        for raw in batch.drain(..) {
            take(&mut decoder, &mut counts, window, &raw, sink).await?;
        }
    }
    // Calls the end of tracing interrupted (entered, their return never seen) are still in
    // the kernel's call maps; what they did so far happened, and goes into the log.
    let open = session.take_open_calls()?;
    let open_at_end = open.len();
    for call in open {
        take(&mut decoder, &mut counts, window, &Raw::Call(call), sink).await?;
    }
    let losses = report_lost(&mut session, &mut lost_seen, sink).await?;
    let runs = session.runs()?;
    session.flush_logs();

    let mut lost = BTreeMap::new();
    for (i, n) in lost_seen.iter().enumerate() {
        if let Some(p) = Probe::from_u8(i as u8) {
            lost.insert(p.name().to_owned(), *n);
        }
    }
    let mut extra = BTreeMap::new();
    extra.insert(
        "unreadable_seq".to_owned(),
        serde_json::json!(decoder.unreadable_seq),
    );
    extra.insert("mm_freed".to_owned(), serde_json::json!(counts.mm_freed));
    extra.insert(
        "hugetlb_events".to_owned(),
        serde_json::json!(counts.hugetlb),
    );
    extra.insert(
        "invalid_records".to_owned(),
        serde_json::json!(counts.invalid),
    );
    extra.insert(
        "outside_window".to_owned(),
        serde_json::json!(counts.outside),
    );
    extra.insert("open_at_end".to_owned(), serde_json::json!(open_at_end));
    extra.insert("runs".to_owned(), serde_json::json!(runs));
    if let Some(s) = &command_status {
        extra.insert("command_status".to_owned(), serde_json::json!(s));
    }
    let by_cause = |v: &[u64; PROBE_COUNT]| -> u64 { v.iter().sum() };
    extra.insert(
        "lost_by_cause".to_owned(),
        serde_json::json!({
            "ring_full": by_cause(&losses.ring),
            "kprobe_missed": by_cause(&losses.missed),
            "runs_skipped": by_cause(&losses.skipped),
        }),
    );
    let duration = started.elapsed();
    sink.put(Record::Summary(Summary {
        events: counts.events,
        lost,
        duration_ns: duration.as_nanos() as u64,
        extra,
    }))
    .await?;
    sink.batch_done().await?;
    let cpu_s = match (cpu0, super::self_usage()) {
        (Some(a), Some((b, _))) => Some(b - a),
        _ => None,
    };
    Ok(PumpStats {
        events: counts.events,
        lost: lost_seen.iter().sum(),
        duration,
        command_status,
        cpu_s,
        losses,
    })
}
