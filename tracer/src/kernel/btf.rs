//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just what the tracer needs,
//! struct member offsets (through anonymous members), enum constants and function parameters.
//!
//! Rust eBPF has no CO-RE relocations, so every layout the probes use comes from here.
use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF data is truncated or corrupt at type #{0}")]
    Corrupt(u32),
    #[error("BTF kind {kind} of type #{id} is not supported")]
    UnknownKind { id: u32, kind: u32 },
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in this kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("struct {strukt} member {member} is a bitfield")]
    Bitfield { strukt: String, member: String },
    #[error("the kernel's BTF has no function {0}")]
    NoFunc(String),
    #[error("the kernel's BTF has no tracepoint {0} (no btf_trace_{0} typedef)")]
    NoTracepoint(String),
}

const MAGIC: u16 = 0xeb9f;

// BTF kinds (include/uapi/linux/btf.h).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset within the parent.
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Struct {
        name: u32,
        size: u32,
        members: Vec<Member>,
    },
    /// Typedefs and qualifiers: resolve to the referenced type.
    Alias(u32),
    /// A named typedef (also resolved through, like `Alias`).
    Typedef {
        name: u32,
        ty: u32,
    },
    Int {
        name: u32,
    },
    Ptr(u32),
    Enum {
        values: Vec<(u32, i64)>,
    },
    Func {
        name: u32,
        proto: u32,
    },
    FuncProto {
        params: Vec<(u32, u32)>,
    },
    Other,
}

