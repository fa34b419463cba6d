//! Lets the TC programs read the skb's checksum state (`ip_summed`) without a helper
//! call, so they can update transport checksums with direct writes where that is safe.
//!
//! The programs call the `bpf_cast_to_kern_ctx` kfunc (which the verifier inlines into a
//! register move) and read `ip_summed` at a constant offset of `struct sk_buff`. Our
//! loader (aya 0.14) cannot relocate kfunc calls yet, so the program emits the call as a
//! helper call to a marker id, and this module, before the object is loaded,
//! - finds the kfunc's BTF id and `ip_summed`'s bit offset in the running kernel's BTF
//!   (`/sys/kernel/btf/vmlinux`, read with a small parser of the BTF format);
//! - rewrites each marker call into a kfunc call (`src_reg = BPF_PSEUDO_KFUNC_CALL`,
//!   `imm = BTF id`);
//! - and sets read-only globals (offset, shift, "ready") that the verifier sees as
//!   constants.
//!
//! When anything is missing (no BTF, no such kfunc or field), the marker becomes a call
//! of a harmless helper on a path the "not ready" constant makes dead, and the programs
//! use the checksum helper for every packet: slower, never wrong.

use std::collections::HashMap;

/// The immediate of the marker call the eBPF program emits (see `csum.rs` there).
pub const MARKER_IMM: u32 = 0x6b66_0001;
/// `BPF_PSEUDO_KFUNC_CALL`.
const PSEUDO_KFUNC_CALL: u8 = 2;
/// A helper every program type may call (`bpf_get_smp_processor_id`), for the dead path.
const HARMLESS_HELPER: u32 = 8;
/// Where the running kernel's BTF lives.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Global names in the eBPF object.
pub mod globals {
    /// 1 when the marker calls were patched into kfunc calls.
    pub const READY: &str = "REMAPD_KCTX_READY";
    /// Byte offset of the byte holding `sk_buff::ip_summed`.
    pub const IP_SUMMED_OFFSET: &str = "REMAPD_IP_SUMMED_OFFSET";
    /// Shift of the `ip_summed` bits within that byte.
    pub const IP_SUMMED_SHIFT: &str = "REMAPD_IP_SUMMED_SHIFT";
    /// 0 to load the programs without their trace code (benchmarks only).
    pub const TRACE_BUILT: &str = "REMAPD_TRACE_BUILT";
}

/// What the programs need from the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCtx {
    /// BTF id of `bpf_cast_to_kern_ctx`.
    pub cast_btf_id: u32,
    /// Byte offset of the byte holding `ip_summed` in `struct sk_buff`.
    pub ip_summed_offset: u32,
    /// Bit shift of `ip_summed` within that byte.
    pub ip_summed_shift: u32,
}

/// Why the kernel context could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum KctxError {
    /// The BTF file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The BTF is not in a format this parser knows.
    #[error("kernel BTF: {0}")]
    Format(String),
    /// Something the programs need is not in the kernel's BTF.
    #[error("kernel BTF has no {0}")]
    Missing(&'static str),
}

/// Reads the running kernel's BTF.
pub fn probe() -> Result<KernelCtx, KctxError> {
    let data = std::fs::read(VMLINUX_BTF).map_err(|source| KctxError::Read {
        path: VMLINUX_BTF.into(),
        source,
    })?;
    probe_btf(&data)
}

/// One member of a struct or union: name offset, type id, offset word.
type Member = (u32, u32, u32);

struct Types<'a> {
    strings: &'a [u8],
    /// Kind, name offset, kind_flag, type/size, members (struct/union) by type id - 1.
    types: Vec<(u32, u32, bool, u32, Vec<Member>)>,
}

impl Types<'_> {
    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&(u32, u32, bool, u32, Vec<Member>)> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedef/volatile/const/restrict/type-tag to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some((8..=11 | 18, _, _, next, _)) => id = *next,
                _ => break,
            }
        }
        id
    }

    /// Bit offset and bitfield size of member `name` in struct/union `id`, looking into
    /// anonymous struct/union members.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let (kind, _, kind_flag, _, members) = self.get(id)?;
        if *kind != 4 && *kind != 5 {
            return None;
        }
        for (name_off, ty, offset) in members {
            let (bit_off, bits) = if *kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (*offset, 0)
            };
            let member_name = self.name(*name_off);
            if member_name == name {
                return Some((bit_off, bits));
            }
            if member_name.is_empty()
                && let Some((inner, inner_bits)) =
                    self.find_member(self.resolve(*ty), name, depth + 1)
            {
                return Some((bit_off + inner, inner_bits));
            }
        }
        None
    }
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, KctxError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| KctxError::Format(format!("truncated at byte {at}")))
}

