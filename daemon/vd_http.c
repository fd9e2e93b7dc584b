/* vd_http: a small HTTP/1.1 server on the libuv loop for /metrics, /healthz, /readyz and the
 * application's own routes (the coordinators' desk).
 *
 * Each connection (struct conn) owns two handles, the socket and a timer, and is freed in the
 * close callback of whichever closes last. It moves through the states of enum conn_state:
 * bytes are fed to http-parser while READING; when a request is complete the parser is
 * paused, the answer is built (at once for the built-in paths; an application route may
 * answer later, WAITING, through vd_http_respond()) and written with one uv_write, and reading
 * stops until that write ends (WRITING). Bytes that arrived after the
 * request (pipelining) stay in the input buffer and are parsed when the write is done, so a
 * connection never has more than one response queued however fast a client sends. A response
 * that ends the connection is followed by a shutdown of our side and a short LINGERING phase
 * that reads and drops whatever the client still sends until its EOF: closing with unread
 * input would make the kernel send a reset, which can destroy the response (a 431, say) before
 * the client has read it.
 *
 * The one timer is the deadline of the current state: IDLE_MS to receive a complete request
 * (from connect, or from the previous response) and to write a response, LINGER_MS to drain.
 * It is not pushed back by partial input, so a client that trickles bytes is still cut off.
 * The listening socket is created, bound and put in listen state with plain socket calls
 * before any libuv handle exists: a bind error then leaves nothing to close, and
 * vd_http_new() can simply return NULL. The server struct itself counts its open handles
 * (listener, connections, refused sockets being closed) and is freed with the last one. */
#include "vd_http.h"

#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vd_log.h"
#include "vd_metrics.h"

#define MAX_CONNS 64
#define MAX_HEAD 8192 /* request line and headers */
#define MAX_BODY 8192
#define IDLE_MS 10000
#define LINGER_MS 2000
#define BACKLOG 128
#define IN_SIZE 4096
#define URL_MAX 256 /* longer URLs cannot name one of our paths: 404 */
#define OUT_MAX 1024 /* status line, headers and any small body */
#define WHY_MAX 256
#define AUTH_MAX 256 /* the Authorization header; longer ones are dropped (and so refused) */

#define TEXT_TYPE "text/plain; charset=utf-8"
#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

enum conn_state {
    C_READING,   /* waiting for (the rest of) a request; what arrives goes to the parser */
    C_WAITING,   /* an application route answers later; reading stopped, input kept in `in` */
    C_WRITING,   /* a response is being written; reading stopped, unparsed input kept in `in` */
    C_LINGERING, /* last response sent and our side shut down; input dropped until EOF */
    C_CLOSING,   /* uv_close called on both handles; freed in the last close callback */
};

struct conn {
    struct vd_http *srv;
    struct conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int open_handles;
    enum conn_state state;
    http_parser parser;
    char url[URL_MAX];
    size_t url_len;
    int url_overflow;
    size_t body_bytes;
    int body_too_large;
    char body_in[MAX_BODY]; /* the request body (a POST to an application route) */
    enum { H_NONE, H_FIELD, H_VALUE } hstate; /* where the header parser is */
    int in_auth;            /* the header value being parsed is Authorization's */
    char auth[AUTH_MAX + 1];
    size_t auth_len;
    int auth_overflow;
    char field[16];         /* the start of the header name being parsed, lower-cased */
    size_t field_len;
    struct vd_http_request *pending; /* WAITING: the request the application holds */
    int close_after;      /* the response being written is the connection's last */
    char in[IN_SIZE];
    size_t in_off, in_len; /* input not yet parsed, kept while WRITING */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    char out[OUT_MAX];
    char *body; /* a large body (metrics) being written; freed when the write ends */
};

