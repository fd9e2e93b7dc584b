/* vd_http: the daemon's HTTP endpoint: /metrics, /healthz and /readyz for operators, and the
 * application's own routes (the coordinators' desk).
 *
 * A small HTTP/1.1 server on the daemon's libuv loop (requests parsed with http-parser).
 * The built-in paths take GET or HEAD: /healthz answers 200 "ok" while the process can go on (503 with the reason
 * once it knows it cannot: a fatal error, it is stopping to exit 1), /readyz 200 "ready" or
 * 503 with the reason the daemon gives, /metrics 200 with Prometheus text (format 0.0.4).
 * Any other path goes to the route handler, which may answer now or later (GET, HEAD or
 * POST); a path it does not take is 404; any other method 405. Connections are kept alive unless the client
 * asks otherwise. Limits: 8 KiB of request line and headers (431), 8 KiB of request body
 * (413), 64 connections at once (further ones are accepted and closed at once), 10 s to send a
 * complete request after connecting or after the previous response. The handlers run on the
 * loop, synchronously, once per request: they must be quick and must not block. */
#ifndef VD_HTTP_H
#define VD_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct vd_metrics_buf;
struct vd_http;

/* A request for an application route. Valid until answered with vd_http_respond(), which
 * must happen exactly once for every request the route handler took. */
struct vd_http_request {
    const char *method;        /* "GET", "HEAD", "POST" */
    const char *path;          /* not NUL-terminated: path_len bytes */
    size_t path_len;
    const char *query;         /* without '?', query_len bytes ("" when none) */
    size_t query_len;
    const char *body;          /* NUL-terminated, body_len bytes (at most 8 KiB) */
    size_t body_len;
    const char *authorization; /* the Authorization header, "" when absent or too long */
};

struct vd_http_handlers {
    /* Returns 1 when ready, or 0 with a short reason (one line, no secrets) written into why
     * (why[0] is '\0' on entry). NULL: always ready. */
    int (*ready)(void *arg, char *why, size_t whylen);
    /* The same for /healthz: 0 once the process cannot go on. NULL: always healthy. */
    int (*healthy)(void *arg, char *why, size_t whylen);
    /* Appends the Prometheus text to out (see vd_metrics.h). If out->failed is set afterwards
     * the scrape is answered with 500. NULL: an empty page. */
    void (*metrics)(void *arg, struct vd_metrics_buf *out);
    /* Any other path: returns 0 when it takes the request (and answers it, now or later,
     * with vd_http_respond), -1 for 404. NULL: every other path is 404. */
    int (*route)(void *arg, struct vd_http_request *req);
};

/* Answers a request a route took: status, Content-Type (NULL: text/plain), further header
 * lines each ending in CRLF (or NULL), and the body, copied. When the client has gone
 * meanwhile the answer is dropped. Either way req is freed. */
void vd_http_respond(struct vd_http_request *req, int status, const char *ctype,
                     const char *extra, const char *body, size_t len);

struct vd_http_stats {
    uint64_t connections; /* accepted and served */
    uint64_t refused;     /* accepted and closed at once: too many connections */
    uint64_t requests;    /* responses sent, any status */
    uint64_t bad_requests; /* 400, 413, 431 */
    uint64_t timeouts;    /* connections closed for idling */
};

/* Listens on listen_addr ("host:port" or "[v6addr]:port"; a host name is resolved once, here,
 * synchronously, so call this before the loop runs). handlers is copied; arg is passed to
 * each handler. Returns the server, owned by the caller until vd_http_free(), or NULL with a
 * sentence in err naming the address, e.g. "http.listen 127.0.0.1:9464: address already in
 * use". On NULL nothing is left open on the loop (bind and listen errors happen before any
 * handle exists; only if libuv then refused the listening socket, which is not expected, is
 * a closing handle released when the loop next runs). */
struct vd_http *vd_http_new(uv_loop_t *loop, const char *listen_addr,
                            const struct vd_http_handlers *handlers, void *arg, char *err,
                            size_t errlen);

const struct vd_http_stats *vd_http_stats(const struct vd_http *s);

/* Stops listening and closes every connection (responses being written are dropped). No
 * handler runs after this returns. The memory is released once libuv has closed the
 * handles, so the loop must run afterwards (uv_run until it runs out). Not to be called from
 * inside a handler. s may be NULL. */
void vd_http_free(struct vd_http *s);

#endif
