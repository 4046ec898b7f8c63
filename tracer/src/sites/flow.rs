//! Where each register's value comes from: a forward data-flow analysis over one function.
//!
//! Every register and every stack slot holds a small set of symbolic values it may have at that
//! instruction ("argument 1 at entry", "the 64-bit value loaded from [argument 1 + 0x10]",
//! "the current task", "the 32-bit value the seqcount load at address X returned", a constant),
//! or is unknown. Sets merge at join points, so a register counts as holding, say,
//! `current->mm` only if it does on every path that reaches the instruction. Spills to the
//! stack are followed, across calls too: a slot survives a call unless a pointer into the
//! frame at or below it escaped (`lea` of a stack address into a register). The assumption:
//! code given a pointer into the frame writes only at or above that address (the object it
//! points to, and what lies above it); nothing below it. Stores through any other pointer are
//! treated the same way. A realigned frame (`and $-16, %rsp`, as clang emits in large
//! functions) is followed as a second region whose offset from the entry stack pointer is
//! unknown; the two regions are assumed to alias wherever they could.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use iced_x86::{Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};

use super::func::Func;

/// A symbolic value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Val {
    /// The n-th integer argument register at entry (rdi, rsi, rdx, rcx, r8, r9).
    Arg(u8),
    /// The current task pointer, read from its per-cpu variable.
    Current,
    /// The 64-bit value of another per-cpu variable (at this %gs offset).
    PerCpu(u64),
    /// The 64-bit value loaded from memory at (value + displacement).
    Load(Box<Val>, i64),
    /// The 32-bit value returned by the seqcount-displacement load at this address.
    Seq(u64),
    Const(i64),
    /// A stack address: the frame's reference point plus this offset.
    Stack(Frame, i64),
}

/// The reference point of a stack address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frame {
    /// The stack pointer at entry.
    Entry,
    /// The stack pointer right after the prologue realigned it (`and $-N, %rsp`): some
    /// unknown distance below the entry one.
    Aligned,
}

const MAX_DEPTH: usize = 3;
const MAX_SET: usize = 4;

impl Val {
    fn depth(&self) -> usize {
        match self {
            Val::Load(v, _) => 1 + v.depth(),
            _ => 0,
        }
    }
}

/// A set of possible values; `None` means unknown.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Vs(pub Option<BTreeSet<Val>>);

impl Vs {
    pub fn top() -> Vs {
        Vs(None)
    }
    pub fn one(v: Val) -> Vs {
        Vs(Some(BTreeSet::from([v])))
    }
    pub fn only(&self) -> Option<&Val> {
        match &self.0 {
            Some(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = &Val> {
        self.0.iter().flatten()
    }
    pub fn is_top(&self) -> bool {
        self.0.is_none()
    }
    fn join(&self, other: &Vs) -> Vs {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => {
                let u: BTreeSet<Val> = a.union(b).cloned().collect();
                if u.len() > MAX_SET {
                    Vs::top()
                } else {
                    Vs(Some(u))
                }
            }
            _ => Vs::top(),
        }
    }
    fn map(&self, f: impl Fn(&Val) -> Option<Val>) -> Vs {
        match &self.0 {
            Some(s) => s
                .iter()
                .map(f)
                .collect::<Option<BTreeSet<Val>>>()
                .map_or(Vs::top(), |s| Vs(Some(s))),
            None => Vs::top(),
        }
    }
    /// The value as seen through a 32-bit register: only seqcount values and constants keep
    /// their meaning (a truncated pointer is not the pointer).
    fn narrow32(&self) -> Vs {
        self.map(|v| match v {
            Val::Seq(_) => Some(v.clone()),
            Val::Const(c) => Some(Val::Const(i64::from(*c as u32))),
            _ => None,
        })
    }
}

const GPRS: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];
const ARGS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];
const CALLER_SAVED: [Register; 9] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

fn gpr(r: Register) -> Option<usize> {
    GPRS.iter().position(|&g| g == r.full_register())
}

/// A stack position.
pub type Pos = (Frame, i64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    regs: [Vs; 16],
    /// Stack position → (size in bytes, value).
    slots: BTreeMap<Pos, (u32, Vs)>,
    /// Where (entry-relative) the stack pointer was when the frame was realigned: entry slots
    /// below it may be the same memory as aligned ones.
    realign: Option<i64>,
}

