//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member
//! offsets (descending into anonymous members) and enum values.
//!
//! aya programs written in Rust get no CO-RE field relocations, so userspace computes
//! the offsets the programs need and passes them in as a global at load time.
//! Format: <https://docs.kernel.org/bpf/btf.html>.

use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};

const MAGIC: u16 = 0xEB9F;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    /// Start of the kind-specific data that follows the common header.
    extra: usize,
}

impl Type {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// Parsed BTF: type table plus string section.
pub struct Btf {
    data: Vec<u8>,
    /// Index = type id (0 is `void`).
    types: Vec<Type>,
    size_or_type: Vec<u32>,
    strings: usize,
    strings_len: usize,
    /// Named structs, unions and enums by name.
    by_name: HashMap<String, u32>,
    /// Tracepoints with a `btf_trace_<name>` typedef: what tp_btf programs attach to.
    trace_hooks: std::collections::HashSet<String>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn vmlinux() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!(
                "cannot read {path}: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is needed); \
                 run conntrace on a kernel built with BTF"
            )
        })?;
        Self::parse(data)
    }

    /// Parses raw BTF bytes (native endianness).
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let u32_at = |d: &[u8], o: usize| -> Result<u32> {
            let b = d.get(o..o + 4).context("BTF truncated")?;
            Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        if data.len() < 24 || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            bail!("not BTF data (bad magic)");
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = hdr_len + u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let strings = hdr_len + u32_at(&data, 16)? as usize;
        let strings_len = u32_at(&data, 20)? as usize;
        if strings + strings_len > data.len() || type_off + type_len > data.len() {
            bail!("BTF truncated");
        }
        let mut types = vec![Type {
            name_off: 0,
            info: 0,
            extra: 0,
        }];
        let mut size_or_type = vec![0];
        let mut pos = type_off;
        let end = type_off + type_len;
        while pos < end {
            let t = Type {
                name_off: u32_at(&data, pos)?,
                info: u32_at(&data, pos + 4)?,
                extra: pos + 12,
            };
            size_or_type.push(u32_at(&data, pos + 8)?);
            let extra_len = match t.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen(),
                _ => 0,
            };
            types.push(t);
            pos = t.extra + extra_len;
            // A type's members must lie inside the type section (found by fuzzing:
            // a cut-off last type made every later member read go out of bounds).
            if pos > end {
                bail!(
                    "BTF truncated (type {} runs past its section)",
                    types.len() - 1
                );
            }
        }
        let mut btf = Self {
            data,
            types,
            size_or_type,
            strings,
            strings_len,
            by_name: HashMap::new(),
            trace_hooks: std::collections::HashSet::new(),
        };
        for id in 1..btf.types.len() {
            let t = btf.types[id];
            if matches!(t.kind(), KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64) {
                let name = btf.name(t.name_off);
                if !name.is_empty() {
                    let id = u32::try_from(id).context("too many BTF types")?;
                    btf.by_name.entry(name.to_owned()).or_insert(id);
                }
            } else if t.kind() == KIND_TYPEDEF {
                if let Some(tp) = btf.name(t.name_off).strip_prefix("btf_trace_") {
                    btf.trace_hooks.insert(tp.to_owned());
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings + off as usize;
        let end = self.strings + self.strings_len;
        let bytes = &self.data[start.min(end)..end];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    /// The u32 at `o`; 0 outside the data (parse checked every type's extent, so this
    /// only guards against a corrupt member count).
    fn u32_at(&self, o: usize) -> u32 {
        self.data
            .get(o..o.saturating_add(4))
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let Some(t) = self.types.get(id as usize) else {
                return id;
            };
            match t.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = self.size_or_type[id as usize];
                }
                _ => return id,
            }
        }
        id
    }

    /// Byte offset of `path` (dot-separated member names) inside struct `name`,
    /// looking through anonymous structs and unions at each step.
    pub fn member_offset(&self, name: &str, path: &str) -> Result<u32> {
        let mut id = *self
            .by_name
            .get(name)
            .with_context(|| format!("kernel BTF has no struct {name}"))?;
        let mut bits = 0u32;
        for member in path.split('.') {
            let (off, ty) = self
                .find_member(id, member, 0)
                .with_context(|| format!("kernel BTF: struct {name} has no member {path}"))?;
            bits += off;
            id = self.resolve(ty);
        }
        if !bits.is_multiple_of(8) {
            bail!("kernel BTF: {name}.{path} is a bit field");
        }
        Ok(bits / 8)
    }

    /// `(bit offset, type id)` of a named member, searching anonymous members.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        let t = *self.types.get(id as usize)?;
        if !matches!(t.kind(), KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..t.vlen() {
            let m = t.extra + 12 * i;
            let name_off = self.u32_at(m);
            let ty = self.u32_at(m + 4);
            let raw = self.u32_at(m + 8);
            let off = if t.kind_flag() {
                raw & 0x00ff_ffff
            } else {
                raw
            };
            if name_off == 0 {
                if let Some((inner, ty)) = self.find_member(self.resolve(ty), member, depth + 1) {
                    return Some((off + inner, ty));
                }
            } else if self.name(name_off) == member {
                return Some((off, ty));
            }
        }
        None
    }

    /// Values of a named enum, as `(name, value)`.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>> {
        let id = *self
            .by_name
            .get(name)
            .with_context(|| format!("kernel BTF has no enum {name}"))?;
        let t = self.types[id as usize];
        let mut out = Vec::with_capacity(t.vlen());
        match t.kind() {
            KIND_ENUM => {
                for i in 0..t.vlen() {
                    let m = t.extra + 8 * i;
                    #[expect(clippy::cast_possible_wrap, reason = "BTF enum values are s32")]
                    let value = i64::from(self.u32_at(m + 4) as i32);
                    out.push((self.name(self.u32_at(m)).to_owned(), value));
                }
            }
            KIND_ENUM64 => {
                for i in 0..t.vlen() {
                    let m = t.extra + 12 * i;
                    let value =
                        u64::from(self.u32_at(m + 4)) | (u64::from(self.u32_at(m + 8)) << 32);
                    #[expect(clippy::cast_possible_wrap, reason = "two's complement as stored")]
                    out.push((self.name(self.u32_at(m)).to_owned(), value as i64));
                }
            }
            _ => bail!("kernel BTF: {name} is not an enum"),
        }
        Ok(out)
    }

    /// Whether a tp_btf program can attach to this tracepoint (its `btf_trace_` typedef).
    pub fn has_trace_hook(&self, tracepoint: &str) -> bool {
        self.trace_hooks.contains(tracepoint)
    }

    /// Whether the kernel has a struct, union or enum of this name.
    pub fn has_type(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// For tests and fuzzing (a seed): builds a tiny BTF blob: `struct outer { int a; union { int b; struct inner c; }; }`
/// with `struct inner { int x; int y; }`, and `enum color { RED = 1, BLUE = 7 }`.
#[cfg(any(test, feature = "fuzz"))]
pub fn tiny_sample() -> Vec<u8> {
    let strings = b"\0int\0outer\0a\0b\0c\0inner\0x\0y\0color\0RED\0BLUE\0".to_vec();
    let off = |s: &str| -> u32 {
        let needle = format!("\0{s}\0");
        u32::try_from(
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1,
        )
        .unwrap()
    };
    let mut types: Vec<u32> = Vec::new();
    // 1: int
    types.extend([off("int"), KIND_INT << 24, 4, 32]);
    // 2: struct inner { int x @0; int y @32 }
    types.extend([off("inner"), (KIND_STRUCT << 24) | 2, 8]);
    types.extend([off("x"), 1, 0, off("y"), 1, 32]);
    // 3: anonymous union { int b; struct inner c; }
    types.extend([0, (KIND_UNION << 24) | 2, 8]);
    types.extend([off("b"), 1, 0, off("c"), 2, 0]);
    // 4: struct outer { int a @0; union @64 }
    types.extend([off("outer"), (KIND_STRUCT << 24) | 2, 16]);
    types.extend([off("a"), 1, 0, 0, 3, 64]);
    // 5: enum color
    types.extend([off("color"), (KIND_ENUM << 24) | 2, 4]);
    types.extend([off("RED"), 1, off("BLUE"), 7]);
    let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut out = Vec::new();
    out.extend(MAGIC.to_ne_bytes());
    out.extend([1u8, 0]);
    let type_len = u32::try_from(type_bytes.len()).unwrap();
    let str_len = u32::try_from(strings.len()).unwrap();
    for v in [24u32, 0, type_len, type_len, str_len] {
        out.extend(v.to_ne_bytes());
    }
    out.extend(type_bytes);
    out.extend(strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        tiny_sample()
    }

    /// Found by fuzzing: a type section cut inside the last type's members.
    #[test]
    fn a_type_cut_off_by_its_section_is_an_error_not_a_panic() {
        let mut b = sample();
        let type_len = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]);
        b[12..16].copy_from_slice(&(type_len - 4).to_ne_bytes());
        let err = Btf::parse(b).err().expect("an error");
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }

    #[test]
    fn member_offsets_descend_into_anonymous_members() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c.y").unwrap(), 12);
        assert!(btf.member_offset("outer", "zz").is_err());
        assert!(btf.member_offset("nope", "a").is_err());
    }

    #[test]
    fn enum_values_are_read() {
        let btf = Btf::parse(sample()).unwrap();
        let values = btf.enum_values("color").unwrap();
        assert_eq!(values, vec![("RED".to_owned(), 1), ("BLUE".to_owned(), 7)]);
    }

    #[test]
    fn bad_magic_is_an_error() {
        assert!(Btf::parse(vec![0; 64]).is_err());
    }
}
