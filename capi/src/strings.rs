//! Strings and buffers across the boundary: C strings in, caller-owned buffers out.

use std::ffi::{c_char, CStr};

use crate::status::{Failure, KEEL_ERR_BUFFER, KEEL_ERR_NULL, KEEL_ERR_UTF8};

/// The UTF-8 string at `ptr` (NUL-terminated), naming `arg` in errors.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, arg: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::new(KEEL_ERR_NULL, format!("{arg} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string valid for the call.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|err| {
        Failure::new(
            KEEL_ERR_UTF8,
            format!(
                "{arg} is not valid UTF-8 (byte {} is wrong)",
                err.valid_up_to()
            ),
        )
    })
}

/// Like [`text`], but NULL means "none".
///
/// # Safety
/// As for [`text`].
pub(crate) unsafe fn optional_text<'a>(
    ptr: *const c_char,
    arg: &str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { text(ptr, arg) }.map(Some)
}

/// Stores `value` through `out`, naming `arg` when `out` is NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn store<T>(out: *mut T, value: T, arg: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(KEEL_ERR_NULL, format!("{arg} is NULL")));
    }
    // SAFETY: non-NULL and, by the caller's promise, valid and aligned for a write of T.
    unsafe { out.write(value) };
    Ok(())
}

/// Copies `value` and a NUL into the caller's buffer `buf` of `len` bytes, storing the length
/// the whole string needs (with its NUL) through `needed` when that is not NULL. A buffer too
/// small (or NULL with `len` 0, to ask for the size) gets `KEEL_ERR_BUFFER` and nothing
/// written.
///
/// # Safety
/// `buf` is NULL or valid for writes of `len` bytes; `needed` is NULL or valid for a write.
pub(crate) unsafe fn copy_out(
    value: &str,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> Result<(), Failure> {
    let want = value.len() + 1;
    if !needed.is_null() {
        // SAFETY: non-NULL, valid for a write by the caller's promise.
        unsafe { needed.write(want) };
    }
    if buf.is_null() || len < want {
        return Err(Failure::new(
            KEEL_ERR_BUFFER,
            format!("the buffer holds {len} bytes, {want} are needed"),
        ));
    }
    // SAFETY: `buf` is valid for `len >= want` bytes and cannot overlap Keel's own string.
    unsafe {
        std::ptr::copy_nonoverlapping(value.as_ptr(), buf.cast::<u8>(), value.len());
        buf.add(value.len()).write(0);
    }
    Ok(())
}
