//! Synchronous detachment of a pinned BPF link.
//!
//! Removing a link's last pin only drops a reference; the kernel frees (and so detaches) the
//! link from deferred work, so the program may still see packets a moment after `sluice
//! cleanup` returns. `BPF_LINK_DETACH` detaches it at once. aya 0.14 exposes neither the
//! command nor a link's fd, hence these two raw calls.

use std::{
    ffi::CString,
    io,
    os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _},
    path::Path,
};

use super::sys::bpf;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches the link pinned at `pin` from its hook now. The pin itself is left in place.
pub fn detach_pinned_link(pin: &Path) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut detach = LinkDetachAttr {
        link_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
    };
    bpf(BPF_LINK_DETACH, &mut detach)?;
    Ok(())
}