fn parse(data: &[u8]) -> Result<Types<'_>, KctxError> {
    let magic = data
        .get(0..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| KctxError::Format("empty".into()))?;
    if magic != 0xeb9f {
        return Err(KctxError::Format(format!(
            "magic {magic:#x} (only little-endian BTF is supported)"
        )));
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
    let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
    let section = |off: usize, len: usize| {
        data.get(hdr_len + off..hdr_len + off + len)
            .ok_or_else(|| KctxError::Format("section beyond the file".into()))
    };
    let type_data = section(type_off, type_len)?;
    let strings = section(str_off, str_len)?;
    let mut types = Vec::new();
    let mut at = 0usize;
    while at < type_data.len() {
        let name_off = u32_at(type_data, at)?;
        let info = u32_at(type_data, at + 4)?;
        let size_or_type = u32_at(type_data, at + 8)?;
        at += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let mut members = Vec::new();
        let extra = match kind {
            1 | 14 | 17 => 4, // int, var, decl tag
            3 => 12,          // array
            4 | 5 => {
                for i in 0..vlen {
                    let m = at + i * 12;
                    members.push((
                        u32_at(type_data, m)?,
                        u32_at(type_data, m + 4)?,
                        u32_at(type_data, m + 8)?,
                    ));
                }
                12 * vlen
            }
            6 | 13 => 8 * vlen,   // enum, func proto
            15 | 19 => 12 * vlen, // datasec, enum64
            2 | 7..=12 | 16 | 18 => 0,
            other => return Err(KctxError::Format(format!("unknown BTF kind {other}"))),
        };
        at += extra;
        types.push((kind, name_off, kind_flag, size_or_type, members));
    }
    Ok(Types { strings, types })
}

/// [`probe`] on BTF bytes.
pub fn probe_btf(data: &[u8]) -> Result<KernelCtx, KctxError> {
    let types = parse(data)?;
    let mut by_name: HashMap<(&str, u32), u32> = HashMap::new();
    for (i, (kind, name_off, _, _, _)) in types.types.iter().enumerate() {
        by_name
            .entry((types.name(*name_off), *kind))
            .or_insert(i as u32 + 1);
    }
    let cast = *by_name
        .get(&("bpf_cast_to_kern_ctx", 12))
        .ok_or(KctxError::Missing("kfunc bpf_cast_to_kern_ctx"))?;
    let skb = *by_name
        .get(&("sk_buff", 4))
        .ok_or(KctxError::Missing("struct sk_buff"))?;
    let (bit_off, bits) = types
        .find_member(skb, "ip_summed", 0)
        .ok_or(KctxError::Missing("sk_buff::ip_summed"))?;
    // A 2-bit field inside one byte is what the program's mask expects.
    if bits != 2 || bit_off % 8 > 6 {
        return Err(KctxError::Format(format!(
            "sk_buff::ip_summed is {bits} bits at bit {bit_off}"
        )));
    }
    Ok(KernelCtx {
        cast_btf_id: cast,
        ip_summed_offset: bit_off / 8,
        ip_summed_shift: bit_off % 8,
    })
}

/// The eBPF object with its marker calls rewritten: into kfunc calls when `ctx` is
/// known, into a harmless helper call (on a path the program never takes) otherwise.
/// Only the instructions of executable sections are looked at. Returns the patched
/// object, 8-byte aligned, and how many calls were patched.
pub fn patch_object(
    object: &[u8],
    ctx: Option<&KernelCtx>,
) -> Result<(Vec<u64>, usize), KctxError> {
    use object::{Object as _, ObjectSection as _, SectionKind};
    let file =
        object::File::parse(object).map_err(|e| KctxError::Format(format!("eBPF object: {e}")))?;
    let mut ranges = Vec::new();
    for section in file.sections() {
        if section.kind() == SectionKind::Text
            && let Some((start, size)) = section.file_range()
        {
            ranges.push((start as usize, size as usize));
        }
    }
    let mut words = vec![0u64; object.len().div_ceil(8)];
    let bytes = words_as_bytes_mut(&mut words);
    bytes[..object.len()].copy_from_slice(object);
    let patched = patch_ranges(bytes, &ranges, ctx);
    Ok((words, patched))
}

