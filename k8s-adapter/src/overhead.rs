//! What one VM costs its node beyond the guest's own RAM and vCPUs: the launcher pod requests
//! guest memory + this overhead, so the scheduler books what the node really spends.
//!
//! # The formula
//!
//! `overhead = 8 MiB + 1 MiB × vCPUs + ⌈guest RAM / 512⌉`, and `10m` CPU for the VMM's own
//! threads (the event loop, the API server).
//!
//! - **8 MiB fixed**: the `keel` process's resident memory without the guest's pages. Measured on
//!   this project's machines (see `benches/k8s.rs`, which prints it per VM, and the test
//!   `the_measured_vmm_overhead_fits_the_formula` in `tests/overhead.rs`): 3.5 MiB peak RSS for
//!   the glibc build with Keel's test guest, 1.7 MiB for the static musl build; the rest is
//!   headroom for the API server's buffers and the console's 64 KiB ring under load, and the node
//!   agent's share (one supervising task and a console buffer per VM, well under 1 MiB).
//! - **1 MiB per vCPU**: a vCPU thread's touched stack and the kernel's per-vCPU state (the
//!   `kvm_run` page, the vCPU's own structures) charged to the pod's memory cgroup.
//! - **guest RAM / 512**: the kernel's page tables for guest memory (8 bytes per 4 KiB page,
//!   second-level tables and the rmap), also charged to the cgroup.
//!
//! KubeVirt's own formula for comparison: 180 MiB + 8 MiB per vCPU + guest RAM / 512 + more
//! (libvirt, QEMU and virt-launcher), about 290–370 MiB per small VM.

/// Fixed overhead per VM, bytes.
pub const FIXED_BYTES: u64 = 8 << 20;
/// Overhead per vCPU, bytes.
pub const PER_VCPU_BYTES: u64 = 1 << 20;
/// Guest RAM is divided by this for its page tables.
pub const PAGE_TABLE_DIVISOR: u64 = 512;
/// CPU for the VMM's own threads, in thousandths of a CPU.
pub const VMM_CPU_MILLIS: u64 = 10;
/// CPU requested per vCPU, in thousandths of a CPU: KubeVirt's default 10:1 overcommit
/// (`cpuAllocationRatio`), so VMs pack as they would under KubeVirt.
pub const CPU_MILLIS_PER_VCPU: u64 = 100;

/// Memory the node spends on a VM beyond its guest RAM, bytes.
pub fn memory_overhead_bytes(vcpus: u32, guest_bytes: u64) -> u64 {
    FIXED_BYTES
        .saturating_add(PER_VCPU_BYTES.saturating_mul(u64::from(vcpus)))
        .saturating_add(guest_bytes.div_ceil(PAGE_TABLE_DIVISOR))
}

/// The memory a launcher pod requests (and is limited to): guest RAM + overhead, rounded up to
/// whole MiB.
pub fn pod_memory_bytes(vcpus: u32, guest_bytes: u64) -> u64 {
    let total = guest_bytes.saturating_add(memory_overhead_bytes(vcpus, guest_bytes));
    total.div_ceil(1 << 20).saturating_mul(1 << 20)
}

/// The CPU a launcher pod requests, in thousandths of a CPU.
pub fn pod_cpu_request_millis(vcpus: u32) -> u64 {
    CPU_MILLIS_PER_VCPU
        .saturating_mul(u64::from(vcpus))
        .saturating_add(VMM_CPU_MILLIS)
}

/// The CPU a launcher pod is limited to: every vCPU busy, plus the VMM's threads.
pub fn pod_cpu_limit_millis(vcpus: u32) -> u64 {
    1000u64
        .saturating_mul(u64::from(vcpus))
        .saturating_add(VMM_CPU_MILLIS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_is_fixed_plus_per_vcpu_plus_page_tables() {
        // 1 vCPU, 128 MiB: 8 + 1 + 0.25 MiB.
        assert_eq!(memory_overhead_bytes(1, 128 << 20), (9 << 20) + (256 << 10));
        // 4 vCPUs, 4 GiB: 8 + 4 + 8 MiB.
        assert_eq!(memory_overhead_bytes(4, 4 << 30), 20 << 20);
        // The pod asks for whole MiB: 128 + 9.25 → 138 MiB.
        assert_eq!(pod_memory_bytes(1, 128 << 20), 138 << 20);
        assert_eq!(pod_memory_bytes(4, 4 << 30), (4096 + 20) << 20);
    }

    #[test]
    fn keel_overhead_is_a_small_fraction_of_kubevirts() {
        // KubeVirt's documented estimate for 1 vCPU and 128 MiB is about 290 MiB.
        assert!(memory_overhead_bytes(1, 128 << 20) <= 10 << 20);
    }

    #[test]
    fn cpu_requests_follow_the_ten_to_one_ratio_and_limits_every_vcpu() {
        assert_eq!(pod_cpu_request_millis(2), 210);
        assert_eq!(pod_cpu_limit_millis(2), 2010);
        // No overflow on absurd inputs.
        assert!(memory_overhead_bytes(u32::MAX, u64::MAX) > 1 << 50);
        assert_eq!(pod_memory_bytes(u32::MAX, u64::MAX), u64::MAX);
    }
}
