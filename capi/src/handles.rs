//! The handle table: every object a C caller holds is a 64-bit handle into it, never a pointer.
//!
//! A handle packs the object's kind (8 bits), its slot's generation (24 bits) and the slot index
//! plus one (32 bits), so 0 is never a handle. Freeing an object bumps its slot's generation:
//! the old handle (a use after free, a double free) then fails with `KEEL_ERR_HANDLE`, even once
//! the slot holds a new object, and a handle of one kind passed where another is expected fails
//! the same way. Objects are reference-counted, so a call that runs long (waiting for a VM) keeps
//! its object alive while another thread frees the handle.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::placement::{ClaimObject, ClusterObject, PlacerObject};
use crate::status::{Failure, KEEL_ERR_HANDLE};
use crate::vm::{ConfigObject, VmObject};

/// What a handle refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Config = 1,
    Vm = 2,
    Cluster = 3,
    Placer = 4,
    Claim = 5,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Config => "a VM config",
            Kind::Vm => "a VM",
            Kind::Cluster => "a cluster",
            Kind::Placer => "a placer",
            Kind::Claim => "a claim",
        }
    }

    fn from_bits(bits: u64) -> Option<Kind> {
        Some(match bits {
            1 => Kind::Config,
            2 => Kind::Vm,
            3 => Kind::Cluster,
            4 => Kind::Placer,
            5 => Kind::Claim,
            _ => return None,
        })
    }
}

/// An object in the table. Each lives in its own `Arc`, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Object {
    Config(Mutex<ConfigObject>),
    Vm(VmObject),
    Cluster(ClusterObject),
    Placer(Mutex<PlacerObject>),
    Claim(Mutex<ClaimObject>),
}

impl Object {
    fn kind(&self) -> Kind {
        match self {
            Object::Config(_) => Kind::Config,
            Object::Vm(_) => Kind::Vm,
            Object::Cluster(_) => Kind::Cluster,
            Object::Placer(_) => Kind::Placer,
            Object::Claim(_) => Kind::Claim,
        }
    }
}

const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

struct Slot {
    generation: u32,
    object: Option<Arc<Object>>,
}

struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    slots: Vec::new(),
    free: Vec::new(),
    live: 0,
});

fn table() -> MutexGuard<'static, Table> {
    // The table's invariants hold between statements; a panic elsewhere cannot break them.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode(kind: Kind, generation: u32, index: u32) -> u64 {
    (kind as u64) << 56 | u64::from(generation & GENERATION_MASK) << 32 | (u64::from(index) + 1)
}

/// Puts `object` in the table and returns its handle.
pub(crate) fn insert(object: Object) -> u64 {
    let kind = object.kind();
    let mut table = table();
    table.live += 1;
    if let Some(index) = table.free.pop() {
        let slot = &mut table.slots[index as usize];
        slot.object = Some(Arc::new(object));
        return encode(kind, slot.generation, index);
    }
    let index = u32::try_from(table.slots.len()).unwrap_or(u32::MAX - 1);
    table.slots.push(Slot {
        generation: 1,
        object: Some(Arc::new(object)),
    });
    encode(kind, 1, index)
}

/// Puts `object` in the table and stores its handle through `out`; a NULL `out` is refused
/// before anything is inserted, so a failed call leaves no handle behind.
///
/// # Safety
/// `out` is NULL or valid for a write.
pub(crate) unsafe fn publish(out: *mut u64, object: Object) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(crate::status::KEEL_ERR_NULL, "out is NULL"));
    }
    let handle = insert(object);
    // SAFETY: non-NULL, and valid for a write by the caller's promise.
    unsafe { out.write(handle) };
    Ok(())
}

