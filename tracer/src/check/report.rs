//! `report.md`: what `tracer check` found, for a person. Everything comes from the files beside
//! it (the log header, sites.json, workload.json, verdict.json), read as data: fields the
//! validator or discovery add later show up without a change here.
use std::fmt::Write as _;

use serde_json::Value;

/// What the report is made of.
pub struct Facts<'a> {
    pub release: &'a str,
    pub mode: &'a str,
    /// What discovery and the function plan said was missing or refused (the plan's notes).
    pub plan_notes: &'a [String],
    pub clock_slack_ns: Option<u64>,
    pub events: u64,
    pub lost: u64,
    pub secs: f64,
    pub workload_status: Option<&'a str>,
    /// sites.json, or why there is none.
    pub sites: Result<&'a Value, &'a str>,
    /// workload.json, or why there is none.
    pub workload: Result<&'a Value, &'a str>,
    /// verdict.json.
    pub verdict: &'a Value,
}

/// Markdown table cell: no pipes or newlines.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

fn verdict_exit(verdict: &str) -> &'static str {
    match verdict {
        "clean" => "exit status 0",
        "violations" => "exit status 1",
        "inconclusive" => "exit status 3",
        _ => "unknown exit status",
    }
}

pub fn render(f: &Facts) -> String {
    let mut o = String::new();
    let verdict = f.verdict.get("verdict").map_or("unknown".into(), scalar);
    let _ = writeln!(o, "# tracer check: {}\n", f.release);
    let _ = writeln!(o, "- verdict: **{verdict}** ({})", verdict_exit(&verdict));
    let forks = num(f.verdict, &["stats", "forks"]).unwrap_or(0);
    if forks > 0 {
        // Tracepoint mode: GUP-fast's overlaps are not seen; the forks and the pinning
        // syscalls around them are.
        let _ = writeln!(
            o,
            "- tracepoint mode: {forks} forks, {} pinning syscalls ({} during a fork of their mm); protected overlaps are inside GUP-fast, which this mode does not see",
            num(f.verdict, &["stats", "pin_syscalls"]).unwrap_or(0),
            num(f.verdict, &["stats", "pin_syscalls_during_fork"]).unwrap_or(0)
        );
    } else if let Some(p) = num(f.verdict, &["stats", "protected_overlaps"]) {
        let _ = writeln!(
            o,
            "- protected overlaps: {p} (GUP-fast calls that met a write section and backed out as the protocol requires)"
        );
    }
    let _ = writeln!(o, "- kernel: {}", f.release);
    let _ = writeln!(o, "- attach mode: {}", f.mode);
    let _ = writeln!(
        o,
        "- recorded: {} events, {} lost, in {:.1} s; workload {}",
        f.events,
        f.lost,
        f.secs,
        f.workload_status.unwrap_or("status unknown")
    );
    let _ = writeln!(
        o,
        "- files: events.jsonl (the log), sites.json (`tracer sites --json`), verdict.json (`tracer validate --json`), workload.json (`tracer stress --summary`)\n"
    );
    sites(&mut o, f);
    workload(&mut o, f.workload);
    verdict_section(&mut o, f.verdict);
    violations(&mut o, f.verdict);
    limits(&mut o, f);
    o
}

