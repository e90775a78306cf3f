//! The transport-independent part of a virtio transport: feature negotiation, the device
//! status state machine, queue set-up and its validation, activation and reset.
//!
//! [`TransportState`] follows virtio 1.2 section 3.1 and is what both a register layout
//! (virtio-PCI's common configuration structure, virtio-mmio's registers) and its interrupt
//! mechanism sit on. Both the virtio-mmio and virtio-pci transports use it: only modern
//! drivers (`VIRTIO_F_VERSION_1`) are accepted, queue set-up freezes once the device runs, an
//! invalid queue size or address marks the device `DEVICE_NEEDS_RESET` instead of starting it
//! with rings the driver laid out differently, and writing status 0 resets the device.

use std::sync::{Arc, MutexGuard};

use crate::GuestMemoryMmap;
use log::debug;
use virtio_queue::{Queue, QueueT};

use super::snapshot::{QueueSnapshot, SnapshotError, VirtioDeviceState};
use super::{status, SharedVirtioDevice, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::narrow::halves;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A queue size the device declared is not a power of two up to 32768.
    #[error("device declares an invalid queue size {0}")]
    QueueSize(u16),
}

/// Which half of a 64-bit queue address a driver writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressHalf {
    /// Bits 0..32.
    Low,
    /// Bits 32..64.
    High,
}

/// Which ring of the selected queue an address is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRing {
    /// Descriptor table.
    Descriptors,
    /// Available (driver) ring.
    Driver,
    /// Used (device) ring.
    Device,
}

fn lock(device: &SharedVirtioDevice) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Negotiation, status and queue state of one virtio device behind a transport.
pub struct TransportState {
    device: SharedVirtioDevice,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u32,
    activated: bool,
    invalid_queue_size: bool,
    /// Times the device set DEVICE_NEEDS_RESET (for the VMM's counters).
    needs_reset: u64,
    /// Names the transport in logs ("virtio-pci").
    tag: &'static str,
}