/// Rewrites the marker calls found at instruction boundaries inside `ranges`.
fn patch_ranges(bytes: &mut [u8], ranges: &[(usize, usize)], ctx: Option<&KernelCtx>) -> usize {
    let mut marker = [0x85u8, 0, 0, 0, 0, 0, 0, 0];
    marker[4..].copy_from_slice(&MARKER_IMM.to_le_bytes());
    let mut patched = 0;
    for &(start, size) in ranges {
        let end = start.saturating_add(size).min(bytes.len());
        let mut at = start;
        // Instructions are 8 bytes, from the start of their section.
        while at + 8 <= end {
            if bytes[at..at + 8] == marker {
                match ctx {
                    Some(ctx) => {
                        bytes[at + 1] = PSEUDO_KFUNC_CALL << 4;
                        bytes[at + 4..at + 8].copy_from_slice(&ctx.cast_btf_id.to_le_bytes());
                    }
                    None => bytes[at + 4..at + 8].copy_from_slice(&HARMLESS_HELPER.to_le_bytes()),
                }
                patched += 1;
            }
            at += 8;
        }
    }
    patched
}

/// The bytes of an 8-byte-aligned buffer.
pub fn words_as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8; the length is the
    // buffer's size in bytes.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
}

fn words_as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: int, struct sk_buff { u8 a; union { struct { u8 :4, ip_summed:2 }; }; },
    /// func bpf_cast_to_kern_ctx.
    fn blob() -> Vec<u8> {
        let strings = b"\0sk_buff\0a\0ip_summed\0bpf_cast_to_kern_ctx\0u8\0".to_vec();
        let s = |name: &str| {
            let pos = strings
                .windows(name.len() + 1)
                .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
                .unwrap();
            pos as u32
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int u8
        push(&[s("u8"), 1 << 24, 1, 8]);
        // 2: anonymous struct with a bitfield at bit 4 (kind_flag set)
        push(&[
            0,
            (1 << 31) | (4 << 24) | 1,
            1,
            s("ip_summed"),
            1,
            (2 << 24) | 4,
        ]);
        // 3: anonymous union holding 2
        push(&[0, (5 << 24) | 1, 1, 0, 2, 0]);
        // 4: struct sk_buff { u8 a (bit 0); union (bit 8) }
        push(&[s("sk_buff"), (4 << 24) | 2, 2, s("a"), 1, 0, 0, 3, 8]);
        // 5: func bpf_cast_to_kern_ctx (type 0 is fine for the parser)
        push(&[s("bpf_cast_to_kern_ctx"), 12 << 24, 0]);
        let mut out = Vec::new();
        for w in [
            0x0001_eb9f_u32,
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_the_kfunc_and_the_bitfield_through_anonymous_members() {
        let ctx = probe_btf(&blob()).unwrap();
        assert_eq!(ctx.cast_btf_id, 5);
        assert_eq!((ctx.ip_summed_offset, ctx.ip_summed_shift), (1, 4));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(probe_btf(&[]).is_err());
        assert!(probe_btf(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(probe_btf(&b).is_err());
    }

    #[test]
    fn marker_calls_are_patched_only_inside_the_given_ranges() {
        let mut call = vec![0x85u8, 0, 0, 0];
        call.extend_from_slice(&MARKER_IMM.to_le_bytes());
        // Data that happens to look like the marker, then a text range holding one call
        // and an exit.
        let mut bytes = call.clone();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&call);
        bytes.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
        let ctx = KernelCtx {
            cast_btf_id: 0x1234,
            ip_summed_offset: 0,
            ip_summed_shift: 0,
        };
        let mut kfunc = bytes.clone();
        assert_eq!(patch_ranges(&mut kfunc, &[(16, 16)], Some(&ctx)), 1);
        assert_eq!(&kfunc[16..24], &[0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0]);
        assert_eq!(
            &kfunc[..8],
            &call[..],
            "data outside the text range is left alone"
        );
        let mut dead = bytes.clone();
        assert_eq!(patch_ranges(&mut dead, &[(16, 16)], None), 1);
        assert_eq!(&dead[16..24], &[0x85, 0, 0, 0, 8, 0, 0, 0]);
        // A range past the end of the buffer is clipped, not a panic.
        assert_eq!(patch_ranges(&mut bytes, &[(16, 1 << 20)], None), 1);
    }

    #[test]
    fn a_non_elf_object_is_an_error() {
        assert!(patch_object(b"not an ELF file at all", None).is_err());
    }

    #[test]
    fn the_running_kernel_has_what_the_programs_need() {
        // Not every CI machine exposes BTF; where it does, the probe must succeed.
        if std::path::Path::new(VMLINUX_BTF).exists() {
            let ctx = probe().unwrap();
            assert!(ctx.cast_btf_id > 0);
        }
    }
}
