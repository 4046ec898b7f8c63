//! Kernel machine code: read bytes at kernel virtual addresses from the live `/proc/kcore`, from a
//! vmlinux ELF, or from a bzImage/vmlinuz (whose compressed payload is the vmlinux ELF).
//!
//! All three are ELF files whose `PT_LOAD` program headers map kernel virtual addresses to file
//! offsets, so one reader serves them; only where the bytes live differs (a file read on demand
//! for kcore, which is as large as the address space, or memory for a decompressed image).
use std::{fs::File, io::Read, os::unix::fs::FileExt, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{what} is not a 64-bit little-endian x86-64 ELF file ({why})")]
    NotElf { what: String, why: &'static str },
    #[error("{what} is truncated: {why}")]
    Truncated { what: String, why: String },
    #[error(
        "{what} maps no kernel code at {addr:#x}..{end:#x} (no PT_LOAD segment covers it with file bytes)",
        end = addr + *len as u64
    )]
    Unmapped { what: String, addr: u64, len: usize },
    #[error(
        "{what} is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" boot header)"
    )]
    UnknownFormat { what: String },
    #[error(
        "the bzImage payload of {what} is compressed with {format}, which this tool does not decompress (zstd, LZ4, xz and gzip are supported)"
    )]
    UnsupportedCompression { what: String, format: &'static str },
    #[error("cannot decompress the {format} payload of {what}: {why}")]
    Decompress {
        what: String,
        format: &'static str,
        why: String,
    },
    #[error("{what} has no {section} section")]
    NoSection { what: String, section: String },
}

/// Something that holds kernel machine code by virtual address.
pub trait CodeSource {
    /// The `len` bytes at kernel virtual address `addr`.
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, ImageError>;
    /// Where the code comes from, for messages.
    fn describe(&self) -> String;
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

#[derive(Clone, Debug)]
struct Section {
    name: String,
    offset: u64,
    size: u64,
}

enum Backing {
    Memory(Vec<u8>),
    File(File),
}

/// An ELF file viewed through its `PT_LOAD` segments: a vmlinux, a decompressed bzImage payload,
/// or `/proc/kcore`.
pub struct ElfImage {
    what: String,
    backing: Backing,
    segments: Vec<Segment>,
    sections: Vec<Section>,
}

const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

impl ElfImage {
    /// A vmlinux (or any x86-64 ELF) held in memory.
    pub fn from_bytes(what: impl Into<String>, bytes: Vec<u8>) -> Result<ElfImage, ImageError> {
        let what = what.into();
        let (segments, sections) = parse_headers(&what, |off, len| {
            bytes
                .get(off as usize..off as usize + len)
                .map(<[u8]>::to_vec)
        })?;
        Ok(ElfImage {
            what,
            backing: Backing::Memory(bytes),
            segments,
            sections,
        })
    }

    /// An ELF file read on demand (used for `/proc/kcore`, which is as large as the kernel's
    /// address space and cannot be loaded whole).
    pub fn open_on_demand(path: impl AsRef<Path>) -> Result<ElfImage, ImageError> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let file = File::open(path).map_err(|error| ImageError::Io {
            path: what.clone(),
            error,
        })?;
        let (segments, sections) = parse_headers(&what, |off, len| {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, off).ok().map(|()| buf)
        })?;
        Ok(ElfImage {
            what,
            backing: Backing::File(file),
            segments,
            sections,
        })
    }

    /// The live kernel's memory through `/proc/kcore` (needs root).
    pub fn kcore() -> Result<ElfImage, ImageError> {
        ElfImage::open_on_demand("/proc/kcore")
    }

    /// A vmlinux ELF or a bzImage/vmlinuz file, told apart by their magic numbers.
    pub fn from_kernel_file(path: impl AsRef<Path>) -> Result<ElfImage, ImageError> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|error| ImageError::Io {
                path: what.clone(),
                error,
            })?;
        if bytes.starts_with(b"\x7fELF") {
            ElfImage::from_bytes(what, bytes)
        } else if bytes.get(0x202..0x206) == Some(b"HdrS") {
            let vmlinux = decompress_bzimage(&what, &bytes)?;
            ElfImage::from_bytes(format!("{what} (decompressed payload)"), vmlinux)
        } else {
            Err(ImageError::UnknownFormat { what })
        }
    }

    /// The bytes of a named section (e.g. `.BTF`), for files that have section headers.
    pub fn section(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let s = self
            .sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ImageError::NoSection {
                what: self.what.clone(),
                section: name.to_owned(),
            })?;
        self.read_file(s.offset, s.size as usize)
    }

    fn read_file(&self, offset: u64, len: usize) -> Result<Vec<u8>, ImageError> {
        let truncated = || ImageError::Truncated {
            what: self.what.clone(),
            why: format!("{len} bytes at file offset {offset:#x} are past its end"),
        };
        match &self.backing {
            Backing::Memory(b) => b
                .get(offset as usize..(offset as usize).saturating_add(len))
                .map(<[u8]>::to_vec)
                .ok_or_else(truncated),
            Backing::File(f) => {
                let mut buf = vec![0; len];
                f.read_exact_at(&mut buf, offset)
                    .map_err(|error| ImageError::Io {
                        path: self.what.clone(),
                        error,
                    })?;
                Ok(buf)
            }
        }
    }
}