struct vd_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct vd_http_handlers h;
    void *arg;
    char where[128]; /* the configured address, for messages */
    struct conn *conns;
    int nconns;
    int open; /* handles still to be closed: listener + connections + refused sockets */
    int full_logged;
    uint64_t accept_warned_ms; /* last "accept failed" warning (at most one per IDLE_MS) */
    struct vd_http_stats stats;
};

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_timeout(uv_timer_t *t);

static int on_message_begin(http_parser *p);
static int on_url(http_parser *p, const char *at, size_t len);
static int on_body(http_parser *p, const char *at, size_t len);
static int on_header_field(http_parser *p, const char *at, size_t len);
static int on_header_value(http_parser *p, const char *at, size_t len);
static int on_message_complete(http_parser *p);

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* A request an application route holds until it answers (vd_http_respond). conn is NULL
 * once the connection has gone: the answer is then dropped. */
struct vd_http_request_priv {
    struct vd_http_request pub;
    struct conn *conn;
    int head_only;
    char url[URL_MAX + 1];
    char body[MAX_BODY + 1];
    char auth[AUTH_MAX + 1];
};

static void server_unref(struct vd_http *s) {
    if (--s->open == 0) free(s);
}

static void on_conn_closed(uv_handle_t *h) {
    struct conn *c = h->data;
    if (--c->open_handles > 0) return;
    struct vd_http *s = c->srv;
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    if (s->nconns < MAX_CONNS) s->full_logged = 0;
    free(c->body);
    free(c);
    server_unref(s);
}

static void close_conn(struct conn *c) {
    if (c->state == C_CLOSING) return;
    if (c->pending) {
        ((struct vd_http_request_priv *)c->pending)->conn = NULL;
        c->pending = NULL;
    }
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    struct conn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->in, sizeof c->in);
}

static void start_reading(struct conn *c) {
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc < 0) {
        vd_debug("http %s: read start failed: %s", c->srv->where, uv_strerror(rc));
        close_conn(c);
    }
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    struct conn *c = req->data;
    if (c->state == C_CLOSING) return;
    if (status < 0) {
        close_conn(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, LINGER_MS, 0);
    start_reading(c);
}

static void feed(struct conn *c, const char *data, size_t len);

static void on_written(uv_write_t *req, int status) {
    struct conn *c = req->data;
    free(c->body);
    c->body = NULL;
    if (c->state == C_CLOSING) return;
    if (status < 0) {
        vd_debug("http %s: write failed: %s", c->srv->where, uv_strerror(status));
        close_conn(c);
        return;
    }
    if (c->close_after) {
        c->state = C_LINGERING;
        if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0) close_conn(c);
        return;
    }
    c->state = C_READING;
    uv_timer_start(&c->timer, on_timeout, IDLE_MS, 0);
    http_parser_pause(&c->parser, 0);
    size_t off = c->in_off, len = c->in_len - c->in_off;
    c->in_off = c->in_len = 0;
    if (len) feed(c, c->in + off, len);
    if (c->state == C_READING) start_reading(c);
}

/* Writes one response: headers into c->out, then either a small body copied after them or a
 * large one (owned, taken over and freed when the write ends). With head_only the body is
 * counted in Content-Length but not sent. extra holds further header lines, each ending in
 * CRLF. Reading stops until the write is done. */