impl State {
    fn entry() -> State {
        let mut regs: [Vs; 16] = Default::default();
        for r in &mut regs {
            *r = Vs::top();
        }
        for (n, &a) in ARGS.iter().enumerate() {
            if let Some(i) = gpr(a) {
                regs[i] = Vs::one(Val::Arg(n as u8));
            }
        }
        if let Some(i) = gpr(Register::RSP) {
            regs[i] = Vs::one(Val::Stack(Frame::Entry, 0));
        }
        State {
            regs,
            slots: BTreeMap::new(),
            realign: None,
        }
    }

    /// The value of a register as read at its own width.
    pub fn reg(&self, r: Register) -> Vs {
        let Some(i) = gpr(r) else {
            return Vs::top();
        };
        match r.size() {
            8 => self.regs[i].clone(),
            4 => self.regs[i].narrow32(),
            _ => Vs::top(),
        }
    }

    fn set_reg(&mut self, r: Register, v: Vs) {
        let Some(i) = gpr(r) else {
            return;
        };
        self.regs[i] = match r.size() {
            8 => v,
            // A 32-bit write zero-extends into the full register.
            4 => v.narrow32(),
            // 8/16-bit writes keep the rest of the register: the result is no longer a value.
            _ => Vs::top(),
        };
    }

    pub fn slot(&self, at: Pos, size: u32) -> Vs {
        match self.slots.get(&at) {
            Some((s, v)) if *s == size => v.clone(),
            _ => Vs::top(),
        }
    }

    /// Forgets what `[from, to)` of a frame may have held, in that frame and wherever the
    /// other frame may overlap it.
    fn kill_slots(&mut self, frame: Frame, from: i64, to: i64) {
        let realign = self.realign;
        self.slots.retain(|&(f, o), (s, _)| {
            if f == frame {
                o + i64::from(*s) <= from || o >= to
            } else {
                match (frame, realign) {
                    // An entry-relative write below the realignment point may hit any aligned
                    // slot; an aligned write, any entry slot below that point.
                    (Frame::Entry, Some(r)) => from >= r,
                    (Frame::Aligned, Some(r)) => o >= r,
                    _ => false,
                }
            }
        });
    }

    fn store_slot(&mut self, at: Pos, size: u32, v: Vs) {
        self.kill_slots(at.0, at.1, at.1 + i64::from(size));
        if matches!(size, 4 | 8) && !v.is_top() {
            self.slots.insert(at, (size, v));
        }
    }

    /// What a call, or a store through a pointer of unknown target, may overwrite: everything
    /// at or above an escaped stack address.
    fn forget_escaped(&mut self, escaped: &BTreeSet<Pos>) {
        let lowest = |frame| {
            escaped
                .iter()
                .filter(|(f, _)| *f == frame)
                .map(|p| p.1)
                .next()
        };
        let (entry, aligned) = (lowest(Frame::Entry), lowest(Frame::Aligned));
        let realign = self.realign;
        self.slots.retain(|&(f, o), (s, _)| {
            let end = o + i64::from(*s);
            match f {
                Frame::Entry => {
                    // Upward from an aligned address lies the rest of the aligned frame, then
                    // the entry frame.
                    aligned.is_none() && entry.is_none_or(|e| end <= e)
                }
                Frame::Aligned => {
                    aligned.is_none_or(|a| end <= a)
                        && entry.is_none_or(|e| realign.is_some_and(|r| e >= r))
                }
            }
        });
    }

    fn join(&self, other: &State) -> State {
        let mut regs = self.regs.clone();
        for (r, o) in regs.iter_mut().zip(&other.regs) {
            *r = r.join(o);
        }
        let slots = self
            .slots
            .iter()
            .filter_map(|(o, (s, v))| match other.slots.get(o) {
                Some((s2, v2)) if s2 == s => Some((*o, (*s, v.join(v2)))),
                _ => None,
            })
            .filter(|(_, (_, v))| !v.is_top())
            .collect();
        let realign = match (self.realign, other.realign) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        State {
            regs,
            slots,
            realign,
        }
    }
}

impl State {
    /// The known values, for `tracer sites --explain`.
    pub fn describe(&self, show: &dyn Fn(&Vs) -> String) -> String {
        let mut parts = Vec::new();
        for (r, v) in GPRS.iter().zip(&self.regs) {
            if !v.is_top() {
                parts.push(format!("%{}={}", format!("{r:?}").to_lowercase(), show(v)));
            }
        }
        for ((f, o), (size, v)) in &self.slots {
            parts.push(format!(
                "[{}{}]/{size}={}",
                frame_name(*f),
                signed_hex(*o),
                show(v)
            ));
        }
        parts.join(" ")
    }
}

/// How a frame's reference point is written in `--explain` output.
pub fn frame_name(f: Frame) -> &'static str {
    match f {
        Frame::Entry => "entry_sp",
        Frame::Aligned => "aligned_sp",
    }
}

