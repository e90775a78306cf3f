#!/usr/bin/env python3
"""Boots Keel's test guest through the Linux 64-bit boot protocol on raw KVM (no QEMU, no Keel).

QEMU's -kernel always takes the PVH entry of an ELF with a PVH note, so this small loader exists to exercise the
other entry (e_entry) the way Firecracker-style VMMs do:

- guest RAM from 0; the ELF's PT_LOAD segments copied to p_paddr;
- zero page (struct boot_params) at 0x7000 with an E820 map [0, 0x9fc00) + [1 MiB, end) and the command line at
  0x20000 (cmd_line_ptr);
- GDT at 0x500 (0x08 64-bit code, 0x10 data, 0x18 TSS), identity page tables for the first 1 GiB with 2 MiB
  pages at 0x9000 (PML4), 0xa000 (PDPT), 0xb000 (PD);
- CR0 = PE|PG|ET, CR4 = PAE, EFER = LME|LMA, RFLAGS = 2 (interrupts off), RSP = 0x8ff0, RSI = 0x7000,
  RIP = e_entry.

With --cpus N > 1 it creates an in-kernel irqchip and N vCPU threads; the APs wait for the guest's INIT/SIPI.
The guest's COM1 output goes to stdout; port 0xf4 (debug exit), 0x600 (S5) and 0x64 (reset) end the run, as do
HLT without an irqchip and a triple fault (reported as "shutdown").

    linux64-boot.py <elf> [--cpus N] [--mem-mib M] [append words...]
"""

import argparse
import ctypes
import fcntl
import mmap
import os
import struct
import sys
import threading

# ioctl numbers from <linux/kvm.h>.
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_CREATE_IRQCHIP = 0xAE60
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_SET_CPUID2 = 0x4008AE90

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_OUT = 1

MIB = 1 << 20
ZERO_PAGE = 0x7000
CMDLINE = 0x20000
GDT = 0x500
PML4, PDPT, PD = 0x9000, 0xA000, 0xB000
BOOT_STACK = 0x8FF0

COM1 = 0x3F8
COM1_LSR = COM1 + 5
ENDING_PORTS = {0xF4: "debug", 0x600: "s5", 0x64: "reset"}


class Segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16),
                ("type", ctypes.c_uint8), ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
                ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8), ("padding", ctypes.c_uint8)]


class DTable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class Sregs(ctypes.Structure):
    _fields_ = [("cs", Segment), ("ds", Segment), ("es", Segment), ("fs", Segment), ("gs", Segment),
                ("ss", Segment), ("tr", Segment), ("ldt", Segment), ("gdt", DTable), ("idt", DTable),
                ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64),
                ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
                ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


class Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
                 "r13", "r14", "r15", "rip", "rflags")]


class CpuidEntry(ctypes.Structure):
    _fields_ = [("function", ctypes.c_uint32), ("index", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("eax", ctypes.c_uint32), ("ebx", ctypes.c_uint32), ("ecx", ctypes.c_uint32),
                ("edx", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 3)]


class Cpuid(ctypes.Structure):
    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("entries", CpuidEntry * 256)]


