//! The memory the workload forks and pins: private anonymous mappings whose every page is
//! dirtied (so each VMA has an anon_vma and present PTEs, and fork copies its page tables inside
//! a write section), and an optional private hugetlb mapping.
use std::io;

pub const PAGE: usize = 4096;
const HUGE_PAGE: usize = 2 << 20;

/// A mapping owned by the workload, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Bytes of the inaccessible pages before and after it (see `map`).
    guard: usize,
}

// SAFETY: the mapping is plain memory; threads only write bytes into it with volatile stores
// and pass its addresses to the kernel; no Rust references into it exist.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes (rounded up to pages) of private anonymous memory, dirtied. Transparent huge
    /// pages are refused for it: fork copies a THP as one PMD, a write section far shorter than
    /// the same memory in 4 KiB PTEs, and the workload wants long write sections.
    pub fn private(len: usize) -> io::Result<Mapping> {
        let m = Mapping::map(len.div_ceil(PAGE) * PAGE, 0)?;
        // SAFETY: advice on exactly the range just mapped. Failure (a kernel without THP)
        // leaves 4 KiB pages, which is what is wanted anyway.
        unsafe { libc::madvise(m.ptr.cast(), m.len, libc::MADV_NOHUGEPAGE) };
        m.dirty();
        Ok(m)
    }

    /// One private hugetlb page from the kernel's pool (`vm.nr_hugepages`): fork copies it
    /// through `copy_hugetlb_page_range`, which has its own write section since 5.19.
    pub fn hugetlb() -> io::Result<Mapping> {
        let m = Mapping::map(HUGE_PAGE, libc::MAP_HUGETLB)?;
        m.dirty();
        Ok(m)
    }

    fn map(len: usize, extra: i32) -> io::Result<Mapping> {
        // Adjacent anonymous mappings with the same flags merge into one VMA, and fork copies
        // one VMA in one write section. So a small-page mapping is reserved inaccessible with a
        // page to spare on each side, and only its middle made writable: the guard pages are
        // never written (no anon_vma: fork copies them without a write section) and keep the
        // mapping its own VMA, one write section per mapping. Made writable after the
        // reservation, the middle cannot merge into a neighbour that already has an anon_vma.
        let guard = if extra == 0 { PAGE } else { 0 };
        let prot = if guard > 0 {
            libc::PROT_NONE
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: anonymous private mapping with no address hint.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + 2 * guard,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let m = Mapping {
            // SAFETY: within the reservation.
            ptr: unsafe { base.cast::<u8>().add(guard) },
            len,
            guard,
        };
        // SAFETY: the middle of the mapping's own reservation.
        if guard > 0
            && unsafe { libc::mprotect(m.ptr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(m)
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE
    }

    /// Address of page `i` (clamped to the last page).
    pub fn page(&self, i: usize) -> *mut u8 {
        let i = i.min(self.pages().saturating_sub(1));
        // SAFETY: `i` < pages, so the offset is inside the mapping.
        unsafe { self.ptr.add(i * PAGE) }
    }

    /// Writes every page: present, writable PTEs again after a fork write-protected them.
    pub fn dirty(&self) {
        for off in (0..self.len).step_by(PAGE) {
            // SAFETY: `off` is within the mapping.
            unsafe { self.ptr.add(off).write_volatile(1) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, guards included.
        unsafe { libc::munmap(self.ptr.sub(self.guard).cast(), self.len + 2 * self.guard) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_mappings_are_page_rounded_and_addressable() {
        let m = Mapping::private(3 * PAGE + 1).unwrap_or_else(|e| panic!("mmap: {e}"));
        assert_eq!(m.pages(), 4);
        assert_eq!(m.page(1) as usize - m.page(0) as usize, PAGE);
        // Clamped: never past the end.
        assert_eq!(m.page(99), m.page(3));
        m.dirty();
    }

    /// Each mapping is its own VMA (fork gives each its own write section), though anonymous
    /// mappings with the same flags side by side would merge.
    #[test]
    fn mappings_do_not_merge_into_one_vma() {
        let maps: Vec<Mapping> = (0..4)
            .map(|_| Mapping::private(4 * PAGE).unwrap_or_else(|e| panic!("mmap: {e}")))
            .collect();
        let vmas = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for m in &maps {
            let start = m.ptr as usize;
            let line = vmas
                .lines()
                .find(|l| {
                    l.split('-')
                        .next()
                        .and_then(|a| usize::from_str_radix(a, 16).ok())
                        == Some(start)
                })
                .unwrap_or_else(|| panic!("no VMA starts at {start:#x}:\n{vmas}"));
            let end = line
                .split(['-', ' '])
                .nth(1)
                .and_then(|e| usize::from_str_radix(e, 16).ok());
            assert_eq!(end, Some(start + 4 * PAGE), "{line}");
        }
    }
}
