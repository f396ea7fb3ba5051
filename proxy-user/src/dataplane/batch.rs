//! `BPF_MAP_UPDATE_BATCH`: many elements of one map written in one system call. A cold sync
//! of 100,000 frontends writes two million elements; one call each was most of its time.
//! aya 0.14 has no batch operations, hence the raw call.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use super::sys::bpf;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's own "not supported" (not in libc): maps without batch operations.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug)]
pub enum BatchError {
    /// This kernel or map type has no batch update; write one element at a time.
    Unsupported,
    /// The first `written` elements were written, then the next failed.
    Failed { written: usize, error: io::Error },
}

/// Writes `values[i]` under `keys[i]`, in order. `K` and `V` must be the map's key and value
/// types (`repr(C)`, of the map's key and value sizes): the kernel reads the arrays with the
/// map's strides.
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(keys.len()).expect("fewer than 2^32 elements"),
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(_) => Ok(()),
        Err(error) => {
            // The kernel reports in `count` how many it wrote before failing.
            let written = attr.count as usize;
            let unsupported = matches!(
                error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            ) && written == 0;
            if unsupported {
                Err(BatchError::Unsupported)
            } else {
                Err(BatchError::Failed { written, error })
            }
        }
    }
}