static void send_response(struct conn *c, int status, const char *ctype, const char *extra,
                          const char *body, size_t len, char *owned, int head_only) {
    char date[64];
    struct tm tm;
    time_t now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int n = snprintf(c->out, sizeof c->out,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n%sConnection: %s\r\n\r\n",
                     status, http_status_str((enum http_status)status), date, ctype, len,
                     extra ? extra : "", c->close_after ? "close" : "keep-alive");
    size_t hlen = n > 0 ? (size_t)n : 0;
    if (n < 0 || hlen >= sizeof c->out || (!owned && hlen + len > sizeof c->out)) {
        vd_error("http %s: response for status %d does not fit", c->srv->where, status);
        free(owned);
        close_conn(c);
        return;
    }
    uv_buf_t bufs[2];
    unsigned nbufs = 1;
    if (!head_only && len > 0) {
        if (owned) {
            bufs[1] = uv_buf_init(owned, (unsigned)len);
            nbufs = 2;
        } else {
            memcpy(c->out + hlen, body, len);
            hlen += len;
        }
    }
    bufs[0] = uv_buf_init(c->out, (unsigned)hlen);
    c->body = owned;
    c->state = C_WRITING;
    c->srv->stats.requests++;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, on_timeout, IDLE_MS, 0);
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, nbufs, on_written);
    if (rc < 0) {
        vd_debug("http %s: write failed: %s", c->srv->where, uv_strerror(rc));
        free(c->body);
        c->body = NULL;
        close_conn(c);
    }
}

static void send_text(struct conn *c, int status, const char *extra, const char *text,
                      int head_only) {
    send_response(c, status, TEXT_TYPE, extra, text, strlen(text), NULL, head_only);
}

static int path_is(const char *path, size_t len, const char *want) {
    return len == strlen(want) && memcmp(path, want, len) == 0;
}

/* /readyz (check: h.ready) or /healthz (h.healthy): 200 with ok_text, or 503 with the reason. */
static void serve_check(struct conn *c, int (*check)(void *, char *, size_t), const char *ok_text,
                        const char *bad_text, int head_only) {
    struct vd_http *s = c->srv;
    char why[WHY_MAX + 1] = "";
    if (!check || check(s->arg, why, WHY_MAX)) {
        send_text(c, 200, NULL, ok_text, head_only);
        return;
    }
    why[WHY_MAX - 1] = '\0';
    size_t n = strlen(why);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)why[i] < 0x20 || why[i] == 0x7f) why[i] = ' ';
    if (n == 0) n = (size_t)snprintf(why, sizeof why, "%s", bad_text);
    why[n] = '\n';
    why[n + 1] = '\0';
    send_text(c, 503, NULL, why, head_only);
}

static void serve_metrics(struct conn *c, int head_only) {
    struct vd_http *s = c->srv;
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    if (s->h.metrics) s->h.metrics(s->arg, &b);
    if (b.failed) {
        vd_metrics_buf_free(&b);
        vd_error("http %s: /metrics: rendering failed (out of memory or a bad metric name)",
                 s->where);
        send_text(c, 500, NULL, "metrics unavailable\n", head_only);
        return;
    }
    send_response(c, 200, METRICS_TYPE, NULL, b.s, b.len, b.s, head_only);
}

/* Answers the request the parser has just completed. */
/* Hands the request to the application's routes; returns 0 when one took it. */
static int app_route(struct conn *c, const char *path, size_t plen, const struct http_parser_url *u) {
    struct vd_http *s = c->srv;
    if (!s->h.route) return -1;
    struct vd_http_request_priv *q = calloc(1, sizeof *q);
    if (!q) return -1;
    http_parser *p = &c->parser;
    q->conn = c;
    q->head_only = p->method == HTTP_HEAD;
    memcpy(q->url, c->url, c->url_len);
    size_t blen = c->body_bytes < MAX_BODY ? c->body_bytes : MAX_BODY;
    memcpy(q->body, c->body_in, blen);
    memcpy(q->auth, c->auth, c->auth_len);
    q->pub.method = http_method_str((enum http_method)p->method);
    q->pub.path = q->url + (path - c->url);
    q->pub.path_len = plen;
    if (u->field_set & (1 << UF_QUERY)) {
        q->pub.query = q->url + u->field_data[UF_QUERY].off;
        q->pub.query_len = u->field_data[UF_QUERY].len;
    } else {
        q->pub.query = "";
    }
    q->pub.body = q->body;
    q->pub.body_len = blen;
    q->pub.authorization = c->auth_overflow ? "" : q->auth;
    c->pending = &q->pub;
    c->state = C_WAITING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_start(&c->timer, on_timeout, IDLE_MS, 0);
    if (s->h.route(s->arg, &q->pub) == 0) return 0;
    c->pending = NULL;
    c->state = C_READING;
    free(q);
    return -1;
}

