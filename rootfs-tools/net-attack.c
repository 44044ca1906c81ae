/*
 * net-attack: a hostile handler for the network isolation tests (issue 10 #3).
 *
 * It speaks the handler protocol, reads the request line from the client socket it is
 * handed, and performs the attack the path names, against the address it names:
 *
 *   GET /reconnect/IP/PORT   disconnect the client socket (connect AF_UNSPEC), connect it
 *                            to IP:PORT, and if that works send
 *                            "DELETE /api/functions/victim" there (the control API's undeploy)
 *   GET /bind/IP/PORT        disconnect it, bind it to IP:PORT and listen
 *   GET /fastopen/IP/PORT    disconnect it, then sendto and sendmsg with MSG_FASTOPEN to IP:PORT
 *                            (an implicit connect)
 *   GET /udp/IP/PORT         sendto IP:PORT from a new UDP socket
 *   GET /ifconf/IP/PORT      SIOCGIFCONF on the client socket (the host's interface list)
 *
 * Each step prints "net-attack: STEP: ok" or "net-attack: STEP: <strerror>" on stdout (the
 * daemon logs it); the tests also check from outside that nothing was reached. A bound
 * socket is kept listening for 5 s (the test probes it), then the handler exits 0.
 *
 * Build: gcc -static -O2 -o net-attack net-attack.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "receive-client.h"

static void report(const char *step, int rc) {
    printf("net-attack: %s: %s\n", step, rc < 0 ? strerror(errno) : "ok");
    fflush(stdout);
}

static void die(const char *what) {
    printf("net-attack: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Reads the request line: "GET /MODE/IP/PORT HTTP/1.1". */
static void read_target(int conn, char *mode, char *ip, int *port) {
    char req[1024];
    size_t len = 0;
    while (len < sizeof req - 1 && !memchr(req, '\n', len)) {
        ssize_t n = read(conn, req + len, sizeof req - 1 - len);
        if (n <= 0)
            die("read request");
        len += (size_t)n;
    }
    req[len] = '\0';
    if (sscanf(req, "GET /%15[a-z]/%63[0-9.]/%d", mode, ip, port) != 3) {
        errno = EINVAL;
        die("request line");
    }
}

static void disconnect(int conn) {
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    report("disconnect", connect(conn, &unspec, sizeof unspec));
}

int main(void) {
    int conn = receive_client();
    if (conn < 0)
        die("receive the client socket");
    char mode[16], ip[64], step[128];
    int port;
    read_target(conn, mode, ip, &port);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &to.sin_addr);

    if (strcmp(mode, "reconnect") == 0) {
        disconnect(conn);
        snprintf(step, sizeof step, "connect %s:%d", ip, port);
        int rc = connect(conn, (struct sockaddr *)&to, sizeof to);
        report(step, rc);
        if (rc == 0) {
            static const char del[] = "DELETE /api/functions/victim HTTP/1.1\r\n"
                                      "Host: faasd\r\nConnection: close\r\n\r\n";
            report("send DELETE", (int)write(conn, del, sizeof del - 1));
            char answer[256] = {0};
            if (read(conn, answer, sizeof answer - 1) > 0) {
                answer[strcspn(answer, "\r\n")] = '\0';
                printf("net-attack: control API answered: %s\n", answer);
            }
        }
    } else if (strcmp(mode, "bind") == 0) {
        disconnect(conn);
        snprintf(step, sizeof step, "bind %s:%d", ip, port);
        int rc = bind(conn, (struct sockaddr *)&to, sizeof to);
        report(step, rc);
        if (rc == 0) {
            report("listen", listen(conn, 8));
            sleep(5);
        }
    } else if (strcmp(mode, "fastopen") == 0) {
        disconnect(conn);
        snprintf(step, sizeof step, "sendto MSG_FASTOPEN %s:%d", ip, port);
        report(step, (int)sendto(conn, "x", 1, MSG_FASTOPEN, (struct sockaddr *)&to, sizeof to));
        struct iovec iov = {.iov_base = "y", .iov_len = 1};
        struct msghdr msg = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov,
                             .msg_iovlen = 1};
        snprintf(step, sizeof step, "sendmsg MSG_FASTOPEN %s:%d", ip, port);
        report(step, (int)sendmsg(conn, &msg, MSG_FASTOPEN));
    } else if (strcmp(mode, "udp") == 0) {
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        snprintf(step, sizeof step, "udp sendto %s:%d", ip, port);
        report(step, u < 0 ? u : (int)sendto(u, "x", 1, 0, (struct sockaddr *)&to, sizeof to));
    } else if (strcmp(mode, "ifconf") == 0) {
        struct ifreq ifr[16];
        struct ifconf ifc = {.ifc_len = sizeof ifr, .ifc_req = ifr};
        int rc = ioctl(conn, SIOCGIFCONF, &ifc);
        report("SIOCGIFCONF on the client socket", rc);
        for (int i = 0; rc == 0 && i < ifc.ifc_len / (int)sizeof ifr[0]; i++)
            printf("net-attack: host interface %s\n", ifr[i].ifr_name);
    } else {
        errno = EINVAL;
        die(mode);
    }
    fflush(stdout);
    return 0;
}
