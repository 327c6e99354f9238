/*
 * AMI load generator for bench/run.py (Linux, epoll). Prints one JSON object.
 *
 *   loadgen ping   HOST PORT CONNS INFLIGHT SECONDS USER SECRET [ACTION]
 *   loadgen login  HOST PORT PARALLEL SECONDS USER SECRET
 *   loadgen fanout HOST PORT SUBSCRIBERS INFLIGHT EVENTS USER SECRET TIMEOUT [PUBLISHER_PORT [FILTER]]
 *
 * ping:   every connection keeps INFLIGHT requests (Ping, or ACTION) outstanding,
 *         sending the next one as each response arrives; each response must be
 *         Success with the ActionID of the next one sent on that connection.
 * login:  PARALLEL loops of connect, banner, Login, Logoff, close.
 * fanout: SUBSCRIBERS sessions with events on; one publisher sends EVENTS
 *         UserEvents with INFLIGHT outstanding; every subscriber must get all.
 * The generator reports its own CPU time so that the runner can tell when it,
 * not the server, was the limit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static struct sockaddr_in server_addr;

static int connect_blocking(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0) die("connect");
    return fd;
}

static void set_nonblocking(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        data += n;
        len -= (size_t)n;
    }
}

/* Blocking read until `marker` appears; returns bytes read into buf (NUL-terminated). */
static size_t read_until(int fd, char *buf, size_t cap, const char *marker) {
    size_t len = 0;
    buf[0] = 0;
    while (!strstr(buf, marker)) {
        if (len + 1 >= cap) { fprintf(stderr, "loadgen: reply too long\n"); exit(2); }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0) { fprintf(stderr, "loadgen: server closed during setup\n"); exit(2); }
        len += (size_t)n;
        buf[len] = 0;
    }
    return len;
}