void vd_http_respond(struct vd_http_request *req, int status, const char *ctype,
                     const char *extra, const char *body, size_t len) {
    struct vd_http_request_priv *q = (struct vd_http_request_priv *)req;
    struct conn *c = q->conn;
    int head_only = q->head_only;
    free(q);
    if (!c) return; /* the client left meanwhile */
    c->pending = NULL;
    char *owned = NULL;
    if (len > 0 && !head_only) {
        owned = malloc(len);
        if (!owned) {
            close_conn(c);
            return;
        }
        memcpy(owned, body, len);
    }
    send_response(c, status, ctype ? ctype : TEXT_TYPE, extra, owned, len, owned, head_only);
}

static void route(struct conn *c) {
    http_parser *p = &c->parser;
    int head_only = p->method == HTTP_HEAD;
    c->close_after = !http_should_keep_alive(p) || p->upgrade;
    if (p->method != HTTP_GET && !head_only && p->method != HTTP_POST) {
        send_text(c, 405, "Allow: GET, HEAD, POST\r\n", "method not allowed\n", 0);
        return;
    }
    if (c->url_overflow) {
        send_text(c, 404, NULL, "not found\n", head_only);
        return;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->url, c->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH))) {
        c->srv->stats.bad_requests++;
        send_text(c, 400, NULL, "bad request\n", head_only);
        return;
    }
    const char *path = c->url + u.field_data[UF_PATH].off;
    size_t plen = u.field_data[UF_PATH].len;
    int builtin = path_is(path, plen, "/metrics") || path_is(path, plen, "/healthz") ||
                  path_is(path, plen, "/readyz");
    if (builtin && p->method == HTTP_POST) {
        send_text(c, 405, "Allow: GET, HEAD\r\n", "method not allowed\n", 0);
        return;
    }
    if (!builtin && app_route(c, path, plen, &u) == 0) return;
    if (p->method == HTTP_POST) {
        send_text(c, 405, "Allow: GET, HEAD\r\n", "method not allowed\n", 0);
        return;
    }
    if (path_is(path, plen, "/metrics")) serve_metrics(c, head_only);
    else if (path_is(path, plen, "/healthz"))
        serve_check(c, c->srv->h.healthy, "ok\n", "unhealthy", head_only);
    else if (path_is(path, plen, "/readyz"))
        serve_check(c, c->srv->h.ready, "ready\n", "not ready", head_only);
    else send_text(c, 404, NULL, "not found\n", head_only);
}

static int on_message_begin(http_parser *p) {
    struct conn *c = p->data;
    c->url_len = 0;
    c->url_overflow = 0;
    c->body_bytes = 0;
    c->body_too_large = 0;
    c->auth_len = 0;
    c->auth_overflow = 0;
    c->in_auth = 0;
    c->field_len = 0;
    c->hstate = H_NONE;
    return 0;
}

/* Only Authorization is kept (the desk's token). Names and values may come in pieces: a
 * name is complete when its value begins, a value when the next name (or the body) begins. */
