//! The recognisers: which instructions of a decoded, analysed function are the seqcount's write
//! section, read snapshot, retry check and back-out block.
use iced_x86::{ConditionCode, FlowControl, Instruction, Mnemonic, OpKind, RflagsBits};

use super::{
    SiteError,
    flow::{Ctx, Flow, Mem, State, Val, Vs, imm, mem_operand, mem_ref, value_at},
    func::Func,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// `add $1, mem` or `inc mem`.
    Increment,
    /// `mov mem, reg32`.
    Load,
    /// `cmp` with the seqcount as its memory operand.
    Compare,
    /// Any other write.
    OtherWrite,
    /// Any other read.
    OtherRead,
}

/// A 32-bit access at the seqcount's displacement through some base register.
#[derive(Clone, Debug)]
pub struct Access {
    pub idx: usize,
    pub kind: AccessKind,
    pub base: iced_x86::Register,
    pub disp: i64,
    pub vals: Vs,
}

fn state(flow: &Flow, i: usize) -> Option<&State> {
    flow.states.get(i).and_then(Option::as_ref)
}

/// Every reachable 32-bit access at `write_protect_seq.sequence`'s displacement, whatever the
/// base register holds; callers sort out whose seqcount it is.
pub fn seq_accesses(func: &Func, flow: &Flow, ctx: &Ctx) -> Vec<Access> {
    let mut out = Vec::new();
    for (i, ins) in func.insns.iter().enumerate() {
        let Some(st) = state(flow, i) else { continue };
        if mem_operand(ins).is_none() || ins.memory_size().size() != 4 {
            continue;
        }
        let Mem::Ptr { base, vals, disp } = mem_ref(ins, st) else {
            continue;
        };
        if disp != ctx.seq_disp {
            continue;
        }
        let mem_first = ins.op_kind(0) == OpKind::Memory;
        let imm1 = ins.op_count() == 2 && imm(ins, 1) == Some(1);
        let kind = match ins.mnemonic() {
            Mnemonic::Add if mem_first && imm1 => AccessKind::Increment,
            Mnemonic::Inc if mem_first => AccessKind::Increment,
            Mnemonic::Mov if !mem_first => AccessKind::Load,
            Mnemonic::Cmp => AccessKind::Compare,
            _ if mem_first && !matches!(ins.mnemonic(), Mnemonic::Test | Mnemonic::Cmp) => {
                AccessKind::OtherWrite
            }
            _ => AccessKind::OtherRead,
        };
        out.push(Access {
            idx: i,
            kind,
            base,
            disp,
            vals,
        });
    }
    out
}

/// `rax` for `Register::RAX`.
pub fn reg_lower(r: iced_x86::Register) -> String {
    format!("{r:?}").to_lowercase()
}

/// Whether every value the base may hold is one of `accepted` (and it is known at all).
pub fn origin_is(vals: &Vs, accepted: &[Val]) -> bool {
    !vals.is_top() && vals.iter().all(|v| accepted.contains(v))
}

/// A readable name for a symbolic value, with `names` for the values the layout knows.
pub fn describe(v: &Val, names: &[(Val, String)]) -> String {
    if let Some((_, n)) = names.iter().find(|(k, _)| k == v) {
        return n.clone();
    }
    match v {
        Val::Arg(n) => format!("arg{n}"),
        Val::Current => "current".into(),
        Val::PerCpu(a) => format!("%gs:{a:#x}"),
        Val::Load(b, d) => format!("[{}{}]", describe(b, names), super::flow::signed_hex(*d)),
        Val::Seq(ip) => format!("seq@{ip:#x}"),
        Val::Const(c) => format!("{c:#x}"),
        Val::Stack(f, o) => format!(
            "{}{}",
            super::flow::frame_name(*f),
            super::flow::signed_hex(*o)
        ),
    }
}

pub fn describe_set(vs: &Vs, names: &[(Val, String)]) -> String {
    if vs.is_top() {
        return "an unknown value".into();
    }
    let parts: Vec<String> = vs.iter().map(|v| describe(v, names)).collect();
    if parts.len() == 1 {
        parts.join("")
    } else {
        format!("one of {{{}}}", parts.join(", "))
    }
}

