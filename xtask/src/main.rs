//! Developer and CI tasks: `cargo xtask setup | run | test | vm | validate-kernel | kernel | bench`.
mod bench;
mod bench_vm;
mod build;
mod cmd;
mod kernels;
mod live;
mod setup;
mod test;
mod validate_kernel;
mod vm;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (Debian packages, bpf-linker, the eBPF toolchain link).
    Setup,
    /// The main job: trace a real kernel (the host's if it can attach kprobes, else a VM).
    Run(test::RunArgs),
    /// Every test, the VM kernel matrix included.
    Test(test::TestArgs),
    /// Boot kernels under QEMU and run a command as root inside.
    Vm(VmArgs),
    /// Run `tracer check` in a VM per kernel and summarize the verdicts.
    ValidateKernel(validate_kernel::Args),
    /// Download (cached) and print the kernel a SPEC resolves to.
    Kernel { spec: Vec<String> },
    /// Build the static tracer binary used in VMs and print its path.
    BuildStatic,
    /// The live-TUI-in-a-VM check of `cargo xtask test` on its own.
    LiveTui {
        #[arg(long, default_value = "6.12")]
        kernel: String,
    },
    /// Benchmarks, as ratios taken side by side in one run: the tracer's cost on fork and on
    /// GUP-fast pins in a VM per kernel (against untraced and the kernel's own kprobe events),
    /// and `tracer validate` against `jq` on the same log; writes target/bench/bench.json and,
    /// unless --quick, BENCHMARKS.md.
    Bench(bench_vm::Args),
}

#[derive(clap::Args)]
struct VmArgs {
    /// `6.1`, `6.12`, an exact Debian build (`6.12.107+deb12`, `6.1.0-56`), or a kernel image path.
    #[arg(long = "kernel", required = true)]
    kernels: Vec<String>,
    /// Modules directory for a kernel given as a path (lib/modules/RELEASE with modules.dep).
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Modules to load in the guest before COMMAND (built-in ones need nothing).
    #[arg(long = "module", default_values = ["virtio_pci", "virtio_blk", "rds"])]
    module: Vec<String>,
    /// Where the guest's /out lands, as DIR/<id>/ (the release, plus a content hash when two
    /// images of the run report the same release).
    #[arg(long, default_value = "target/vm-out")]
    out: PathBuf,
    /// Seconds before a boot counts as hung.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Boot with nokaslr (addresses then match the image's link addresses).
    #[arg(long)]
    nokaslr: bool,
    /// The command to run as root in the guest.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn vm_cmd(a: VmArgs) -> Result<ExitCode> {
    setup::setup()?;
    let tracer = build::static_tracer()?;
    let mut failed = false;
    let mut ks = Vec::new();
    for spec in &a.kernels {
        ks.push((spec, kernels::fetch(spec, a.modules.as_deref())?));
    }
    let ids = kernels::assign_ids(
        &ks.iter()
            .map(|(_, k)| (k.release.clone(), k.image.clone()))
            .collect::<Vec<_>>(),
        kernels::content_hash,
    )?;
    for ((spec, kernel), id) in ks.iter().zip(&ids) {
        let out = a.out.join(id);
        let _ = std::fs::remove_dir_all(&out);
        let r = vm::run(&vm::VmOpts {
            kernel,
            id,
            tracer: &tracer,
            modules: a.module.clone(),
            script: vm::shell_words(&a.command),
            out: out.clone(),
            timeout: Duration::from_secs(a.timeout),
            nokaslr: a.nokaslr,
            interactive: false,
            memory_mb: 1024,
            cpus: 2,
        })
        .with_context(|| format!("kernel {spec}"))?;
        println!(
            "vm: {id} exited {} after {:.1}s; /out copied to {}",
            r.exit_code,
            r.boot_secs,
            r.out.display()
        );
        failed |= r.exit_code != 0;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    // Parsed by hand once so validate-kernel can see where each --modules stood.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let r = match cli.cmd {
        Cmd::ValidateKernel(a) => (|| {
            let m = matches
                .subcommand_matches("validate-kernel")
                .context("clap lost the validate-kernel arguments")?;
            let modules = validate_kernel::modules_per_kernel(m, &a)?;
            validate_kernel::run(&a, &modules)
        })(),
        Cmd::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Cmd::Run(a) => test::run(a),
        Cmd::Test(a) => test::test(a),
        Cmd::Vm(a) => vm_cmd(a),
        Cmd::Kernel { spec } => (|| {
            for s in spec {
                let k = kernels::fetch(&s, None)?;
                println!("{s}: {} {}", k.release, k.image.display());
            }
            Ok(ExitCode::SUCCESS)
        })(),
        Cmd::Bench(a) => bench_vm::run(&a).map(|()| ExitCode::SUCCESS),
        Cmd::LiveTui { kernel } => (|| {
            let k = kernels::fetch(&kernel, None)?;
            let xtask = std::env::current_exe()?;
            live::tui_in_vm(&xtask, &build::workspace(), &kernel, &k.release)?;
            Ok(ExitCode::SUCCESS)
        })(),
        Cmd::BuildStatic => build::static_tracer().map(|p| {
            println!("{}", p.display());
            ExitCode::SUCCESS
        }),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
