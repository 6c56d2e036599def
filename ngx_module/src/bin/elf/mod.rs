//! Just enough of ELF64 (little-endian) to read what nginx compares when it loads a module, from
//! the files themselves: neither file is run or loaded (a module cannot be dlopen'ed outside nginx,
//! whose symbols it needs).

use std::path::Path;

const SHT_RELA: u32 = 4;
const SHT_DYNAMIC: u32 = 6;
const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;
const DT_NEEDED: u64 = 1;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
// How a position-independent file holds a pointer: "load address + addend" (relative), or "the
// address of this symbol + addend" (absolute, for exported symbols).
const R_X86_64_64: u32 = 1;
const R_X86_64_RELATIVE: u32 = 8;
const R_AARCH64_ABS64: u32 = 257;
const R_AARCH64_RELATIVE: u32 = 1027;

struct Section {
    kind: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
}

pub struct Elf {
    data: Vec<u8>,
    sections: Vec<Section>,
    relative: u32,
    absolute: u32,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

impl Elf {
    pub fn open(path: &Path) -> Result<Elf, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = || format!("{} is not a 64-bit little-endian ELF file", path.display());
        if data.get(..4) != Some(b"\x7fELF") || data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            return Err(bad());
        }
        let (relative, absolute) = match u16_at(&data, 18).ok_or_else(bad)? {
            62 => (R_X86_64_RELATIVE, R_X86_64_64),
            183 => (R_AARCH64_RELATIVE, R_AARCH64_ABS64),
            m => return Err(format!("{}: unsupported ELF machine {m}", path.display())),
        };
        let shoff = u64_at(&data, 0x28).ok_or_else(bad)? as usize;
        let shentsize = u16_at(&data, 0x3a).ok_or_else(bad)? as usize;
        let shnum = u16_at(&data, 0x3c).ok_or_else(bad)? as usize;
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let at = shoff + i * shentsize;
            sections.push(Section {
                kind: u32_at(&data, at + 4).ok_or_else(bad)?,
                addr: u64_at(&data, at + 16).ok_or_else(bad)?,
                offset: u64_at(&data, at + 24).ok_or_else(bad)?,
                size: u64_at(&data, at + 32).ok_or_else(bad)?,
                link: u32_at(&data, at + 40).ok_or_else(bad)?,
            });
        }
        Ok(Elf {
            data,
            sections,
            relative,
            absolute,
        })
    }

    fn section_bytes(&self, s: &Section) -> &[u8] {
        let start = (s.offset as usize).min(self.data.len());
        let end = (s.offset.saturating_add(s.size) as usize).min(self.data.len());
        &self.data[start..end]
    }

    fn c_string(bytes: &[u8], at: usize) -> Option<String> {
        let rest = bytes.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// The file offset of a virtual address of the loaded image.
    fn file_offset(&self, addr: u64) -> Option<usize> {
        self.sections
            .iter()
            .find(|s| {
                s.kind != SHT_NOBITS && s.addr != 0 && addr >= s.addr && addr < s.addr + s.size
            })
            .map(|s| (s.offset + (addr - s.addr)) as usize)
    }

    /// The address of an exported (dynamic) symbol.
    pub fn dynamic_symbol(&self, name: &str) -> Option<u64> {
        let symtab = self.sections.iter().find(|s| s.kind == SHT_DYNSYM)?;
        let strtab = self.sections.get(symtab.link as usize)?;
        let (syms, strs) = (self.section_bytes(symtab), self.section_bytes(strtab));
        syms.chunks_exact(24).find_map(|sym| {
            let name_at = u32_at(sym, 0)? as usize;
            let value = u64_at(sym, 8)?;
            (value != 0 && Self::c_string(strs, name_at)? == name).then_some(value)
        })
    }

    /// Names of the dynamic symbols the file defines (`defined`) or needs from elsewhere.
    pub fn dynamic_symbols(&self, defined: bool) -> Vec<String> {
        let Some(symtab) = self.sections.iter().find(|s| s.kind == SHT_DYNSYM) else {
            return Vec::new();
        };
        let Some(strtab) = self.sections.get(symtab.link as usize) else {
            return Vec::new();
        };
        let (syms, strs) = (self.section_bytes(symtab), self.section_bytes(strtab));
        syms.chunks_exact(24)
            .skip(1)
            .filter(|sym| (u16_at(sym, 6) != Some(0)) == defined)
            .filter_map(|sym| Self::c_string(strs, u32_at(sym, 0)? as usize))
            .collect()
    }

    /// The value of the `index`th symbol of a symbol table section.
    fn symbol_value(&self, symtab: u32, index: u64) -> Option<u64> {
        let syms = self.section_bytes(self.sections.get(symtab as usize)?);
        u64_at(syms, index as usize * 24 + 8)
    }

    /// The pointer stored at `addr` once the file is loaded at address 0: what its relocation
    /// puts there in a position-independent file, else the value in the file.
    pub fn pointer_at(&self, addr: u64) -> Option<u64> {
        for rela in self.sections.iter().filter(|s| s.kind == SHT_RELA) {
            for r in self.section_bytes(rela).chunks_exact(24) {
                if u64_at(r, 0)? != addr {
                    continue;
                }
                let (info, addend) = (u64_at(r, 8)?, u64_at(r, 16)?);
                if info as u32 == self.relative {
                    return Some(addend);
                }
                if info as u32 == self.absolute {
                    let symbol = self.symbol_value(rela.link, info >> 32)?;
                    return Some(symbol.wrapping_add(addend));
                }
            }
        }
        u64_at(&self.data, self.file_offset(addr)?)
    }

    pub fn u64_at(&self, addr: u64) -> Option<u64> {
        u64_at(&self.data, self.file_offset(addr)?)
    }

    pub fn string_at(&self, addr: u64) -> Option<String> {
        Self::c_string(&self.data, self.file_offset(addr)?)
    }

    /// The libpython the file needs (`libpython3.11.so.1.0`) and its version (`3.11`).
    pub fn libpython(&self) -> Option<(String, String)> {
        let (needed, _) = self.needed_and_runpath();
        let lib = needed.into_iter().find(|n| n.starts_with("libpython"))?;
        let version = lib
            .trim_start_matches("libpython")
            .split(".so")
            .next()
            .unwrap_or("")
            .to_owned();
        Some((lib, version))
    }

    /// DT_NEEDED libraries and the DT_RUNPATH (or DT_RPATH) directories.
    pub fn needed_and_runpath(&self) -> (Vec<String>, Vec<String>) {
        let (mut needed, mut runpath) = (Vec::new(), Vec::new());
        let Some(dynamic) = self.sections.iter().find(|s| s.kind == SHT_DYNAMIC) else {
            return (needed, runpath);
        };
        let Some(strtab) = self.sections.get(dynamic.link as usize) else {
            return (needed, runpath);
        };
        let strs = self.section_bytes(strtab);
        for entry in self.section_bytes(dynamic).chunks_exact(16) {
            let (Some(tag), Some(val)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
                continue;
            };
            let Some(text) = Self::c_string(strs, val as usize) else {
                continue;
            };
            match tag {
                DT_NEEDED => needed.push(text),
                DT_RUNPATH | DT_RPATH => runpath.extend(text.split(':').map(str::to_owned)),
                _ => {}
            }
        }
        (needed, runpath)
    }
}