/// A defect proven from the machine code, with the instructions (indices) that prove it.
#[derive(Clone, Debug)]
pub struct Finding {
    pub defect: super::Defect,
    pub why: String,
    pub evidence: Vec<(usize, String)>,
}

/// The write section of one copy function: its increments, and what is wrong with them.
pub struct WriteSide {
    /// The increment that opens the section (the only one, when unpaired).
    pub begin: Option<Access>,
    pub end: Option<Access>,
    pub defects: Vec<Finding>,
    pub notes: Vec<String>,
}

/// Classifies the write side: two increments through the source mm, the first reaching the
/// second and not the other way round, enclosing the copy (a call or a loop between them).
/// Anything it cannot prove either way is an error (the function's shape is unknown).
pub fn find_write_side(
    func: &Func,
    flow: &Flow,
    ctx: &Ctx,
    mm: &[Val],
    names: &[(Val, String)],
) -> Result<WriteSide, SiteError> {
    let sym = &func.symbol;
    let mut notes = Vec::new();
    let mut incs = Vec::new();
    let mut unproven = Vec::new();
    for a in seq_accesses(func, flow, ctx) {
        let at = func.offset(a.idx);
        if !origin_is(&a.vals, mm) {
            if a.kind == AccessKind::Increment
                && (a.vals.is_top() || a.vals.iter().any(|v| mm.contains(v)))
            {
                unproven.push(a.idx);
            }
            notes.push(format!(
                "+{at:#x}: same displacement, but the base %{} holds {}, not the source mm: not the seqcount",
                reg_lower(a.base),
                describe_set(&a.vals, names)
            ));
            continue;
        }
        match a.kind {
            AccessKind::Increment => incs.push(a),
            AccessKind::OtherWrite => {
                return Err(SiteError::Unexpected {
                    symbol: sym.clone(),
                    why: format!("+{at:#x} writes the seqcount other than by incrementing it"),
                });
            }
            _ => notes.push(format!(
                "+{at:#x}: reads the seqcount (not part of the write section)"
            )),
        }
    }
    if incs.len() < 2 && !unproven.is_empty() {
        return Err(SiteError::Ambiguous {
            symbol: sym.clone(),
            why: format!(
                "{} increment(s) through the source mm proven, and the base register of the increment(s) at {} cannot be proven to hold the source mm or anything else",
                incs.len(),
                offsets(func, unproven.iter().copied())
            ),
        });
    }
    let unpaired = |why: String, evidence: Vec<(usize, String)>| Finding {
        defect: super::Defect::WriteUnpaired,
        why,
        evidence,
    };
    match incs.len() {
        // Accesses at the displacement through other known pointers: perhaps a refactored
        // function holding the mm elsewhere; not proof that the section is missing.
        0 if !notes.is_empty() => {
            return Err(SiteError::NotFound {
                symbol: sym.clone(),
                what: "no increment of write_protect_seq through the source mm".into(),
                notes,
            });
        }
        0 => {
            let f = unpaired(
                "no instruction increments write_protect_seq through the source mm: the copy runs without a write section".into(),
                Vec::new(),
            );
            return Ok(WriteSide {
                begin: None,
                end: None,
                defects: vec![f],
                notes,
            });
        }
        1 => {
            let a = incs.remove(0);
            let f = unpaired(
                format!(
                    "write_protect_seq is incremented once (+{:#x}), not twice: the section never closes (or never opens), and the counter is left odd after every copy",
                    func.offset(a.idx)
                ),
                vec![(a.idx, "the only increment".into())],
            );
            return Ok(WriteSide {
                begin: Some(a),
                end: None,
                defects: vec![f],
                notes,
            });
        }
        2 => {}
        n => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "{n} increments of write_protect_seq through the source mm (at {}); a write section has 2",
                    offsets(func, incs.iter().map(|a| a.idx))
                ),
            });
        }
    }
    let (a, b) = (incs[0].clone(), incs[1].clone());
    let (ab, ba) = (func.reaches(a.idx, b.idx), func.reaches(b.idx, a.idx));
    let (begin, end) = match (ab, ba) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        _ => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "cannot order the increments at {}: {}",
                    offsets(func, [a.idx, b.idx]),
                    if ab {
                        "each can follow the other"
                    } else {
                        "neither can follow the other"
                    }
                ),
            });
        }
    };
    // The page-table copy is a loop over entries with calls (allocation, rmap): a section
    // whose inside has neither encloses none of it.
    let inside = func.between(begin.idx, end.idx);
    let call = inside.iter().copied().find(|&i| {
        let ins = &func.insns[i];
        ins.is_call_near() || ins.is_call_near_indirect()
    });
    let back_edge = inside
        .iter()
        .copied()
        .find(|&i| func.succ[i].iter().any(|&s| s <= i && inside.contains(&s)));
    let mut defects = Vec::new();
    if call.is_none() && back_edge.is_none() {
        let mut span: Vec<usize> = inside.iter().copied().collect();
        span.sort_unstable();
        defects.push(unpaired(
            format!(
                "the increments at +{:#x} and +{:#x} enclose {} instruction(s) with no call and no loop: the page-table copy runs outside the write section",
                func.offset(begin.idx),
                func.offset(end.idx),
                span.len()
            ),
            vec![
                (begin.idx, "write_begin".into()),
                (end.idx, "write_end, with nothing of the copy before it".into()),
            ],
        ));
    } else {
        let what = match (call, back_edge) {
            (Some(c), _) => format!("a call at +{:#x}", func.offset(c)),
            (None, Some(l)) => format!("a loop at +{:#x}", func.offset(l)),
            (None, None) => String::new(),
        };
        notes.push(format!(
            "the section +{:#x}..+{:#x} encloses the copy ({what} between them)",
            func.offset(begin.idx),
            func.offset(end.idx)
        ));
    }
    if !defects.is_empty() && !unproven.is_empty() {
        return Err(SiteError::Ambiguous {
            symbol: sym.clone(),
            why: format!(
                "the section looks empty, but the increment(s) at {} cannot be proven to be of another mm",
                offsets(func, unproven.iter().copied())
            ),
        });
    }
    Ok(WriteSide {
        begin: Some(begin),
        end: Some(end),
        defects,
        notes,
    })
}

