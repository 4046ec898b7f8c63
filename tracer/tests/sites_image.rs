//! The kernel image reader on images built here: a small ELF "vmlinux", wrapped in bzImages
//! with zstd, LZ4-legacy, xz and gzip payloads, and broken variants that must give errors, not panics.
use std::{error::Error, fs, path::PathBuf};

use tracer::kernel::image::{CodeSource, ElfImage, ImageError};

type R<T> = Result<T, Box<dyn Error>>;

const VADDR: u64 = 0xffff_ffff_8100_0000;
const TEXT_OFF: usize = 0x1000;
const TEXT_LEN: usize = 0x1800;

fn text() -> Vec<u8> {
    (0..TEXT_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// ELF64 x86-64 with one PT_LOAD (the text) and sections .text, .BTF, .shstrtab.
fn elf(machine: u16) -> Vec<u8> {
    let btf = b"BTF-BYTES";
    let shstr = b"\0.text\0.BTF\0.shstrtab\0";
    let btf_off = TEXT_OFF + TEXT_LEN;
    let shstr_off = btf_off + btf.len();
    let sh_off = (shstr_off + shstr.len() + 7) & !7;
    let mut b = vec![0u8; sh_off + 4 * 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little-endian
    b[6] = 1;
    b[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
    b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[0x28..0x30].copy_from_slice(&(sh_off as u64).to_le_bytes());
    b[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    b[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
    b[0x3e..0x40].copy_from_slice(&3u16.to_le_bytes());
    let ph = 64;
    b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b[ph + 8..ph + 16].copy_from_slice(&(TEXT_OFF as u64).to_le_bytes());
    b[ph + 16..ph + 24].copy_from_slice(&VADDR.to_le_bytes());
    b[ph + 32..ph + 40].copy_from_slice(&(TEXT_LEN as u64).to_le_bytes());
    b[ph + 40..ph + 48].copy_from_slice(&(TEXT_LEN as u64).to_le_bytes());
    b[TEXT_OFF..TEXT_OFF + TEXT_LEN].copy_from_slice(&text());
    b[btf_off..btf_off + btf.len()].copy_from_slice(btf);
    b[shstr_off..shstr_off + shstr.len()].copy_from_slice(shstr);
    let sections: [(u32, usize, usize); 4] = [
        (0, 0, 0),
        (1, TEXT_OFF, TEXT_LEN),
        (7, btf_off, btf.len()),
        (12, shstr_off, shstr.len()),
    ];
    for (i, (name, off, size)) in sections.into_iter().enumerate() {
        let s = sh_off + i * 64;
        b[s..s + 4].copy_from_slice(&name.to_le_bytes());
        b[s + 24..s + 32].copy_from_slice(&(off as u64).to_le_bytes());
        b[s + 32..s + 40].copy_from_slice(&(size as u64).to_le_bytes());
    }
    b
}

/// A bzImage around `payload` (already compressed), with the uncompressed size appended the way
/// the kernel build does.
fn bzimage(payload: &[u8], uncompressed: usize) -> Vec<u8> {
    let mut p = payload.to_vec();
    p.extend_from_slice(&(uncompressed as u32).to_le_bytes());
    bzimage_raw(&p)
}

/// A bzImage whose payload is taken as is (a gzip stream ends with its own size).
fn bzimage_raw(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 4u8;
    let payload_offset = 0x100usize;
    let start = (usize::from(setup_sects) + 1) * 512 + payload_offset;
    let mut b = vec![0u8; start];
    b[0x1f1] = setup_sects;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
    b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn lz4_legacy(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = 0x184c_2102u32.to_le_bytes().to_vec();
    for chunk in data.chunks(block) {
        let c = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
    }
    out
}

fn temp(name: &str, bytes: &[u8]) -> R<PathBuf> {
    let p = std::env::temp_dir().join(format!("tracer-sites-image-{}-{name}", std::process::id()));
    fs::write(&p, bytes)?;
    Ok(p)
}

fn check_image(path: &PathBuf) -> R<()> {
    let img = ElfImage::from_kernel_file(path)?;
    assert_eq!(img.read(VADDR, TEXT_LEN)?, text());
    assert_eq!(img.read(VADDR + 0x10, 4)?, text()[0x10..0x14].to_vec());
    assert_eq!(img.section(".BTF")?, b"BTF-BYTES".to_vec());
    // Past the segment, and straddling its end: unmapped, not a short read.
    assert!(matches!(
        img.read(VADDR + TEXT_LEN as u64 - 2, 4),
        Err(ImageError::Unmapped { .. })
    ));
    assert!(matches!(
        img.read(0x1000, 1),
        Err(ImageError::Unmapped { .. })
    ));
    assert!(matches!(
        img.section(".nope"),
        Err(ImageError::NoSection { .. })
    ));
    Ok(())
}

#[test]
fn sites_image_plain_elf() -> R<()> {
    let p = temp("elf", &elf(62))?;
    let r = check_image(&p);
    fs::remove_file(&p)?;
    r
}

#[test]
fn sites_image_bzimage_zstd() -> R<()> {
    let e = elf(62);
    let z = zstd::encode_all(&e[..], 3)?;
    let p = temp("zstd", &bzimage(&z, e.len()))?;
    let r = check_image(&p);
    fs::remove_file(&p)?;
    r
}

#[test]
fn sites_image_bzimage_lz4_legacy_several_blocks() -> R<()> {
    let e = elf(62);
    let p = temp("lz4", &bzimage(&lz4_legacy(&e, 0x800), e.len()))?;
    let r = check_image(&p);
    fs::remove_file(&p)?;
    r
}

#[test]
fn sites_image_bzimage_xz() -> R<()> {
    let e = elf(62);
    let x = liblzma::encode_all(&e[..], 6)?;
    let p = temp("xz", &bzimage(&x, e.len()))?;
    let r = check_image(&p);
    fs::remove_file(&p)?;
    r
}

/// `make defconfig` builds compress with gzip; the stream's trailer is the size the kernel's
/// decompressor reads.
#[test]
fn sites_image_bzimage_gzip() -> R<()> {
    use std::io::Write as _;
    let e = elf(62);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&e)?;
    let p = temp("gzip", &bzimage_raw(&gz.finish()?))?;
    let r = check_image(&p);
    fs::remove_file(&p)?;
    r
}

#[test]
fn sites_image_bad_inputs_are_errors() -> R<()> {
    let e = elf(62);
    type Check = fn(&ImageError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "corrupt gzip",
            bzimage(&[0x1f, 0x8b, 8, 0, 1, 2, 3, 4], e.len()),
            |e| matches!(e, ImageError::Decompress { format: "gzip", .. }),
        ),
        ("bzip2 payload", bzimage(b"BZh91AY&SY", e.len()), |e| {
            matches!(
                e,
                ImageError::UnsupportedCompression {
                    format: "bzip2",
                    ..
                }
            )
        }),
        ("neither ELF nor bzImage", vec![0u8; 4096], |e| {
            matches!(e, ImageError::UnknownFormat { .. })
        }),
        ("ELF for another machine", elf(183), |e| {
            matches!(e, ImageError::NotElf { .. })
        }),
        (
            "truncated bzImage",
            bzimage(&zstd::encode_all(&e[..], 3)?, e.len())[..0x600].to_vec(),
            |e| matches!(e, ImageError::Truncated { .. }),
        ),
        (
            "corrupt zstd",
            bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff], e.len()),
            |e| matches!(e, ImageError::Decompress { .. }),
        ),
        (
            "wrong size trailer",
            bzimage(&zstd::encode_all(&e[..], 3)?, e.len() + 1),
            |e| matches!(e, ImageError::Decompress { .. }),
        ),
        ("tiny file", vec![0x7f, b'E', b'L', b'F'], |e| {
            matches!(e, ImageError::NotElf { .. })
        }),
    ];
    for (i, (what, bytes, check)) in cases.into_iter().enumerate() {
        let p = temp(&format!("bad{i}"), &bytes)?;
        let r = ElfImage::from_kernel_file(&p);
        fs::remove_file(&p)?;
        match r {
            Ok(_) => return Err(format!("{what}: accepted").into()),
            Err(e) => assert!(check(&e), "{what}: {e}"),
        }
    }
    Ok(())
}