static int on_header_field(http_parser *p, const char *at, size_t len) {
    struct conn *c = p->data;
    if (c->hstate != H_FIELD) c->field_len = 0;
    c->hstate = H_FIELD;
    for (size_t i = 0; i < len && c->field_len < sizeof c->field - 1; i++) {
        char ch = at[i];
        c->field[c->field_len++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    c->field[c->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
    struct conn *c = p->data;
    if (c->hstate != H_VALUE) {
        c->in_auth = strcmp(c->field, "authorization") == 0;
        if (c->in_auth) c->auth_len = 0; /* the last one counts */
    }
    c->hstate = H_VALUE;
    if (!c->in_auth) return 0;
    if (c->auth_len + len > AUTH_MAX) {
        c->auth_overflow = 1;
        return 0;
    }
    memcpy(c->auth + c->auth_len, at, len);
    c->auth_len += len;
    c->auth[c->auth_len] = '\0';
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
    struct conn *c = p->data;
    if (c->url_overflow || len > sizeof c->url - c->url_len) {
        c->url_overflow = 1;
        return 0;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
    struct conn *c = p->data;
    if (c->body_bytes + len <= MAX_BODY) memcpy(c->body_in + c->body_bytes, at, len);
    c->body_bytes += len;
    if (c->body_bytes <= MAX_BODY) return 0;
    c->body_too_large = 1;
    return -1;
}

static int on_message_complete(http_parser *p) {
    struct conn *c = p->data;
    route(c);
    http_parser_pause(p, 1);
    return 0;
}

/* A request the parser refused: answer and close (we cannot find the next request's start). */
static void bad_request(struct conn *c, enum http_errno e) {
    int status = 400;
    const char *text = "bad request\n";
    if (e == HPE_HEADER_OVERFLOW) {
        status = 431;
        text = "request header fields too large\n";
    } else if (e == HPE_CB_body && c->body_too_large) {
        status = 413;
        text = "payload too large\n";
    }
    vd_debug("http %s: bad request (%s): %d", c->srv->where, http_errno_name(e), status);
    c->srv->stats.bad_requests++;
    c->close_after = 1;
    send_text(c, status, NULL, text, 0);
}

/* Parses data (which lies in c->in). Stops at the end of each request, see on_written(). */
static void feed(struct conn *c, const char *data, size_t len) {
    size_t n = http_parser_execute(&c->parser, &settings, data, len);
    if (c->state == C_CLOSING) return;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        c->in_off = (size_t)(data - c->in) + n;
        c->in_len = (size_t)(data - c->in) + len;
        return;
    }
    if (e != HPE_OK) bad_request(c, e);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct conn *c = stream->data;
    if (nread == 0 || c->state == C_CLOSING) return;
    if (nread < 0) {
        if (nread != UV_EOF) vd_debug("http %s: read: %s", c->srv->where, uv_strerror((int)nread));
        close_conn(c);
        return;
    }
    if (c->state == C_LINGERING) return; /* the client's leftovers, dropped */
    feed(c, buf->base, (size_t)nread);
}

static void on_timeout(uv_timer_t *t) {
    struct conn *c = t->data;
    if (c->state != C_LINGERING) c->srv->stats.timeouts++;
    close_conn(c);
}

static void on_refused_closed(uv_handle_t *h) {
    struct vd_http *s = h->data;
    free(h);
    server_unref(s);
}

/* Accepts the pending connection and closes it at once: over the limit. Accepting is
 * needed because libuv stops watching the listener while a connection waits to be taken. */
static void refuse(struct vd_http *s) {
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t) {
        vd_error("http %s: out of memory", s->where);
        return;
    }
    uv_tcp_init(s->loop, t);
    t->data = s;
    s->open++;
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t) == 0) s->stats.refused++;
    uv_close((uv_handle_t *)t, on_refused_closed);
    if (!s->full_logged) {
        s->full_logged = 1;
        vd_warn("http %s: %d connections open; refusing more", s->where, MAX_CONNS);
    }
}

static void on_connection(uv_stream_t *server, int status) {
    struct vd_http *s = server->data;
    if (status < 0) {
        /* e.g. out of file descriptors; libuv then drops the connection itself */
        uint64_t now = uv_now(s->loop);
        if (!s->accept_warned_ms || now - s->accept_warned_ms >= IDLE_MS) {
            s->accept_warned_ms = now;
            vd_warn("http %s: accept: %s", s->where, uv_strerror(status));
        }
        return;
    }
    struct conn *c = s->nconns < MAX_CONNS ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        refuse(s);
        return;
    }
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c->wreq.data = c->sreq.data = c;
    c->open_handles = 2;
    c->srv = s;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    s->open++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        vd_warn("http %s: accept: %s", s->where, uv_strerror(rc));
        close_conn(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    s->stats.connections++;
    uv_timer_start(&c->timer, on_timeout, IDLE_MS, 0);
    start_reading(c);
}