fn offsets(func: &Func, idx: impl IntoIterator<Item = usize>) -> String {
    idx.into_iter()
        .map(|i| format!("+{:#x}", func.offset(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The read side of one GUP-fast call, as far as it exists, and what is wrong with it.
#[derive(Default)]
pub struct ReadSide {
    pub begin: Option<Access>,
    pub retry: Option<Access>,
    /// The instruction comparing the retry value with another seqcount value.
    pub compare: Option<usize>,
    /// The conditional branch that consumes the comparison.
    pub branch: Option<usize>,
    /// First instruction of the back-out block (taken when the value changed), when the block
    /// really backs out.
    pub fail: Option<usize>,
    /// First instruction of the path taken when the value did not change.
    pub ok: Option<usize>,
    /// The odd-value check of the begin value: (test, branch, odd exit).
    pub odd: Option<(usize, usize, usize)>,
    /// Names of the unpin functions the back-out block calls.
    pub backout_calls: Vec<String>,
    pub defects: Vec<Finding>,
    pub notes: Vec<String>,
}

/// The seqcount values an operand may hold, as (Seq ips, whether anything but constants too).
fn seq_parts(vs: &Vs) -> Option<Vec<u64>> {
    if vs.is_top() {
        return None;
    }
    let mut seqs = Vec::new();
    for v in vs.iter() {
        match v {
            Val::Seq(ip) => seqs.push(*ip),
            // `seq = 0` on the path that skips the snapshot (no FOLL_PIN) merges in here.
            Val::Const(_) => {}
            _ => return None,
        }
    }
    Some(seqs)
}

/// The value of an operand without narrowing: a register of any width (its full register), or
/// a stack slot at that offset of any size. Used for `test $1, %r13b`-style parity checks.
fn wide_value(ins: &Instruction, k: u32, st: &State, ctx: &Ctx) -> Vs {
    match ins.op_kind(k) {
        OpKind::Register => st.reg(ins.op_register(k).full_register()),
        OpKind::Memory => match mem_ref(ins, st) {
            Mem::Stack(o) => {
                let v = st.slot(o, 4);
                if v.is_top() { st.slot(o, 8) } else { v }
            }
            _ => value_at(ins, k, st, ctx),
        },
        _ => value_at(ins, k, st, ctx),
    }
}

/// What becomes of the flags an instruction sets.
enum FlagUse {
    /// The next instruction on the fall-through path that reads them.
    Read(usize),
    /// Overwritten, or the function returns, before anything reads them: nothing depends on
    /// the comparison.
    Dead(String),
    /// A shape this analysis does not follow (a join point, a jump).
    Unclear(String),
}

/// The instruction consuming the flags set at `at`: the next instructions on the fall-through
/// path, none of them a join point, none writing ZF, the first that reads flags.
fn flag_use(func: &Func, at: usize) -> FlagUse {
    let mut j = at;
    for _ in 0..16 {
        let next = j + 1;
        if !func.succ[j].contains(&next) {
            return if func.succ[j].is_empty() {
                FlagUse::Dead(format!(
                    "the function returns at +{:#x} before anything reads the comparison's flags",
                    func.offset(j)
                ))
            } else {
                FlagUse::Unclear(format!(
                    "the flow leaves +{:#x} before anything reads the flags",
                    func.offset(j)
                ))
            };
        }
        j = next;
        let ins = &func.insns[j];
        if func.branch_targets.contains(&j) {
            return FlagUse::Unclear(format!(
                "+{:#x} is a join point, so its flags may come from elsewhere",
                func.offset(j)
            ));
        }
        if ins.rflags_read() != 0 {
            return FlagUse::Read(j);
        }
        if ins.rflags_written() & RflagsBits::ZF != 0 {
            return FlagUse::Dead(format!(
                "`{}` at +{:#x} overwrites the comparison's flags before any branch reads them",
                super::att(ins),
                func.offset(j)
            ));
        }
    }
    FlagUse::Unclear("no instruction reads the comparison's flags".into())
}

/// (taken-when-condition, fall-through) for a Jcc that tests ZF only.
fn zf_branch(func: &Func, j: usize) -> Option<(ConditionCode, usize, usize)> {
    let ins = &func.insns[j];
    if ins.flow_control() != FlowControl::ConditionalBranch {
        return None;
    }
    let cc = ins.condition_code();
    if !matches!(cc, ConditionCode::e | ConditionCode::ne) {
        return None;
    }
    let target = func.index_of(ins.near_branch_target())?;
    Some((cc, target, j + 1))
}

/// Instructions (other than moves) that read a value holding `load`'s result.
fn users_of(func: &Func, flow: &Flow, ctx: &Ctx, load: &Access) -> Vec<usize> {
    let ip = func.insns[load.idx].ip();
    let mut users = Vec::new();
    for (i, ins) in func.insns.iter().enumerate() {
        let Some(st) = state(flow, i) else { continue };
        if i == load.idx
            || matches!(
                ins.mnemonic(),
                Mnemonic::Mov | Mnemonic::Push | Mnemonic::Pop
            )
        {
            continue;
        }
        if (0..ins.op_count()).any(|k| {
            wide_value(ins, k, st, ctx)
                .iter()
                .any(|x| *x == Val::Seq(ip))
        }) {
            users.push(i);
        }
    }
    users
}

/// The load among `loads` that reaches all the others and is reached by none.
fn first_of(func: &Func, loads: &[&Access]) -> Option<usize> {
    loads.iter().position(|a| {
        loads
            .iter()
            .all(|b| b.idx == a.idx || (func.reaches(a.idx, b.idx) && !func.reaches(b.idx, a.idx)))
    })
}

pub fn find_read_side(
    func: &Func,
    flow: &Flow,
    ctx: &Ctx,
    cur_mm: &Val,
    names: &[(Val, String)],
    unpin_name: &dyn Fn(u64) -> Option<String>,
) -> Result<ReadSide, SiteError> {
    let sym = &func.symbol;
    let mut side = ReadSide::default();
    let mut mine = Vec::new();
    let mut unproven = Vec::new();
    for a in seq_accesses(func, flow, ctx) {
        let at = func.offset(a.idx);
        if !origin_is(&a.vals, std::slice::from_ref(cur_mm)) {
            if a.vals.is_top() || a.vals.iter().any(|v| v == cur_mm) {
                unproven.push(a.idx);
            }
            side.notes.push(format!(
                "+{at:#x}: same displacement, but the base %{} holds {}, not current->mm: not the seqcount",
                reg_lower(a.base),
                describe_set(&a.vals, names)
            ));
            continue;
        }
        match a.kind {
            AccessKind::Load | AccessKind::Compare => mine.push(a),
            AccessKind::Increment | AccessKind::OtherWrite => {
                return Err(SiteError::Unexpected {
                    symbol: sym.clone(),
                    why: format!("+{at:#x} writes current->mm's seqcount in the GUP-fast path"),
                });
            }
            AccessKind::OtherRead => {
                return Err(SiteError::Ambiguous {
                    symbol: sym.clone(),
                    why: format!(
                        "+{at:#x} reads the seqcount with an instruction this tool does not model"
                    ),
                });
            }
        }
    }
    let unproven_err = |what: &str| SiteError::Ambiguous {
        symbol: sym.clone(),
        why: format!(
            "{what}, and the base register of the same-displacement access(es) at {} cannot be proven to hold current->mm or anything else",
            offsets(func, unproven.iter().copied())
        ),
    };
    if mine.is_empty() {
        if !unproven.is_empty() {
            return Err(unproven_err(
                "no load of current->mm->write_protect_seq is proven",
            ));
        }
        // Loads through other known pointers: perhaps the mm is passed in (a refactor), so
        // this is no proof that the read side is missing.
        if !side.notes.is_empty() {
            return Err(SiteError::NotFound {
                symbol: sym.clone(),
                what: "no load of current->mm->write_protect_seq".into(),
                notes: std::mem::take(&mut side.notes),
            });
        }
        side.defects.push(Finding {
            defect: super::Defect::ReadMissing,
            why: "GUP-fast never loads current->mm->write_protect_seq: pins taken during a fork are never checked against it".into(),
            evidence: Vec::new(),
        });
        return Ok(side);
    }
    let by_ip = |ip: u64| mine.iter().find(|a| func.insns[a.idx].ip() == ip).cloned();

    // The retry comparison: a cmp whose operands hold two different seqcount loads.
    let mut pairs: Vec<(Access, Access, usize)> = Vec::new();
    for (c, ins) in func.insns.iter().enumerate() {
        let Some(st) = state(flow, c) else { continue };
        if ins.mnemonic() != Mnemonic::Cmp || ins.op_count() != 2 {
            continue;
        }
        let mem_is_mine = mine.iter().any(|a| a.idx == c);
        let side_of = |k: u32| {
            if ins.op_kind(k) == OpKind::Memory && !mem_is_mine {
                return None;
            }
            seq_parts(&value_at(ins, k, st, ctx))
        };
        let (Some(x), Some(y)) = (side_of(0), side_of(1)) else {
            continue;
        };
        if x.len() != 1 || y.len() != 1 || x[0] == y[0] {
            continue;
        }
        let (Some(ax), Some(ay)) = (by_ip(x[0]), by_ip(y[0])) else {
            continue;
        };
        let (xy, yx) = (func.reaches(ax.idx, ay.idx), func.reaches(ay.idx, ax.idx));
        let pair = match (xy, yx) {
            (true, false) => (ax, ay, c),
            (false, true) => (ay, ax, c),
            _ => {
                return Err(SiteError::Ambiguous {
                    symbol: sym.clone(),
                    why: format!(
                        "+{:#x} compares seqcount loads at {} that cannot be ordered",
                        func.offset(c),
                        offsets(func, [ax.idx, ay.idx])
                    ),
                });
            }
        };
        pairs.push(pair);
    }
    let pair = match pairs.len() {
        0 => None,
        1 => Some(pairs.remove(0)),
        n => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "{n} comparisons of two seqcount values (at {})",
                    offsets(func, pairs.iter().map(|p| p.2))
                ),
            });
        }
    };
    match pair {
        None => no_comparison(func, flow, ctx, &mine, &mut side)?,
        Some((x, y, c)) => {
            let others: Vec<&Access> = mine
                .iter()
                .filter(|a| a.idx != x.idx && a.idx != y.idx && a.idx != c)
                .collect();
            match others.as_slice() {
                [] => {
                    side.begin = Some(x);
                    side.retry = Some(y);
                }
                // A load before both compared ones: the comparison takes two loads made after
                // it, so the value the walk started from is never compared.
                [b] if b.kind == AccessKind::Load
                    && func.reaches(b.idx, x.idx)
                    && !func.reaches(x.idx, b.idx) =>
                {
                    side.defects.push(Finding {
                        defect: super::Defect::RetryStale,
                        why: format!(
                            "the retry check at +{:#x} compares two loads made after the walk (+{:#x}, +{:#x}) instead of the value loaded before it (+{:#x}): a write section that opens and closes during the walk goes unnoticed",
                            func.offset(c),
                            func.offset(x.idx),
                            func.offset(y.idx),
                            func.offset(b.idx)
                        ),
                        evidence: vec![
                            (b.idx, "read_begin: the value the walk starts from".into()),
                            (x.idx, "a fresh load after the walk".into()),
                            (y.idx, "another fresh load".into()),
                            (c, "compares the two fresh loads".into()),
                        ],
                    });
                    side.begin = Some((*b).clone());
                    side.retry = Some(y);
                }
                _ => {
                    return Err(SiteError::Ambiguous {
                        symbol: sym.clone(),
                        why: format!(
                            "besides the compared loads (+{:#x}, +{:#x}), the seqcount is also read at {}",
                            func.offset(x.idx),
                            func.offset(y.idx),
                            offsets(func, others.iter().map(|a| a.idx))
                        ),
                    });
                }
            }
            side.compare = Some(c);
            retry_branch(func, c, &mut side)?;
        }
    }
    odd_check(func, flow, ctx, &mut side)?;
    backout(func, unpin_name, &mut side)?;
    // A defect is claimed only when every access at the seqcount's displacement is accounted
    // for: an unproven one might be the missing part.
    if !side.defects.is_empty() && !unproven.is_empty() {
        let what: Vec<&str> = side.defects.iter().map(|d| d.defect.name()).collect();
        return Err(unproven_err(&format!(
            "the code looks like {} (loads at {})",
            what.join(", "),
            offsets(func, mine.iter().map(|a| a.idx))
        )));
    }
    Ok(side)
}

