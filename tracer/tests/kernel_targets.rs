//! Target and offset resolution against real kernels' BTF and kallsyms (from the Debian packages
//! booted by `cargo xtask test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod kernels;

use tracer::kernel::{btf::Btf, foll::FollSource, kallsyms::Kallsyms, target};
use tracer_common::Probe;

#[test]
#[ignore = "needs the kernel fixtures that `cargo xtask test` makes by booting Debian kernels"]
fn resolves_targets_and_offsets_on_real_kernels() {
    for k in kernels::all() {
        let btf = Btf::from_file(k.path("btf")).unwrap();
        let ks = Kallsyms::from_file(k.path("kallsyms")).unwrap();
        let plan = target::resolve(&btf, &ks, &k.release).unwrap();
        let series = kernels::series(&k.release);
        let o = plan.offsets;
        // The seqcount sits inside mm_struct, and `sequence` is its first field.
        assert!(
            o.mm_seq > 0 && o.mm_seq < btf.struct_size("mm_struct").unwrap(),
            "{}",
            k.release
        );
        assert_eq!(btf.member_offset("seqcount", "sequence").unwrap(), 0);
        assert!(o.task_mm > 0 && o.task_mm < btf.struct_size("task_struct").unwrap());
        assert_eq!(
            o.vma_start, 0,
            "vm_start is the first field of vm_area_struct"
        );
        assert_eq!(o.vma_end, 8);
        assert_eq!(o.cpr_vma_arg, 1, "copy_page_range(dst_vma, src_vma)");
        if series >= (6, 10) {
            assert_eq!(plan.gup_symbol, "gup_fast_fallback", "{}", k.release);
            assert_eq!(
                plan.foll.source,
                FollSource::Btf,
                "6.3+ declares FOLL_* in BTF"
            );
            assert_eq!(
                (plan.foll.pin, plan.foll.fast_only, plan.foll.longterm),
                (0x80000, 0x100000, 0x100)
            );
        } else {
            assert_eq!(
                plan.gup_symbol, "internal_get_user_pages_fast",
                "{}",
                k.release
            );
            assert_eq!(plan.foll.source, FollSource::VersionBefore6_3);
            assert_eq!(
                (plan.foll.pin, plan.foll.fast_only, plan.foll.longterm),
                (0x40000, 0x80000, 0x10000)
            );
        }
        // GUP-fast itself is inlined in Debian builds: the plan must probe the caller and never
        // a symbol that is not there.
        assert!(ks.get("gup_fast").is_none() && ks.get("lockless_pages_from_mm").is_none());
        assert_eq!(o.gup_arg_is_end, 0);
        let probes: Vec<Probe> = plan.probes.iter().map(|p| p.probe).collect();
        for p in [
            Probe::CprEnter,
            Probe::CprExit,
            Probe::GupEnter,
            Probe::GupExit,
            Probe::MmFree,
        ] {
            assert!(probes.contains(&p), "{}: no {p:?} in {probes:?}", k.release);
        }
        for p in &plan.probes {
            assert!(ks.get(&p.symbol).is_some(), "{} not in kallsyms", p.symbol);
        }
        // Known values for the builds the project notes measured; other builds only need the
        // structural checks above (offsets move between builds of one series).
        match k.release.as_str() {
            "6.1.0-56-cloud-amd64" => assert_eq!((o.mm_seq, o.task_mm), (248, 2272)),
            "6.12.117+deb12-cloud-amd64" => assert_eq!((o.mm_seq, o.task_mm), (312, 2304)),
            _ => {}
        }
    }
}