/* Turns "host:port" or "[v6]:port" into an address. A numeric host is used as it is; a
 * name is resolved (blocking, at startup only). Returns 0 or -1 with err. */
static int resolve(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen) {
    const char *colon = strrchr(addr, ':');
    char host[256];
    int bracket = addr[0] == '[';
    const char *hs = addr + bracket;
    size_t hlen = colon ? (size_t)(colon - hs) - (size_t)bracket : 0;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || hlen == 0 || hlen >= sizeof host || (bracket && colon[-1] != ']') ||
        end == colon + 1 || *end != '\0' || port < 0 || port > 65535) {
        snprintf(err, errlen, "http.listen %s: expected host:port or [v6addr]:port", addr);
        return -1;
    }
    memcpy(host, hs, hlen);
    host[hlen] = '\0';
    memset(ss, 0, sizeof *ss);
    if (!bracket && uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0) return 0;
    if (bracket) {
        snprintf(err, errlen, "http.listen %s: '%s' is not an IPv6 address", addr, host);
        return -1;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "http.listen %s: cannot resolve '%s': %s", addr, host,
                 rc ? gai_strerror(rc) : "no address");
        if (res) freeaddrinfo(res);
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

static void on_listener_closed(uv_handle_t *h) { server_unref(h->data); }

struct vd_http *vd_http_new(uv_loop_t *loop, const char *listen_addr,
                            const struct vd_http_handlers *handlers, void *arg, char *err,
                            size_t errlen) {
    struct sockaddr_storage ss;
    struct vd_http *s = NULL;
    int fd = -1, one = 1, rc;
    if (!listen_addr || !*listen_addr) {
        snprintf(err, errlen, "http.listen is empty (the HTTP endpoint is disabled)");
        return NULL;
    }
    if (resolve(listen_addr, &ss, err, errlen) < 0) return NULL;
    socklen_t sslen = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                              : sizeof(struct sockaddr_in6);
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, BACKLOG) < 0) {
        snprintf(err, errlen, "http.listen %s: %s", listen_addr,
                 uv_strerror(uv_translate_sys_error(errno)));
        goto err;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "http.listen %s: out of memory", listen_addr);
        goto err;
    }
    s->loop = loop;
    if (handlers) s->h = *handlers;
    s->arg = arg;
    snprintf(s->where, sizeof s->where, "%s", listen_addr);
    /* The library's own limit counts the request line and headers together, exactly. It is
     * process-wide; this is the process' only user of http-parser. */
    http_parser_set_max_header_size(MAX_HEAD);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->open = 1;
    rc = uv_tcp_open(&s->listener, fd);
    if (rc == 0) {
        fd = -1; /* the handle owns it now */
        rc = uv_listen((uv_stream_t *)&s->listener, BACKLOG, on_connection);
    }
    if (rc < 0) {
        /* Not expected on a socket that is already listening; the handle is released when
         * the loop next runs. */
        snprintf(err, errlen, "http.listen %s: %s", listen_addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        s = NULL;
        goto err;
    }
    vd_info("http %s: listening (/metrics, /healthz, /readyz)", s->where);
    return s;

err:
    if (fd >= 0) close(fd);
    free(s);
    return NULL;
}

const struct vd_http_stats *vd_http_stats(const struct vd_http *s) { return &s->stats; }

void vd_http_free(struct vd_http *s) {
    if (!s) return;
    for (struct conn *c = s->conns; c; c = c->next) close_conn(c);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}
