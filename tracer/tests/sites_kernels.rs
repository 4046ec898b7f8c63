//! Site discovery on real Debian kernel builds.
//!
//! Fixtures are made at test time (never committed): `cargo xtask` downloads the Debian kernel
//! packages and boots each kernel once with `nokaslr` to capture its kallsyms and BTF, laid out
//! as `$TRACER_FIXTURES/<uname -r>/{vmlinuz,kallsyms,btf}`. Without `TRACER_FIXTURES` the tests
//! are ignored (with that reason); `cargo xtask test` runs them, and a missing fixture fails them.
use std::{
    collections::BTreeSet,
    env,
    error::Error,
    fs,
    path::{Path, PathBuf},
};

use iced_x86::{ConditionCode, Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind};
use tracer::{
    kernel::{btf::Btf, image::ElfImage, kallsyms::Kallsyms},
    sites::{FunctionReport, Plan, SiteKind, discover_files},
};

type R<T> = Result<T, Box<dyn Error>>;

struct Fixture {
    release: String,
    dir: PathBuf,
}

/// The kernels to test: every release directory under `$TRACER_FIXTURES` (left by the VM test
/// boots of `cargo xtask test`); a missing or incomplete fixture is an error.
fn fixtures() -> R<Vec<Fixture>> {
    let root = env::var_os("TRACER_FIXTURES").ok_or(
        "TRACER_FIXTURES is unset: this test needs the kernel fixtures that `cargo xtask test` makes",
    )?;
    let entries = fs::read_dir(&root).map_err(|e| {
        format!(
            "cannot read TRACER_FIXTURES={}: {e}",
            Path::new(&root).display()
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let dir = entry?.path();
        if !dir.is_dir() {
            continue;
        }
        let release = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Only kernel release directories (they start with the version number).
        if !release.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let missing: Vec<&str> = ["vmlinuz", "kallsyms", "btf"]
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(format!("fixture {} lacks {}", dir.display(), missing.join(", ")).into());
        }
        out.push(Fixture { release, dir });
    }
    out.sort_by(|a, b| a.release.cmp(&b.release));
    if out.is_empty() {
        return Err(format!("no kernel fixtures under {}", Path::new(&root).display()).into());
    }
    Ok(out)
}

fn version(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|s| s.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Site offsets measured independently (objdump of the decompressed vmlinux at the kallsyms
/// addresses of a `nokaslr` boot; the je/jne after the retry comparison read by hand) for the
/// builds known when this was written; other builds get the structural checks only. The rt
/// builds invert the retry branch (`je` to the success path, back-out block falls through), and
/// hugetlb's write_end lies before write_begin in every build.
/// (function, site, offset)
type Measured = &'static [(&'static str, SiteKind, u64)];

const MEASURED: [(&str, Measured); 6] = [
    (
        "6.1.0-56-cloud-amd64",
        &[
            ("copy_page_range", SiteKind::WriteBegin, 0x12e3),
            ("copy_page_range", SiteKind::WriteEnd, 0x1356),
            ("copy_hugetlb_page_range", SiteKind::WriteBegin, 0x9dd),
            ("copy_hugetlb_page_range", SiteKind::WriteEnd, 0x94a),
            ("internal_get_user_pages_fast", SiteKind::ReadBegin, 0x103),
            ("internal_get_user_pages_fast", SiteKind::ReadRetry, 0x7c0),
            ("internal_get_user_pages_fast", SiteKind::RetryFail, 0x12e1),
        ],
    ),
    (
        "6.1.0-47-cloud-amd64",
        &[
            ("copy_page_range", SiteKind::WriteBegin, 0x12e3),
            ("copy_page_range", SiteKind::WriteEnd, 0x1356),
            ("copy_hugetlb_page_range", SiteKind::WriteBegin, 0x9d3),
            ("copy_hugetlb_page_range", SiteKind::WriteEnd, 0x940),
            ("internal_get_user_pages_fast", SiteKind::ReadBegin, 0x103),
            ("internal_get_user_pages_fast", SiteKind::ReadRetry, 0x7c0),
            ("internal_get_user_pages_fast", SiteKind::RetryFail, 0x12e1),
        ],
    ),
    (
        "6.1.0-56-rt-amd64",
        &[
            ("copy_page_range", SiteKind::WriteBegin, 0x11d4),
            ("copy_page_range", SiteKind::WriteEnd, 0x1238),
            ("copy_hugetlb_page_range", SiteKind::WriteBegin, 0x8b5),
            ("copy_hugetlb_page_range", SiteKind::WriteEnd, 0x8c6),
            ("internal_get_user_pages_fast", SiteKind::ReadBegin, 0xea),
            ("internal_get_user_pages_fast", SiteKind::ReadRetry, 0x569),
            ("internal_get_user_pages_fast", SiteKind::RetryFail, 0x578),
        ],
    ),
    (
        "6.12.117+deb12-cloud-amd64",
        &[
            ("copy_page_range", SiteKind::WriteBegin, 0x17ef),
            ("copy_page_range", SiteKind::WriteEnd, 0x18ad),
            ("copy_hugetlb_page_range", SiteKind::WriteBegin, 0xa8c),
            ("copy_hugetlb_page_range", SiteKind::WriteEnd, 0xa08),
            ("gup_fast_fallback", SiteKind::ReadBegin, 0x180),
            ("gup_fast_fallback", SiteKind::ReadRetry, 0x464),
            ("gup_fast_fallback", SiteKind::RetryFail, 0x10ac),
        ],
    ),
    (
        "6.12.107+deb12-cloud-amd64",
        &[
            ("copy_page_range", SiteKind::WriteBegin, 0x17f6),
            ("copy_page_range", SiteKind::WriteEnd, 0x18b2),
            ("copy_hugetlb_page_range", SiteKind::WriteBegin, 0xa8f),
            ("copy_hugetlb_page_range", SiteKind::WriteEnd, 0xa0b),
            ("gup_fast_fallback", SiteKind::ReadBegin, 0x180),
            ("gup_fast_fallback", SiteKind::ReadRetry, 0x464),
            ("gup_fast_fallback", SiteKind::RetryFail, 0x10ac),
        ],
    ),
    (
        "6.12.117+deb12-rt-amd64",
        &[
            ("copy_page_range", SiteKind::WriteBegin, 0x1750),
            ("copy_page_range", SiteKind::WriteEnd, 0x17e8),
            ("copy_hugetlb_page_range", SiteKind::WriteBegin, 0xab4),
            ("copy_hugetlb_page_range", SiteKind::WriteEnd, 0xa28),
            ("gup_fast_fallback", SiteKind::ReadBegin, 0x137),
            ("gup_fast_fallback", SiteKind::ReadRetry, 0xf41),
            ("gup_fast_fallback", SiteKind::RetryFail, 0xf4f),
        ],
    ),
];

/// Every instruction of `symbol` (plain linear decoding) with a 32-bit memory operand at `disp`
/// off a base register other than %rsp, whatever the base holds: (offset, is an increment).
fn accesses_at(
    image: &ElfImage,
    ks: &Kallsyms,
    symbol: &str,
    disp: u64,
) -> R<Vec<(u64, bool, iced_x86::Instruction)>> {
    use tracer::kernel::image::CodeSource;
    let sym = ks.get(symbol).ok_or(format!("no {symbol}"))?;
    let size = sym.size.ok_or("no size")?;
    let bytes = image.read(sym.addr, size as usize)?;
    let mut d = Decoder::with_ip(64, &bytes, sym.addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let ins = d.decode();
        let has_mem = (0..ins.op_count()).any(|k| ins.op_kind(k) == OpKind::Memory);
        if has_mem
            && ins.memory_size().size() == 4
            && ins.memory_base() != iced_x86::Register::None
            && ins.memory_base() != iced_x86::Register::RIP
            // Stack locals are not an mm.
            && ins.memory_base() != iced_x86::Register::RSP
            && ins.memory_displacement64() == disp
        {
            let inc = matches!(ins.mnemonic(), Mnemonic::Add | Mnemonic::Inc)
                && ins.op_kind(0) == OpKind::Memory;
            out.push((ins.ip() - sym.addr, inc, ins));
        }
    }
    Ok(out)
}

fn report<'a>(plan: &'a Plan, symbol: &str) -> R<&'a FunctionReport> {
    Ok(plan
        .functions
        .iter()
        .find(|f| f.symbol == symbol)
        .ok_or(format!("{symbol} was not searched"))?)
}

