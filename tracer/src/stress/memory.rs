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
        // SAFETY: anonymous private mapping with no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
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
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
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
}
