//! The programs' object file as this kernel needs it.
//!
//! The socket map (`SOCKS`) is built without preallocation (`BPF_F_NO_PREALLOC`):
//! an entry's 360 bytes are taken as sockets come. Before Linux 6.1 (no BPF memory
//! allocator, `struct bpf_mem_alloc`), the verifier warns once per boot when a
//! classic tracepoint program (`tcp_send_reset`, and the system-call hooks) uses
//! such a map — a kernel `WARNING` with a stack trace that taints the kernel, and
//! panics a node booted with `panic_on_warn` — and refuses it on PREEMPT_RT
//! kernels; the allocation it warns about can also deadlock in a tracepoint that
//! fires inside the memory allocator. There the map is preallocated instead:
//! [`preallocate_map`] clears the flag in the map's definition before the object
//! is loaded.

use anyhow::{bail, ensure, Context as _, Result};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// What a preallocated entry takes in the kernel: the hash table's element header
/// (40 bytes), the key and the value.
pub const SOCKET_MAP_ENTRY_BYTES: u64 = 40 + 8 + tracer_common::ConnRecord::SIZE as u64;

/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;
/// `struct bpf_map_def` (the `maps` section's legacy definitions): `type`,
/// `key_size`, `value_size`, `max_entries`, `map_flags`, `id`, `pinning`.
const DEF_SIZE: usize = 28;
const MAX_ENTRIES_AT: usize = 12;
const FLAGS_AT: usize = 16;

/// The programs' object file as this kernel loads it.
pub struct Programs {
    original: &'static [u8],
    /// The copy with the socket map preallocated, on a kernel that needs it, and the
    /// map's entries as its definition gives them.
    preallocated: Option<(Vec<u64>, u32)>,
}

impl Programs {
    /// The programs built into this binary as they are, or with the socket map
    /// preallocated on a kernel without the BPF memory allocator.
    pub fn for_kernel(btf: &crate::kernel::btf::Btf) -> Result<Self> {
        let original = built();
        let preallocated = (!allocates_at_run_time(btf))
            .then(|| preallocate_map(original, "SOCKS"))
            .transpose()
            .context("preparing the socket map for this kernel")?;
        Ok(Self {
            original,
            preallocated,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.preallocated
            .as_ref()
            .map_or(self.original, |(words, _)| {
                &as_bytes(words)[..self.original.len()]
            })
    }

    /// The socket map's kernel memory taken at load, when preallocated.
    pub fn preallocated_bytes(&self) -> Option<u64> {
        self.preallocated
            .as_ref()
            .map(|&(_, entries)| u64::from(entries) * SOCKET_MAP_ENTRY_BYTES)
    }
}

/// The programs' object file built into this binary.
fn built() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"))
}

/// Whether this kernel's hash maps may skip preallocation in tracepoint programs
/// without a warning: it has the BPF memory allocator (Linux 6.1+, or a backport).
pub fn allocates_at_run_time(btf: &crate::kernel::btf::Btf) -> bool {
    btf.has_type("bpf_mem_alloc")
}

/// A copy of the object `elf` (8-byte aligned, as the loader's parser needs) whose
/// map `name` is preallocated: `BPF_F_NO_PREALLOC` cleared in its definition,
/// nothing else changed; with the map's entries.
pub fn preallocate_map(elf: &[u8], name: &str) -> Result<(Vec<u64>, u32)> {
    let at = map_def(elf, name)?;
    let word = |i: usize| {
        u32::from_ne_bytes([
            elf[at + i],
            elf[at + i + 1],
            elf[at + i + 2],
            elf[at + i + 3],
        ])
    };
    let (flags, entries) = (word(FLAGS_AT), word(MAX_ENTRIES_AT));
    ensure!(
        flags & NO_PREALLOC != 0,
        "map {name} is already preallocated (flags {flags:#x})"
    );
    let mut words = vec![0u64; elf.len().div_ceil(8)];
    let bytes = as_bytes_mut(&mut words);
    bytes[..elf.len()].copy_from_slice(elf);
    bytes[at + FLAGS_AT..at + FLAGS_AT + 4].copy_from_slice(&(flags & !NO_PREALLOC).to_ne_bytes());
    Ok((words, entries))
}

/// The file offset of map `name`'s definition in the `maps` section.
fn map_def(elf: &[u8], name: &str) -> Result<usize> {
    let file = object::File::parse(elf).context("parsing the programs' object file")?;
    let Some(sym) = file.symbols().find(|s| s.name() == Ok(name)) else {
        bail!("the programs' object file has no map {name}");
    };
    let index = sym
        .section_index()
        .with_context(|| format!("map {name} has no section"))?;
    let section = file.section_by_index(index)?;
    ensure!(
        section.name() == Ok("maps"),
        "map {name} is in section {:?}, not maps",
        section.name()
    );
    let (start, size) = section
        .file_range()
        .with_context(|| format!("map {name}'s section has no file data"))?;
    let at = sym.address();
    ensure!(
        at.checked_add(DEF_SIZE as u64)
            .is_some_and(|end| end <= size),
        "map {name}'s definition lies outside its section"
    );
    usize::try_from(start + at).context("offset too large")
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no invalid bit patterns and a stricter alignment than u8; the
    // byte view covers exactly the words' memory and borrows it mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// The byte view of [`preallocate_map`]'s result.
pub fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: as `as_bytes_mut`, shared.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs() -> &'static [u8] {
        built()
    }

    fn flags(elf: &[u8], name: &str) -> u32 {
        let at = map_def(elf, name).unwrap() + FLAGS_AT;
        u32::from_ne_bytes(elf[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn only_the_socket_maps_flag_changes() {
        let elf = programs();
        assert_eq!(flags(elf, "SOCKS"), NO_PREALLOC);
        let (patched, entries) = preallocate_map(elf, "SOCKS").unwrap();
        assert_eq!(entries, 131_072, "the programs' SOCKS size");
        let bytes = &as_bytes(&patched)[..elf.len()];
        assert_eq!(flags(bytes, "SOCKS"), 0);
        let changed: Vec<usize> = (0..elf.len()).filter(|&i| elf[i] != bytes[i]).collect();
        let at = map_def(elf, "SOCKS").unwrap() + FLAGS_AT;
        assert_eq!(changed, vec![at], "one byte: the flag's");
        // The definition around it: key and value sizes as the programs declare them.
        let def = map_def(elf, "SOCKS").unwrap();
        let word =
            |i: usize| u32::from_ne_bytes(bytes[def + 4 * i..def + 4 * i + 4].try_into().unwrap());
        assert_eq!(word(1), 8);
        assert_eq!(word(2) as usize, tracer_common::ConnRecord::SIZE);
        assert_eq!(word(3), entries);
    }

    #[test]
    fn names_what_it_cannot_patch() {
        let elf = programs();
        let e = preallocate_map(elf, "NO_SUCH_MAP").unwrap_err();
        assert!(format!("{e:#}").contains("no map NO_SUCH_MAP"), "{e:#}");
        // LISTENERS is preallocated already.
        let e = preallocate_map(elf, "LISTENERS").unwrap_err();
        assert!(format!("{e:#}").contains("already preallocated"), "{e:#}");
        let e = preallocate_map(b"not an object", "SOCKS").unwrap_err();
        assert!(format!("{e:#}").contains("parsing"), "{e:#}");
    }
}
