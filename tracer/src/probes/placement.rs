//! Where exactly a kprobe goes for a discovered seqcount site, and how it reads the value.
//!
//! A kprobe fires before its instruction executes. For a write (`addl $1, disp(%reg)`) that is
//! exact: fork is the only writer and holds mmap_lock, so nothing changes the value between the
//! probe and the increment. For a read it is not: a write on another CPU can land between the
//! probe's read and the kernel's load, and the probe would report a value the kernel never saw.
//! So a load into a register is probed on the *next* instruction, reading the register: the value
//! the kernel actually loaded. That is only sound when the next instruction is reached from the
//! load alone, so a next instruction that some branch in the function targets is refused and the
//! load itself is probed instead (with the memory read), and the plan says so.
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind};

use super::{SiteProbe, SiteRead};
use crate::{
    kernel::{image::CodeSource, kallsyms::Kallsyms},
    sites::{Site, SiteKind},
};

fn decode_all(code: &dyn CodeSource, addr: u64, len: u64) -> Option<Vec<Instruction>> {
    let bytes = code.read(addr, usize::try_from(len).ok()?).ok()?;
    let mut d = Decoder::with_ip(64, &bytes, addr, DecoderOptions::NONE);
    let mut v = Vec::new();
    while d.can_decode() {
        v.push(d.decode());
    }
    Some(v)
}

/// The kprobe for `site`, plus a note when a read had to be probed on the load itself.
pub fn place(site: &Site, code: &dyn CodeSource, ks: &Kallsyms) -> (SiteProbe, Option<String>) {
    let memory = |why: Option<String>| {
        let read = match site.base {
            Some(r) => SiteRead::Memory(r, site.disp),
            None => SiteRead::Marker,
        };
        (
            SiteProbe {
                probe: site.kind.probe(),
                symbol: site.symbol.clone(),
                offset: site.offset,
                read,
                func: site.call(),
            },
            why,
        )
    };
    if !matches!(site.kind, SiteKind::ReadBegin | SiteKind::ReadRetry) {
        return memory(None);
    }
    let fallback = |why: &str| {
        memory(Some(format!(
            "{} at {}+{:#x}: {why}; probed on the load itself, so its value is read just before the kernel loads it",
            site.kind.name(),
            site.symbol,
            site.offset
        )))
    };
    let Some(sym) = ks.get(&site.symbol) else {
        return fallback("symbol not in kallsyms");
    };
    let Some(size) = sym.size else {
        return fallback("function size unknown");
    };
    let Some(insns) = decode_all(code, sym.addr, size) else {
        return fallback("cannot read the function's code");
    };
    let Some(load) = insns.iter().find(|i| i.ip() == site.addr) else {
        return fallback("the site is not an instruction boundary of a linear decode");
    };
    if load.code() != Code::Mov_r32_rm32 || load.op1_kind() != OpKind::Memory {
        return fallback("the load is not a plain `mov` into a register");
    }
    let Some(dest) = crate::sites::to_reg(load.op0_register().full_register()) else {
        return fallback("the destination register is not one pt_regs holds");
    };
    let next = load.next_ip();
    let targeted = insns.iter().any(|i| {
        (i.is_jcc_short_or_near() || i.is_jmp_short_or_near() || i.is_call_near())
            && i.near_branch_target() == next
    });
    if targeted {
        return fallback("a branch also reaches the instruction after it");
    }
    (
        SiteProbe {
            probe: site.kind.probe(),
            symbol: site.symbol.clone(),
            offset: next - sym.addr,
            read: SiteRead::Loaded(dest),
            func: site.call(),
        },
        None,
    )
}
