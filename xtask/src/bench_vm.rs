//! The in-VM half of `cargo xtask bench`: the tracer's cost on fork and on GUP-fast pins,
//! measured side by side in one boot against the same workload untraced and under the kernel's
//! own kprobe events at the same points.
//!
//! The guest script runs `tracer workload` (one operation in a loop, timed by itself) in
//! alternating rounds, each round taking every configuration in turn (the order rotates so that
//! no configuration always runs first or last), twice: with the scheduler free to place the
//! workload and the consumer anywhere ("free") and with the workload on vCPU 1 and the consumer
//! on vCPU 0 ("pinned"), which tells kernel-side cost from the consumer's. The host reads the
//! files the runs leave and takes medians; a run that failed fails the benchmark, naming it.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// How long a benchmark boot runs each workload.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Alternating rounds (each configuration once per round and placement).
    pub rounds: u32,
    /// Seconds each workload run lasts.
    pub secs: f64,
}

/// The full run: three rounds of 3 s (about 5 minutes of guest time per kernel under TCG).
pub const FULL: Shape = Shape {
    rounds: 3,
    secs: 3.0,
};
/// `--quick` and `cargo xtask test`: one short round, enough to produce every figure.
pub const QUICK: Shape = Shape {
    rounds: 1,
    secs: 0.5,
};

pub const WORKLOADS: [&str; 2] = ["fork", "pin"];
pub const CONFIGS: [&str; 5] = ["untraced", "function", "all", "idle", "kprobe_events"];
/// The `--comm` of the `idle` runs: no task has it, so every program returns without
/// recording (the probes' own cost, the floor for any program at these points).
pub const IDLE_COMM: &str = "bench-no-task";
pub const PLACEMENTS: [&str; 2] = ["free", "pinned"];

/// The guest steps (busybox sh: every variable is global, so the functions use names the
/// loops do not), writing into `dir` (a directory under the guest's /out). Every run leaves
/// `runs/<placement>.<workload>.<config>.<round>.{json,err,rc}` (the workload's result line,
/// stderr, exit status) and, when traced, what the consumer saw: the recorder's summary line
/// in `.err` and the log's size in `.bytes`; for the kernel's kprobe events, the trace_pipe
/// reader's events, bytes, CPU ticks, lifetime (from enabling the events to the end of its
/// drain) and the ring's overruns. The kprobes list (addresses
/// stripped: the fixtures must hold no kernel address) is kept from each traced run.
pub fn guest_script(shape: Shape, dir: &str) -> String {
    format!(
        r#"
D={dir}; S={secs}; R={rounds}
T=/sys/kernel/tracing
mkdir -p $D/runs
uname -r > $D/release
tracer record --kprobe-events > $D/kprobe_events.txt 2> $D/kprobe_events.err; echo $? > $D/kprobe_events.rc
klist() {{ sed 's/^[0-9a-f]*[[:space:]]*//' /sys/kernel/debug/kprobes/list > $1 2>/dev/null; }}
overruns() {{ cat $T/per_cpu/cpu*/stats | awk '/^overrun:/{{s+=$2}} END{{print s+0}}'; }}
# Waits until the trace_pipe copy stops growing: the reader has drained what was recorded.
drain() {{ a=-1; b=$(wc -c < $1); n=0; while [ "$a" != "$b" ] && [ $n -lt 100 ]; do sleep 0.2; a=$b; b=$(wc -c < $1); n=$((n+1)); done; }}
one() {{
  f=$D/runs/$1.$2.$3.$4; cpu=; pre=
  # On the console, so that a run that hangs the guest is named there.
  echo "bench: $1 $2 $3 round $4"
  if [ $1 = pinned ]; then cpu="--cpu 1"; pre="taskset -c 0"; fi
  run="tracer workload $2 --duration $S $cpu"
  case $3 in
  untraced) $run > $f.json 2> $f.err; rc=$?;;
  function) $pre tracer record --no-sites -o /tmp/r.jsonl -- sh -c "$run > $f.json" 2> $f.err; rc=$?
    wc -c < /tmp/r.jsonl > $f.bytes; rm -f /tmp/r.jsonl;;
  all) $pre tracer record -o /tmp/r.jsonl -- sh -c "$run > $f.json; sed 's/^[0-9a-f]*[[:space:]]*//' /sys/kernel/debug/kprobes/list > $f.kprobes" 2> $f.err; rc=$?
    wc -c < /tmp/r.jsonl > $f.bytes; rm -f /tmp/r.jsonl;;
  idle) $pre tracer record --comm {idle_comm} -o /tmp/r.jsonl -- sh -c "$run > $f.json" 2> $f.err; rc=$?
    wc -c < /tmp/r.jsonl > $f.bytes; rm -f /tmp/r.jsonl;;
  kprobe_events)
    echo > $T/trace
    if echo > $T/kprobe_events && cat $D/kprobe_events.txt > $T/kprobe_events && echo 1 > $T/events/tbench/enable; then
      l0=$(overruns); t0=$(cut -d' ' -f1 /proc/uptime)
      $pre cat $T/trace_pipe > /tmp/tp.txt & tp=$!
      $run > $f.json 2> $f.err; rc=$?
      klist $f.kprobes
      echo 0 > $T/events/tbench/enable
      drain /tmp/tp.txt
      awk '{{print $14+$15}}' /proc/$tp/stat > $f.reader_ticks
      kill $tp; wait $tp 2>/dev/null
      echo "$(cut -d' ' -f1 /proc/uptime) - $t0" | awk '{{print $1-$3}}' > $f.reader_secs
      echo $(( $(overruns) - l0 )) > $f.lost
      wc -l < /tmp/tp.txt > $f.events; wc -c < /tmp/tp.txt > $f.bytes; rm -f /tmp/tp.txt
      echo > $T/kprobe_events
    else rc=1; echo "bench: could not set up the kernel's kprobe events" > $f.err; fi;;
  esac
  echo $rc > $f.rc
}}
i=1
while [ $i -le $R ]; do
  case $((i % {n_configs})) in
{rotations}
  esac
  for p in {placements}; do for w in {workloads}; do for c in $cs; do one $p $w $c $i; done; done; done
  echo "bench: round $i of $R done"
  i=$((i+1))