/// Discovery per side and per function, from sites.json (`tracer sites --json`:
/// `{"sides", "functions", "sites", "function_probes"}`, docs/sites.md).
fn sites(o: &mut String, f: &Facts) {
    let _ = writeln!(o, "## Sites\n");
    let v = match f.sites {
        Ok(v) => v,
        Err(why) => {
            let _ = writeln!(o, "No sites.json: {why}\n");
            notes(o, f.plan_notes);
            return;
        }
    };
    let list = |k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    let text = |x: &Value, k: &str| x.get(k).map_or(String::new(), scalar);
    if let Some(sides) = v.get("sides").and_then(Value::as_object) {
        let _ = writeln!(o, "| side | discovery |\n|---|---|");
        for (side, state) in sides {
            let _ = writeln!(o, "| {} | **{}** |", cell(side), cell(&scalar(state)));
        }
        let _ = writeln!(o);
    }
    if !list("functions").is_empty() {
        let _ = writeln!(
            o,
            "| function | role | required | status | sites | defects or reason |\n|---|---|---|---|---|---|"
        );
        for fx in list("functions") {
            // Each site with its offset, from the `sites` list.
            let symbol = text(fx, "symbol");
            let placed: Vec<String> = list("sites")
                .iter()
                .filter(|s| text(s, "symbol") == symbol)
                .map(|s| {
                    format!(
                        "{} +{:#x}",
                        text(s, "kind"),
                        s.get("offset").and_then(Value::as_u64).unwrap_or(0)
                    )
                })
                .collect();
            let why: Vec<String> = fx
                .get("defects")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|d| format!("{}: {}", text(d, "defect"), text(d, "why")))
                .chain(fx.get("reason").filter(|r| !r.is_null()).map(scalar))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&symbol),
                cell(&text(fx, "role")),
                cell(&text(fx, "required")),
                cell(&text(fx, "status")),
                cell(&placed.join(", ")),
                cell(&why.join("; "))
            );
        }
        let _ = writeln!(o);
    }
    if !list("function_probes").is_empty() {
        let probes: Vec<String> = list("function_probes")
            .iter()
            .map(|p| {
                format!(
                    "{} ({}{})",
                    text(p, "probe"),
                    if p.get("ret").and_then(Value::as_bool) == Some(true) {
                        "return of "
                    } else {
                        ""
                    },
                    text(p, "symbol")
                )
            })
            .collect();
        let _ = writeln!(o, "Function-level probes: {}.\n", probes.join(", "));
    }
    notes(o, f.plan_notes);
}

fn notes(o: &mut String, plan_notes: &[String]) {
    if plan_notes.is_empty() {
        let _ = writeln!(o, "The attach plan refused nothing and misses nothing.\n");
    } else {
        let _ = writeln!(o, "What the attach plan refused or misses:\n");
        for n in plan_notes {
            let _ = writeln!(o, "- {n}");
        }
        let _ = writeln!(o);
    }
}

fn workload(o: &mut String, w: Result<&Value, &str>) {
    let _ = writeln!(o, "## Workload (`tracer stress`)\n");
    let w = match w {
        Ok(w) => w,
        Err(why) => {
            let _ = writeln!(o, "No workload summary: {why}\n");
            return;
        }
    };
    let _ = writeln!(
        o,
        "{} forks by {} threads over {} private mappings of {} KiB{}; seed {}; {} page(s) per pin.\n",
        w.get("forks").map_or("?".into(), scalar),
        w.get("forkers").map_or("?".into(), scalar),
        w.get("mappings").map_or("?".into(), scalar),
        w.get("mapping_kib").map_or("?".into(), scalar),
        if w.get("hugetlb").and_then(Value::as_bool) == Some(true) {
            " and one hugetlb mapping"
        } else {
            " (no hugetlb mapping: no huge pages reserved)"
        },
        w.get("seed").map_or("?".into(), scalar),
        w.get("pin_pages").map_or("?".into(), scalar),
    );
    let _ = writeln!(
        o,
        "| method | used | through / why not | threads | pins | failed |\n|---|---|---|---|---|---|"
    );
    for m in w
        .get("methods")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        let used = m.get("available").and_then(Value::as_bool) == Some(true);
        let how = if used {
            m.get("what").map_or(String::new(), scalar)
        } else {
            m.get("reason").map_or(String::new(), scalar)
        };
        let failed = match (
            m.get("failed").and_then(Value::as_u64),
            m.get("first_error"),
        ) {
            (Some(n), Some(e)) if n > 0 => format!("{n} (first: {})", scalar(e)),
            (Some(n), _) => n.to_string(),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            m.get("method").map_or("?".into(), scalar),
            if used { "yes" } else { "no" },
            cell(&how),
            m.get("threads").map_or("-".into(), scalar),
            m.get("pins").map_or("-".into(), scalar),
            cell(&failed)
        );
    }
    let _ = writeln!(o);
}

