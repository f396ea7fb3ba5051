//! The raw `bpf(2)` call, for the commands aya 0.14 does not expose.

use std::io;

/// Runs `cmd` with `attr`, the prefix of `union bpf_attr` that the command reads.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out bpf_attr prefix for `cmd`, and its size is
    // passed so the kernel reads no further.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