/* Connect, read the banner, log in with the given event mask; blocking. */
static int login_session(const char *user, const char *secret, const char *events) {
    char buf[8192], req[512];
    int fd = connect_blocking();
    read_until(fd, buf, sizeof buf, "\r\n");
    int n = snprintf(req, sizeof req, "Action: Login\r\nUsername: %s\r\nSecret: %s\r\nEvents: %s\r\n\r\n",
                     user, secret, events);
    write_all(fd, req, (size_t)n);
    read_until(fd, buf, sizeof buf, "\r\n\r\n");
    if (!strstr(buf, "Authentication accepted")) { fprintf(stderr, "loadgen: login failed: %s\n", buf); exit(2); }
    return fd;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ ping */

typedef struct {
    int fd;
    char *in;
    size_t inlen, incap;
    char *out;
    size_t outlen, outcap;
    uint64_t sent, received;
    double *sent_at;
} conn_t;

static void out_append(conn_t *c, const char *data, size_t len) {
    if (c->outlen + len > c->outcap) {
        c->outcap = (c->outlen + len) * 2;
        c->out = realloc(c->out, c->outcap);
    }
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
}

static int flush_out(conn_t *c) {
    size_t off = 0;
    while (off < c->outlen) {
        ssize_t n = write(c->fd, c->out + off, c->outlen - off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            return -1;
        }
        off += (size_t)n;
    }
    memmove(c->out, c->out + off, c->outlen - off);
    c->outlen -= off;
    return 0;
}

/* ping: the action every request names. */
static const char *ping_action = "Ping";

static void queue_ping(conn_t *c, int index, int inflight) {
    char req[160];
    int n = snprintf(req, sizeof req, "Action: %s\r\nActionID: c%d-%llu\r\n\r\n", ping_action, index,
                     (unsigned long long)c->sent);
    c->sent_at[c->sent % (uint64_t)inflight] = now();
    c->sent++;
    out_append(c, req, (size_t)n);
}

/* fanout: the port the publisher logs in to, when not the subscribers' server (0: the same). */
static int publisher_port = 0;

static int run_ping(int conns, int inflight, double seconds, const char *user, const char *secret) {
    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    int ep = epoll_create1(0);
    for (int i = 0; i < conns; i++) {
        cs[i].fd = login_session(user, secret, "off");
        set_nonblocking(cs[i].fd);
        cs[i].incap = 65536;
        cs[i].in = malloc(cs[i].incap);
        cs[i].sent_at = calloc((size_t)inflight, sizeof(double));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    size_t latcap = 1 << 20, latlen = 0;
    double *lat = malloc(latcap * sizeof(double));
    uint64_t errors = 0, counted = 0;
    double start = now(), warm = start + 0.5, end = warm + seconds;
    int measuring = 0;
    double cpu0 = 0, t0 = 0;
    for (int i = 0; i < conns; i++) {
        for (int k = 0; k < inflight; k++) queue_ping(&cs[i], i, inflight);
        flush_out(&cs[i]);
    }
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (!measuring && t >= warm) { measuring = 1; cpu0 = cpu_seconds(); t0 = t; counted = 0; latlen = 0; }
        if (t >= end) break;
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u32;
            conn_t *c = &cs[i];
            if (events[e].events & EPOLLOUT) flush_out(c);
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (c->inlen == c->incap) { c->incap *= 2; c->in = realloc(c->in, c->incap); }
            ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                fprintf(stderr, "loadgen: connection %d closed by the server\n", i);
                return 2;
            }
            c->inlen += (size_t)r;
            char *p = c->in, *limit = c->in + c->inlen;
            double tr = now();
            for (;;) {
                char *blockend = memmem(p, (size_t)(limit - p), "\r\n\r\n", 4);
                if (!blockend) break;
                char *aid = memmem(p, (size_t)(blockend - p), "ActionID: c", 11);
                char expect[48];
                int el = snprintf(expect, sizeof expect, "ActionID: c%d-%llu\r\n", i, (unsigned long long)c->received);
                if (!aid || (size_t)(blockend + 2 - aid) < (size_t)el || memcmp(aid, expect, (size_t)el) != 0
                    || memcmp(p, "Response: Success", 17) != 0) {
                    errors++;
                }
                if (measuring) {
                    if (latlen == latcap) { latcap *= 2; lat = realloc(lat, latcap * sizeof(double)); }
                    lat[latlen++] = tr - c->sent_at[c->received % (uint64_t)inflight];
                    counted++;
                }
                c->received++;
                queue_ping(c, i, inflight);
                p = blockend + 4;
            }
            memmove(c->in, p, (size_t)(limit - p));
            c->inlen = (size_t)(limit - p);
            size_t before = c->outlen;
            if (flush_out(c) < 0) { fprintf(stderr, "loadgen: write failed\n"); return 2; }
            if (c->outlen && !before) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            } else if (!c->outlen && before) {
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
        }
    }
    double wall = now() - t0, cpu = cpu_seconds() - cpu0;
    qsort(lat, latlen, sizeof(double), cmp_double);
    double p50 = latlen ? lat[latlen / 2] : 0, p99 = latlen ? lat[(size_t)(latlen * 0.99)] : 0;
    printf("{\"mode\": \"ping\", \"responses\": %llu, \"seconds\": %.4f, \"rate\": %.1f, \"p50_ms\": %.4f, "
           "\"p99_ms\": %.4f, \"errors\": %llu, \"gen_cpu\": %.4f}\n",
           (unsigned long long)counted, wall, counted / wall, p50 * 1e3, p99 * 1e3, (unsigned long long)errors,
           cpu / wall);
    return errors ? 1 : 0;
}

/* ----------------------------------------------------------------- login */

enum { L_CONNECTING, L_BANNER, L_LOGIN, L_LOGOFF };

typedef struct {
    int fd, state;
    char buf[4096];
    size_t len;
} slot_t;

static void slot_start(int ep, slot_t *s, int index) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) die("socket");
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->len = 0;
    s->state = L_CONNECTING;
    if (connect(s->fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)index};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

static void slot_close(int ep, slot_t *s) {
    struct linger lg = {1, 0}; /* RST: no TIME_WAIT pile-up on the generator side */
    setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
}