done
"#,
        secs = shape.secs,
        rounds = shape.rounds,
        placements = PLACEMENTS.join(" "),
        workloads = WORKLOADS.join(" "),
        idle_comm = IDLE_COMM,
        n_configs = CONFIGS.len(),
        rotations = rotations(),
    )
}

/// The busybox `case` arms that order the configurations of round `i`: each round starts one
/// later, so no configuration always runs first (a cold guest) or right after another.
fn rotations() -> String {
    let n = CONFIGS.len();
    // `*` (a round that is a multiple of n) last: a case takes the first arm that matches.
    (1..=n)
        .map(|k| k % n)
        .map(|k| {
            let order: Vec<&str> = (0..n).map(|j| CONFIGS[(k + n - 1 + j) % n]).collect();
            let arm = if k == 0 {
                "*".to_owned()
            } else {
                k.to_string()
            };
            format!("    {arm}) cs=\"{}\";;", order.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Operations per second of one workload under each configuration (medians over rounds), and
/// their ratios to untraced.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Rates {
    pub untraced: f64,
    pub function: f64,
    pub all: f64,
    /// The same probes as `all`, every program returning without recording (a `--comm` no
    /// task has): what the kprobes themselves cost, which no program at these points avoids.
    pub idle: f64,
    pub kprobe_events: f64,
    /// Each traced rate divided by the untraced one (of the same boot and placement).
    pub ratio: Ratios,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Ratios {
    pub function: f64,
    pub all: f64,
    pub idle: f64,
    pub kprobe_events: f64,
}

/// What one consumer (the tracer's recorder, or `cat trace_pipe`) handled, medians over the
/// runs of one workload and configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Consumer {
    /// Events taken, over the seconds the workload ran (which made nearly all of them).
    pub events_per_s: f64,
    /// The consumer's CPU time as a share of one CPU over its own lifetime (the recorder's
    /// trace; the reader's from enabling the events to the end of its drain).
    pub cpu_share: f64,
    pub bytes_per_event: f64,
    /// Events lost over all rounds (ring full; for kprobe events, the ring's overruns).
    pub lost: u64,
}

/// The probes a traced run had registered (`/sys/kernel/debug/kprobes/list`) that sit inside
/// a function: jump-optimized or left as int3.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Optimized {
    pub optimized: Vec<String>,
    pub not_optimized: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KernelBench {
    pub release: String,
    /// How the pin workload pins: io_uring buffer registration where it goes through GUP-fast
    /// (6.10+), else RDS info getsockopt (on 6.1 io_uring registration is slow GUP).
    pub pin_method: String,
    pub rounds: u32,
    pub secs_per_run: f64,
    /// Operations per second, scheduler free to place the workload and the consumer.
    pub fork: Rates,
    pub pin: Rates,
    /// The same with the workload on vCPU 1 and the consumer on vCPU 0.
    pub pinned: BTreeMap<String, Rates>,
    /// The highest event rate the recorder took with zero loss at the default ring size, over
    /// every traced run of this boot (the runs' own rates, not a ramp to the loss point), and
    /// how many runs lost events.
    pub max_rate_zero_loss: f64,
    pub runs_with_loss: u64,
    /// The recorder's CPU share with all probes, per workload (free placement).
    pub consumer_cpu: BTreeMap<String, f64>,
    /// The recorder with all probes, and the trace_pipe reader of the kernel's kprobe events,
    /// per workload (free placement).
    pub consumer: BTreeMap<String, Consumer>,
    pub kprobe_events_reader: BTreeMap<String, Consumer>,
    /// Peak RSS of `tracer record` over the boot's runs, KiB.
    pub record_peak_rss_kib: f64,
    pub optimized_probes: BTreeMap<String, Optimized>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("the bench left no {}", path.display()))
}

fn num(path: &Path) -> Result<f64> {
    let t = read(path)?;
    t.trim()
        .parse::<f64>()
        .with_context(|| format!("{} holds {:?}, not a number", path.display(), t.trim()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The recorder's last line: `tracer: N events, L lost, in Ds -> DEST; consumer cpu Cs (P% of
/// one CPU), peak RSS M MiB`.
#[derive(Debug, PartialEq)]
struct RecordLine {
    events: u64,
    lost: u64,
    secs: f64,
    cpu_s: f64,
    rss_mib: f64,
}

/// One traced run of the recorder: its summary line, the log's bytes, the workload's seconds
/// (event rates are over the workload's run, which produced nearly all of them).
struct RecordRun {
    line: RecordLine,
    bytes: f64,
    secs: f64,
}

fn record_line(err: &str) -> Option<RecordLine> {
    let l = err
        .lines()
        .rev()
        .find(|l| l.starts_with("tracer: ") && l.contains(" events, "))?;
    let word_after = |key: &str| -> Option<&str> { l.split(key).nth(1)?.split_whitespace().next() };
    let events = l
        .strip_prefix("tracer: ")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let lost = l
        .split(" events, ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let secs = word_after(" in ")?.trim_end_matches('s').parse().ok()?;
    let cpu_s = word_after("consumer cpu ")?
        .trim_end_matches('s')
        .parse()
        .ok()?;
    let rss_mib = word_after("peak RSS ")?.parse().ok()?;
    Some(RecordLine {
        events,
        lost,
        secs,
        cpu_s,
        rss_mib,
    })
}

/// The plan's instruction sites as the kprobes list names them (`sym+0x17ef`), from the
/// kprobe event definitions (`p:tbench/write_begin_0 copy_page_range+6127 ...`: sites are the
/// events with an offset; function entries have none).
fn site_places(definitions: &str) -> Vec<String> {
    definitions
        .lines()
        .filter_map(|l| {
            let (sym, off) = l.split_whitespace().nth(1)?.rsplit_once('+')?;
            Some(format!("{sym}+{:#x}", off.parse::<u64>().ok()?))
        })
        .collect()
}

/// A kprobe from a kprobes list line (`k  sym+0x1a  [OPTIMIZED]`, address stripped): its
/// place and whether it is jump-optimized.
fn list_probe(line: &str) -> Option<(String, bool)> {
    let mut w = line.split_whitespace();
    if w.next()? != "k" {
        return None;
    }
    Some((w.next()?.to_owned(), line.contains("[OPTIMIZED]")))
}

/// The instruction probes at `sites` in a kprobes list, by whether the kernel jump-optimized
/// them (function entries go through ftrace and are left out).
fn optimized(list: &str, sites: &[String]) -> Optimized {
    let mut o = Optimized::default();
    for (place, opt) in list.lines().filter_map(list_probe) {
        if !sites.contains(&place) {
            continue;
        }
        let v = if opt {
            &mut o.optimized
        } else {
            &mut o.not_optimized
        };
        if !v.contains(&place) {
            v.push(place);
        }
    }
    o
}

/// Reads a benchmark boot's `dir` into figures; fails naming the first run that failed or left
/// nothing to read.
pub fn collect(dir: &Path, shape: Shape) -> Result<KernelBench> {
    let release = read(&dir.join("release"))?.trim().to_owned();
    if num(&dir.join("kprobe_events.rc"))? != 0.0 {
        bail!(
            "tracer record --kprobe-events failed on {release}: {}",
            read(&dir.join("kprobe_events.err"))?.trim()
        );
    }
    let sites = site_places(&read(&dir.join("kprobe_events.txt"))?);
    let runs = dir.join("runs");
    let file = |p: &str, w: &str, c: &str, r: u32, ext: &str| -> PathBuf {
        runs.join(format!("{p}.{w}.{c}.{r}.{ext}"))
    };
    let mut pin_method = String::new();
    let mut rates: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    let mut rec: BTreeMap<(String, String), Vec<RecordRun>> = BTreeMap::new();
    let mut reader: BTreeMap<String, Vec<(f64, f64, f64, u64)>> = BTreeMap::new();
    let mut lists: BTreeMap<String, String> = BTreeMap::new();
    for p in PLACEMENTS {
        for w in WORKLOADS {
            for c in CONFIGS {
                for r in 1..=shape.rounds {
                    let f = |ext: &str| file(p, w, c, r, ext);
                    let name = format!("{p}.{w}.{c}.{r}");
                    let rc = num(&f("rc"))?;
                    if rc != 0.0 {
                        bail!(
                            "bench run {name} on {release} exited {rc}: {}",
                            std::fs::read_to_string(f("err")).unwrap_or_default().trim()
                        );
                    }
                    let j: serde_json::Value = serde_json::from_str(read(&f("json"))?.trim())
                        .with_context(|| format!("bench run {name}: no workload result"))?;
                    let (Some(per_s), Some(secs)) = (j["per_s"].as_f64(), j["secs"].as_f64())
                    else {
                        bail!("bench run {name}: no per_s or secs in {j}");
                    };
                    if w == "pin" {
                        pin_method = j["workload"]
                            .as_str()
                            .and_then(|s| s.strip_prefix("pin:"))
                            .unwrap_or("unknown")
                            .to_owned();
                    }
                    rates
                        .entry((p.into(), w.into(), c.into()))
                        .or_default()
                        .push(per_s);
                    if c == "function" || c == "all" {
                        let err = read(&f("err"))?;
                        let line = record_line(&err).with_context(|| {
                            format!(
                                "bench run {name}: no summary line from tracer record in {err:?}"
                            )
                        })?;
                        let bytes = num(&f("bytes"))?;
                        rec.entry((p.into(), format!("{w}.{c}")))
                            .or_default()
                            .push(RecordRun { line, bytes, secs });
                    }
                    if c == "kprobe_events" && p == "free" {
                        let events = num(&f("events"))?;
                        let bytes = num(&f("bytes"))?;
                        // USER_HZ is 100 on every Linux ABI.
                        let cpu = num(&f("reader_ticks"))? / 100.0;
                        let lifetime = num(&f("reader_secs"))?;
                        let lost = num(&f("lost"))?;
                        reader.entry(w.into()).or_default().push((
                            events / secs,
                            cpu / lifetime,
                            bytes / events.max(1.0),
                            lost.max(0.0) as u64,
                        ));
                    }
                    if (c == "all" || c == "kprobe_events") && p == "free" && r == 1 {
                        lists.insert(c.into(), read(&f("kprobes")).unwrap_or_default());
                    }
                }
            }
        }
    }
    let rates_of = |p: &str, w: &str| -> Rates {
        let m = |c: &str| {
            median(
                rates
                    .get(&(p.to_owned(), w.to_owned(), c.to_owned()))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        let (u, f, a, i, k) = (
            m("untraced"),
            m("function"),
            m("all"),
            m("idle"),
            m("kprobe_events"),
        );
        Rates {
            untraced: u,
            function: f,
            all: a,
            idle: i,
            kprobe_events: k,
            ratio: Ratios {
                function: f / u,
                all: a / u,
                idle: i / u,
                kprobe_events: k / u,
            },
        }
    };
    let mut max_rate = 0.0f64;
    let mut runs_with_loss = 0;
    let mut peak_rss_mib = 0.0f64;
    for RecordRun { line: l, secs, .. } in rec.values().flatten() {
        let rate = l.events as f64 / secs;
        if l.lost == 0 {
            max_rate = max_rate.max(rate);
        } else {
            runs_with_loss += 1;
        }
        peak_rss_mib = peak_rss_mib.max(l.rss_mib);
    }
    let mut consumer = BTreeMap::new();
    let mut consumer_cpu = BTreeMap::new();
    for w in WORKLOADS {
        let v = rec
            .get(&("free".to_owned(), format!("{w}.all")))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let c = Consumer {
            events_per_s: median(v.iter().map(|r| r.line.events as f64 / r.secs).collect()),
            cpu_share: median(
                v.iter()
                    .map(|r| r.line.cpu_s / r.line.secs.max(1e-3))
                    .collect(),
            ),
            bytes_per_event: median(
                v.iter()
                    .map(|r| r.bytes / (r.line.events.max(1) as f64))
                    .collect(),
            ),
            lost: v.iter().map(|r| r.line.lost).sum(),
        };
        consumer_cpu.insert(w.to_owned(), c.cpu_share);
        consumer.insert(w.to_owned(), c);
    }
    let kprobe_events_reader = WORKLOADS
        .iter()
        .map(|w| {
            let v = reader.get(*w).map(Vec::as_slice).unwrap_or_default();
            let c = Consumer {
                events_per_s: median(v.iter().map(|x| x.0).collect()),
                cpu_share: median(v.iter().map(|x| x.1).collect()),
                bytes_per_event: median(v.iter().map(|x| x.2).collect()),
                lost: v.iter().map(|x| x.3).sum(),
            };
            ((*w).to_owned(), c)
        })
        .collect();
    let mut optimized_probes = BTreeMap::new();
    for (who, config) in [("tracer", "all"), ("kprobe_events", "kprobe_events")] {
        optimized_probes.insert(
            who.to_owned(),
            optimized(lists.get(config).map_or("", String::as_str), &sites),
        );
    }
    Ok(KernelBench {
        release,
        pin_method,
        rounds: shape.rounds,
        secs_per_run: shape.secs,
        fork: rates_of("free", "fork"),
        pin: rates_of("free", "pin"),
        pinned: WORKLOADS
            .iter()
            .map(|w| ((*w).to_owned(), rates_of("pinned", w)))
            .collect(),
        max_rate_zero_loss: max_rate,
        runs_with_loss,
        consumer_cpu,
        consumer,
        kprobe_events_reader,
        record_peak_rss_kib: peak_rss_mib * 1024.0,
        optimized_probes,
    })
}

/// Every figure of a bench.json is there and finite: serde_json writes a NaN or an infinity
/// as null, so a null anywhere is a figure the harness failed to produce; the kprobes lists
/// must have seen the tracer's instruction probes (optimized or not).
pub fn check_complete(v: &serde_json::Value) -> Result<()> {
    fn walk(v: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Null => bad.push(at.to_owned()),
            serde_json::Value::Number(n) if n.as_f64().is_none_or(|f| !f.is_finite()) => {
                bad.push(at.to_owned());
            }
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    walk(x, &format!("{at}.{k}"), bad);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{at}[{i}]"), bad);
                }
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    walk(v, "bench", &mut bad);
    let kernels = v["kernels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if kernels.is_empty() {
        bad.push("bench.kernels (empty)".into());
    }
    for k in kernels {
        for key in [
            "release",
            "pin_method",
            "fork",
            "pin",
            "pinned",
            "max_rate_zero_loss",
            "consumer_cpu",
            "consumer",
            "kprobe_events_reader",
            "record_peak_rss_kib",
            "optimized_probes",
        ] {
            if k.get(key).is_none() {
                bad.push(format!("kernels[].{key} (missing)"));
            }
        }
        for w in WORKLOADS {
            for c in CONFIGS {
                if !k[w][c].is_f64() {
                    bad.push(format!("kernels[].{w}.{c} (missing)"));
                }
                if !k["pinned"][w][c].is_f64() {
                    bad.push(format!("kernels[].pinned.{w}.{c} (missing)"));
                }
            }
        }
        let t = &k["optimized_probes"]["tracer"];
        let seen = ["optimized", "not_optimized"]
            .iter()
            .map(|s| t[s].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        if seen == 0 {
            bad.push(format!(
                "kernels[{}].optimized_probes.tracer (no instruction probe in the kprobes list)",
                k["release"]
            ));
        }
    }
    for key in ["tracer_eps", "jq_eps", "tracer_peak_rss_kib"] {
        if !v["validate"][key].is_f64() && !v["validate"][key].is_u64() {
            bad.push(format!("validate.{key} (missing)"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        bail!(
            "bench.json is incomplete: {} missing or not finite",
            bad.join(", ")
        )
    }
}

/// `cargo xtask bench`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kernels to boot (SPEC as for `cargo xtask vm`). Default: the newest Debian 6.12 and 6.1
    /// (with --quick: 6.12 only).
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// A reduced run (one kernel, one short round, a small validator log) that checks the
    /// harness produces every figure; it does not update BENCHMARKS.md.
    #[arg(long)]
    pub quick: bool,
    /// Rebuild the table and BENCHMARKS.md from target/bench/bench.json (a full run's) without
    /// measuring anything.
    #[arg(long, conflicts_with_all = ["quick", "kernels", "events"])]
    pub rewrite: bool,
    /// Events in the log the validator and jq read [default: 10000000, as issue 10 asks for the peak RSS; 200000 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
    pub events: Option<u64>,
    /// Only the host part: `tracer validate` against `jq` (no VM boots, so it can run beside
    /// other VM work); prints the figures and writes neither bench.json nor BENCHMARKS.md.
    #[arg(long, conflicts_with_all = ["quick", "kernels", "rewrite"])]
    pub validate_only: bool,
}

/// The validator against jq on the host, as in bench.json.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ValidateBench {
    pub events: u64,
    /// Events per CPU-second.
    pub tracer_eps: f64,
    pub jq_eps: f64,
    pub tracer_peak_rss_kib: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Bench {
    pub quick: bool,
    /// Where the numbers come from: host CPU and cores, how the guests ran.
    pub machine: String,
    /// The host's 1-minute load average when the run started and when it ended: other work on
    /// the host (a CI VM beside it) slows the emulated guests.
    #[serde(default)]
    pub host_load: String,
    /// The command that produced these figures.
    #[serde(default = "default_command")]
    pub command: String,
    pub kernels: Vec<KernelBench>,
    pub validate: ValidateBench,
}

fn default_command() -> String {
    "cargo xtask bench".into()
}

/// The host's 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Boots a kernel with the benchmark steps and returns its figures, retrying once a boot that
/// failed: under TCG, runtime code patching (kprobes, static keys: the bench toggles them
/// dozens of times) has oopsed a 6.12 guest on a stray int3 in `__schedule` and soft-locked a
/// 6.1 guest, the same QEMU race that rarely kills a guest in early boot.
pub fn boot_and_collect(spec: &str, shape: Shape, tracer: &Path) -> Result<(KernelBench, bool)> {
    match boot_once(spec, shape, tracer) {
        Ok(r) => Ok(r),
        Err(e) => {
            println!("bench: {e:#}; retrying the boot once");
            boot_once(spec, shape, tracer)
        }
    }
}

fn boot_once(spec: &str, shape: Shape, tracer: &Path) -> Result<(KernelBench, bool)> {
    let kernel = crate::kernels::fetch(spec, None)?;
    let out = crate::build::workspace()
        .join("target/bench/vm")
        .join(&kernel.release);
    let _ = std::fs::remove_dir_all(&out);
    let mut script = guest_script(shape, "/out/bench");
    // The runs' statuses are in /out; the boot itself succeeded.
    script.push_str("exit 0\n");
    let r = crate::vm::run(&crate::vm::VmOpts {
        kernel: &kernel,
        id: &kernel.release,
        tracer,
        modules: crate::vm::guest_modules(),
        script,
        out: out.clone(),
        timeout: timeout(shape),
        nokaslr: false,
        interactive: false,
        memory_mb: 1024,
        cpus: 2,
    })
    .with_context(|| format!("bench boot of {spec}"))?;
    println!("bench: {} ran in {:.0}s", kernel.release, r.boot_secs);
    Ok((collect(&out.join("bench"), shape)?, r.kvm))
}

/// A benchmark boot's limit: two minutes to boot plus each run's length and 15 s for its
/// attach, drain and teardown (runs take 5-8 s in all under TCG on a busy host), so a guest
/// that hangs (a 6.1 guest once locked up a vCPU in a tracefs write under TCG) fails the
/// benchmark in minutes, not half an hour.
fn timeout(shape: Shape) -> std::time::Duration {
    let runs =
        (PLACEMENTS.len() * WORKLOADS.len() * CONFIGS.len()) as f64 * f64::from(shape.rounds);
    std::time::Duration::from_secs_f64(120.0 + runs * (shape.secs + 15.0))
}

/// The host and how its guests ran, for BENCHMARKS.md and bench.json.
pub fn machine(kvm: bool) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "{cores}-core host ({cpu}); guests: 2 vCPUs, 1024 MiB, QEMU {}",
        if kvm { "KVM" } else { "TCG (no KVM)" }
    )
}

pub fn validate_figures(r: &crate::bench::BenchReport) -> ValidateBench {
    ValidateBench {
        events: r.events,
        tracer_eps: r.events as f64 / r.tracer.cpu_s,
        jq_eps: r.events as f64 / r.jq.cpu_s,
        tracer_peak_rss_kib: r.tracer.max_rss_kib.map_or(f64::NAN, |k| k as f64),
    }
}

fn x(v: f64) -> String {
    format!("{v:.2}x")
}

/// The table `cargo xtask bench` prints and BENCHMARKS.md keeps.
pub fn table(b: &Bench) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    for k in &b.kernels {
        let _ = writeln!(
            t,
            "kernel {} (pins: {}), median of {} alternating round(s) of {} s, operations/s (ratio to untraced)",
            k.release, k.pin_method, k.rounds, k.secs_per_run
        );
        let _ = writeln!(
            t,
            "  {:<13} {:>10} {:>18} {:>18} {:>18} {:>18}",
            "", "untraced", "tracer function", "tracer all", "idle programs", "kprobe events"
        );
        let row = |t: &mut String, name: &str, r: &Rates| {
            let _ = writeln!(
                t,
                "  {:<13} {:>10.0} {:>10.0} ({:>5}) {:>10.0} ({:>5}) {:>10.0} ({:>5}) {:>10.0} ({:>5})",
                name,
                r.untraced,
                r.function,
                x(r.ratio.function),
                r.all,
                x(r.ratio.all),
                r.idle,
                x(r.ratio.idle),
                r.kprobe_events,
                x(r.ratio.kprobe_events)
            );
        };
        row(&mut t, "fork", &k.fork);
        if let Some(r) = k.pinned.get("fork") {
            row(&mut t, "fork pinned", r);
        }
        row(&mut t, "pin", &k.pin);
        if let Some(r) = k.pinned.get("pin") {
            row(&mut t, "pin pinned", r);
        }
        for (who, m) in [
            ("tracer record (all probes)", &k.consumer),
            ("kprobe events trace_pipe reader", &k.kprobe_events_reader),
        ] {
            for (w, c) in m {
                let _ = writeln!(
                    t,
                    "  {who}, {w}: {:.0} events/s, {:.0}% of one CPU, {:.0} bytes/event, {} lost",
                    c.events_per_s,
                    100.0 * c.cpu_share,
                    c.bytes_per_event,
                    c.lost
                );
            }
        }
        let _ = writeln!(
            t,
            "  highest event rate recorded with zero loss (default ring): {:.0} events/s; runs with losses: {}",
            k.max_rate_zero_loss, k.runs_with_loss
        );
        let _ = writeln!(
            t,
            "  tracer record peak RSS: {:.1} MiB",
            k.record_peak_rss_kib / 1024.0
        );
        for (who, o) in &k.optimized_probes {
            let _ = writeln!(
                t,
                "  instruction probes jump-optimized ({who}): {} of {}{}",
                o.optimized.len(),
                o.optimized.len() + o.not_optimized.len(),
                if o.not_optimized.is_empty() {
                    String::new()
                } else {
                    format!("; int3: {}", o.not_optimized.join(", "))
                }
            );
        }
    }
    let v = &b.validate;
    let _ = writeln!(
        t,
        "validator: {:.0} events/s vs jq {:.0} events/s (CPU time, {} events): {:.1}x; peak RSS {:.1} MiB",
        v.tracer_eps,
        v.jq_eps,
        v.events,
        v.tracer_eps / v.jq_eps,
        v.tracer_peak_rss_kib / 1024.0
    );
    t
}

/// Plain sentences on the issue's targets, from the numbers: all probes at least 0.75x
/// untraced in the separated (pinned) runs, and never below the kernel's kprobe events.
pub fn verdict(b: &Bench) -> String {
    let checks = checks(b);
    let missed = checks.iter().filter(|(_, met)| !met).count();
    let mut s = format!(
        "In short: {missed} of these {} checks miss their target.\n",
        checks.len()
    );
    for (line, met) in &checks {
        s.push_str(&format!(
            "- {}: {line}\n",
            if *met { "met" } else { "missed" }
        ));
    }
    s
}

/// Each target of issue 10 the figures can be held against: a sentence with the numbers, and
/// whether it is met.
fn checks(b: &Bench) -> Vec<(String, bool)> {
    let mut c = Vec::new();
    for k in &b.kernels {
        for (w, r) in &k.pinned {
            c.push((
                format!(
                    "{} {w}, pinned runs: all probes at {} of untraced (target 0.75x; the same probes with idle programs: {}, the floor for any program there)",
                    k.release,
                    x(r.ratio.all),
                    x(r.ratio.idle)
                ),
                r.ratio.all >= 0.75,
            ));
            c.push((
                format!(
                    "{} {w}, pinned runs: all probes at {} against the kernel's kprobe events at {} (target: not below them)",
                    k.release,
                    x(r.ratio.all),
                    x(r.ratio.kprobe_events)
                ),
                r.all >= r.kprobe_events,
            ));
        }
        let lost: u64 = k.consumer.values().map(|c| c.lost).sum();
        c.push((
            format!(
                "{}: zero loss at the default ring size ({} of the recorder's runs lost events; {lost} lost in the all-probe runs of the table)",
                k.release, k.runs_with_loss
            ),
            k.runs_with_loss == 0,
        ));
    }
    let v = &b.validate;
    let ratio = v.tracer_eps / v.jq_eps;
    c.push((
        format!(
            "validator at {ratio:.1}x jq in CPU time (target 20x); peak RSS {:.1} MiB on {} events",
            v.tracer_peak_rss_kib / 1024.0,
            v.events
        ),
        ratio >= 20.0,
    ));
    c
}

fn benchmarks_md(b: &Bench) -> String {
    format!(
        "# Benchmarks\n\n\
         Written by `{command}` (do not edit the numbers by hand; rerun it). Measured on: {machine}; \
         host 1-minute load average {load}. Kernels: {kernels}.\n\n\
         What is measured (issue 10): `tracer workload fork` (fork()+exit() of a process with 64 \
         dirtied private mappings) and `tracer workload pin` (one FOLL_PIN GUP-fast call per \
         operation: io_uring buffer registration on 6.10+, RDS info getsockopt on 6.1, where \
         io_uring registration is slow GUP), each untraced, under `tracer record --no-sites` \
         (function level), under `tracer record` (all probes), under `tracer record --comm \
         {idle_comm}` (\"idle programs\": the same probes, every program returning without \
         recording, since no task has that name: the cost of the kprobes themselves, a floor for \
         any program at these points) and under the kernel's own kprobe events at the same points (`tracer record --kprobe-events`, trace_pipe read into a file), \
         in alternating rounds in one boot per kernel; \"pinned\" rows put the workload on vCPU 1 \
         and the consumer on vCPU 0. Ratios are to untraced of the same boot and placement. The \
         consumer figures are from the free-placement runs with all probes. The validator is \
         timed on the host against `jq -c .` on a model-generated log.\n\n\
         ```\n{table}```\n\n\
         Against issue 10's targets (all probes at least 0.75x untraced in the separated runs and never \
         below the kernel's kprobe events at the same points; zero loss at the default ring size; \
         the validator at least 20x jq):\n\n{verdict}",
        command = b.command,
        machine = b.machine,
        load = if b.host_load.is_empty() {
            "not recorded"
        } else {
            &b.host_load
        },
        kernels = b
            .kernels
            .iter()
            .map(|k| k.release.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        table = table(b),
        verdict = verdict(b),
        idle_comm = IDLE_COMM,
    )
}

fn write_md(b: &Bench) -> Result<()> {
    let md = crate::build::workspace().join("BENCHMARKS.md");
    std::fs::write(&md, benchmarks_md(b)).with_context(|| format!("writing {}", md.display()))?;
    println!("bench: wrote {}", md.display());
    Ok(())
}

/// `cargo xtask bench`.
pub fn run(a: &Args) -> Result<()> {
    let dir = crate::build::workspace().join("target/bench");
    if a.validate_only {
        // Needs the static tracer and jq only, none of the VM setup.
        let tracer = crate::build::static_tracer()?;
        let r = crate::bench::bench_validate(&tracer, a.events.unwrap_or(10_000_000), &dir)?;
        let v = validate_figures(&r);
        println!(
            "validator: {:.0} events/s vs jq {:.0} events/s (CPU time, {} events): {:.1}x; peak RSS {:.1} MiB",
            v.tracer_eps,
            v.jq_eps,
            v.events,
            v.tracer_eps / v.jq_eps,
            v.tracer_peak_rss_kib / 1024.0
        );
        return Ok(());
    }
    crate::setup::setup()?;
    if a.rewrite {
        let path = dir.join("bench.json");
        let b: Bench = serde_json::from_str(&read(&path)?)
            .with_context(|| format!("{} is not a bench.json", path.display()))?;
        if b.quick {
            bail!(
                "{} holds a --quick run; BENCHMARKS.md keeps full runs only",
                path.display()
            );
        }
        print!("{}", table(&b));
        print!("{}", verdict(&b));
        return write_md(&b);
    }
    std::fs::create_dir_all(&dir)?;
    let load0 = loadavg();
    let shape = if a.quick { QUICK } else { FULL };
    let mut specs = a.kernels.clone();
    if specs.is_empty() {
        specs = if a.quick {
            vec!["6.12".into()]
        } else {
            vec!["6.12".into(), "6.1".into()]
        };
    }
    if a.quick && specs.len() > 1 {
        bail!("--quick boots one kernel; give at most one --kernel");
    }
    let t0 = std::time::Instant::now();
    let tracer = crate::build::static_tracer()?;
    let mut kernels = Vec::new();
    let mut kvm = false;
    for s in &specs {
        let (k, on_kvm) = boot_and_collect(s, shape, &tracer)?;
        kvm |= on_kvm;
        kernels.push(k);
    }
    let events = a
        .events
        .unwrap_or(if a.quick { 200_000 } else { 10_000_000 });
    let mut command = String::from("cargo xtask bench");
    if a.quick {
        command.push_str(" --quick");
    }
    for s in &a.kernels {
        command.push_str(&format!(" --kernel {s}"));
    }
    if let Some(e) = a.events {
        command.push_str(&format!(" --events {e}"));
    }
    let b = report(kernels, kvm, a.quick, events, &tracer, (load0, command))?;
    if !a.quick {
        write_md(&b)?;
    }
    println!("bench: done in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Adds the validator's figures (a log of `events` events) to the kernels' and writes
/// target/bench/bench.json through [`finish`].
pub fn report(
    kernels: Vec<KernelBench>,
    kvm: bool,
    quick: bool,
    events: u64,
    tracer: &Path,
    (load0, command): (String, String),
) -> Result<Bench> {
    let dir = crate::build::workspace().join("target/bench");
    let v = crate::bench::bench_validate(tracer, events, &dir)?;
    let b = Bench {
        quick,
        machine: machine(kvm),
        host_load: format!("{load0} at the start, {} at the end", loadavg()),
        command,
        kernels,
        validate: validate_figures(&v),
    };
    finish(&b, &dir)?;
    Ok(b)
}

/// `cargo xtask test`'s check that the benchmark still works (`--quick`'s figures, every one
/// present and finite; never how fast): from the test boot that ran [`guest_script`] with
/// [`QUICK`] into `/out/bench` when there was one, else from a boot of its own.
pub fn quick_check(from_test_boot: Option<(&Path, bool)>, spec: &str, tracer: &Path) -> Result<()> {
    let load0 = loadavg();
    let (k, kvm) = match from_test_boot {
        Some((dir, kvm)) => (collect(dir, QUICK)?, kvm),
        None => boot_and_collect(spec, QUICK, tracer)?,
    };
    report(
        vec![k],
        kvm,
        true,
        200_000,
        tracer,
        (load0, "cargo xtask test".into()),
    )
    .map(|_| ())
}

/// Prints the table, writes `dir/bench.json` and checks every figure is there.
pub fn finish(b: &Bench, dir: &Path) -> Result<()> {
    print!("{}", table(b));
    print!("{}", verdict(b));
    let v = serde_json::to_value(b)?;
    let path = dir.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("bench: wrote {}", path.display());
    check_complete(&v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_leads_one_round_and_the_catch_all_arm_is_last() {
        let text = rotations();
        let arms: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(arms.len(), CONFIGS.len());
        assert!(arms.last().unwrap().starts_with("*)"), "{arms:?}");
        let mut leaders = Vec::new();
        for arm in &arms {
            let order = arm.split('"').nth(1).unwrap();
            let mut sorted: Vec<&str> = order.split(' ').collect();
            leaders.push(sorted[0]);
            sorted.sort_unstable();
            let mut all = CONFIGS.to_vec();
            all.sort_unstable();
            assert_eq!(sorted, all, "{arm}");
        }
        leaders.sort_unstable();
        let mut all = CONFIGS.to_vec();
        all.sort_unstable();
        assert_eq!(leaders, all);
        // Round 1 runs in the listed order.
        assert!(arms[0].starts_with(&format!("1) cs=\"{}\"", CONFIGS.join(" "))));
    }

    #[test]
    fn the_recorders_summary_line_parses() {
        let err = "stress: x\ntracer: 454180 events, 3 lost, in 20.3s -> /tmp/r.jsonl; consumer cpu 1.52s (7% of one CPU), peak RSS 12.5 MiB\n";
        assert_eq!(
            record_line(err),
            Some(RecordLine {
                events: 454_180,
                lost: 3,
                secs: 20.3,
                cpu_s: 1.52,
                rss_mib: 12.5
            })
        );
        // Without the consumer's figures the line is not usable.
        assert_eq!(
            record_line("tracer: 5 events, 0 lost, in 1.0s -> x\n"),
            None
        );
    }

    #[test]
    fn kprobes_list_lines_sort_instruction_probes() {
        let defs = "p:tbench/cpr_enter copy_page_range vma_start=+0(%si):x64\n\
                    r1024:tbench/cpr_exit copy_page_range ret=$retval\n\
                    p:tbench/write_begin_0 copy_page_range+6127 seq=+312(%ax):u32\n\
                    p:tbench/read_begin_4 gup_fast_fallback+390 seq=%ax:u32\n";
        let sites = site_places(defs);
        assert_eq!(sites, ["copy_page_range+0x17ef", "gup_fast_fallback+0x186"]);
        let list = "k  copy_page_range+0x4    [FTRACE]\n\
                    r  copy_page_range+0x4    [FTRACE]\n\
                    k  copy_page_range+0x17ef    [OPTIMIZED]\n\
                    k  gup_fast_fallback+0x186    \n\
                    k  gup_fast_fallback+0x186    \n";
        let o = optimized(list, &sites);
        assert_eq!(o.optimized, ["copy_page_range+0x17ef"]);
        assert_eq!(o.not_optimized, ["gup_fast_fallback+0x186"]);
    }

    #[test]
    fn a_missing_or_non_finite_figure_is_incomplete() {
        let good = serde_json::json!({
            "kernels": [{
                "release": "6.12", "pin_method": "io_uring",
                "fork": {"untraced": 1.0, "function": 1.0, "all": 1.0, "idle": 1.0, "kprobe_events": 1.0},
                "pin": {"untraced": 1.0, "function": 1.0, "all": 1.0, "idle": 1.0, "kprobe_events": 1.0},
                "pinned": {
                    "fork": {"untraced": 1.0, "function": 1.0, "all": 1.0, "idle": 1.0, "kprobe_events": 1.0},
                    "pin": {"untraced": 1.0, "function": 1.0, "all": 1.0, "idle": 1.0, "kprobe_events": 1.0}
                },
                "max_rate_zero_loss": 1.0, "consumer_cpu": {}, "consumer": {},
                "kprobe_events_reader": {}, "record_peak_rss_kib": 1.0,
                "optimized_probes": {"tracer": {"optimized": ["f+0x1"], "not_optimized": []}}
            }],
            "validate": {"tracer_eps": 1.0, "jq_eps": 1.0, "tracer_peak_rss_kib": 1.0}
        });
        check_complete(&good).unwrap();
        let mut nan = good.clone();
        // What serde_json makes of a NaN median.
        nan["kernels"][0]["pin"]["all"] = serde_json::Value::Null;
        let e = check_complete(&nan).unwrap_err().to_string();
        assert!(e.contains("bench.kernels[0].pin.all"), "{e}");
        let mut gone = good.clone();
        gone["validate"].as_object_mut().unwrap().remove("jq_eps");
        assert!(check_complete(&gone).is_err());
        let mut blind = good;
        blind["kernels"][0]["optimized_probes"]["tracer"]["optimized"] = serde_json::json!([]);
        assert!(check_complete(&blind).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