def load_elf(memory, path):
    """Copies the PT_LOAD segments to their physical addresses; returns e_entry."""
    image = open(path, "rb").read()
    if image[:4] != b"\x7fELF" or image[4] != 2:
        sys.exit(f"{path}: not an ELF64 file")
    entry, phoff = struct.unpack_from("<QQ", image, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    for index in range(phnum):
        p_type, _, offset, _, paddr, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", image, phoff + index * phentsize)
        if p_type == 1:
            memory[paddr:paddr + filesz] = image[offset:offset + filesz]
            memory[paddr + filesz:paddr + memsz] = bytes(memsz - filesz)
    return entry


def write_boot_structures(memory, mem_size, cmdline):
    """Zero page, command line, GDT and page tables, as a Firecracker-style VMM lays them out."""
    memory[CMDLINE:CMDLINE + len(cmdline) + 1] = cmdline + b"\0"
    e820 = [(0, 0x9FC00, 1), (MIB, mem_size - MIB, 1)]
    struct.pack_into("<B", memory, ZERO_PAGE + 0x1E8, len(e820))
    for index, (addr, size, kind) in enumerate(e820):
        struct.pack_into("<QQI", memory, ZERO_PAGE + 0x2D0 + 20 * index, addr, size, kind)
    struct.pack_into("<H", memory, ZERO_PAGE + 0x1FE, 0xAA55)          # boot_flag
    struct.pack_into("<I", memory, ZERO_PAGE + 0x202, 0x53726448)      # header "HdrS"
    struct.pack_into("<B", memory, ZERO_PAGE + 0x210, 0xFF)            # type_of_loader: undefined
    struct.pack_into("<I", memory, ZERO_PAGE + 0x228, CMDLINE)         # cmd_line_ptr
    struct.pack_into("<I", memory, ZERO_PAGE + 0x238, len(cmdline))    # cmdline_size
    struct.pack_into("<QQQQ", memory, GDT, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF)
    struct.pack_into("<Q", memory, PML4, PDPT | 3)
    struct.pack_into("<Q", memory, PDPT, PD | 3)
    for index in range(512):
        struct.pack_into("<Q", memory, PD + 8 * index, (index << 21) | 0x83)


def vcpu_cpuid(supported, apic_id, cpus):
    """The supported CPUID with this vCPU's APIC ID (leaf 1) and a topology leaf 0xB saying `cpus` cores."""
    cpuid = Cpuid()
    entries = [entry for entry in supported.entries[:supported.nent] if entry.function != 0xB]
    shift = max(cpus - 1, 0).bit_length()
    entries.append(CpuidEntry(function=0xB, index=0, flags=1, eax=0, ebx=1, ecx=0x100, edx=apic_id))
    entries.append(CpuidEntry(function=0xB, index=1, flags=1, eax=shift, ebx=cpus, ecx=0x201, edx=apic_id))
    for slot, entry in enumerate(entries):
        if entry.function == 1:
            entry.ebx = (entry.ebx & 0x00FFFFFF) | (apic_id << 24)
        cpuid.entries[slot] = entry
    cpuid.nent = len(entries)
    return cpuid


def set_long_mode(vcpu, entry):
    sregs = Sregs()
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    code = Segment(base=0, limit=0xFFFFF, selector=0x08, type=0xB, present=1, dpl=0, db=0, s=1, l=1, g=1)
    data = Segment(base=0, limit=0xFFFFF, selector=0x10, type=0x3, present=1, dpl=0, db=1, s=1, l=0, g=1)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = Segment(base=0, limit=0xFFFFF, selector=0x18, type=0xB, present=1, s=0, g=1)
    sregs.gdt.base, sregs.gdt.limit = GDT, 4 * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr3 = PML4
    sregs.cr4 = 0x20                        # PAE
    sregs.cr0 = 0x80000011                  # PG | ET | PE
    sregs.efer = 0x500                      # LMA | LME
    fcntl.ioctl(vcpu, KVM_SET_SREGS, sregs)
    regs = Regs(rflags=2, rip=entry, rsp=BOOT_STACK, rbp=BOOT_STACK, rsi=ZERO_PAGE)
    fcntl.ioctl(vcpu, KVM_SET_REGS, regs)


class Machine:
    def __init__(self, elf, cpus, mem_mib, cmdline):
        self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        if fcntl.ioctl(self.kvm, KVM_GET_API_VERSION) != 12:
            sys.exit("unexpected KVM API version")
        self.vm = fcntl.ioctl(self.kvm, KVM_CREATE_VM, 0)
        self.mem_size = mem_mib * MIB
        self.memory = mmap.mmap(-1, self.mem_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        region = struct.pack("<IIQQQ", 0, 0, 0, self.mem_size, address)
        fcntl.ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, region)
        if cpus > 1:
            fcntl.ioctl(self.vm, KVM_CREATE_IRQCHIP)
        self.entry = load_elf(self.memory, elf)
        write_boot_structures(self.memory, self.mem_size, cmdline.encode())
        self.run_size = fcntl.ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE)
        cpuid = Cpuid(nent=256)
        fcntl.ioctl(self.kvm, KVM_GET_SUPPORTED_CPUID, cpuid)
        self.vcpus = []
        for index in range(cpus):
            vcpu = fcntl.ioctl(self.vm, KVM_CREATE_VCPU, index)
            fcntl.ioctl(vcpu, KVM_SET_CPUID2, vcpu_cpuid(cpuid, index, cpus))
            if index == 0:
                set_long_mode(vcpu, self.entry)
            self.vcpus.append(vcpu)
        self.output_lock = threading.Lock()
        self.done = threading.Event()
        self.result = None

    def finish(self, result):
        with self.output_lock:
            if self.result is None:
                self.result = result
        self.done.set()

    def run_vcpu(self, vcpu):
        run = mmap.mmap(vcpu, self.run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        while not self.done.is_set():
            try:
                fcntl.ioctl(vcpu, KVM_RUN)
            except (InterruptedError, BlockingIOError):
                # EAGAIN: an AP left the wait-for-SIPI state (or got a signal); run it again.
                continue
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason == KVM_EXIT_IO:
                direction, size, port, count, offset = struct.unpack_from("<BBHIQ", run, 32)
                if direction == KVM_EXIT_IO_OUT:
                    value = run[offset]
                    if port == COM1:
                        with self.output_lock:
                            sys.stdout.buffer.write(bytes([value]))
                            sys.stdout.buffer.flush()
                    elif port in ENDING_PORTS:
                        self.finish(f"exit via {ENDING_PORTS[port]} (value {value:#x})")
                else:
                    # LSR: transmitter empty, no input. Anything else reads 0.
                    run[offset] = 0x60 if port == COM1_LSR else 0
            elif reason == KVM_EXIT_MMIO:
                pass  # Nothing is mapped outside RAM; reads return 0.
            elif reason == KVM_EXIT_HLT:
                self.finish("hlt")
            elif reason == KVM_EXIT_SHUTDOWN:
                self.finish("shutdown (triple fault)")
            else:
                self.finish(f"exit reason {reason}")

    def run(self, timeout):
        threads = [threading.Thread(target=self.run_vcpu, args=(vcpu,), daemon=True) for vcpu in self.vcpus]
        for thread in threads:
            thread.start()
        if not self.done.wait(timeout):
            self.finish("timeout")
        return self.result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("elf")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--mem-mib", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=20)
    parser.add_argument("append", nargs="*")
    args = parser.parse_args()
    machine = Machine(args.elf, args.cpus, args.mem_mib, " ".join(args.append))
    result = machine.run(args.timeout)
    print(f"[linux64-boot: {result}]", file=sys.stderr)
    # Daemon vCPU threads may still sit in KVM_RUN; leave without waiting for them.
    os._exit(0 if result.startswith("exit via") else 1)


if __name__ == "__main__":
    main()
