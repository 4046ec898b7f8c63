//! One kernel function decoded into instructions and a control-flow graph.
//!
//! Instruction boundaries are proven two ways before anything is reported: a linear sweep from
//! the symbol's address to its end, and every branch inside the function landing on one of the
//! sweep's boundaries. Only instructions reachable from the entry take part in the analysis.
use std::collections::{HashMap, HashSet, VecDeque};

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, Register};

use super::SiteError;
use crate::kernel::image::CodeSource;

/// How far to read when a jump leaves the function, to see whether it is an alternatives
/// trampoline (`static_cpu_has()` in an unpatched image: a flag test and jumps straight back).
const TRAMPOLINE_BYTES: usize = 64;
const TRAMPOLINE_INSNS: usize = 8;

pub struct Func {
    pub symbol: String,
    pub start: u64,
    pub insns: Vec<Instruction>,
    /// Successor instruction indices; empty for returns and exits.
    pub succ: Vec<Vec<usize>>,
    /// Instruction indices that some branch targets (join points for flags).
    pub branch_targets: HashSet<usize>,
    by_ip: HashMap<u64, usize>,
}

impl Func {
    /// Reads and decodes `symbol` at `start`, `size` bytes long.
    /// `noreturn` tells whether a direct call target never returns (`__stack_chk_fail`, ...):
    /// such a call ends its path, so the unrelated block laid out after it is not its successor.
    pub fn load(
        code: &dyn CodeSource,
        symbol: &str,
        start: u64,
        size: u64,
        noreturn: &dyn Fn(u64) -> bool,
    ) -> Result<Func, SiteError> {
        let bytes = code
            .read(start, size as usize)
            .map_err(|error| SiteError::Code {
                symbol: symbol.to_owned(),
                error,
            })?;
        let mut insns = Vec::new();
        let mut by_ip = HashMap::new();
        let mut decoder = Decoder::with_ip(64, &bytes, start, DecoderOptions::NONE);
        while decoder.can_decode() {
            let ins = decoder.decode();
            // The tail of the range may be padding cut mid-instruction; an invalid instruction
            // only matters if it turns out to be reachable (checked below).
            by_ip.insert(ins.ip(), insns.len());
            insns.push(ins);
        }
        let end = start + size;
        let decode_err = |why: String| SiteError::Decode {
            symbol: symbol.to_owned(),
            why,
        };
        let mut succ = vec![Vec::new(); insns.len()];
        let mut branch_targets = HashSet::new();
        for (i, ins) in insns.iter().enumerate() {
            if ins.is_invalid() {
                continue;
            }
            let next = (i + 1 < insns.len()).then_some(i + 1);
            let inside = |t: u64| t >= start && t < end;
            let target_idx = |t: u64| -> Result<usize, SiteError> {
                by_ip.get(&t).copied().ok_or_else(|| {
                    decode_err(format!(
                        "the branch at +{:#x} lands at +{:#x}, inside an instruction of the linear decoding",
                        ins.ip() - start,
                        t - start
                    ))
                })
            };
            let s = &mut succ[i];
            match ins.flow_control() {
                FlowControl::Call if noreturn(ins.near_branch_target()) => {}
                FlowControl::Next | FlowControl::Call | FlowControl::IndirectCall => {
                    s.extend(next);
                }
                FlowControl::ConditionalBranch => {
                    s.extend(next);
                    let t = ins.near_branch_target();
                    if inside(t) {
                        let ti = target_idx(t)?;
                        branch_targets.insert(ti);
                        s.push(ti);
                    } else if ins.is_jcc_short_or_near() {
                        return Err(decode_err(format!(
                            "the conditional branch at +{:#x} leaves the function",
                            ins.ip() - start
                        )));
                    }
                }
                FlowControl::UnconditionalBranch => {
                    let t = ins.near_branch_target();
                    if inside(t) {
                        let ti = target_idx(t)?;
                        branch_targets.insert(ti);
                        s.push(ti);
                    } else {
                        // A tail call, the return thunk, or an alternatives trampoline that
                        // jumps back in: only the last adds edges.
                        for t in trampoline_targets(code, t, start, end) {
                            let ti = target_idx(t)?;
                            branch_targets.insert(ti);
                            s.push(ti);
                        }
                    }
                }
                // Returns, indirect jumps (retpoline-free tail calls), ud2 (BUG), int3: no
                // successor inside the function. int3 is rejected below when reachable.
                _ => {}
            }
        }
        let mut reachable = vec![false; insns.len()];
        let mut work = VecDeque::from([0usize]);
        while let Some(i) = work.pop_front() {
            if i >= insns.len() || reachable[i] {
                continue;
            }
            reachable[i] = true;
            let ins = &insns[i];
            if ins.is_invalid() {
                return Err(decode_err(format!(
                    "reachable bytes at +{:#x} do not decode as an instruction",
                    ins.ip() - start
                )));
            }
            // Padding int3 (after returns and jumps) is never reachable; a reachable one is a
            // breakpoint someone placed (a kprobe already attached).
            if ins.mnemonic() == Mnemonic::Int3 {
                return Err(SiteError::Breakpoint {
                    symbol: symbol.to_owned(),
                    offset: ins.ip() - start,
                });
            }
            work.extend(succ[i].iter().copied());
        }
        Ok(Func {
            symbol: symbol.to_owned(),
            start,
            insns,
            succ,
            branch_targets,
            by_ip,
        })
    }

