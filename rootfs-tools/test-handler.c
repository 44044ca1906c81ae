/*
 * test-handler: a static handler speaking the faasd handler protocol.
 *
 *   1. connect to the Unix stream socket /control.sock;
 *   2. recvmsg one message carrying one fd (SCM_RIGHTS);
 *   3. read the HTTP request from that fd up to the end of the headers (or EOF), answer
 *      "Hello from FaaS handler!" followed by the request line, close, exit 0.
 *
 * argv[1] selects a mode for tests:
 *   (none) | serve  the above
 *   crash           connect, then abort()
 *   noconnect       sleep forever without connecting
 *   hang            connect, receive the fd, then sleep forever
 *   true            exit 0 at once
 *   flood           take the fd, write 1 GiB to stdout without a newline (at most 20 s),
 *                   then answer
 *   floodlines      the same in 100-byte lines
 *   slow            take the fd, sleep 2 s, then answer
 *   forkbomb        take the fd, fork until the pids limit refuses, then sleep forever
 *   memhog          take the fd, allocate and touch 400 MiB, then sleep forever
 *   probe           serve, and append what the handler could do to the host: its session,
 *                   /dev/tty, TIOCSTI on /dev/tty and on its stdio, io_uring_setup
 *                   (lines "name=ok" or "name=errno N")
 *   env             serve, and append its environment ("env K=V" lines) and what it finds
 *                   in /run/secrets ("secret NAME mode=0400 uid=U gid=G size=N: CONTENT",
 *                   or "secrets=errno N"; "secret-write NAME errno N" for an open of each
 *                   for writing, "secrets-create errno N" for a new file there, 0: it
 *                   worked) and "hostname ID" (the request's id); writes
 *                   one line each to stdout and stderr
 *
 * Build: gcc -static -O2 -o test-handler test-handler.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#define CONTROL_SOCK "/control.sock"

static void die(const char *what) {
    fprintf(stderr, "test-handler: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void sleep_forever(void) {
    for (;;)
        pause();
}

static int connect_control(void) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("socket");
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, CONTROL_SOCK, sizeof addr.sun_path - 1);
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("connect " CONTROL_SOCK);
    return s;
}

static int receive_fd(int s) {
    char data[64];
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } ctl;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof ctl.buf;
    ssize_t n;
    do {
        n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        die("recvmsg");
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
            return fd;
        }
    }
    errno = EPROTO;
    die("recvmsg: no file descriptor in the message");
    return -1;
}

static void write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Appends "name=ok\n" or "name=errno N\n" for a result rc (< 0: failed with errno). */
static void result(char *out, size_t size, const char *name, long rc) {
    size_t len = strlen(out);
    if (rc < 0)
        snprintf(out + len, size - len, "%s=errno %d\n", name, errno);
    else
        snprintf(out + len, size - len, "%s=ok\n", name);
}

/* TIOCSTI of a whole line into fd's terminal: the attack on the operator's shell. */
static long inject(int fd) {
    for (const char *c = "echo faasd-tiocsti-injected\n"; *c; c++)
        if (ioctl(fd, TIOCSTI, c) < 0)
            return -1;
    return 0;
}

static void probe(char *out, size_t size) {
    snprintf(out, size, "sid=%d\npid=%d\n", (int)getsid(0), (int)getpid());
    int tty = open("/dev/tty", O_RDWR | O_CLOEXEC);
    result(out, size, "dev_tty", tty);
    if (tty >= 0)
        result(out, size, "tiocsti_dev_tty", inject(tty));
    const char *names[] = {"tiocsti_stdin", "tiocsti_stdout", "tiocsti_stderr"};
    for (int fd = 0; fd < 3; fd++)
        result(out, size, names[fd], inject(fd));
    char params[120]; /* struct io_uring_params */
    memset(params, 0, sizeof params);
    long ring = syscall(425 /* io_uring_setup */, 1, params);
    result(out, size, "io_uring_setup", ring);
    /* The capability sets, as "CapBnd=000000...": what the handler could still gain. */
    FILE *status = fopen("/proc/self/status", "re");
    char line[128];
    while (status && fgets(line, sizeof line, status)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "Cap", 3) == 0 && colon) {
            *colon = '\0';
            size_t len = strlen(out);
            snprintf(out + len, size - len, "%s=%s", line, colon + 1 + strspn(colon + 1, " \t"));
        }
    }
    if (status)
        fclose(status);
}

extern char **environ;

/* Appends printf-style text to out, truncating at size. */
__attribute__((format(printf, 3, 4))) static void append(char *out, size_t size, const char *fmt, ...) {
    size_t len = strlen(out);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out + len, size - len, fmt, ap);
    va_end(ap);
}

