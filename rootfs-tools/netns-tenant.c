/* A container's view of its network namespace, for the kernel tests of the namespace pool
 * (tests/kernel/pools.rs). Static, so it runs in the busybox test root.
 *
 *   netns-tenant listen NAME PORT  bind and listen on the abstract unix socket @NAME and
 *                                  on TCP 0.0.0.0:PORT (Landlock denies it on 6.7+), bind
 *                                  UDP 0.0.0.0:PORT, reach them itself, print each
 *                                  outcome, then wait (until killed)
 *   netns-tenant reach NAME PORT   connect to @NAME and to TCP 127.0.0.1:PORT, send a
 *                                  datagram to UDP 127.0.0.1:PORT, print outcomes
 *   netns-tenant pass-out          connect to /control.sock and send it a UDP socket of
 *                                  this namespace over SCM_RIGHTS, then exit
 *   netns-tenant cycle             leave a unix socket pair in flight, each end sent over
 *                                  the other (an SCM_RIGHTS cycle), then exit
 *
 * Each outcome is printed as "STEP: ok" or "STEP: <strerror>".
 */
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void report(const char *step, int rc) {
    printf("%s: %s\n", step, rc < 0 ? strerror(errno) : "ok");
    fflush(stdout);
}

static socklen_t abstract(struct sockaddr_un *a, const char *name) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n > sizeof a->sun_path - 1) n = sizeof a->sun_path - 1;
    memcpy(a->sun_path + 1, name, n); /* sun_path[0] = 0: abstract */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static struct sockaddr_in tcp_addr(uint32_t ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(ip);
    return a;
}

static int reach(const char *name, int port) {
    struct sockaddr_un ua;
    socklen_t ul = abstract(&ua, name);
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    report("connect abstract", connect(u, (struct sockaddr *)&ua, ul));
    struct sockaddr_in ta = tcp_addr(INADDR_LOOPBACK, port);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    report("connect tcp", connect(t, (struct sockaddr *)&ta, sizeof ta));
    int d = socket(AF_INET, SOCK_DGRAM, 0);
    report("send udp", sendto(d, "x", 1, 0, (struct sockaddr *)&ta, sizeof ta) < 0 ? -1 : 0);
    close(u);
    close(t);
    close(d);
    return 0;
}

static int listen_on(const char *name, int port) {
    struct sockaddr_un ua;
    socklen_t ul = abstract(&ua, name);
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    int rc = bind(u, (struct sockaddr *)&ua, ul);
    if (rc == 0) rc = listen(u, 8);
    report("listen abstract", rc);
    struct sockaddr_in ta = tcp_addr(INADDR_ANY, port);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    rc = bind(t, (struct sockaddr *)&ta, sizeof ta);
    if (rc == 0) rc = listen(t, 8);
    report("listen tcp", rc);
    int d = socket(AF_INET, SOCK_DGRAM, 0);
    report("bind udp", bind(d, (struct sockaddr *)&ta, sizeof ta));
    reach(name, port);
    printf("listening\n");
    fflush(stdout);
    for (;;) pause();
    return 0;
}

static int send_fds(int via, int *fds, int n) {
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    char ctl[CMSG_SPACE(2 * sizeof(int))];
    memset(ctl, 0, sizeof ctl);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                       .msg_controllen = CMSG_SPACE(n * sizeof(int))};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    return sendmsg(via, &m, 0) < 0 ? -1 : 0;
}

static int pass_out(void) {
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, "/control.sock");
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    int rc = connect(c, (struct sockaddr *)&a, sizeof a);
    if (rc == 0) rc = send_fds(c, &udp, 1);
    report("pass out", rc);
    return rc == 0 ? 0 : 1;
}

static int cycle(void) {
    int sv[2];
    int rc = socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    if (rc == 0) rc = send_fds(sv[0], sv, 2);
    report("cycle", rc);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "listen")) return listen_on(argv[2], atoi(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "reach")) return reach(argv[2], atoi(argv[3]));
    if (argc == 2 && !strcmp(argv[1], "pass-out")) return pass_out();
    if (argc == 2 && !strcmp(argv[1], "cycle")) return cycle();
    fprintf(stderr, "usage: netns-tenant listen|reach NAME PORT | pass-out | cycle\n");
    return 2;
}