/// No comparison of two seqcount values: the retry check is dead, unless the later load's
/// value is used in a way this analysis does not model.
fn no_comparison(
    func: &Func,
    flow: &Flow,
    ctx: &Ctx,
    mine: &[Access],
    side: &mut ReadSide,
) -> Result<(), SiteError> {
    let sym = &func.symbol;
    if let Some(c) = mine.iter().find(|a| a.kind == AccessKind::Compare) {
        return Err(SiteError::Ambiguous {
            symbol: sym.clone(),
            why: format!(
                "+{:#x} compares the seqcount with something other than another seqcount load",
                func.offset(c.idx)
            ),
        });
    }
    let loads: Vec<&Access> = mine.iter().collect();
    let first = first_of(func, &loads).ok_or_else(|| SiteError::Ambiguous {
        symbol: sym.clone(),
        why: format!(
            "the seqcount loads at {} cannot be ordered",
            offsets(func, loads.iter().map(|a| a.idx))
        ),
    })?;
    let begin = loads[first].clone();
    match loads.len() {
        1 => {
            side.defects.push(Finding {
                defect: super::Defect::RetryUnconsumed,
                why: format!(
                    "the seqcount is loaded only once (+{:#x}): there is no retry load and no back-out, so a write section during the walk goes unnoticed",
                    func.offset(begin.idx)
                ),
                evidence: vec![(begin.idx, "the only load".into())],
            });
            side.begin = Some(begin);
        }
        2 => {
            let retry = loads[1 - first].clone();
            let used = users_of(func, flow, ctx, &retry);
            if !used.is_empty() {
                return Err(SiteError::Ambiguous {
                    symbol: sym.clone(),
                    why: format!(
                        "the value loaded at +{:#x} is used at {} but not by a cmp against another seqcount load",
                        func.offset(retry.idx),
                        offsets(func, used)
                    ),
                });
            }
            side.defects.push(Finding {
                defect: super::Defect::RetryUnconsumed,
                why: format!(
                    "the value loaded at +{:#x} after the walk is never compared with the one loaded at +{:#x}: nothing depends on the retry check, and there is no back-out",
                    func.offset(retry.idx),
                    func.offset(begin.idx)
                ),
                evidence: vec![
                    (begin.idx, "read_begin".into()),
                    (retry.idx, "read_retry, whose value nothing reads".into()),
                ],
            });
            side.begin = Some(begin);
            side.retry = Some(retry);
        }
        n => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "{n} loads of the seqcount (at {}) and no comparison of two of them",
                    offsets(func, loads.iter().map(|a| a.idx))
                ),
            });
        }
    }
    Ok(())
}