impl CodeSource for ElfImage {
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, ImageError> {
        let end = addr.checked_add(len as u64);
        let seg = self.segments.iter().find(|s| {
            addr >= s.vaddr && end.is_some_and(|e| e <= s.vaddr.saturating_add(s.filesz))
        });
        match seg {
            Some(s) => self.read_file(s.offset + (addr - s.vaddr), len),
            None => Err(ImageError::Unmapped {
                what: self.what.clone(),
                addr,
                len,
            }),
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

type Headers = (Vec<Segment>, Vec<Section>);

/// Reads the ELF64 header, program headers and (when present) section headers through `read`.
fn parse_headers(
    what: &str,
    read: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<Headers, ImageError> {
    let not_elf = |why| ImageError::NotElf {
        what: what.to_owned(),
        why,
    };
    let truncated = |why: &str| ImageError::Truncated {
        what: what.to_owned(),
        why: why.to_owned(),
    };
    let eh = read(0, 64).ok_or_else(|| not_elf("shorter than an ELF header"))?;
    if &eh[..4] != b"\x7fELF" {
        return Err(not_elf("no ELF magic"));
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err(not_elf("not ELFCLASS64 little-endian"));
    }
    if u16_at(&eh, 0x12) != Some(EM_X86_64) {
        return Err(not_elf("e_machine is not x86-64"));
    }
    let field = |o| u64_at(&eh, o).ok_or_else(|| truncated("ELF header"));
    let field16 = |o| u16_at(&eh, o).ok_or_else(|| truncated("ELF header"));
    let (phoff, shoff) = (field(0x20)?, field(0x28)?);
    let (phentsize, phnum) = (field16(0x36)? as usize, field16(0x38)? as usize);
    let (shentsize, shnum, shstrndx) = (
        field16(0x3a)? as usize,
        field16(0x3c)? as usize,
        field16(0x3e)? as usize,
    );
    if phentsize < 56 {
        return Err(not_elf("program header entries are too small"));
    }
    let ph = read(phoff, phentsize * phnum).ok_or_else(|| truncated("program headers"))?;
    let mut segments = Vec::new();
    for i in 0..phnum {
        let p = &ph[i * phentsize..];
        let bad = || truncated("program header");
        if u32_at(p, 0).ok_or_else(bad)? != PT_LOAD {
            continue;
        }
        segments.push(Segment {
            offset: u64_at(p, 8).ok_or_else(bad)?,
            vaddr: u64_at(p, 16).ok_or_else(bad)?,
            filesz: u64_at(p, 32).ok_or_else(bad)?,
        });
    }
    // Section headers are optional (kcore has none); a vmlinux keeps them even when stripped.
    let mut sections = Vec::new();
    if shoff != 0
        && shnum != 0
        && shentsize >= 64
        && shstrndx < shnum
        && let Some(sh) = read(shoff, shentsize * shnum)
    {
        let hdr = |i: usize| {
            let s = &sh[i * shentsize..];
            Some((u32_at(s, 0)?, u64_at(s, 24)?, u64_at(s, 32)?))
        };
        let names = hdr(shstrndx).and_then(|(_, off, size)| read(off, size as usize));
        if let Some(names) = names {
            for i in 0..shnum {
                let Some((name_off, offset, size)) = hdr(i) else {
                    continue;
                };
                let name = names
                    .get(name_off as usize..)
                    .and_then(|n| n.split(|&c| c == 0).next())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default();
                sections.push(Section { name, offset, size });
            }
        }
    }
    Ok((segments, sections))
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Uncompressed size of one LZ4 legacy-frame block.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The vmlinux ELF inside a bzImage: the boot header's `payload_offset`/`payload_length` locate
/// the compressed kernel, which the build follows with its uncompressed size (4 bytes LE).
pub fn decompress_bzimage(what: &str, b: &[u8]) -> Result<Vec<u8>, ImageError> {
    let truncated = |why: &str| ImageError::Truncated {
        what: what.to_owned(),
        why: why.to_owned(),
    };
    let setup_sects = match b.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => n as usize,
        None => return Err(truncated("no boot header")),
    };
    let payload_offset = u32_at(b, 0x248).ok_or_else(|| truncated("no payload_offset"))? as usize;
    let payload_length = u32_at(b, 0x24c).ok_or_else(|| truncated("no payload_length"))? as usize;
    let start = (setup_sects + 1) * 512 + payload_offset;
    let payload = b
        .get(start..start + payload_length)
        .ok_or_else(|| truncated("the payload runs past the end of the file"))?;
    if payload.len() < 8 {
        return Err(truncated("the payload is empty"));
    }
    let (data, size_tail) = payload.split_at(payload.len() - 4);
    let expected = u32_at(size_tail, 0).unwrap_or(0) as usize;
    let fail = |format, why: String| ImageError::Decompress {
        what: what.to_owned(),
        format,
        why,
    };
    let (format, out) = if data.starts_with(&ZSTD_MAGIC) {
        let mut out = Vec::with_capacity(expected);
        zstd::stream::read::Decoder::new(data)
            .map(|d| d.single_frame())
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| fail("zstd", e.to_string()))?;
        ("zstd", out)
    } else if u32_at(data, 0) == Some(LZ4_LEGACY_MAGIC) {
        (
            "LZ4",
            lz4_legacy(data, expected).map_err(|why| fail("LZ4", why))?,
        )
    } else if data.starts_with(&XZ_MAGIC) {
        // One .xz stream (with the x86 BCJ filter the kernel build adds); the decoder stops
        // at its end, before the appended size.
        let mut out = Vec::with_capacity(expected);
        liblzma::read::XzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| fail("xz", e.to_string()))?;
        ("xz", out)
    } else if data.starts_with(&GZIP_MAGIC) {
        // What `make defconfig` builds use (CONFIG_KERNEL_GZIP). The size the build appends
        // is the gzip trailer's own ISIZE, so the decoder gets the whole payload.
        let mut out = Vec::with_capacity(expected);
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(|e| fail("gzip", e.to_string()))?;
        ("gzip", out)
    } else {
        let format = match data.get(..4) {
            Some([b'B', b'Z', b'h', ..]) => "bzip2",
            Some([0x89, b'L', b'Z', b'O']) => "lzo",
            Some([0x5d, 0, 0, ..]) => "lzma",
            _ => "an unknown format",
        };
        return Err(ImageError::UnsupportedCompression {
            what: what.to_owned(),
            format,
        });
    };
    if out.len() != expected {
        return Err(fail(
            format,
            format!("got {} bytes, the image says {expected}", out.len()),
        ));
    }
    Ok(out)
}

/// LZ4 legacy frames (`lz4 -l`, what the kernel build uses): a magic number, then blocks each
/// preceded by its compressed size, each decompressing to at most 8 MiB. A size larger than what
/// is left ends the stream (that is the appended uncompressed size); the magic may repeat.
fn lz4_legacy(data: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(expected);
    let mut pos = 4;
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = u32_at(data, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        let Some(chunk) = data.get(pos + 4..pos + 4 + size) else {
            break;
        };
        let n = lz4_flex::block::decompress_into(chunk, &mut block)
            .map_err(|e| format!("block at payload offset {pos:#x}: {e}"))?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + size;
    }
    Ok(out)
}
