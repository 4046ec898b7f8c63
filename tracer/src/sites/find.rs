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
        Val::Stack(o) => format!("entry_sp{}", super::flow::signed_hex(*o)),
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

/// The write section: exactly two increments through the source mm, the first reaching the
/// second and not the other way round.
pub struct WritePair {
    pub begin: Access,
    pub end: Access,
    pub notes: Vec<String>,
}

pub fn find_write_pair(
    func: &Func,
    flow: &Flow,
    ctx: &Ctx,
    mm: &[Val],
    names: &[(Val, String)],
) -> Result<WritePair, SiteError> {
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
    match incs.len() {
        0 => {
            return Err(SiteError::NotFound {
                symbol: sym.clone(),
                what: "no increment of write_protect_seq through the source mm".into(),
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
    Ok(WritePair { begin, end, notes })
}

fn offsets(func: &Func, idx: impl IntoIterator<Item = usize>) -> String {
    idx.into_iter()
        .map(|i| format!("+{:#x}", func.offset(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The read side of one GUP-fast call.
pub struct ReadSide {
    pub begin: Access,
    pub retry: Access,
    /// The instruction comparing the two values.
    pub compare: usize,
    /// The conditional branch that consumes the comparison.
    pub branch: usize,
    /// First instruction of the back-out block (taken when the value changed).
    pub fail: usize,
    /// First instruction of the path taken when the value did not change.
    pub ok: usize,
    /// Where the "begin value is odd" check exits to (the fast part's `return 0`).
    pub odd_exit: usize,
    /// Direct call targets (or "indirect") in the back-out block.
    pub backout_calls: Vec<u64>,
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

/// The branch consuming the flags set at `at`: the next instructions on the fall-through path,
/// none of them a join point, none writing ZF, the first that reads flags.
fn flag_consumer(func: &Func, at: usize) -> Result<usize, String> {
    let mut j = at;
    for _ in 0..16 {
        let next = j + 1;
        if !func.succ[j].contains(&next) {
            return Err(format!(
                "the flow leaves +{:#x} before anything reads the flags",
                func.offset(j)
            ));
        }
        j = next;
        let ins = &func.insns[j];
        if func.branch_targets.contains(&j) {
            return Err(format!(
                "+{:#x} is a join point, so its flags may come from elsewhere",
                func.offset(j)
            ));
        }
        if ins.rflags_read() != 0 {
            return Ok(j);
        }
        if ins.rflags_written() & RflagsBits::ZF != 0 {
            return Err(format!(
                "+{:#x} overwrites the comparison's flags before any branch reads them",
                func.offset(j)
            ));
        }
    }
    Err("no instruction reads the comparison's flags".into())
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

pub fn find_read_side(
    func: &Func,
    flow: &Flow,
    ctx: &Ctx,
    cur_mm: &Val,
    names: &[(Val, String)],
) -> Result<ReadSide, SiteError> {
    let sym = &func.symbol;
    let mut notes = Vec::new();
    let mut mine = Vec::new();
    let mut unproven = Vec::new();
    for a in seq_accesses(func, flow, ctx) {
        let at = func.offset(a.idx);
        if !origin_is(&a.vals, std::slice::from_ref(cur_mm)) {
            if a.vals.is_top() || a.vals.iter().any(|v| v == cur_mm) {
                unproven.push(a.idx);
            }
            notes.push(format!(
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
        return Err(SiteError::NotFound {
            symbol: sym.clone(),
            what: "no load of current->mm->write_protect_seq".into(),
            notes,
        });
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
        let side = |k: u32| {
            if ins.op_kind(k) == OpKind::Memory && !mem_is_mine {
                return None;
            }
            seq_parts(&value_at(ins, k, st, ctx))
        };
        let (Some(x), Some(y)) = (side(0), side(1)) else {
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
    let (begin, retry, compare) = match pairs.len() {
        1 => pairs.remove(0),
        0 if !unproven.is_empty() => {
            return Err(unproven_err(&format!(
                "no comparison of two proven seqcount loads (proven: {})",
                offsets(func, mine.iter().map(|a| a.idx))
            )));
        }
        0 => {
            return Err(dead_retry(func, flow, ctx, &mine, sym));
        }
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
    let extra: Vec<usize> = mine
        .iter()
        .map(|a| a.idx)
        .filter(|&i| i != begin.idx && i != retry.idx)
        .collect();
    if !extra.is_empty() {
        return Err(SiteError::Ambiguous {
            symbol: sym.clone(),
            why: format!(
                "besides read_begin (+{:#x}) and read_retry (+{:#x}), the seqcount is also loaded at {}",
                func.offset(begin.idx),
                func.offset(retry.idx),
                offsets(func, extra)
            ),
        });
    }

    let branch = flag_consumer(func, compare).map_err(|why| SiteError::RetryUnconsumed {
        symbol: sym.clone(),
        retry: func.offset(retry.idx),
        why,
    })?;
    let Some((cc, target, fall)) = zf_branch(func, branch) else {
        return Err(SiteError::RetryUnconsumed {
            symbol: sym.clone(),
            retry: func.offset(retry.idx),
            why: format!(
                "the comparison is consumed by `{}` at +{:#x}, not by a je/jne branch",
                func.insns[branch],
                func.offset(branch)
            ),
        });
    };
    // jne: taken when the value changed; je: taken when it did not.
    let (fail, ok) = if cc == ConditionCode::ne {
        (target, fall)
    } else {
        (fall, target)
    };
    if fail == ok {
        return Err(SiteError::MissingBackout {
            symbol: sym.clone(),
            why: format!(
                "both sides of the branch at +{:#x} go to +{:#x}",
                func.offset(branch),
                func.offset(ok)
            ),
        });
    }

    // The parity check on the begin value: `test $1, <begin value>` and a je/jne. Its odd side
    // is the fast part's `return 0`, which the back-out block must rejoin.
    let mut odd_exits = Vec::new();
    for (t, ins) in func.insns.iter().enumerate() {
        let Some(st) = state(flow, t) else { continue };
        if ins.mnemonic() != Mnemonic::Test || ins.op_count() != 2 {
            continue;
        }
        let imm_k = (0..2).find(|&k| imm(ins, k) == Some(1));
        let Some(imm_k) = imm_k else { continue };
        let v = wide_value(ins, 1 - imm_k, st, ctx);
        if !v.iter().any(|x| *x == Val::Seq(func.insns[begin.idx].ip())) {
            continue;
        }
        if let Ok(j) = flag_consumer(func, t)
            && let Some((cc, target, fall)) = zf_branch(func, j)
        {
            odd_exits.push(if cc == ConditionCode::ne {
                target
            } else {
                fall
            });
        }
    }
    odd_exits.sort_unstable();
    odd_exits.dedup();
    let odd_exit = match odd_exits.as_slice() {
        [one] => *one,
        [] => {
            return Err(SiteError::NotFound {
                symbol: sym.clone(),
                what: format!(
                    "the odd-value check of the read_begin value (test $1 and a branch); without it the back-out block cannot be told from the success path (read_begin +{:#x}, read_retry +{:#x})",
                    func.offset(begin.idx),
                    func.offset(retry.idx)
                ),
                notes,
            });
        }
        many => {
            return Err(SiteError::Ambiguous {
                symbol: sym.clone(),
                why: format!(
                    "the read_begin value is checked for oddness with exits to {}",
                    offsets(func, many.iter().copied())
                ),
            });
        }
    };

    // The back-out block: what runs from `fail` until it rejoins the odd exit, never through the
    // success side. It must call something (the unpin) and must rejoin.
    let mut region = func.reach(fail, &[ok, odd_exit]);
    region.insert(fail);
    region.remove(&ok);
    region.remove(&odd_exit);
    if fail == odd_exit {
        return Err(SiteError::MissingBackout {
            symbol: sym.clone(),
            why: format!(
                "the changed side of the branch at +{:#x} goes straight to the return-0 path (+{:#x}) without unpinning anything",
                func.offset(branch),
                func.offset(fail)
            ),
        });
    }
    let rejoins = region.iter().any(|&i| func.succ[i].contains(&odd_exit));
    let mut calls: Vec<usize> = region
        .iter()
        .copied()
        .filter(|&i| {
            let ins = &func.insns[i];
            ins.is_call_near() || ins.is_call_near_indirect()
        })
        .collect();
    calls.sort_unstable();
    if !rejoins {
        return Err(SiteError::MissingBackout {
            symbol: sym.clone(),
            why: format!(
                "the changed side of the branch at +{:#x} (+{:#x}) never rejoins the path the odd-value check returns 0 through (+{:#x})",
                func.offset(branch),
                func.offset(fail),
                func.offset(odd_exit)
            ),
        });
    }
    if calls.is_empty() {
        return Err(SiteError::MissingBackout {
            symbol: sym.clone(),
            why: format!(
                "the changed side of the branch at +{:#x} (+{:#x}) calls nothing before returning: nothing is unpinned",
                func.offset(branch),
                func.offset(fail)
            ),
        });
    }
    let backout_calls = calls
        .iter()
        .map(|&i| {
            let ins = &func.insns[i];
            if ins.is_call_near() {
                ins.near_branch_target()
            } else {
                0
            }
        })
        .collect();
    Ok(ReadSide {
        begin,
        retry,
        compare,
        branch,
        fail,
        ok,
        odd_exit,
        backout_calls,
        notes,
    })
}

/// No comparison of two seqcount values: say whether the later load's value is used at all.
fn dead_retry(func: &Func, flow: &Flow, ctx: &Ctx, mine: &[Access], sym: &str) -> SiteError {
    let loads: Vec<&Access> = mine.iter().filter(|a| a.kind == AccessKind::Load).collect();
    if loads.len() < 2 {
        return SiteError::RetryUnconsumed {
            symbol: sym.to_owned(),
            retry: loads.first().map_or(0, |a| func.offset(a.idx)),
            why: format!(
                "the seqcount is loaded only {} time(s) (at {}): there is no retry load, so the retry check is dead in this kernel",
                loads.len(),
                offsets(func, loads.iter().map(|a| a.idx))
            ),
        };
    }
    // Is any loaded value read by anything (other than being moved around)?
    let mut users = Vec::new();
    for (i, ins) in func.insns.iter().enumerate() {
        let Some(st) = state(flow, i) else { continue };
        if matches!(
            ins.mnemonic(),
            Mnemonic::Mov | Mnemonic::Push | Mnemonic::Pop
        ) {
            continue;
        }
        for k in 0..ins.op_count() {
            let v = wide_value(ins, k, st, ctx);
            for a in &loads {
                if v.iter().any(|x| *x == Val::Seq(func.insns[a.idx].ip())) {
                    users.push((a.idx, i));
                }
            }
        }
    }
    let last = loads
        .iter()
        .find(|a| {
            loads
                .iter()
                .all(|b| b.idx == a.idx || !func.reaches(a.idx, b.idx))
        })
        .map_or(loads[loads.len() - 1].idx, |a| a.idx);
    let used: Vec<usize> = users
        .iter()
        .filter(|(l, _)| *l == last)
        .map(|u| u.1)
        .collect();
    if used.is_empty() {
        SiteError::RetryUnconsumed {
            symbol: sym.to_owned(),
            retry: func.offset(last),
            why: format!(
                "the value loaded at +{:#x} is never compared with the read_begin value and no branch consumes it: the retry check is dead in this kernel",
                func.offset(last)
            ),
        }
    } else {
        SiteError::Ambiguous {
            symbol: sym.to_owned(),
            why: format!(
                "the value loaded at +{:#x} is used at {} but not by a cmp against another seqcount load",
                func.offset(last),
                offsets(func, used)
            ),
        }
    }
}
