//! What a tracer can leave in the kernel, listed so that tests can check that detaching left
//! nothing: BPF programs and maps, kprobe events in tracefs, registered kprobes on the functions
//! the tracer probes, and the memory available.
use serde::Serialize;

/// The kernel's state as far as a tracer could change it.
#[derive(Debug, Serialize)]
pub struct Leftovers {
    /// Names of every loaded BPF program and map (a guest running only the tracer has none
    /// once it detached).
    pub bpf_programs: Vec<String>,
    pub bpf_maps: Vec<String>,
    /// `group/event` of kprobe events in tracer groups.
    pub kprobe_events: Vec<String>,
    /// Lines of `/sys/kernel/debug/kprobes/list` (every registered kprobe), without their
    /// addresses: `k  copy_page_range+0x0    [DISABLED][FTRACE]`.
    pub kprobes: Vec<String>,
    /// `MemAvailable` from /proc/meminfo, in KiB.
    pub mem_available_kib: Option<u64>,
}

pub fn collect() -> Leftovers {
    let bpf_programs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
        .collect();
    let bpf_maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.name_as_str().unwrap_or("?").to_owned())
        .collect();
    let kprobe_events = super::kprobe_events::tracefs()
        .and_then(|t| std::fs::read_to_string(t.join("kprobe_events")).ok())
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter_map(|d| d.split_once(':').map(|(_, n)| n.to_owned()))
                .filter(|n| n.starts_with("tracer_"))
                .collect()
        })
        .unwrap_or_default();
    // Without the address column: the tool prints no kernel address unasked.
    let kprobes = std::fs::read_to_string("/sys/kernel/debug/kprobes/list")
        .map(|t| t.lines().map(without_address).collect())
        .unwrap_or_default();
    let mem_available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    });
    Leftovers {
        bpf_programs,
        bpf_maps,
        kprobe_events,
        kprobes,
        mem_available_kib,
    }
}

/// A `kprobes/list` line from its type column on (`ffffffff812c03b0  k  copy_page_range+0x0`
/// → `k  copy_page_range+0x0`).
fn without_address(line: &str) -> String {
    match line.split_once(char::is_whitespace) {
        Some((addr, rest)) if addr.bytes().all(|b| b.is_ascii_hexdigit()) => {
            rest.trim_start().to_owned()
        }
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kprobe_lines_lose_their_address() {
        assert_eq!(
            super::without_address(
                "ffffffff812c03b0  r  copy_page_range+0x0    [DISABLED][FTRACE]"
            ),
            "r  copy_page_range+0x0    [DISABLED][FTRACE]"
        );
        assert_eq!(super::without_address("k  x+0x1"), "k  x+0x1");
    }
}
