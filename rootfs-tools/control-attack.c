/*
 * A hostile handler for faasd's shared control socket (one per function image): it tries
 * to obtain more than its own request's connection.
 *
 * It connects to /control.sock three times: twice itself, and once from a grandchild
 * whose parent has exited (the grandchild passes that connection up over a socketpair
 * and stays alive until the end). Then it watches all three for CONTROL_WATCH_MS after
 * the first fd arrives, counting the fds it receives and the connections the daemon
 * closed without sending one, and answers on the first fd:
 *
 *     HTTP/1.0 200 OK ... fds=<received> closed=<closed by the daemon> request=<line>
 *
 * Run many at once on one function: each must report fds=1 closed=2 (any other fd
 * would be another request's client).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "receive-client.h"

#define CONTROL_WATCH_MS 1500
#define CONNS 3

static int control_connect(void) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = "/control.sock"};
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        return -1;
    return s;
}

static int send_fd(int over, int fd) {
    char byte = 'F';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return sendmsg(over, &msg, 0) < 0 ? -1 : 0;
}

/* Receives one message; returns the fd it carried, -1 without one, -2 at EOF. */
static int recv_fd(int s) {
    int fd = receive_fd(s);
    return fd < 0 && errno == ECONNRESET ? -2 : fd;
}

/* A connection made by a grandchild whose parent exits first; -1 on failure. */
static int grandchild_connection(void) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
        return -1;
    pid_t child = fork();
    if (child == 0) {
        if (fork() == 0) {
            while (getppid() != 1) /* the parent has exited: reparented to pid 1 */
                usleep(1000);
            int s = control_connect();
            if (s >= 0)
                send_fd(pair[1], s);
            pause(); /* alive until the container ends */
            _exit(0);
        }
        _exit(0);
    }
    waitpid(child, NULL, 0);
    close(pair[1]);
    int s = recv_fd(pair[0]);
    close(pair[0]);
    return s;
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(void) {
    signal(SIGCHLD, SIG_IGN); /* the grandchild is reaped by the kernel */
    int conns[CONNS] = {control_connect(), control_connect(), grandchild_connection()};
    int open_conns[CONNS], delivered[CONNS] = {0};
    int fds[16], nfds = 0, closed = 0;
    for (int i = 0; i < CONNS; i++)
        open_conns[i] = conns[i] >= 0;
    long deadline = -1;
    while (deadline < 0 || now_ms() < deadline) {
        struct pollfd p[CONNS];
        for (int i = 0; i < CONNS; i++)
            p[i] = (struct pollfd){.fd = open_conns[i] ? conns[i] : -1, .events = POLLIN};
        int wait = deadline < 0 ? 10000 : (int)(deadline - now_ms());
        if (poll(p, CONNS, wait > 0 ? wait : 0) <= 0)
            break;
        for (int i = 0; i < CONNS; i++) {
            if (!p[i].revents)
                continue;
            int fd = recv_fd(conns[i]);
            if (fd == -2) {
                closed += !delivered[i]; /* the daemon closes its end after the hand-over */
                open_conns[i] = 0;
            } else if (fd >= 0 && nfds < 16) {
                fds[nfds++] = fd;
                delivered[i] = 1;
                if (deadline < 0)
                    deadline = now_ms() + CONTROL_WATCH_MS;
            }
        }
    }
    if (nfds == 0) {
        fprintf(stderr, "control-attack: no fd received\n");
        return 1;
    }
    char request[256] = "";
    ssize_t n = read(fds[0], request, sizeof request - 1);
    request[n > 0 ? n : 0] = 0;
    request[strcspn(request, "\r\n")] = 0;
    char body[512];
    int len = snprintf(body, sizeof body, "fds=%d closed=%d request=%s\n", nfds, closed,
                       request);
    char head[128];
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
                        len);
    for (int i = 0; i < nfds; i++) {
        (void)!write(fds[i], head, hlen);
        (void)!write(fds[i], body, len);
        close(fds[i]);
    }
    return 0;
}