impl TransportState {
    /// State for `device`, whose queues live in `mem`; `tag` names the transport in logs.
    pub fn new(
        device: SharedVirtioDevice,
        mem: GuestMemoryMmap,
        tag: &'static str,
    ) -> Result<Self, TransportError> {
        let sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = sizes
            .into_iter()
            .map(|size| Queue::new(size).map_err(|_| TransportError::QueueSize(size)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TransportState {
            device,
            mem,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            invalid_queue_size: false,
            needs_reset: 0,
            tag,
        })
    }

    /// The device.
    pub fn device(&self) -> &SharedVirtioDevice {
        &self.device
    }

    /// The device's virtio type.
    pub fn device_type(&self) -> u32 {
        lock(&self.device).device_type()
    }

    /// Number of queues the device has.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The device status (what the driver wrote, plus `DEVICE_NEEDS_RESET` if set).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether the device has been activated.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// How many times the device has set DEVICE_NEEDS_RESET (a driver that broke the rules,
    /// or a device that could not start or reset); a reset clears the bit, not the count.
    pub fn needs_reset_count(&self) -> u64 {
        self.needs_reset
    }

    fn mark_needs_reset(&mut self) {
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.needs_reset += 1;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
    }

    /// Moves on whenever the device configuration changes: on the driver's writes (counted
    /// here) and on the device's own changes ([`super::VirtioDevice::config_generation`]).
    pub fn config_generation(&self) -> u32 {
        self.config_generation
            .wrapping_add(lock(&self.device).config_generation())
    }

    /// Selects which 32-bit page of device features [`TransportState::device_features`] shows.
    pub fn set_device_features_select(&mut self, select: u32) {
        self.device_features_select = select;
    }

    /// The selected device feature page.
    pub fn device_features_select(&self) -> u32 {
        self.device_features_select
    }

    /// The selected page of the features the device offers.
    pub fn device_features(&self) -> u32 {
        features_page(
            lock(&self.device).avail_features(),
            self.device_features_select,
        )
    }

    /// Selects which 32-bit page of driver features the next write sets.
    pub fn set_driver_features_select(&mut self, select: u32) {
        self.driver_features_select = select;
    }

    /// The selected driver feature page.
    pub fn driver_features_select(&self) -> u32 {
        self.driver_features_select
    }

    /// The selected page of the features the driver accepted so far.
    pub fn driver_features(&self) -> u32 {
        features_page(self.driver_features, self.driver_features_select)
    }

    /// The driver writes a page of accepted features; ignored after `FEATURES_OK`.
    pub fn set_driver_features(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 {
            crate::guest_warn!(
                "{}: driver changed features after FEATURES_OK; ignored",
                self.tag
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => {}
        }
    }

    /// Selects the queue later queue accesses refer to.
    pub fn set_queue_select(&mut self, select: u32) {
        self.queue_select = select;
    }

    /// The selected queue index.
    pub fn queue_select(&self) -> u32 {
        self.queue_select
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// The selected queue, while set-up may still change (not once the device runs).
    fn queue_for_setup(&mut self) -> Option<&mut Queue> {
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Largest size of the selected queue; 0 when there is no such queue.
    pub fn queue_max_size(&self) -> u16 {
        self.queue().map_or(0, |q| q.max_size())
    }

    /// Size the driver chose for the selected queue (its maximum until it writes one); 0 when
    /// there is no such queue.
    pub fn queue_size(&self) -> u16 {
        self.queue().map_or(0, |q| q.size())
    }

    /// The driver sets the selected queue's size. A size that is zero, not a power of two or
    /// above the maximum marks the device as needing a reset when the driver starts it:
    /// virtio-queue would keep the old size while the driver lays out its rings for the new one.
    pub fn set_queue_size(&mut self, value: u32) {
        let (select, tag) = (self.queue_select, self.tag);
        let Some(queue) = self.queue_for_setup() else {
            return;
        };
        let max = queue.max_size();
        match u16::try_from(value) {
            Ok(size) if size != 0 && size <= max && size.is_power_of_two() => queue.set_size(size),
            _ => {
                crate::guest_warn!("{tag}: queue {select} size {value} is invalid (max {max})");
                self.invalid_queue_size = true;
            }
        }
    }

    /// Whether the selected queue is enabled.
    pub fn queue_ready(&self) -> bool {
        self.queue().is_some_and(|q| q.ready())
    }

    /// The driver enables (or, where the transport allows it, disables) the selected queue.
    pub fn set_queue_ready(&mut self, ready: bool) {
        if let Some(queue) = self.queue_for_setup() {
            queue.set_ready(ready);
        }
    }

    /// The selected queue's ring address (0 when there is no such queue).
    pub fn queue_address(&self, ring: QueueRing) -> u64 {
        let Some(queue) = self.queue() else {
            return 0;
        };
        match ring {
            QueueRing::Descriptors => queue.desc_table(),
            QueueRing::Driver => queue.avail_ring(),
            QueueRing::Device => queue.used_ring(),
        }
    }

    /// The driver writes half of one of the selected queue's ring addresses; ignored once the
    /// driver is running.
    pub fn set_queue_address(&mut self, ring: QueueRing, half: AddressHalf, value: u32) {
        if self.status & status::DRIVER_OK != 0 {
            return;
        }
        let Some(queue) = self.queue_for_setup() else {
            return;
        };
        let (low, high) = match half {
            AddressHalf::Low => (Some(value), None),
            AddressHalf::High => (None, Some(value)),
        };
        match ring {
            QueueRing::Descriptors => queue.set_desc_table_address(low, high),
            QueueRing::Driver => queue.set_avail_ring_address(low, high),
            QueueRing::Device => queue.set_used_ring_address(low, high),
        }
    }

    /// The driver notified queue `index`; forwarded to a running device, ignored otherwise.
    pub fn notify(&mut self, index: u32) {
        if !self.activated {
            return;
        }
        match u16::try_from(index) {
            Ok(index) if usize::from(index) < self.queues.len() => {
                lock(&self.device).queue_notify(index)
            }
            _ => debug!("{}: notify for unknown queue {index}", self.tag),
        }
    }

    /// Reads device configuration space.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        lock(&self.device).read_config(offset, data);
    }

    /// Writes device configuration space and bumps the configuration generation.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_config(offset, data);
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The driver writes the device status. `interrupt` is what the device raises interrupts
    /// through once activated. Returns `true` when the write reset the transport (status 0):
    /// the caller then resets its own registers.
    pub fn write_status(
        &mut self,
        value: u8,
        interrupt: impl FnOnce() -> Arc<dyn VirtioInterrupt>,
    ) -> bool {
        if value == 0 {
            return self.reset();
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = lock(&self.device).avail_features();
            let acked = self.driver_features;
            if acked & !offered != 0 || acked & VIRTIO_F_VERSION_1 == 0 {
                crate::guest_warn!(
                    "{}: driver features {acked:#x} not acceptable (offered {offered:#x}, VERSION_1 required)",
                    self.tag
                );
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                self.status = value & !status::FEATURES_OK;
                return false;
            }
            lock(&self.device).set_acked_features(acked);
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.activate(interrupt());
        }
        false
    }

    fn activate(&mut self, interrupt: Arc<dyn VirtioInterrupt>) {
        if self.invalid_queue_size {
            self.mark_needs_reset();
            return;
        }
        if let Some(bad) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            crate::guest_warn!(
                "{}: queue {bad} set up with an invalid size or address",
                self.tag
            );
            self.mark_needs_reset();
            return;
        }
        // Devices take their queues by position (virtio-net: rx, tx, then control), so the
        // ready queues must be 0..n: a driver that left an earlier queue disabled but enabled a
        // later one would hand the device the wrong ring under the wrong index.
        let ready = self.queues.iter().take_while(|q| q.ready()).count();
        if let Some(gap) = self.queues[ready..].iter().position(|q| q.ready()) {
            crate::guest_warn!(
                "{}: queue {} is ready but queue {ready} is not; queues must be enabled from 0",
                self.tag,
                ready + gap
            );
            self.mark_needs_reset();
            return;
        }
        // The device gets its own copies; the transport keeps answering register reads.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .filter(|q| q.ready())
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let Ok(queues) = queues else {
            crate::guest_warn!("{}: queue state cannot be copied", self.tag);
            self.mark_needs_reset();
            return;
        };
        let activated = lock(&self.device).activate(self.mem.clone(), interrupt, queues);
        match activated {
            Ok(()) => self.activated = true,
            Err(err) => {
                crate::guest_warn!("{}: device activation failed: {err}", self.tag);
                self.mark_needs_reset();
            }
        }
    }

    /// Returns to the initial state. Returns `false` (and sets `DEVICE_NEEDS_RESET`) when a
    /// running device cannot be reset.
    pub fn reset(&mut self) -> bool {
        if self.activated && !lock(&self.device).reset() {
            crate::guest_warn!("{}: device cannot be reset", self.tag);
            self.mark_needs_reset();
            return false;
        }
        self.activated = false;
        self.invalid_queue_size = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        true
    }
}

/// What a transport saves in a snapshot: the driver's negotiation and queue set-up as the
/// transport's registers show them, and the device's own state.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportSnapshot {
    /// Device status.
    pub status: u8,
    /// Features the driver wrote.
    pub driver_features: u64,
    /// Selected queue.
    pub queue_select: u32,
    /// Selected device-feature page.
    pub device_features_select: u32,
    /// Selected driver-feature page.
    pub driver_features_select: u32,
    /// Configuration generation (the driver-write part).
    pub config_generation: u32,
    /// Whether the device was activated.
    pub activated: bool,
    /// Whether the driver chose an invalid queue size.
    pub invalid_queue_size: bool,
    /// The queue registers as the driver set them.
    pub queues: Vec<QueueSnapshot>,
    /// The device.
    pub device: VirtioDeviceState,
}

impl TransportState {
    /// Saves the transport and its device (the VM is paused).
    pub fn save(&mut self) -> Result<TransportSnapshot, SnapshotError> {
        let device = lock(&self.device).save_state()?;
        Ok(TransportSnapshot {
            status: self.status,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            config_generation: self.config_generation,
            activated: self.activated,
            invalid_queue_size: self.invalid_queue_size,
            queues: self.queues.iter().map(QueueSnapshot::of).collect(),
            device,
        })
    }