/// The je/jne consuming the retry comparison, and its two sides.
fn retry_branch(func: &Func, c: usize, side: &mut ReadSide) -> Result<(), SiteError> {
    let sym = &func.symbol;
    let retry_at = side.retry.as_ref().map_or(0, |r| func.offset(r.idx));
    let unconsumed = |why: String, evidence: Vec<(usize, String)>| Finding {
        defect: super::Defect::RetryUnconsumed,
        why,
        evidence,
    };
    let j = match flag_use(func, c) {
        FlagUse::Read(j) => j,
        FlagUse::Dead(why) => {
            side.defects.push(unconsumed(
                format!(
                    "nothing depends on the retry comparison at +{:#x}: {why}",
                    func.offset(c)
                ),
                vec![(c, "the retry comparison".into())],
            ));
            return Ok(());
        }
        FlagUse::Unclear(why) => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "the retry comparison at +{:#x} (retry load +{retry_at:#x}): {why}",
                    func.offset(c)
                ),
            });
        }
    };
    let Some((cc, target, fall)) = zf_branch(func, j) else {
        return Err(SiteError::Ambiguous {
            symbol: sym.clone(),
            why: format!(
                "the retry comparison is consumed by `{}` at +{:#x}, not by a je/jne branch: a shape this tool does not model",
                super::att(&func.insns[j]),
                func.offset(j)
            ),
        });
    };
    side.branch = Some(j);
    if target == fall {
        side.defects.push(unconsumed(
            format!(
                "both sides of `{}` at +{:#x} lead to +{:#x}: nothing depends on the retry comparison, and there is no back-out",
                super::att(&func.insns[j]),
                func.offset(j),
                func.offset(target)
            ),
            vec![(c, "the retry comparison".into()), (j, "a branch whose sides meet".into())],
        ));
        return Ok(());
    }
    // jne: taken when the value changed; je: taken when it did not.
    let (fail, ok) = if cc == ConditionCode::ne {
        (target, fall)
    } else {
        (fall, target)
    };
    side.fail = Some(fail);
    side.ok = Some(ok);
    Ok(())
}