static int run_login(int parallel, double seconds, const char *user, const char *secret) {
    slot_t *slots = calloc((size_t)parallel, sizeof *slots);
    int ep = epoll_create1(0);
    char login[512];
    int loginlen = snprintf(login, sizeof login,
                            "Action: Login\r\nUsername: %s\r\nSecret: %s\r\nEvents: off\r\n\r\n", user, secret);
    const char *logoff = "Action: Logoff\r\n\r\n";
    for (int i = 0; i < parallel; i++) slot_start(ep, &slots[i], i);
    uint64_t done = 0, errors = 0;
    double start = now(), warm = start + 0.5, end = warm + seconds, t0 = 0, cpu0 = 0;
    int measuring = 0;
    struct epoll_event events[256];
    for (;;) {
        double t = now();
        if (!measuring && t >= warm) { measuring = 1; t0 = t; cpu0 = cpu_seconds(); done = 0; }
        if (t >= end) break;
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u32;
            slot_t *s = &slots[i];
            if (s->state == L_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { errors++; slot_close(ep, s); slot_start(ep, s, i); continue; }
                s->state = L_BANNER;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            ssize_t r = read(s->fd, s->buf + s->len, sizeof s->buf - 1 - s->len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { errors++; slot_close(ep, s); slot_start(ep, s, i); continue; }
            s->len += (size_t)r;
            s->buf[s->len] = 0;
            if (s->state == L_BANNER && strstr(s->buf, "\r\n")) {
                s->len = 0;
                s->state = L_LOGIN;
                write_all(s->fd, login, (size_t)loginlen);
            } else if (s->state == L_LOGIN && strstr(s->buf, "\r\n\r\n")) {
                if (!strstr(s->buf, "Authentication accepted")) errors++;
                s->len = 0;
                s->state = L_LOGOFF;
                write_all(s->fd, logoff, strlen(logoff));
            } else if (s->state == L_LOGOFF && strstr(s->buf, "\r\n\r\n")) {
                if (!strstr(s->buf, "Response: Goodbye")) errors++;
                done++;
                slot_close(ep, s);
                slot_start(ep, s, i);
            }
        }
    }
    double wall = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"mode\": \"login\", \"logins\": %llu, \"seconds\": %.4f, \"rate\": %.1f, \"errors\": %llu, "
           "\"gen_cpu\": %.4f}\n", (unsigned long long)done, wall, done / wall, (unsigned long long)errors, cpu / wall);
    return errors ? 1 : 0;
}

/* ---------------------------------------------------------------- fanout */

