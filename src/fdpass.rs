//! Passing a file descriptor over a Unix socket with SCM_RIGHTS (the handler protocol).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The data byte(s) that accompany the fd; handlers ignore them. The prototype sent this.
const PAYLOAD: &[u8] = b"SOCKET";

/// Sends `fd` over the connected Unix stream socket `sock` in one message.
pub fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(PAYLOAD)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`], close-on-exec. A message whose control data was
/// truncated (MSG_CTRUNC: more fds than we asked for) is an error, and every fd that did
/// arrive is closed.
pub fn recv_fd(sock: &impl AsRawFd) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these fds in our table for us to own.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("control message truncated (MSG_CTRUNC)"));
    }
    if received.len() != 1 {
        return Err(io::Error::other(format!(
            "expected one fd over SCM_RIGHTS, got {}",
            received.len()
        )));
    }
    Ok(received.pop().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn an_fd_crosses_and_is_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p1, p2) = UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), p2.as_raw_fd()).unwrap();
        drop(p2);
        let got = recv_fd(&b).unwrap();
        let flags = nix::fcntl::fcntl(&got, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let mut got = UnixStream::from(got);
        got.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        p1.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn two_fds_where_one_was_expected_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        let fds = [x.as_raw_fd(), y.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert!(recv_fd(&b).is_err());
    }

    #[test]
    fn a_message_without_fd_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"no fd").unwrap();
        assert!(recv_fd(&b).is_err());
    }
}