/// The parity check on the begin value: `test $1` and a je/jne whose odd side returns without
/// walking the page tables.
fn odd_check(func: &Func, flow: &Flow, ctx: &Ctx, side: &mut ReadSide) -> Result<(), SiteError> {
    let sym = &func.symbol;
    let Some(begin) = side.begin.clone() else {
        return Ok(());
    };
    let begin_ip = func.insns[begin.idx].ip();
    let mut checks = Vec::new();
    for (t, ins) in func.insns.iter().enumerate() {
        let Some(st) = state(flow, t) else { continue };
        if ins.mnemonic() != Mnemonic::Test || ins.op_count() != 2 {
            continue;
        }
        let Some(imm_k) = (0..2).find(|&k| imm(ins, k) == Some(1)) else {
            continue;
        };
        let v = wide_value(ins, 1 - imm_k, st, ctx);
        if !v.iter().any(|x| *x == Val::Seq(begin_ip)) {
            continue;
        }
        let FlagUse::Read(j) = flag_use(func, t) else {
            continue;
        };
        if let Some((cc, target, fall)) = zf_branch(func, j) {
            checks.push((
                t,
                j,
                if cc == ConditionCode::ne {
                    target
                } else {
                    fall
                },
            ));
        }
    }
    checks.sort_unstable_by_key(|c| c.2);
    checks.dedup_by_key(|c| c.2);
    let later = side.retry.as_ref().map(|r| r.idx).or(side.compare);
    match checks.as_slice() {
        [] => {
            // Proven missing only if nothing else reads the value: another instruction might
            // test its low bit in a form not modelled here.
            let used: Vec<usize> = users_of(func, flow, ctx, &begin)
                .into_iter()
                .filter(|&u| Some(u) != side.compare)
                .collect();
            if !used.is_empty() {
                return Err(SiteError::Ambiguous {
                    symbol: sym.clone(),
                    why: format!(
                        "the read_begin value (+{:#x}) is used at {}, none of them a `test $1` and a je/jne",
                        func.offset(begin.idx),
                        offsets(func, used)
                    ),
                });
            }
            side.defects.push(Finding {
                defect: super::Defect::OddCheckMissing,
                why: format!(
                    "the value loaded at +{:#x} is never tested for oddness: GUP-fast walks the page tables even while a write section is open",
                    func.offset(begin.idx)
                ),
                evidence: vec![(begin.idx, "read_begin, whose low bit nothing tests".into())],
            });
        }
        [(t, j, exit)] => {
            if let Some(r) = later.filter(|&r| func.reaches(*exit, r) || *exit == r) {
                side.defects.push(Finding {
                    defect: super::Defect::OddCheckMissing,
                    why: format!(
                        "the odd side of the check at +{:#x} (+{:#x}) goes on to the walk and the retry (+{:#x}) instead of returning without pins",
                        func.offset(*t),
                        func.offset(*exit),
                        func.offset(r)
                    ),
                    evidence: vec![
                        (*t, "tests the read_begin value's low bit".into()),
                        (*j, "its odd side does not return".into()),
                    ],
                });
            } else {
                side.odd = Some((*t, *j, *exit));
            }
        }
        many => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "the read_begin value is checked for oddness with exits to {}",
                    offsets(func, many.iter().map(|c| c.2))
                ),
            });
        }
    }
    Ok(())
}