fn check_kernel(fx: &Fixture) -> R<()> {
    let (vmlinuz, kallsyms, btf_path) = (
        fx.dir.join("vmlinuz"),
        fx.dir.join("kallsyms"),
        fx.dir.join("btf"),
    );
    let rel = &fx.release;

    // The image reader: the decompressed vmlinux's .BTF section is the BTF the booted kernel
    // exported, byte for byte.
    let image = ElfImage::from_kernel_file(&vmlinuz)?;
    assert!(
        image.section(".BTF")? == fs::read(&btf_path)?,
        "{rel}: .BTF of the decompressed image differs from /sys/kernel/btf/vmlinux"
    );

    // The release banner offline mode reads when no --release is given.
    assert_eq!(
        tracer::sites::image_release(&image).as_deref(),
        Some(rel.as_str()),
        "{rel}: Linux version banner"
    );

    let btf = Btf::from_file(&btf_path)?;
    let ks = Kallsyms::from_file(&kallsyms)?;
    let seq = u64::from(
        btf.member_offset("mm_struct", "write_protect_seq")?
            + btf.member_offset("seqcount", "sequence")?,
    );
    let (plan, _layout) = discover_files(&vmlinuz, &kallsyms, Some(&btf_path), Some(rel))?;
    for f in &plan.functions {
        eprintln!(
            "{rel}: {}: {} {:?} {:?}",
            f.symbol,
            f.status.name(),
            f.unknown().map(ToString::to_string),
            f.defects()
        );
    }
    for s in &plan.sites {
        eprintln!(
            "{rel}: {} {}+{:#x} {}",
            s.kind.name(),
            s.symbol,
            s.offset,
            s.insn
        );
    }
    assert!(
        plan.complete(),
        "{rel}: discovery refused: {:#?}",
        plan.functions
    );

    let hugetlb = version(rel) >= (5, 19);
    let gup = [
        "gup_fast",
        "lockless_pages_from_mm",
        "gup_fast_fallback",
        "internal_get_user_pages_fast",
    ]
    .into_iter()
    .find(|n| ks.get(n).is_some())
    .ok_or("no GUP-fast function in kallsyms")?;
    let mut expect: Vec<(&str, Vec<SiteKind>)> = vec![(
        "copy_page_range",
        vec![SiteKind::WriteBegin, SiteKind::WriteEnd],
    )];
    if hugetlb {
        expect.push((
            "copy_hugetlb_page_range",
            vec![SiteKind::WriteBegin, SiteKind::WriteEnd],
        ));
    }
    expect.push((
        gup,
        vec![
            SiteKind::ReadBegin,
            SiteKind::ReadRetry,
            SiteKind::RetryFail,
        ],
    ));
    let total: usize = expect.iter().map(|(_, k)| k.len()).sum();
    assert_eq!(plan.sites.len(), total, "{rel}: {:#?}", plan.sites);

    for (symbol, kinds) in &expect {
        let got: Vec<SiteKind> = plan
            .sites
            .iter()
            .filter(|s| s.symbol == *symbol)
            .map(|s| s.kind)
            .collect();
        assert_eq!(&got, kinds, "{rel}: {symbol}");
        // Cross-check against a plain decoding: the memory sites are accesses at the seqcount
        // displacement with the base register they name, and every other such access in the
        // function was looked at and rejected as a look-alike.
        let all = accesses_at(&image, &ks, symbol, seq)?;
        let sites: Vec<_> = plan.sites.iter().filter(|s| s.symbol == *symbol).collect();
        let mut site_offsets = BTreeSet::new();
        for s in sites.iter().filter(|s| s.kind != SiteKind::RetryFail) {
            let (_, inc, ins) = all.iter().find(|(o, _, _)| *o == s.offset).ok_or(format!(
                "{rel}: {} at {symbol}+{:#x} is no seqcount access",
                s.kind.name(),
                s.offset
            ))?;
            let write = matches!(s.kind, SiteKind::WriteBegin | SiteKind::WriteEnd);
            assert_eq!(*inc, write, "{rel}: {symbol}+{:#x}", s.offset);
            assert_eq!(u64::from(s.disp as u32), seq);
            let base = s.base.map(tracer::sites::reg_name).ok_or("no base")?;
            assert_eq!(
                format!("{:?}", ins.memory_base()).to_lowercase(),
                base,
                "{rel}: {symbol}+{:#x}",
                s.offset
            );
            site_offsets.insert(s.offset);
        }
        let notes = report(&plan, symbol)?.notes.join("\n");
        for (o, _, _) in all.iter().filter(|(o, _, _)| !site_offsets.contains(o)) {
            assert!(
                notes.contains(&format!("+{o:#x}:")),
                "{rel}: {symbol}+{o:#x} accesses the seqcount displacement but was neither chosen nor rejected"
            );
        }
    }

    // retry_fail, independently: the first flags reader after read_retry is a je/jne; the
    // back-out block is its target for jne and its fall-through for je.
    let retry = plan
        .sites
        .iter()
        .find(|s| s.kind == SiteKind::ReadRetry)
        .ok_or("no read_retry")?;
    let fail = plan
        .sites
        .iter()
        .find(|s| s.kind == SiteKind::RetryFail)
        .ok_or("no retry_fail")?;
    {
        use tracer::kernel::image::CodeSource;
        let bytes = image.read(retry.addr, 64)?;
        let mut d = Decoder::with_ip(64, &bytes, retry.addr, DecoderOptions::NONE);
        let mut saw_cmp = false;
        let mut expected = None;
        for _ in 0..8 {
            let ins = d.decode();
            if ins.mnemonic() == Mnemonic::Cmp {
                saw_cmp = true;
                continue;
            }
            if saw_cmp && ins.rflags_read() != 0 {
                assert_eq!(ins.flow_control(), FlowControl::ConditionalBranch, "{rel}");
                expected = Some(match ins.condition_code() {
                    ConditionCode::ne => ins.near_branch_target(),
                    ConditionCode::e => ins.next_ip(),
                    cc => return Err(format!("{rel}: retry consumed by {cc:?}").into()),
                });
                break;
            }
        }
        assert_eq!(expected, Some(fail.addr), "{rel}: retry_fail");
    }

    // Live mode: when the fixture boot ran `tracer sites --json` in the guest (reading
    // /proc/kcore, alternatives and paravirt patched), it must agree with offline discovery.
    let live = fx.dir.join("sites.json");
    if live.is_file() {
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&live)?)?;
        let kinds = [
            "write_begin",
            "write_end",
            "read_begin",
            "read_retry",
            "retry_fail",
        ];
        assert_eq!(
            v.pointer("/sides/write").and_then(|s| s.as_str()),
            Some("intact"),
            "{rel}: live write side"
        );
        assert_eq!(
            v.pointer("/sides/read").and_then(|s| s.as_str()),
            Some("intact"),
            "{rel}: live read side"
        );
        let mut got: Vec<(String, String, u64)> = v
            .get("sites")
            .and_then(|s| s.as_array())
            .ok_or("sites.json has no \"sites\" array")?
            .iter()
            .filter_map(|e| {
                let kind = e.get("kind")?.as_str()?;
                kinds.contains(&kind).then(|| {
                    Some((
                        kind.to_owned(),
                        e.get("symbol")?.as_str()?.to_owned(),
                        e.get("offset")?.as_u64()?,
                    ))
                })?
            })
            .collect();
        let mut want: Vec<(String, String, u64)> = plan
            .sites
            .iter()
            .map(|s| (s.kind.name().to_owned(), s.symbol.clone(), s.offset))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "{rel}: live (/proc/kcore) sites differ from offline discovery"
        );
    } else {
        return Err(format!("{rel}: the fixture boot left no sites.json (live discovery)").into());
    }

    if let Some((_, measured)) = MEASURED.iter().find(|(r, _)| r == rel) {
        for (symbol, kind, offset) in *measured {
            let s = plan
                .sites
                .iter()
                .find(|s| s.symbol == *symbol && s.kind == *kind)
                .ok_or(format!("{rel}: no {} in {symbol}", kind.name()))?;
            assert_eq!(s.offset, *offset, "{rel}: {} {symbol}", kind.name());
            let sym = ks.get(symbol).ok_or("symbol")?;
            assert_eq!(s.addr, sym.addr + offset);
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn sites_kernels_discovery_on_debian_builds() -> R<()> {
    let fixtures = fixtures()?;
    let mut series = BTreeSet::new();
    for fx in &fixtures {
        check_kernel(fx)?;
        series.insert(version(&fx.release));
    }
    for want in [(6, 1), (6, 12)] {
        assert!(series.contains(&want), "no {want:?} fixture");
    }
    Ok(())
}