fn verdict_section(o: &mut String, v: &Value) {
    let _ = writeln!(o, "## Verdict\n");
    let _ = writeln!(
        o,
        "**{}** over {} events.\n",
        v.get("verdict").map_or("unknown".into(), scalar),
        v.get("events").map_or("?".into(), scalar)
    );
    if let Some(stats) = v.get("stats").and_then(Value::as_object) {
        let _ = writeln!(o, "| stat | value |\n|---|---|");
        for (k, val) in stats {
            let shown = match val {
                Value::Object(m) if m.is_empty() => "none".to_owned(),
                Value::Object(m) => m
                    .iter()
                    .map(|(r, n)| format!("{r} {}", scalar(n)))
                    .collect::<Vec<_>>()
                    .join(", "),
                other => scalar(other),
            };
            let _ = writeln!(o, "| {} | {} |", cell(k), cell(&shown));
        }
        let _ = writeln!(o);
    }
    if let Some(rules) = v.get("rules").and_then(Value::as_array) {
        let _ = writeln!(o, "### Rules\n");
        // Columns: the rule's name first, then every other key any rule has.
        let mut cols: Vec<String> = ["rule", "name"]
            .iter()
            .filter(|k| rules.iter().any(|r| r.get(**k).is_some()))
            .map(|k| (*k).to_owned())
            .collect();
        for r in rules {
            if let Some(m) = r.as_object() {
                for k in m.keys() {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
        }
        if !cols.is_empty() {
            let _ = writeln!(o, "| {} |", cols.join(" | "));
            let _ = writeln!(o, "|{}", "---|".repeat(cols.len()));
            for r in rules {
                let row: Vec<String> = cols
                    .iter()
                    .map(|c| cell(&r.get(c).map_or(String::new(), scalar)))
                    .collect();
                let _ = writeln!(o, "| {} |", row.join(" | "));
            }
            let _ = writeln!(o);
        }
    }
    // Whatever else the validator reports at the top level, as it says it.
    if let Some(m) = v.as_object() {
        let known = ["verdict", "events", "stats", "rules", "violations"];
        let others: Vec<_> = m
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .collect();
        if !others.is_empty() {
            let _ = writeln!(o, "Also in verdict.json:\n");
            for (k, val) in others {
                match val.as_array() {
                    Some(items) if items.is_empty() => {
                        let _ = writeln!(o, "- {k}: none");
                    }
                    Some(items) => {
                        let _ = writeln!(o, "- {k}:");
                        for it in items {
                            let _ = writeln!(o, "  - {}", cell(&scalar(it)));
                        }
                    }
                    None => {
                        let _ = writeln!(o, "- {k}: {}", cell(&scalar(val)));
                    }
                }
            }
            let _ = writeln!(o);
        }
    }
}

/// Violations listed in the report (verdict.json keeps up to the validator's own limit).
const SHOWN_VIOLATIONS: usize = 50;

fn violations(o: &mut String, v: &Value) {
    let list = v
        .get("violations")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let _ = writeln!(o, "## Violations\n");
    if list.is_empty() {
        let _ = writeln!(o, "None.\n");
        return;
    }
    for x in list.iter().take(SHOWN_VIOLATIONS) {
        let lines = x
            .get("lines")
            .and_then(Value::as_array)
            .map(|l| l.iter().map(scalar).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        // A defect found in the code (not in the events) has no mm or thread.
        let mm = x.get("mm").map_or(String::new(), scalar);
        let who = if mm.is_empty() || mm == "-" {
            String::new()
        } else {
            format!(
                " (mm {mm}, tid {})",
                x.get("tid").map_or("?".into(), scalar)
            )
        };
        let _ = writeln!(
            o,
            "- **{}** at line {}{who}: {}\n  - events.jsonl lines: {lines}",
            x.get("rule").map_or("?".into(), scalar),
            x.get("line").map_or("?".into(), scalar),
            x.get("message").map_or(String::new(), scalar),
        );
    }
    let total = num(v, &["stats", "violations"]).unwrap_or(list.len() as u64);
    if total > SHOWN_VIOLATIONS.min(list.len()) as u64 {
        let _ = writeln!(
            o,
            "- ... {} more (verdict.json lists up to its limit; stats count them all)",
            total - SHOWN_VIOLATIONS.min(list.len()) as u64
        );
    }
    let _ = writeln!(o);
}

fn limits(o: &mut String, f: &Facts) {
    let _ = writeln!(o, "## Limits\n");
    let mut l: Vec<String> = Vec::new();
    if let Some(s) = f.clock_slack_ns {
        l.push(format!(
            "Values are exact; timestamps are bounds within the header's clock slack of {:.3} ms, so rules that order accesses on different CPUs report only what no placement within that slack explains.",
            s as f64 / 1e6
        ));
    }
    let stat = |k: &str| num(f.verdict, &["stats", k]).unwrap_or(0);
    if stat("lost") > 0 || f.lost > 0 {
        l.push(format!(
            "{} events were lost; the verdict cannot be clean.",
            stat("lost").max(f.lost)
        ));
    }
    if stat("out_of_window") > 0 {
        l.push(format!(
            "{} events arrived beyond the reorder window and were not replayed.",
            stat("out_of_window")
        ));
    }
    if stat("explained_by_loss") > 0 {
        l.push(format!(
            "{} findings were not reported because lost events can explain them.",
            stat("explained_by_loss")
        ));
    }
    match f.verdict.get("stats").and_then(|s| s.get("max_ts_inversion_ns")) {
        Some(Value::Null) if num(f.verdict, &["events"]).unwrap_or(0) > 0 => l.push(
            "Delivery order was not measured (no event is written at its own time, such as a return): whether the CPUs' clocks agree is unknown."
                .into(),
        ),
        Some(v) if v.as_u64().is_some_and(|ns| ns >= 1_000_000) => l.push(format!(
            "Events were delivered up to {:.1} ms out of timestamp order (the CPUs' clocks disagree).",
            v.as_u64().unwrap_or(0) as f64 / 1e6
        )),
        _ => {}
    }
    match f.mode {
        "instruction" => {}
        "function" => l.push("Function-level probes only: the seqcount's inlined reads and writes were not observed directly.".into()),
        m => l.push(format!("Attach mode {m}: instruction sites only where discovery proved them; the rest at function level.")),
    }
    if !f.plan_notes.is_empty() {
        l.push(format!(
            "The attach plan has {} note(s) (see Sites): what they name was observed at function level or not at all.",
            f.plan_notes.len()
        ));
    }
    if let Ok(w) = f.workload {
        for m in w
            .get("methods")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|m| m.get("available").and_then(Value::as_bool) != Some(true))
        {
            l.push(format!(
                "Pin method {} was not exercised: {}.",
                m.get("method").map_or("?".into(), scalar),
                m.get("reason").map_or(String::new(), scalar)
            ));
        }
    }
    l.push("A clean verdict says the kernel followed the protocol in what was recorded; it cannot prove the absence of a race that the workload did not provoke.".into());
    for x in l {
        let _ = writeln!(o, "- {}", cell(&x));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_report_states_verdict_counts_sites_and_methods() {
        let verdict = json!({"verdict":"clean","events":1000,
            "stats":{"write_sections":40,"pin_gup_fast":300,"protected_overlaps":27,"lost":0,
                     "violations":0,"violations_by_rule":{}},
            "violations":[],
            "rules":[{"rule":"odd_not_bailed","checked":12,"violations":0}],
            "reasons":["because"]});
        let sites = json!({
            "sides": {"write": "intact", "read": "retry_unconsumed"},
            "functions": [
                {"symbol": "copy_page_range", "role": "write", "required": true,
                 "status": "intact", "defects": [], "reason": null,
                 "sites": ["write_begin", "write_end"]},
                {"symbol": "gup_fast_fallback", "role": "read", "required": true,
                 "status": "defect", "reason": null, "sites": ["read_begin"],
                 "defects": [{"defect": "retry_unconsumed", "why": "never compared",
                              "evidence": []}]}
            ],
            "sites": [{"kind": "write_begin", "symbol": "copy_page_range", "offset": 0x17ef},
                      {"kind": "write_end", "symbol": "copy_page_range", "offset": 0x18ad}],
            "function_probes": [{"probe": "cpr_enter", "symbol": "copy_page_range", "ret": false},
                                {"probe": "cpr_exit", "symbol": "copy_page_range", "ret": true}]
        });
        let workload = json!({"forks":10,"forkers":2,"mappings":8,"mapping_kib":256,"hugetlb":true,
            "seed":1,"pin_pages":4,"methods":[
              {"method":"rds","available":true,"what":"an AF_RDS socket","threads":1,"pins":99,"failed":0},
              {"method":"io_uring","available":false,"reason":"kernel 6.1 pins with slow GUP","threads":0,"pins":0,"failed":0}]});
        let notes = vec!["instruction sites in gup_fast_fallback: refused".to_owned()];
        let md = render(&Facts {
            release: "6.1.0-57-cloud-amd64",
            mode: "instruction",
            plan_notes: &notes,
            clock_slack_ns: Some(50_000_000),
            events: 1000,
            lost: 0,
            secs: 20.0,
            workload_status: Some("exit status: 0"),
            sites: Ok(&sites),
            workload: Ok(&workload),
            verdict: &verdict,
        });
        for want in [
            "verdict: **clean** (exit status 0)",
            "protected overlaps: 27",
            "| protected_overlaps | 27 |",
            "| write_sections | 40 |",
            "| read | **retry_unconsumed** |",
            "| copy_page_range | write | true | intact | write_begin +0x17ef, write_end +0x18ad |  |",
            "| gup_fast_fallback | read | true | defect |  | retry_unconsumed: never compared |",
            "Function-level probes: cpr_enter (copy_page_range), cpr_exit (return of copy_page_range).",
            "| rds | yes | an AF_RDS socket | 1 | 99 | 0 |",
            "Pin method io_uring was not exercised: kernel 6.1 pins with slow GUP.",
            "| odd_not_bailed | 12 | 0 |",
            "- reasons:\n  - because",
            "50.000 ms",
        ] {
            assert!(md.contains(want), "missing {want:?} in:\n{md}");
        }
    }

    #[test]
    fn violations_are_listed_with_their_lines() {
        let verdict = json!({"verdict":"violations","events":9,
            "stats":{"violations":1,"violations_by_rule":{"odd_not_bailed":1}},
            "violations":[{"rule":"odd_not_bailed","line":6,"ts":60,"mm":"m1","tid":101,
                           "message":"read_begin at line 5 loaded odd 1","lines":[5,6]}]});
        let md = render(&Facts {
            release: "r",
            mode: "function",
            plan_notes: &[],
            clock_slack_ns: None,
            events: 9,
            lost: 0,
            secs: 1.0,
            workload_status: None,
            sites: Err("tracer sites failed"),
            workload: Err("none written"),
            verdict: &verdict,
        });
        assert!(
            md.contains("**odd_not_bailed** at line 6 (mm m1, tid 101)"),
            "{md}"
        );
        assert!(md.contains("events.jsonl lines: 5, 6"), "{md}");
        assert!(
            md.contains("| violations_by_rule | odd_not_bailed 1 |"),
            "{md}"
        );
        assert!(md.contains("No sites.json: tracer sites failed"), "{md}");
        assert!(md.contains("Function-level probes only"), "{md}");
    }
}