/// `-0x90` rather than the two's complement.
pub fn signed_hex(v: i64) -> String {
    if v < 0 {
        format!("-{:#x}", v.unsigned_abs())
    } else {
        format!("+{v:#x}")
    }
}

/// What the analysis needs to know about the kernel.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Per-cpu address of the current task pointer (`current_task`, or `pcpu_hot.current_task`).
    pub current: u64,
    /// Displacement of `write_protect_seq.sequence` in `mm_struct`.
    pub seq_disp: i64,
}

/// The memory an instruction's memory operand refers to.
#[derive(Clone, Debug)]
pub enum Mem {
    Stack(Pos),
    /// Through a pointer held in the base register: its values and the displacement.
    Ptr {
        base: Register,
        vals: Vs,
        disp: i64,
    },
    /// A %gs-relative per-cpu address.
    PerCpu(u64),
    /// RIP-relative, absolute, indexed, or another segment.
    Other,
}

pub fn mem_ref(ins: &Instruction, st: &State) -> Mem {
    let base = ins.memory_base();
    let seg = ins.memory_segment();
    if seg == Register::GS {
        return match base {
            _ if ins.memory_index() != Register::None => Mem::Other,
            Register::None | Register::RIP => Mem::PerCpu(ins.memory_displacement64()),
            _ => Mem::Other,
        };
    }
    if seg == Register::FS || ins.memory_index() != Register::None {
        return Mem::Other;
    }
    if base == Register::None || base == Register::RIP || base.size() != 8 {
        return Mem::Other;
    }
    let disp = ins.memory_displacement64() as i64;
    let vals = st.reg(base);
    if let Some(Val::Stack(f, o)) = vals.only() {
        return Mem::Stack((*f, o + disp));
    }
    Mem::Ptr { base, vals, disp }
}

/// Index of the memory operand, if the instruction has one.
pub fn mem_operand(ins: &Instruction) -> Option<u32> {
    (0..ins.op_count()).find(|&k| ins.op_kind(k) == OpKind::Memory)
}

/// Per-instruction entry states (`None` where unreachable).
pub struct Flow {
    pub states: Vec<Option<State>>,
}

impl Flow {
    pub fn run(func: &Func, ctx: &Ctx) -> Flow {
        let mut escaped: BTreeSet<Pos> = BTreeSet::new();
        let mut info = InstructionInfoFactory::new();
        let hook = fentry_index(func);
        loop {
            let before = escaped.len();
            let mut states: Vec<Option<State>> = vec![None; func.insns.len()];
            if states.is_empty() {
                return Flow { states };
            }
            states[0] = Some(State::entry());
            let mut work = VecDeque::from([0usize]);
            let mut queued = vec![false; func.insns.len()];
            queued[0] = true;
            while let Some(i) = work.pop_front() {
                queued[i] = false;
                let Some(mut st) = states[i].clone() else {
                    continue;
                };
                step(
                    &func.insns[i],
                    Some(i) == hook,
                    &mut st,
                    ctx,
                    &mut info,
                    &mut escaped,
                );
                for &s in &func.succ[i] {
                    let merged = match &states[s] {
                        None => st.clone(),
                        Some(old) => old.join(&st),
                    };
                    if states[s].as_ref() != Some(&merged) {
                        states[s] = Some(merged);
                        if !queued[s] {
                            queued[s] = true;
                            work.push_back(s);
                        }
                    }
                }
            }
            // A newly escaped slot changes what calls forget: run again until stable.
            if escaped.len() == before {
                return Flow { states };
            }
        }
    }
}

/// The ftrace hook: a call as the first instruction (after an optional endbr64). It saves and
/// restores every argument register, so it is not a call in the ABI sense.
fn fentry_index(func: &Func) -> Option<usize> {
    let first = func.insns.first()?;
    let i = if first.mnemonic() == Mnemonic::Endbr64 {
        1
    } else {
        0
    };
    func.insns
        .get(i)
        .filter(|ins| ins.is_call_near() || ins.is_call_near_indirect())
        .map(|_| i)
}