    /// Puts a freshly created transport (and its device) back into `saved`; the device is
    /// reactivated on `interrupt` if it was running.
    pub fn restore(
        &mut self,
        saved: &TransportSnapshot,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), SnapshotError> {
        if saved.queues.len() != self.queues.len() {
            return Err(SnapshotError::Mismatch(format!(
                "{} queues saved, the device has {}",
                saved.queues.len(),
                self.queues.len()
            )));
        }
        let queues = saved
            .queues
            .iter()
            .enumerate()
            .map(|(index, queue)| {
                if queue.max_size != self.queues[index].max_size() {
                    return Err(SnapshotError::Mismatch(format!(
                        "queue {index} had {} entries at most, the device offers {}",
                        queue.max_size,
                        self.queues[index].max_size()
                    )));
                }
                queue.to_queue(index, &self.mem)
            })
            .collect::<Result<Vec<_>, _>>()?;
        lock(&self.device).restore_state(&saved.device, self.mem.clone(), interrupt.clone())?;
        self.queues = queues;
        self.status = saved.status;
        self.driver_features = saved.driver_features;
        self.queue_select = saved.queue_select;
        self.device_features_select = saved.device_features_select;
        self.driver_features_select = saved.driver_features_select;
        self.config_generation = saved.config_generation;
        self.activated = saved.activated && saved.device.activated;
        self.invalid_queue_size = saved.invalid_queue_size;
        Ok(())
    }

    /// Once the whole VM is restored (interrupt controllers included): raises each running
    /// queue's interrupt, since one raised just before the snapshot may not have reached the
    /// driver (a spurious interrupt is harmless, a lost one is not).
    pub fn raise_after_restore(&self, interrupt: &dyn VirtioInterrupt) {
        if !self.activated {
            return;
        }
        let ready = self.queues.iter().filter(|queue| queue.ready()).count();
        for index in 0..ready {
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            if let Err(err) = interrupt.trigger(super::InterruptKind::Queue(index)) {
                crate::guest_warn!(
                    "{}: cannot raise queue {index}'s interrupt: {err}",
                    self.tag
                );
            }
        }
    }
}

fn features_page(features: u64, select: u32) -> u32 {
    let (low, high) = halves(features);
    match select {
        0 => low,
        1 => high,
        _ => 0,
    }
}