/// Finds the slot `handle` names, checking its kind and generation.
fn locate(table: &Table, handle: u64, kind: Kind) -> Result<usize, Failure> {
    let bad = |why: &str| Failure::new(KEEL_ERR_HANDLE, format!("handle {handle:#x}: {why}"));
    if handle == 0 {
        return Err(bad(&format!(
            "0 is never a handle (expected {})",
            kind.name()
        )));
    }
    let found = Kind::from_bits(handle >> 56).ok_or_else(|| bad("not a Keel handle"))?;
    if found != kind {
        return Err(bad(&format!(
            "is {}, expected {}",
            found.name(),
            kind.name()
        )));
    }
    let index = (handle & 0xffff_ffff)
        .checked_sub(1)
        .and_then(|index| usize::try_from(index).ok())
        .ok_or_else(|| bad("not a Keel handle"))?;
    let generation = ((handle >> 32) as u32) & GENERATION_MASK;
    let slot = table
        .slots
        .get(index)
        .ok_or_else(|| bad("was never issued"))?;
    match &slot.object {
        Some(object) if slot.generation == generation && object.kind() == kind => Ok(index),
        _ if generation < slot.generation || slot.object.is_none() => {
            Err(bad(&format!("{} that was freed already", kind.name())))
        }
        _ => Err(bad("was never issued")),
    }
}

/// The object behind `handle`, which must be of `kind`.
pub(crate) fn get(handle: u64, kind: Kind) -> Result<Arc<Object>, Failure> {
    let table = table();
    let index = locate(&table, handle, kind)?;
    table.slots[index]
        .object
        .clone()
        .ok_or_else(|| Failure::new(KEEL_ERR_HANDLE, format!("handle {handle:#x}: freed")))
}

/// Takes the object behind `handle` out of the table; the handle is dead from now on.
pub(crate) fn remove(handle: u64, kind: Kind) -> Result<Arc<Object>, Failure> {
    let mut table = table();
    let index = locate(&table, handle, kind)?;
    let slot = &mut table.slots[index];
    let object = slot.object.take();
    slot.generation = (slot.generation + 1) & GENERATION_MASK;
    if slot.generation == 0 {
        slot.generation = 1;
    }
    table.free.push(index as u32);
    table.live -= 1;
    object.ok_or_else(|| Failure::new(KEEL_ERR_HANDLE, format!("handle {handle:#x}: freed")))
}

/// How many handles are live (issued and not freed), for leak checks.
pub(crate) fn live() -> usize {
    table().live
}

/// Applies `body` to the object behind `handle` if it is of the variant `pick` selects.
macro_rules! with_object {
    ($handle:expr, $kind:ident, |$object:ident| $body:expr) => {{
        let object = $crate::handles::get($handle, $crate::handles::Kind::$kind)?;
        match &*object {
            $crate::handles::Object::$kind($object) => $body,
            _ => Err($crate::status::Failure::new(
                $crate::status::KEEL_ERR_HANDLE,
                "handle kind mismatch",
            )),
        }
    }};
}
pub(crate) use with_object;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::ClusterObject;

    fn cluster() -> Object {
        Object::Cluster(ClusterObject::for_tests())
    }

    #[test]
    fn freed_reused_forged_and_mistyped_handles_are_refused() {
        let first = insert(cluster());
        assert!(get(first, Kind::Cluster).is_ok());
        let err = get(first, Kind::Vm).err().unwrap();
        assert!(
            err.message.contains("is a cluster, expected a VM"),
            "{}",
            err.message
        );
        remove(first, Kind::Cluster).unwrap();
        let err = get(first, Kind::Cluster).err().unwrap();
        assert!(err.message.contains("freed already"), "{}", err.message);
        assert!(remove(first, Kind::Cluster).is_err(), "double free");
        // The slot is reused with a new generation: the old handle stays dead.
        let second = insert(cluster());
        assert_ne!(first, second);
        assert!(get(first, Kind::Cluster).is_err());
        assert!(get(second, Kind::Cluster).is_ok());
        assert!(get(0, Kind::Cluster).is_err());
        assert!(get(0xdead_beef, Kind::Cluster).is_err(), "no kind bits");
        assert!(
            get(second + 0x1_0000_0000, Kind::Cluster).is_err(),
            "forged generation"
        );
        assert!(get(second + 1_000, Kind::Cluster).is_err(), "never issued");
        remove(second, Kind::Cluster).unwrap();
    }
}