/// Credits the changed side of the retry branch as the back-out block only if it really backs
/// out: entered by that branch alone, and calling a function that releases pins.
fn backout(
    func: &Func,
    unpin_name: &dyn Fn(u64) -> Option<String>,
    side: &mut ReadSide,
) -> Result<(), SiteError> {
    let sym = &func.symbol;
    let (Some(fail), Some(branch)) = (side.fail, side.branch) else {
        return Ok(());
    };
    let br = format!(
        "`{}` at +{:#x}",
        super::att(&func.insns[branch]),
        func.offset(branch)
    );
    let missing = |why: String| Finding {
        defect: super::Defect::BackoutMissing,
        why,
        evidence: vec![(branch, "the retry branch".into())],
    };
    if let Some((_, _, exit)) = side.odd
        && (fail == exit || func.reaches(exit, fail))
    {
        side.defects.push(missing(format!(
            "the changed side of {br} jumps straight into the odd-value return path (+{:#x}): the pins the walk took are never released",
            func.offset(fail)
        )));
        side.fail = None;
        return Ok(());
    }
    let preds = func.pred_table().get(fail).cloned().unwrap_or_default();
    if preds != [branch] {
        return Err(SiteError::Ambiguous {
            symbol: sym.clone(),
            why: format!(
                "+{:#x}, the changed side of {br}, is also reached from {}: a probe there would not mark failed retries only",
                func.offset(fail),
                offsets(func, preds.into_iter().filter(|&p| p != branch))
            ),
        });
    }
    let mut block: Vec<usize> = func.dominated(fail).into_iter().collect();
    block.sort_unstable();
    let calls: Vec<(usize, u64)> = block
        .iter()
        .copied()
        .filter_map(|i| {
            let ins = &func.insns[i];
            if ins.is_call_near() {
                Some((i, ins.near_branch_target()))
            } else if ins.is_call_near_indirect() {
                Some((i, 0))
            } else {
                None
            }
        })
        .collect();
    if calls.is_empty() {
        side.defects.push(missing(format!(
            "the changed side of {br} (+{:#x}) calls nothing: the pins the walk took are never released",
            func.offset(fail)
        )));
        side.fail = None;
        return Ok(());
    }
    let unpins: Vec<String> = calls
        .iter()
        .filter_map(|&(_, t)| (t != 0).then(|| unpin_name(t)).flatten())
        .collect();
    if unpins.is_empty() {
        return Err(SiteError::Unexpected {
            symbol: sym.clone(),
            why: format!(
                "the changed side of {br} (+{:#x}) calls {}, none of them a function known to release pins",
                func.offset(fail),
                offsets(func, calls.iter().map(|c| c.0))
            ),
        });
    }
    let mut names = unpins;
    names.dedup();
    side.backout_calls = names;
    Ok(())
}
