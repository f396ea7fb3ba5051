//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH`: many elements of one map written or
//! read in one system call. A cold sync of 100,000 frontends writes two million elements and
//! a full sync reads them back; one call each (two to read) was most of their time. aya 0.14
//! has no batch operations, hence the raw calls.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use super::sys::bpf;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

/// Every element of a hash map, read a few thousand per call; `None` when the kernel or map
/// type has no batch lookup (read one at a time then). Elements changed meanwhile may be
/// missed or seen twice, as with any iteration of a live map.
pub fn read_all<K: aya::Pod, V: aya::Pod>(map: BorrowedFd<'_>) -> Option<Vec<(K, V)>> {
    const PER_CALL: usize = 4096;
    let mut out = Vec::new();
    let mut keys: Vec<K> = Vec::with_capacity(PER_CALL);
    let mut values: Vec<V> = Vec::with_capacity(PER_CALL);
    // The position in the map: for hash maps, a bucket index the kernel hands back.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: PER_CALL as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let read = (attr.count as usize).min(PER_CALL);
        // SAFETY: the kernel filled the first `read` keys and values.
        unsafe {
            keys.set_len(read);
            values.set_len(read);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match result {
            Ok(_) => {}
            // The end of the map.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Some(out),
            // No batch lookup here, a bucket larger than a call, or the map changed under
            // us: the caller reads one element at a time instead.
            Err(_) => return None,
        }
        token_in = token_out;
        first = false;
    }
}
