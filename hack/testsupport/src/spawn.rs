//! Spawning a process inside a network namespace.
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use flannel_rs::netns::NetnsFile;

/// Makes `cmd` enter `ns` between fork and exec. `ns` must stay open until `cmd` is spawned:
/// the child duplicates the descriptor at fork time.
pub fn enter_netns_on_exec(cmd: &mut Command, ns: &NetnsFile) {
    let fd = ns.file().as_raw_fd();
    // SAFETY: only the setns syscall runs between fork and exec; the caller keeps `ns` (and so
    // the fd) open in the parent for the whole spawn.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
}
