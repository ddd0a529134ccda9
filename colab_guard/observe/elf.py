"""The names an ELF file exports: its defined dynamic symbols (``.dynsym``).

A library's exported names survive ``strip`` (the dynamic linker needs them): libtorrent's
Python module under any file name still exports ``_ZN10libtorrent…`` (its C++ namespace,
mangled), a RandomX library ``randomx_calculate_hash``. content.py reads them beside the
strings, so a library whose strings were removed or scrambled is still known.

A hand-written reader, not pyelftools: it reads one table with ``struct.iter_unpack`` (a
few milliseconds for libtorrent's 12,000 symbols, where a general parser takes a large
fraction of a second), and every size it trusts from the file is bounded (the file is the
user's). ELF64 little-endian only (x86-64, aarch64); anything else exports nothing here.
The table is found through the section headers, or, where they were stripped (``sstrip``),
through the dynamic segment, which the loader itself needs.
"""

from __future__ import annotations

import os
import struct

MAX_TABLE = 16 << 20  # bytes of a symbol or string table read, at most
MAX_SECTIONS = 4096

_SHT_DYNSYM = 11
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_STRTAB, _DT_SYMTAB, _DT_STRSZ, _DT_SYMENT = 5, 6, 10, 11
_SYMBOL = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size


def exported_symbols(fd: int, head: bytes, file_size: int) -> list[bytes]:
    """The names of the symbols an ELF64 file defines in its dynamic symbol table (not the
    ones it imports); [] for anything else or anything malformed."""
    if not head.startswith(b"\x7fELF\x02\x01") or len(head) < 64:
        return []
    try:
        table = _from_sections(fd, head, file_size) or _from_dynamic(fd, head, file_size)
        if table is None:
            return []
        symbols, strings = table
        names = []
        for name, _, _, section, _, _ in _SYMBOL.iter_unpack(
                symbols[:len(symbols) - len(symbols) % _SYMBOL.size]):
            if section != 0 and 0 < name < len(strings):  # 0: SHN_UNDEF, an import
                end = strings.find(b"\0", name)
                names.append(strings[name:end if end >= 0 else len(strings)])
        return names
    except (OSError, struct.error, ValueError):
        return []


def _read(fd: int, offset: int, size: int, file_size: int) -> bytes:
    if offset < 0 or size < 0 or size > MAX_TABLE or offset + size > file_size:
        raise ValueError("a table outside the file, or too large")
    return os.pread(fd, size, offset)


def _from_sections(fd: int, head: bytes, file_size: int) -> tuple[bytes, bytes] | None:
    shoff, = struct.unpack_from("<Q", head, 0x28)
    entsize, count = struct.unpack_from("<HH", head, 0x3A)
    if not shoff or entsize < 64 or not 0 < count <= MAX_SECTIONS:
        return None
    table = _read(fd, shoff, entsize * count, file_size)
    sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * entsize) for i in range(count)]
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind == _SHT_DYNSYM and link < count:
            strtab = sections[link]
            return (_read(fd, offset, size, file_size),
                    _read(fd, strtab[4], strtab[5], file_size))
    return None


def _from_dynamic(fd: int, head: bytes, file_size: int) -> tuple[bytes, bytes] | None:
    """The table the loader uses (DT_SYMTAB, DT_STRTAB), addresses mapped back to file
    offsets through the loadable segments; the symbol table taken to end where the string
    table starts (how linkers lay them out)."""
    phoff, = struct.unpack_from("<Q", head, 0x20)
    entsize, count = struct.unpack_from("<HH", head, 0x36)
    if entsize < 56 or not 0 < count <= 256:
        return None
    table = _read(fd, phoff, entsize * count, file_size)
    headers = [struct.unpack_from("<IIQQQQQQ", table, i * entsize) for i in range(count)]
    loads = [(vaddr, offset, filesz) for kind, _, offset, vaddr, _, filesz, _, _ in headers
             if kind == _PT_LOAD]
    dynamic = next(((offset, filesz) for kind, _, offset, _, _, filesz, _, _ in headers
                    if kind == _PT_DYNAMIC), None)
    if dynamic is None:
        return None
    entries = dict(struct.iter_unpack("<qQ", _read(fd, dynamic[0], dynamic[1] - dynamic[1] % 16,
                                                   file_size)))

    def file_offset(address: int) -> int:
        for vaddr, offset, filesz in loads:
            if vaddr <= address < vaddr + filesz:
                return address - vaddr + offset
        raise ValueError("an address no segment maps")

    if _DT_SYMTAB not in entries or _DT_STRTAB not in entries:
        return None
    symtab, strtab = file_offset(entries[_DT_SYMTAB]), file_offset(entries[_DT_STRTAB])
    if entries.get(_DT_SYMENT, _SYMBOL.size) != _SYMBOL.size or strtab <= symtab:
        return None
    return (_read(fd, symtab, min(strtab - symtab, MAX_TABLE), file_size),
            _read(fd, strtab, min(entries.get(_DT_STRSZ, 0), MAX_TABLE), file_size))


def loaded_ranges(fd: int, head: bytes, file_size: int) -> list[tuple[int, int]] | None:
    """The file ranges (start, end) of an ELF64 file's loadable segments, what the loader maps
    of it (its section headers, symbol tables and debugging data are not); None for anything
    else or anything malformed."""
    if not head.startswith(b"\x7fELF\x02\x01") or len(head) < 64:
        return None
    phoff, = struct.unpack_from("<Q", head, 0x20)
    entsize, count = struct.unpack_from("<HH", head, 0x36)
    if entsize < 56 or not 0 < count <= 256:
        return None
    try:
        table = _read(fd, phoff, entsize * count, file_size)
        headers = [struct.unpack_from("<IIQQQQ", table, i * entsize) for i in range(count)]
    except (OSError, ValueError, struct.error):
        return None
    return [(offset, min(offset + filesz, file_size))
            for kind, _, offset, _, _, filesz in headers
            if kind == _PT_LOAD and filesz and offset < file_size]