/// Parsed BTF: types indexed by id (id 0 is `void`).
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    structs_by_name: HashMap<String, Vec<u32>>,
    funcs_by_name: HashMap<String, u32>,
    typedefs_by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Btf, BtfError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&bytes)
    }

    /// Parses raw little-endian BTF (the format of `/sys/kernel/btf/vmlinux`).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if u16_at(b, 0) != Some(MAGIC) {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(b, 4).ok_or(BtfError::BadHeader)? as usize;
        let type_off = u32_at(b, 8).ok_or(BtfError::BadHeader)? as usize;
        let type_len = u32_at(b, 12).ok_or(BtfError::BadHeader)? as usize;
        let str_off = u32_at(b, 16).ok_or(BtfError::BadHeader)? as usize;
        let str_len = u32_at(b, 20).ok_or(BtfError::BadHeader)? as usize;
        let types_bytes = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::BadHeader)?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::BadHeader)?
            .to_vec();

        let mut types = vec![Type::Other];
        let mut pos = 0usize;
        while pos < types_bytes.len() {
            let id = types.len() as u32;
            let corrupt = || BtfError::Corrupt(id);
            let name = u32_at(types_bytes, pos).ok_or_else(corrupt)?;
            let info = u32_at(types_bytes, pos + 4).ok_or_else(corrupt)?;
            let size_or_type = u32_at(types_bytes, pos + 8).ok_or_else(corrupt)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                STRUCT | UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let off = u32_at(types_bytes, m + 8).ok_or_else(corrupt)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: u32_at(types_bytes, m).ok_or_else(corrupt)?,
                            ty: u32_at(types_bytes, m + 4).ok_or_else(corrupt)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    pos += vlen * 12;
                    Type::Struct {
                        name,
                        size: size_or_type,
                        members,
                    }
                }
                ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 8;
                        let v = u32_at(types_bytes, m + 4).ok_or_else(corrupt)?;
                        // kind_flag marks a signed enum.
                        let v = if kind_flag { v as i32 as i64 } else { v as i64 };
                        values.push((u32_at(types_bytes, m).ok_or_else(corrupt)?, v));
                    }
                    pos += vlen * 8;
                    Type::Enum { values }
                }
                ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let lo = u32_at(types_bytes, m + 4).ok_or_else(corrupt)? as u64;
                        let hi = u32_at(types_bytes, m + 8).ok_or_else(corrupt)? as u64;
                        values.push((
                            u32_at(types_bytes, m).ok_or_else(corrupt)?,
                            (hi << 32 | lo) as i64,
                        ));
                    }
                    pos += vlen * 12;
                    Type::Enum { values }
                }
                FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = pos + i * 8;
                        params.push((
                            u32_at(types_bytes, m).ok_or_else(corrupt)?,
                            u32_at(types_bytes, m + 4).ok_or_else(corrupt)?,
                        ));
                    }
                    pos += vlen * 8;
                    Type::FuncProto { params }
                }
                FUNC => Type::Func {
                    name,
                    proto: size_or_type,
                },
                TYPEDEF => Type::Typedef {
                    name,
                    ty: size_or_type,
                },
                VOLATILE | CONST | RESTRICT | TYPE_TAG => Type::Alias(size_or_type),
                INT => {
                    pos += 4;
                    Type::Int { name }
                }
                VAR | DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                ARRAY => {
                    pos += 12;
                    Type::Other
                }
                DATASEC => {
                    pos += vlen * 12;
                    Type::Other
                }
                PTR => Type::Ptr(size_or_type),
                FWD | FLOAT => Type::Other,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            types.push(ty);
        }

        let mut btf = Btf {
            strings,
            types,
            structs_by_name: HashMap::new(),
            funcs_by_name: HashMap::new(),
            typedefs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            match t {
                Type::Struct { name, .. } if *name != 0 => {
                    let n = btf.str_at(*name).to_owned();
                    btf.structs_by_name.entry(n).or_default().push(id as u32);
                }
                Type::Func { name, .. } => {
                    let n = btf.str_at(*name).to_owned();
                    btf.funcs_by_name.insert(n, id as u32);
                }
                Type::Typedef { name, .. } if *name != 0 => {
                    let n = btf.str_at(*name).to_owned();
                    btf.typedefs_by_name.insert(n, id as u32);
                }
                _ => {}
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let Some(tail) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        // Bounded: alias chains are short, and a cycle would be corrupt BTF.
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) | Type::Typedef { ty: next, .. } => id = *next,
                t => return Some(t),
            }
        }
        None
    }

    /// The complete (non-forward) definition of a named struct or union.
    fn strukt(&self, name: &str) -> Result<(u32, &[Member]), BtfError> {
        self.structs_by_name
            .get(name)
            .into_iter()
            .flatten()
            .find_map(|&id| match &self.types[id as usize] {
                Type::Struct { size, members, .. } => Some((*size, members.as_slice())),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Finds `member` in `members`, descending into anonymous struct/union members. Returns the
    /// bit offset from the start of `members`' parent and the bitfield size.
    fn find_member(&self, members: &[Member], member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in members {
            if m.name != 0 {
                if self.str_at(m.name) == member {
                    return Some((m.bit_offset, m.bitfield_size));
                }
            } else if let Some(Type::Struct { members: inner, .. }) = self.resolve(m.ty)
                && let Some((off, bits)) = self.find_member(inner, member, depth + 1)
            {
                return Some((m.bit_offset + off, bits));
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt` (anonymous members are searched too).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let (_, members) = self.strukt(strukt)?;
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        };
        let (bits, bitfield) = self.find_member(members, member, 0).ok_or_else(no_member)?;
        if bitfield != 0 || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    /// Whether `struct strukt` has `member`.
    pub fn has_member(&self, strukt: &str, member: &str) -> bool {
        self.member_offset(strukt, member).is_ok()
    }

    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        Ok(self.strukt(strukt)?.0)
    }

    /// The value of an enum constant named `name` in any enum, named or anonymous (the kernel
    /// declares FOLL_* in an anonymous enum from 6.3 on).
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.types.iter().find_map(|t| match t {
            Type::Enum { values } => values
                .iter()
                .find(|(n, _)| self.str_at(*n) == name)
                .map(|(_, v)| *v),
            _ => None,
        })
    }

    /// Whether BTF describes a function with this name (BTF FUNC entries cover functions that
    /// exist out of line, which is what a kprobe needs).
    pub fn has_func(&self, name: &str) -> bool {
        self.funcs_by_name.contains_key(name)
    }

    /// Parameter names of a function, in order.
    pub fn func_params(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let id = *self
            .funcs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoFunc(name.to_owned()))?;
        let Some(Type::Func { proto, .. }) = self.types.get(id as usize) else {
            return Err(BtfError::NoFunc(name.to_owned()));
        };
        match self.resolve(*proto) {
            Some(Type::FuncProto { params }) => Ok(params
                .iter()
                .map(|(n, _)| self.str_at(*n).to_owned())
                .collect()),
            _ => Err(BtfError::NoFunc(name.to_owned())),
        }
    }
}

impl Btf {
    /// A type spelled the way the kernel's headers name it, enough to tell arguments apart:
    /// typedef and int names (`bool`, `long int`), `struct NAME`, pointers with a `*`.
    fn spell(&self, id: u32, depth: u32) -> String {
        if depth > 8 {
            return "?".into();
        }
        match self.types.get(id as usize) {
            Some(Type::Typedef { name, .. } | Type::Int { name }) => self.str_at(*name).into(),
            Some(Type::Struct { name, .. }) => format!("struct {}", self.str_at(*name)),
            Some(Type::Ptr(to)) => format!("{} *", self.spell(*to, depth + 1)),
            Some(Type::Alias(to)) => self.spell(*to, depth + 1),
            Some(_) if id == 0 => "void".into(),
            _ => "?".into(),
        }
    }

    /// Whether the kernel has this tracepoint (its `btf_trace_NAME` typedef).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.typedefs_by_name
            .contains_key(&format!("btf_trace_{name}"))
    }

    /// The argument types of a tracepoint's `TP_PROTO`, in order, as raw tracepoint programs
    /// see them (`args[0]` is the first): from the `btf_trace_NAME` typedef, a pointer to a
    /// function whose first parameter (`void *` data) the raw tracepoint does not pass.
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let missing = || BtfError::NoTracepoint(name.to_owned());
        let id = *self
            .typedefs_by_name
            .get(&format!("btf_trace_{name}"))
            .ok_or_else(missing)?;
        let Some(Type::Typedef { ty, .. }) = self.types.get(id as usize) else {
            return Err(missing());
        };
        let Some(Type::Ptr(proto)) = self.types.get(*ty as usize) else {
            return Err(missing());
        };
        match self.resolve(*proto) {
            Some(Type::FuncProto { params }) => Ok(params
                .iter()
                .skip(1)
                .map(|(_, t)| self.spell(*t, 0))
                .collect()),
            _ => Err(missing()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob by hand: struct inner { u32 sequence; }, struct outer { u64 a;
    /// union { u32 x; struct inner seq; }; }, an anonymous enum and a function.
    fn blob() -> Vec<u8> {
        let mut strings =
            b"\0sequence\0inner\0outer\0a\0x\0seq\0FOLL_PIN\0f\0arg0\0bool\0_Bool\0btf_trace_tp\0"
                .to_vec();
        let s = |name: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int u32
        push(&[0, INT << 24, 4, 32]);
        // 2: struct inner { sequence: u32 @0 }
        push(&[
            s("inner", &strings),
            STRUCT << 24 | 1,
            4,
            s("sequence", &strings),
            1,
            0,
        ]);
        // 3: anonymous union { x: u32 @0; seq: inner @0 }
        push(&[
            0,
            UNION << 24 | 2,
            4,
            s("x", &strings),
            1,
            0,
            s("seq", &strings),
            2,
            0,
        ]);
        // 4: struct outer { a: u32 @0; <anon union> @64 bits }
        push(&[
            s("outer", &strings),
            STRUCT << 24 | 2,
            16,
            s("a", &strings),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: anonymous enum { FOLL_PIN = 0x80000 }
        push(&[0, ENUM << 24 | 1, 4, s("FOLL_PIN", &strings), 0x80000]);
        // 6: func proto (arg0: u32) -> void
        push(&[0, FUNC_PROTO << 24 | 1, 0, s("arg0", &strings), 1]);
        // 7: func f
        push(&[s("f", &strings), FUNC << 24, 6]);
        // 8: int _Bool; 9: typedef bool; 10: void *; 11: struct outer *
        push(&[s("_Bool", &strings), INT << 24, 1, 8]);
        push(&[s("bool", &strings), TYPEDEF << 24, 8]);
        push(&[0, PTR << 24, 0]);
        push(&[0, PTR << 24, 4]);
        // 12: proto (void *, struct outer *, bool); 13: pointer to it; 14: typedef btf_trace_tp
        push(&[0, FUNC_PROTO << 24 | 3, 0, 0, 10, 0, 11, 0, 9]);
        push(&[0, PTR << 24, 12]);
        push(&[s("btf_trace_tp", &strings), TYPEDEF << 24, 13]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.append(&mut strings);
        b
    }

    #[test]
    fn offsets_through_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "seq").unwrap(), 8);
        assert_eq!(btf.member_offset("inner", "sequence").unwrap(), 0);
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
        assert_eq!(btf.struct_size("outer").unwrap(), 16);
    }

    #[test]
    fn enum_constants_and_functions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.enum_value("FOLL_PIN"), Some(0x80000));
        assert_eq!(btf.enum_value("FOLL_NOPE"), None);
        assert!(btf.has_func("f"));
        assert_eq!(btf.func_params("f").unwrap(), vec!["arg0".to_owned()]);
    }

    #[test]
    fn tracepoint_arguments_come_from_the_btf_trace_typedef() {
        let btf = Btf::parse(&blob()).unwrap();
        assert!(btf.has_tracepoint("tp"));
        assert_eq!(
            btf.tracepoint_args("tp").unwrap(),
            vec!["struct outer *".to_owned(), "bool".to_owned()]
        );
        assert!(matches!(
            btf.tracepoint_args("nope"),
            Err(BtfError::NoTracepoint(_))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(Btf::parse(b"hello"), Err(BtfError::BadHeader)));
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }
}