    pub fn index_of(&self, ip: u64) -> Option<usize> {
        self.by_ip.get(&ip).copied()
    }

    /// Indices reachable from `from` (excluded unless on a cycle), never entering `avoid`.
    pub fn reach(&self, from: usize, avoid: &[usize]) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut work: VecDeque<usize> = self.succ[from].iter().copied().collect();
        while let Some(i) = work.pop_front() {
            if avoid.contains(&i) || !seen.insert(i) {
                continue;
            }
            work.extend(self.succ[i].iter().copied());
        }
        seen
    }

    /// Whether `to` can execute after `from` in the same call.
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        self.reach(from, &[]).contains(&to)
    }

    pub fn offset(&self, i: usize) -> u64 {
        self.insns[i].ip() - self.start
    }

    /// Indices reachable from the entry (included) without entering `avoid`.
    pub fn reachable_from_entry(&self, avoid: &[usize]) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut work = VecDeque::from([0usize]);
        while let Some(i) = work.pop_front() {
            if i >= self.insns.len() || avoid.contains(&i) || !seen.insert(i) {
                continue;
            }
            work.extend(self.succ[i].iter().copied());
        }
        seen
    }

    /// For every instruction, the reachable instructions that have it as a successor.
    pub fn pred_table(&self) -> Vec<Vec<usize>> {
        let mut t = vec![Vec::new(); self.insns.len()];
        let mut live: Vec<usize> = self.reachable_from_entry(&[]).into_iter().collect();
        live.sort_unstable();
        for i in live {
            for &s in &self.succ[i] {
                if let Some(p) = t.get_mut(s) {
                    p.push(i);
                }
            }
        }
        t
    }

    /// The instructions `head` dominates: reachable from it, and from the entry only through it.
    /// For the first instruction of a block entered by one edge, that is the block and
    /// everything only it leads to.
    pub fn dominated(&self, head: usize) -> HashSet<usize> {
        let elsewhere = self.reachable_from_entry(&[head]);
        let mut region = self.reach(head, &[]);
        region.insert(head);
        region.retain(|i| !elsewhere.contains(i));
        region
    }

    /// Instructions strictly between `from` and `to`: reachable from `from` without passing
    /// `to`, and reaching `to` without passing `from`.
    pub fn between(&self, from: usize, to: usize) -> HashSet<usize> {
        let fwd = self.reach(from, &[to]);
        let preds = self.pred_table();
        let mut back: HashSet<usize> = HashSet::new();
        let mut work: VecDeque<usize> = preds.get(to).into_iter().flatten().copied().collect();
        while let Some(i) = work.pop_front() {
            if i == from || !back.insert(i) {
                continue;
            }
            work.extend(preds.get(i).into_iter().flatten().copied());
        }
        fwd.intersection(&back).copied().collect()
    }
}

/// If the code at `target` (outside the function) only tests flags and jumps back into
/// `[start, end)`, the addresses it jumps back to; otherwise none (the jump is an exit).
fn trampoline_targets(code: &dyn CodeSource, target: u64, start: u64, end: u64) -> Vec<u64> {
    let Ok(bytes) = code.read(target, TRAMPOLINE_BYTES) else {
        return Vec::new();
    };
    let mut decoder = Decoder::with_ip(64, &bytes, target, DecoderOptions::NONE);
    let mut back = Vec::new();
    let mut info = iced_x86::InstructionInfoFactory::new();
    for _ in 0..TRAMPOLINE_INSNS {
        if !decoder.can_decode() {
            break;
        }
        let ins = decoder.decode();
        let inside = |t: u64| t >= start && t < end;
        match ins.flow_control() {
            FlowControl::ConditionalBranch if inside(ins.near_branch_target()) => {
                back.push(ins.near_branch_target());
            }
            FlowControl::UnconditionalBranch if inside(ins.near_branch_target()) => {
                back.push(ins.near_branch_target());
                return back;
            }
            FlowControl::Next => {
                // Only flag tests: anything that writes a register or memory would change the
                // state the function sees when it comes back.
                let i = info.info(&ins);
                let writes_reg = i.used_registers().iter().any(|r| {
                    r.register() != Register::None
                        && matches!(
                            r.access(),
                            iced_x86::OpAccess::Write
                                | iced_x86::OpAccess::CondWrite
                                | iced_x86::OpAccess::ReadWrite
                                | iced_x86::OpAccess::ReadCondWrite
                        )
                });
                let writes_mem = i.used_memory().iter().any(|m| {
                    matches!(
                        m.access(),
                        iced_x86::OpAccess::Write
                            | iced_x86::OpAccess::CondWrite
                            | iced_x86::OpAccess::ReadWrite
                            | iced_x86::OpAccess::ReadCondWrite
                    )
                });
                if writes_reg || writes_mem || ins.code() == Code::INVALID {
                    return Vec::new();
                }
            }
            _ => return Vec::new(),
        }
    }
    Vec::new()
}