static int run_fanout(int subscribers, int inflight, long total, const char *user, const char *secret, double timeout,
                      const char *filter) {
    int ep = epoll_create1(0);
    int *fds = calloc((size_t)subscribers + 1, sizeof(int));
    long *got = calloc((size_t)subscribers, sizeof(long));
    int *matched = calloc((size_t)subscribers, sizeof(int));
    for (int i = 0; i < subscribers; i++) {
        fds[i] = login_session(user, secret, "user");
        if (filter) {
            /* One include filter per subscriber (B-5.13): every event is searched with it. */
            char buf[8192], req[1024];
            int n = snprintf(req, sizeof req, "Action: Filter\r\nOperation: Add\r\nFilter: %s\r\n\r\n", filter);
            write_all(fds[i], req, (size_t)n);
            read_until(fds[i], buf, sizeof buf, "\r\n\r\n");
            if (!strstr(buf, "Response: Success")) { fprintf(stderr, "loadgen: filter refused: %s\n", buf); exit(2); }
        }
        set_nonblocking(fds[i]);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    conn_t pub = {0};
    struct sockaddr_in subscribers_addr = server_addr;
    if (publisher_port) server_addr.sin_port = htons((uint16_t)publisher_port);  /* publish on another server */
    pub.fd = login_session(user, secret, "off");
    server_addr = subscribers_addr;
    set_nonblocking(pub.fd);
    pub.incap = 65536;
    pub.in = malloc(pub.incap);
    struct epoll_event pev = {.events = EPOLLIN, .data.u32 = (uint32_t)subscribers};
    epoll_ctl(ep, EPOLL_CTL_ADD, pub.fd, &pev);
    long sent = 0, acked = 0, complete = 0;
    uint64_t errors = 0;
    char req[128];
    static char buf[1 << 17];
    double cpu0 = cpu_seconds(), t0 = now(), deadline = t0 + timeout, last = t0;
    while (sent < total && sent - acked < inflight) {
        int n = snprintf(req, sizeof req, "Action: UserEvent\r\nActionID: p%ld\r\nUserEvent: bench\r\n\r\n", sent++);
        out_append(&pub, req, (size_t)n);
    }
    flush_out(&pub);
    struct epoll_event events[512];
    while (complete < subscribers && now() < deadline) {
        int n = epoll_wait(ep, events, 512, 100);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u32;
            if (i == subscribers) {
                if (events[e].events & EPOLLOUT) flush_out(&pub);
                if (!(events[e].events & EPOLLIN)) continue;
                if (pub.inlen == pub.incap) { pub.incap *= 2; pub.in = realloc(pub.in, pub.incap); }
                ssize_t r = read(pub.fd, pub.in + pub.inlen, pub.incap - pub.inlen);
                if (r <= 0) { if (r < 0 && errno == EAGAIN) continue; fprintf(stderr, "loadgen: publisher closed\n"); return 2; }
                pub.inlen += (size_t)r;
                char *p = pub.in, *limit = pub.in + pub.inlen;
                for (;;) {
                    char *blockend = memmem(p, (size_t)(limit - p), "\r\n\r\n", 4);
                    if (!blockend) break;
                    if (memcmp(p, "Response: Success", 17) != 0) errors++;
                    acked++;
                    if (sent < total) {
                        int m = snprintf(req, sizeof req, "Action: UserEvent\r\nActionID: p%ld\r\nUserEvent: bench\r\n\r\n", sent++);
                        out_append(&pub, req, (size_t)m);
                    }
                    p = blockend + 4;
                }
                memmove(pub.in, p, (size_t)(limit - p));
                pub.inlen = (size_t)(limit - p);
                size_t before = pub.outlen;
                flush_out(&pub);
                if (pub.outlen != before || pub.outlen) {
                    struct epoll_event ev = {.events = EPOLLIN | (pub.outlen ? EPOLLOUT : 0), .data.u32 = (uint32_t)subscribers};
                    epoll_ctl(ep, EPOLL_CTL_MOD, pub.fd, &ev);
                }
                continue;
            }
            ssize_t r = read(fds[i], buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                fprintf(stderr, "loadgen: subscriber %d closed by the server after %ld events\n", i, got[i]);
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                errors++;
                complete++;
                continue;
            }
            /* Count block ends ("\r\n\r\n"), also when one is split across reads. */
            static const char pat[4] = {'\r', '\n', '\r', '\n'};
            int m = matched[i];
            for (ssize_t k = 0; k < r; k++) {
                char ch = buf[k];
                if (ch == pat[m]) {
                    if (++m == 4) { got[i]++; m = 0; }
                } else {
                    m = ch == '\r' ? 1 : 0;
                }
            }
            matched[i] = m;
            if (got[i] == total) { complete++; last = now(); }
        }
    }
    double wall = last - t0, cpu = cpu_seconds() - cpu0;
    long delivered = 0;
    for (int i = 0; i < subscribers; i++) delivered += got[i];
    long lost = (long)subscribers * total - delivered;
    printf("{\"mode\": \"fanout\", \"subscribers\": %d, \"events\": %ld, \"delivered\": %ld, \"lost\": %ld, "
           "\"seconds\": %.4f, \"rate\": %.1f, \"errors\": %llu, \"gen_cpu\": %.4f}\n",
           subscribers, total, delivered, lost, wall, wall > 0 ? delivered / wall : 0.0, (unsigned long long)errors,
           wall > 0 ? cpu / wall : 0.0);
    return (lost || errors) ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: loadgen ping|login|fanout HOST PORT ...\n");
        return 2;
    }
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &server_addr.sin_addr) != 1) { fprintf(stderr, "loadgen: bad host\n"); return 2; }
    if (!strcmp(argv[1], "ping") && (argc == 9 || argc == 10)) {
        if (argc == 10) {
            if (strlen(argv[9]) == 0 || strlen(argv[9]) > 64) { fprintf(stderr, "loadgen: bad action\n"); return 2; }
            ping_action = argv[9];
        }
        return run_ping(atoi(argv[4]), atoi(argv[5]), atof(argv[6]), argv[7], argv[8]);
    }
    if (!strcmp(argv[1], "login") && argc == 8)
        return run_login(atoi(argv[4]), atof(argv[5]), argv[6], argv[7]);
    if (!strcmp(argv[1], "fanout") && argc >= 10 && argc <= 12) {
        /* Optional: the publisher's port (the upstream behind a gateway; 0: the same server), then a
           filter every subscriber adds. */
        if (argc >= 11 && atoi(argv[10]) > 0) publisher_port = atoi(argv[10]);
        return run_fanout(atoi(argv[4]), atoi(argv[5]), atol(argv[6]), argv[7], argv[8], atof(argv[9]),
                          argc == 12 ? argv[11] : NULL);
    }
    fprintf(stderr, "loadgen: bad arguments\n");
    return 2;
}