fn is_write(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

fn load(ins: &Instruction, st: &State, ctx: &Ctx, size: usize) -> Vs {
    match mem_ref(ins, st) {
        Mem::Stack(at) => st.slot(at, size as u32),
        Mem::PerCpu(a) if size == 8 => Vs::one(if a == ctx.current {
            Val::Current
        } else {
            Val::PerCpu(a)
        }),
        Mem::Ptr { disp, .. } if size == 4 && disp == ctx.seq_disp => Vs::one(Val::Seq(ins.ip())),
        Mem::Ptr { vals, disp, .. } if size == 8 => vals.map(|v| {
            (v.depth() < MAX_DEPTH && !matches!(v, Val::Const(_) | Val::Seq(_)))
                .then(|| Val::Load(Box::new(v.clone()), disp))
        }),
        _ => Vs::top(),
    }
}

/// The operand's immediate value, if it is an immediate (iced panics on other kinds).
pub fn imm(ins: &Instruction, k: u32) -> Option<u64> {
    if k >= ins.op_count() {
        return None;
    }
    matches!(
        ins.op_kind(k),
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
    .then(|| ins.immediate(k))
}

fn operand_value(ins: &Instruction, k: u32, st: &State, ctx: &Ctx) -> Vs {
    match ins.op_kind(k) {
        OpKind::Register => st.reg(ins.op_register(k)),
        OpKind::Memory => load(ins, st, ctx, ins.memory_size().size()),
        _ => imm(ins, k).map_or(Vs::top(), |v| Vs::one(Val::Const(v as i64))),
    }
}

/// The value an operand has at an instruction whose entry state is `st`: registers, stack
/// slots, immediates, and seqcount loads (a memory operand at the seqcount displacement reads
/// as that instruction's `Seq`).
pub fn value_at(ins: &Instruction, k: u32, st: &State, ctx: &Ctx) -> Vs {
    operand_value(ins, k, st, ctx)
}

fn adjust_rsp(st: &mut State, delta: i64) {
    let v = st.reg(Register::RSP).map(|v| match v {
        Val::Stack(f, o) => Some(Val::Stack(*f, o + delta)),
        _ => None,
    });
    st.set_reg(Register::RSP, v);
}

fn rsp_pos(st: &State) -> Option<Pos> {
    match st.reg(Register::RSP).only() {
        Some(Val::Stack(f, o)) => Some((*f, *o)),
        _ => None,
    }
}

/// Stack addresses (other than the stack pointer's own) that leave the analysis here: passed
/// to a call in an argument register, stored outside the frame, or used in arithmetic (whose
/// result the analysis does not follow). Copies between registers, stores into stack slots,
/// comparisons and use as a memory operand's base keep the address tracked.
fn note_escapes(
    ins: &Instruction,
    st: &State,
    info: &mut InstructionInfoFactory,
    escaped: &mut BTreeSet<Pos>,
) {
    let stack_vals = |r: Register| -> Vec<Pos> {
        if r.full_register() == Register::RSP {
            return Vec::new();
        }
        st.reg(r.full_register())
            .iter()
            .filter_map(|v| match v {
                Val::Stack(f, o) => Some((*f, *o)),
                _ => None,
            })
            .collect()
    };
    let reg_op = |k: u32| (ins.op_kind(k) == OpKind::Register).then(|| ins.op_register(k));
    match ins.mnemonic() {
        Mnemonic::Call => {
            for r in ARGS {
                escaped.extend(stack_vals(r));
            }
        }
        Mnemonic::Mov if ins.op_count() == 2 => {
            if ins.op_kind(0) == OpKind::Memory
                && let Some(r) = reg_op(1)
                && !matches!(mem_ref(ins, st), Mem::Stack(_))
            {
                escaped.extend(stack_vals(r));
            }
        }
        Mnemonic::Push | Mnemonic::Lea | Mnemonic::Cmp | Mnemonic::Test => {}
        _ => {
            let i = info.info(ins);
            for k in 0..ins.op_count() {
                if let Some(r) = reg_op(k)
                    && matches!(
                        i.op_access(k),
                        OpAccess::Read
                            | OpAccess::ReadWrite
                            | OpAccess::ReadCondWrite
                            | OpAccess::CondRead
                    )
                {
                    escaped.extend(stack_vals(r));
                }
            }
        }
    }
}

fn step(
    ins: &Instruction,
    is_hook: bool,
    st: &mut State,
    ctx: &Ctx,
    info: &mut InstructionInfoFactory,
    escaped: &mut BTreeSet<Pos>,
) {
    let op0_reg =
        (ins.op_count() > 0 && ins.op_kind(0) == OpKind::Register).then(|| ins.op_register(0));
    note_escapes(ins, st, info, escaped);
    match ins.mnemonic() {
        Mnemonic::Call => {
            if !is_hook {
                for r in CALLER_SAVED {
                    st.set_reg(r, Vs::top());
                }
                st.forget_escaped(escaped);
            }
            return;
        }
        Mnemonic::Push if ins.op_count() == 1 => {
            let v = operand_value(ins, 0, st, ctx);
            if let Some((f, o)) = rsp_pos(st) {
                st.store_slot((f, o - 8), 8, v);
            }
            adjust_rsp(st, -8);
            return;
        }
        Mnemonic::Pop if ins.op_count() == 1 => {
            let v = rsp_pos(st).map_or(Vs::top(), |at| st.slot(at, 8));
            adjust_rsp(st, 8);
            if let Some(r) = op0_reg {
                st.set_reg(r, v);
            }
            return;
        }
        Mnemonic::Add | Mnemonic::Sub
            if op0_reg == Some(Register::RSP) && imm(ins, 1).is_some() =>
        {
            let v = imm(ins, 1).unwrap_or(0) as i64;
            adjust_rsp(
                st,
                if ins.mnemonic() == Mnemonic::Add {
                    v
                } else {
                    -v
                },
            );
            return;
        }
        // Stack realignment in the prologue: from here the frame's locals are addressed from
        // an aligned stack pointer at an unknown distance below the entry one.
        Mnemonic::And
            if op0_reg == Some(Register::RSP)
                && imm(ins, 1).is_some_and(|m| (m as i64) < 0 && (m as i64).count_ones() > 0) =>
        {
            match rsp_pos(st) {
                Some((Frame::Entry, o)) => {
                    st.realign = Some(o);
                    st.set_reg(Register::RSP, Vs::one(Val::Stack(Frame::Aligned, 0)));
                }
                _ => st.set_reg(Register::RSP, Vs::top()),
            }
            return;
        }
        Mnemonic::Xor | Mnemonic::Sub
            if ins.op_count() == 2
                && op0_reg.is_some()
                && ins.op_kind(1) == OpKind::Register
                && op0_reg == Some(ins.op_register(1)) =>
        {
            if let Some(r) = op0_reg {
                st.set_reg(r, Vs::one(Val::Const(0)));
            }
            return;
        }
        Mnemonic::Mov if ins.op_count() == 2 => {
            if let Some(r) = op0_reg {
                let v = operand_value(ins, 1, st, ctx);
                st.set_reg(r, v);
                return;
            }
            if ins.op_kind(0) == OpKind::Memory {
                let v = operand_value(ins, 1, st, ctx);
                let size = ins.memory_size().size() as u32;
                let v = if size == 4 { v.narrow32() } else { v };
                match mem_ref(ins, st) {
                    Mem::Stack(at) => st.store_slot(at, size, v),
                    Mem::PerCpu(_) => {}
                    _ => st.forget_escaped(escaped),
                }
                return;
            }
        }
        Mnemonic::Lea => {
            if let Some(r) = op0_reg {
                let v = match mem_ref(ins, st) {
                    Mem::Stack((f, o)) if r.size() == 8 => Vs::one(Val::Stack(f, o)),
                    _ => Vs::top(),
                };
                st.set_reg(r, v);
                return;
            }
        }
        _ => {}
    }
    // Anything else: every register it writes becomes unknown; stack memory it writes is
    // forgotten, and a write through any other pointer may hit an escaped slot.
    let i = info.info(ins);
    let written: Vec<Register> = i
        .used_registers()
        .iter()
        .filter(|u| is_write(u.access()))
        .map(|u| u.register())
        .collect();
    let mem_write = i.used_memory().iter().any(|m| is_write(m.access()));
    if mem_write && mem_operand(ins).is_some() {
        match mem_ref(ins, st) {
            Mem::Stack((f, o)) => {
                let size = ins.memory_size().size() as i64;
                st.kill_slots(f, o, o + size.max(1));
            }
            Mem::PerCpu(_) => {}
            _ => st.forget_escaped(escaped),
        }
    } else if mem_write {
        // String instructions (`rep stos` zeroing a local struct) write upward from rdi.
        match st.reg(Register::RDI).only() {
            Some(Val::Stack(f, o)) => {
                let (f, o) = (*f, *o);
                st.kill_slots(f, o, i64::MAX);
            }
            _ => st.forget_escaped(escaped),
        }
    }
    // pushf/popf (what paravirt irq save/restore is patched into) and other implicit stack
    // users move the stack pointer by a known amount; what they push is not tracked.
    let inc = i64::from(ins.stack_pointer_increment());
    let mut rsp_known = false;
    if inc != 0
        && let Some((f, o)) = rsp_pos(st)
    {
        if inc < 0 {
            st.kill_slots(f, o + inc, o);
        }
        adjust_rsp(st, inc);
        rsp_known = true;
    }
    for r in written {
        if gpr(r).is_some() && !(rsp_known && r.full_register() == Register::RSP) {
            st.set_reg(r.full_register(), Vs::top());
        }
    }
}
