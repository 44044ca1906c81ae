/*
 * The handler protocol's first two steps, shared by the attack handlers: connect to
 * /control.sock and receive the client's connection (one fd, SCM_RIGHTS).
 * Returns the fd, or -1 with errno set.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Receives one message on `s`; returns the fd it carried, -1 (errno set) without one. */
static inline int receive_fd(int s) {
    char data[64];
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) {
        if (n == 0)
            errno = ECONNRESET;
        return -1;
    }
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) {
        errno = EPROTO;
        return -1;
    }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static inline int receive_client(void) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = "/control.sock"};
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        return -1;
    return receive_fd(s);
}