static void report_env(char *out, size_t size) {
    for (char **e = environ; *e; e++)
        append(out, size, "env %s\n", *e);
    DIR *d = opendir("/run/secrets");
    if (!d) {
        append(out, size, "secrets=errno %d\n", errno);
        return;
    }
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.')
            continue;
        char path[512], content[256] = "";
        snprintf(path, sizeof path, "/run/secrets/%s", de->d_name);
        struct stat st;
        if (lstat(path, &st) < 0) {
            append(out, size, "secret %s errno %d\n", de->d_name, errno);
            continue;
        }
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, content, sizeof content - 1);
            content[n > 0 ? n : 0] = '\0';
            close(fd);
        }
        append(out, size, "secret %s mode=%04o uid=%d gid=%d size=%ld: %s\n", de->d_name,
               (unsigned)(st.st_mode & 07777), (int)st.st_uid, (int)st.st_gid,
               (long)st.st_size, fd >= 0 ? content : "(unreadable)");
        int w = open(path, O_WRONLY | O_CLOEXEC);
        append(out, size, "secret-write %s errno %d\n", de->d_name, w < 0 ? errno : 0);
        if (w >= 0)
            close(w);
    }
    closedir(d);
    int c = open("/run/secrets/planted", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    append(out, size, "secrets-create errno %d\n", c < 0 ? errno : 0);
    if (c >= 0)
        close(c);
}

static void serve(int conn, const char *extra) {
    char req[8192];
    size_t len = 0;
    while (len < sizeof req - 1) {
        ssize_t n = read(conn, req + len, sizeof req - 1 - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read request");
        }
        if (n == 0)
            break;
        len += (size_t)n;
        req[len] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[len] = '\0';
    size_t line = strcspn(req, "\r\n");
    static const char head[] = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                               "Connection: close\r\n\r\nHello from FaaS handler!\n";
    write_all(conn, head, sizeof head - 1);
    write_all(conn, req, line);
    write_all(conn, "\n", 1);
    write_all(conn, extra, strlen(extra));
    if (close(conn) < 0)
        die("close");
}

/* Writes 1 GiB to stdout in 64 KiB writes, stopping early after 20 s (a slow machine). */
/* Writes up to 1 GiB (for at most 20 s) to stdout; returns how much it wrote. */
static long flood(int lines) {
    static char buf[65536];
    memset(buf, 'x', sizeof buf);
    if (lines)
        for (size_t i = 99; i < sizeof buf; i += 100)
            buf[i] = '\n';
    time_t start = time(NULL);
    long total = 0;
    for (; total < (1L << 30) && time(NULL) - start < 20; total += (long)sizeof buf)
        write_all(1, buf, sizeof buf);
    return total;
}

static void forkbomb(void) {
    for (;;) {
        pid_t p = fork();
        if (p == 0)
            sleep_forever();
        if (p < 0)
            sleep_forever();
    }
}

static void memhog(void) {
    size_t len = 400UL << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    for (size_t i = 0; i < len; i += 4096)
        p[i] = 1;
    sleep_forever();
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "serve";
    if (strcmp(mode, "true") == 0)
        return 0;
    if (strcmp(mode, "noconnect") == 0)
        sleep_forever();
    static const char *const modes[] = {"serve", "crash", "hang", "flood", "floodlines",
                                        "slow", "forkbomb", "memhog", "probe", "env"};
    int known = 0;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
        known |= strcmp(mode, modes[i]) == 0;
    if (!known) {
        fprintf(stderr, "test-handler: unknown mode %s (serve, crash, noconnect, hang, true, "
                        "flood, floodlines, slow, forkbomb, memhog, probe, env)\n", mode);
        return 2;
    }
    int s = connect_control();
    if (strcmp(mode, "crash") == 0)
        abort();
    int conn = receive_fd(s);
    if (strcmp(mode, "hang") == 0)
        sleep_forever();
    if (strcmp(mode, "forkbomb") == 0)
        forkbomb();
    if (strcmp(mode, "memhog") == 0)
        memhog();
    static char extra[16384];
    if (strcmp(mode, "flood") == 0 || strcmp(mode, "floodlines") == 0)
        snprintf(extra, sizeof extra, "flooded=%ld\n", flood(strcmp(mode, "floodlines") == 0));
    if (strcmp(mode, "slow") == 0)
        sleep(2);
    close(s);
    if (strcmp(mode, "probe") == 0)
        probe(extra, sizeof extra);
    if (strcmp(mode, "env") == 0) {
        report_env(extra, sizeof extra);
        /* The hostname is the request's id: what tags its lines in the function's log. */
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        append(extra, sizeof extra, "hostname %s\n", host);
        printf("env handler: stdout line\n");
        fflush(stdout);
        fprintf(stderr, "env handler: stderr line\n");
    }
    serve(conn, extra);
    return 0;
}
