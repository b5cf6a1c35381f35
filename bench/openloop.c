/* openloop: a small open-loop HTTP/1.1 load generator for bench/run.sh.
 *
 * Requests are scheduled at a fixed rate, evenly spaced (request i is due at
 * start + i/rate), whatever the server does; each goes out on an idle
 * keep-alive connection, or waits in a FIFO until one frees up. Latency is
 * measured from the time the request was DUE (corrected for coordinated
 * omission, as wrk2 does) and, for reference, from the time it was sent.
 *
 * Why not h2load --rps: it fires every client's timer at the same instant
 * (bursts of -c requests), its --rate-period has 1 ms resolution, and it
 * prints no percentiles.
 *
 * usage: openloop HOST PORT PATH BODYFILE RATE DURATION_S WARMUP_S CONNS
 * prints one line: key=value pairs (latencies in microseconds).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    int busy;
    int64_t due_ns, sent_ns;
    char *buf;
    size_t len, cap;
} conn_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *g_host;
static int g_port;
static char *g_req;
static size_t g_req_len;

static int open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)g_port);
    inet_pton(AF_INET, g_host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(int64_t *v, size_t n, double p) {
    if (n == 0) return -1;
    size_t i = (size_t)(p / 100.0 * (double)n);
    if (i >= n) i = n - 1;
    return (double)v[i] / 1000.0;
}

/* 1 = complete response in c->buf, 0 = need more, -1 = malformed */
static int response_complete(conn_t *c, int *status) {
    c->buf[c->len] = 0;
    char *he = strstr(c->buf, "\r\n\r\n");
    if (!he) return 0;
    size_t head = (size_t)(he - c->buf) + 4;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    /* header lookup, case-insensitive, within the head only */
    long clen = -1;
    int chunked = 0;
    for (char *p = c->buf; p && p < he;) {
        char *eol = strstr(p, "\r\n");
        if (!eol) break;
        if (strncasecmp(p, "content-length:", 15) == 0) clen = atol(p + 15);
        if (strncasecmp(p, "transfer-encoding:", 18) == 0 && strcasestr(p, "chunked") && strcasestr(p, "chunked") < eol) chunked = 1;
        p = eol + 2;
    }
    if (chunked) {
        /* walk the chunks */
        size_t pos = head;
        for (;;) {
            char *eol = memmem(c->buf + pos, c->len - pos, "\r\n", 2);
            if (!eol) return 0;
            long sz = strtol(c->buf + pos, NULL, 16);
            size_t data = (size_t)(eol - c->buf) + 2;
            if (sz == 0) return c->len >= data + 2 ? 1 : 0; /* no trailers expected */
            if (c->len < data + (size_t)sz + 2) return 0;
            pos = data + (size_t)sz + 2;
        }
    }
    if (clen < 0) return -1;
    return c->len >= head + (size_t)clen ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: openloop HOST PORT PATH BODYFILE RATE DURATION_S WARMUP_S CONNS\n");
        return 2;
    }
    g_host = argv[1];
    g_port = atoi(argv[2]);
    const char *path = argv[3];
    double rate = atof(argv[5]), dur = atof(argv[6]), warm = atof(argv[7]);
    int nconn = atoi(argv[8]);
    FILE *bf = fopen(argv[4], "rb");
    if (!bf) { perror("body"); return 2; }
    fseek(bf, 0, SEEK_END);
    long blen = ftell(bf);
    fseek(bf, 0, SEEK_SET);
    char *body = malloc((size_t)blen + 1);
    if (fread(body, 1, (size_t)blen, bf) != (size_t)blen) { perror("body"); return 2; }
    fclose(bf);
    g_req = malloc((size_t)blen + 512);
    g_req_len = (size_t)sprintf(g_req,
                                "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                                "Content-Length: %ld\r\n\r\n",
                                path, g_host, g_port, blen);
    memcpy(g_req + g_req_len, body, (size_t)blen);
    g_req_len += (size_t)blen;

    int ep = epoll_create1(0);
    conn_t *cs = calloc((size_t)nconn, sizeof *cs);
    for (int i = 0; i < nconn; i++) {
        cs[i].fd = open_conn();
        if (cs[i].fd < 0) { perror("connect"); return 1; }
        cs[i].cap = 65536;
        cs[i].buf = malloc(cs[i].cap + 1);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    size_t total = (size_t)(rate * (dur + warm)) + 1;
    int64_t *due = malloc(total * sizeof *due); /* FIFO of due times of queued requests */
    size_t qh = 0, qt = 0;
    int64_t *lat_c = malloc(total * sizeof(int64_t)), *lat_u = malloc(total * sizeof(int64_t));
    size_t nlat = 0;
    int *idle = malloc((size_t)nconn * sizeof(int));
    int nidle = 0;
    for (int i = nconn - 1; i >= 0; i--) idle[nidle++] = i;

    long errors = 0, non2xx = 0, done = 0, sent = 0, reconnects = 0;
    int64_t interval = (int64_t)(1e9 / rate);
    int64_t t0 = now_ns() + 1000000;
    int64_t t_meas = t0 + (int64_t)(warm * 1e9), t_end = t_meas + (int64_t)(dur * 1e9);
    size_t issued = 0;
    int64_t drain_deadline = t_end + 3000000000LL;

#define SEND(ci, d)                                                                 \
    do {                                                                            \
        conn_t *c_ = &cs[ci];                                                       \
        c_->busy = 1; c_->due_ns = (d); c_->sent_ns = now_ns(); c_->len = 0;        \
        size_t off_ = 0;                                                            \
        while (off_ < g_req_len) {                                                  \
            ssize_t w_ = write(c_->fd, g_req + off_, g_req_len - off_);             \
            if (w_ <= 0) { if (errno == EINTR) continue; break; }                   \
            off_ += (size_t)w_;                                                     \
        }                                                                           \
        sent++;                                                                     \
    } while (0)

    for (;;) {
        int64_t now = now_ns();
        /* issue everything that is due */
        while (issued < total && t0 + (int64_t)issued * interval <= now && t0 + (int64_t)issued * interval < t_end) {
            int64_t d = t0 + (int64_t)issued * interval;
            issued++;
            if (nidle > 0) {
                int ci = idle[--nidle];
                SEND(ci, d);
            } else {
                due[qt++] = d;
            }
        }
        int inflight = nconn - nidle;
        if (now >= t_end && inflight == 0 && qh == qt) break;
        if (now >= drain_deadline) break;
        int64_t next = t0 + (int64_t)issued * interval;
        if (next >= t_end) next = drain_deadline;
        struct itimerspec its = {0};
        its.it_value.tv_sec = next / 1000000000LL;
        its.it_value.tv_nsec = next % 1000000000LL;
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 1000);
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id == 0xffffffffu) {
                uint64_t x;
                while (read(tfd, &x, sizeof x) > 0) {}
                continue;
            }
            conn_t *c = &cs[id];
            if (c->len + 16384 > c->cap) { c->cap *= 2; c->buf = realloc(c->buf, c->cap + 1); }
            ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
            int st = 0, comp = 0;
            if (r > 0) {
                c->len += (size_t)r;
                comp = response_complete(c, &st);
            }
            if (r <= 0 || comp < 0 || !c->busy) {
                /* connection closed or broken: count an error, reconnect */
                int was_busy = c->busy;
                if (was_busy) errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = open_conn();
                reconnects++;
                if (c->fd < 0) { fprintf(stderr, "reconnect failed\n"); return 1; }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = id};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                c->busy = 0;
                c->len = 0;
                if (!was_busy) continue; /* still on the idle list */
                if (qh < qt) { SEND(id, due[qh]); qh++; } else idle[nidle++] = (int)id;
                continue;
            }
            if (comp == 0) continue;
            int64_t t = now_ns();
            done++;
            if (st < 200 || st > 299) non2xx++;
            if (c->due_ns >= t_meas && c->due_ns < t_end) {
                lat_c[nlat] = t - c->due_ns;
                lat_u[nlat] = t - c->sent_ns;
                nlat++;
            }
            c->busy = 0;
            c->len = 0;
            if (qh < qt) { SEND(id, due[qh]); qh++; } else idle[nidle++] = (int)id;
        }
    }
    qsort(lat_c, nlat, sizeof(int64_t), cmp_i64);
    qsort(lat_u, nlat, sizeof(int64_t), cmp_i64);
    printf("sent=%ld done=%ld measured=%zu errors=%ld non2xx=%ld unsent=%zu reconnects=%ld rate=%.1f achieved=%.1f "
           "p50=%.1f p90=%.1f p99=%.1f p999=%.1f max=%.1f "
           "u_p50=%.1f u_p90=%.1f u_p99=%.1f u_p999=%.1f u_max=%.1f\n",
           sent, done, nlat, errors, non2xx, qt - qh, reconnects, rate, (double)nlat / dur,
           pct(lat_c, nlat, 50), pct(lat_c, nlat, 90), pct(lat_c, nlat, 99), pct(lat_c, nlat, 99.9),
           nlat ? (double)lat_c[nlat - 1] / 1000.0 : -1,
           pct(lat_u, nlat, 50), pct(lat_u, nlat, 90), pct(lat_u, nlat, 99), pct(lat_u, nlat, 99.9),
           nlat ? (double)lat_u[nlat - 1] / 1000.0 : -1);
    return 0;
}
