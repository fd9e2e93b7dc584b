/* vd_desk: the coordinators' desk (see vd_desk.h). */
#include "vd_desk.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "vd_config.h"
#include "vd_desk_page.h"
#include "vd_event.h"
#include "vd_http.h"
#include "vd_job.h"
#include "vd_kafka.h"
#include "vd_log.h"
#include "vd_lua.h"
#include "vd_metrics.h"
#include "vd_redis.h"

#define STATE_MAX_AGE_MS 1000 /* a snapshot is shared by every desk that polls within this */
#define DESK_REQUESTS 300     /* requests to staff listed, and as many being matched */
#define DESK_VOLUNTEERS 5000  /* available volunteers drawn per pool */
#define NEAR_COUNT 10
#define JSON_TYPE "application/json"
#define GAUGES_EVERY_MS 5000
#define MAX_POOLS 201 /* the city and up to 200 events */

/* Requests for /desk/state waiting for the snapshot being read. */
struct waiter {
    struct vd_http_request *req;
    struct waiter *next;
};

/* An assignment on its way to Kafka; the POST is answered once Kafka has it. */
struct send {
    struct vd_desk *d;
    struct vd_http_request *req;
    struct send *prev, *next;
    char id[160];
};

struct near_call {
    struct vd_desk *d;
    struct vd_http_request *req;
};

struct vd_desk {
    uv_loop_t *loop;
    const struct vd_config *cfg;
    struct vd_redis *redis;
    struct vd_kafka *kafka;
    char *state; /* the last snapshot, and when it was read */
    size_t state_len;
    uint64_t state_ms;
    int state_in_flight;
    struct waiter *waiters;
    struct send *sends;
    unsigned seq;
    char host[64];
    struct vd_desk_stats stats;
    /* The city's gauges, from the last vd7_gauges. */
    int gauges_in_flight, have_gauges;
    uint64_t gauges_ms;
    long long unstaffed, due, volunteers;
    int npools;
    char pool_name[MAX_POOLS][VD_ID_MAX + 4];
    long long pool_size[MAX_POOLS];
};

static int path_is(const struct vd_http_request *req, const char *want) {
    return req->path_len == strlen(want) && memcmp(req->path, want, req->path_len) == 0;
}

static void respond_json(struct vd_http_request *req, int status, json_t *doc) {
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!s) {
        vd_http_respond(req, 500, NULL, NULL, "out of memory\n", 14);
        return;
    }
    vd_http_respond(req, status, JSON_TYPE, NULL, s, strlen(s));
    free(s);
}

static void respond_error(struct vd_http_request *req, int status, const char *why) {
    respond_json(req, status, json_pack("{s:s}", "error", why));
}

/* ---- the page ---- */

static void serve_file(struct vd_desk *d, struct vd_http_request *req, const char *ctype,
                       const char *body, size_t len) {
    char csp[600];
    /* Everything is the daemon's own; tiles may come from the configured server. */
    char origin[300] = "";
    const char *t = d->cfg->desk_tiles;
    if (t[0]) {
        const char *host = strstr(t, "://") + 3;
        size_t n = strcspn(host, "/");
        snprintf(origin, sizeof origin, " %.*s", (int)(host - t + (ptrdiff_t)n), t);
    }
    snprintf(csp, sizeof csp,
             "Content-Security-Policy: default-src 'self'; img-src 'self' data:%s; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n"
             "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n",
             origin);
    d->stats.pages++;
    vd_http_respond(req, 200, ctype, csp, body, len);
}

/* ---- /desk/state ---- */

/* The snapshot with what the page needs besides Redis' data. */
static void answer_state(struct vd_desk *d, struct vd_http_request *req) {
    char head[600];
    int n = snprintf(head, sizeof head, "{\"actions\":%s,\"tiles\":",
                     d->cfg->desk_token[0] ? "true" : "false");
    json_t *tiles = json_string(d->cfg->desk_tiles);
    char *tj = json_dumps(tiles, JSON_ENCODE_ANY);
    json_decref(tiles);
    n += snprintf(head + n, sizeof head - (size_t)n, "%s,\"data\":", tj ? tj : "\"\"");
    free(tj);
    size_t len = (size_t)n + d->state_len + 1;
    char *body = malloc(len);
    if (!body) {
        vd_http_respond(req, 500, NULL, NULL, "out of memory\n", 14);
        return;
    }
    memcpy(body, head, (size_t)n);
    memcpy(body + n, d->state, d->state_len);
    body[len - 1] = '}';
    d->stats.states++;
    vd_http_respond(req, 200, JSON_TYPE, NULL, body, len);
    free(body);
}

static void on_state(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_desk *d = arg;
    d->state_in_flight = 0;
    struct waiter *w = d->waiters;
    d->waiters = NULL;
    int ok = reply && reply->type == REDIS_REPLY_STRING;
    if (ok) {
        char *copy = malloc(reply->len);
        if (copy) {
            memcpy(copy, reply->str, reply->len);
            free(d->state);
            d->state = copy;
            d->state_len = reply->len;
            d->state_ms = uv_now(d->loop);
        } else {
            ok = 0;
        }
    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        vd_warn("desk: %s: %s", VD_FN("desk"), reply->str);
    }
    while (w) {
        struct waiter *next = w->next;
        if (ok) answer_state(d, w->req);
        else respond_error(w->req, 503, "Redis did not answer; the desk tries again");
        free(w);
        w = next;
    }
}

static void serve_state(struct vd_desk *d, struct vd_http_request *req) {
    if (d->state && uv_now(d->loop) - d->state_ms < STATE_MAX_AGE_MS) {
        answer_state(d, req);
        return;
    }
    struct waiter *w = malloc(sizeof *w);
    if (!w) {
        vd_http_respond(req, 500, NULL, NULL, "out of memory\n", 14);
        return;
    }
    w->req = req;
    w->next = d->waiters;
    d->waiters = w;
    if (d->state_in_flight) return;
    const char *pfx = d->cfg->redis_key_prefix;
    struct vd_args a;
    vd_args_fcall(&a, VD_FN("desk"), 2, 1);
    vd_argf(&a, "%sunstaffed", pfx);
    vd_argf(&a, "%sdue", pfx);
    vd_arg(&a, pfx);
    vd_argf(&a, "%d", DESK_REQUESTS);
    vd_argf(&a, "%d", DESK_VOLUNTEERS);
    if (vd_redis_command(d->redis, on_state, d, a.n, a.v, a.l) < 0) {
        d->waiters = NULL;
        while (w) {
            struct waiter *next = w->next;
            char why[300];
            snprintf(why, sizeof why, "Redis is not available: %s", vd_redis_status(d->redis));
            respond_error(w->req, 503, why);
            free(w);
            w = next;
        }
        return;
    }
    d->state_in_flight = 1;
}

/* ---- /desk/near ---- */

static void on_near(struct vd_redis *r, redisReply *reply, void *arg) {
    struct near_call *nc = arg;
    if (reply && reply->type == REDIS_REPLY_STRING) {
        nc->d->stats.nears++;
        vd_http_respond(nc->req, 200, JSON_TYPE, NULL, reply->str, reply->len);
    } else {
        respond_error(nc->req, 503, reply && reply->type == REDIS_REPLY_ERROR
                                        ? "Redis refused the search" : "Redis did not answer");
    }
    free(nc);
}

/* The value of name in a query string ("a=1&request=rq-1"), if it is an ID. */
static int query_id(const struct vd_http_request *req, const char *name, char *out) {
    size_t nlen = strlen(name);
    const char *q = req->query, *end = req->query + req->query_len;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            size_t vlen = (size_t)(stop - q) - nlen - 1;
            if (vlen > VD_ID_MAX) return -1;
            memcpy(out, q + nlen + 1, vlen);
            out[vlen] = '\0';
            return vd_id_valid(out) ? 0 : -1;
        }
        q = stop + 1;
    }
    return -1;
}

static void serve_near(struct vd_desk *d, struct vd_http_request *req) {
    char rid[VD_ID_MAX + 1];
    if (query_id(req, "request", rid) < 0) {
        respond_error(req, 400, "request: give ?request=<request_id> (an ID)");
        return;
    }
    struct near_call *nc = malloc(sizeof *nc);
    if (!nc) {
        vd_http_respond(req, 500, NULL, NULL, "out of memory\n", 14);
        return;
    }
    nc->d = d;
    nc->req = req;
    const char *pfx = d->cfg->redis_key_prefix;
    struct vd_args a;
    vd_args_fcall(&a, VD_FN("near"), 1, 1);
    vd_argf(&a, "%sreq/%s", pfx, rid);
    vd_arg(&a, pfx);
    vd_arg(&a, rid);
    vd_argf(&a, "%d", NEAR_COUNT);
    vd_argf(&a, "%d", d->cfg->max_tasks_per_day);
    if (vd_redis_command(d->redis, on_near, nc, a.n, a.v, a.l) < 0) {
        free(nc);
        respond_error(req, 503, "Redis is not available");
    }
}

/* ---- POST /desk/assign ---- */

/* Compares without stopping at the first difference: how long it takes says nothing of the
 * token. */
static int token_ok(const char *given, const char *token) {
    size_t n = strlen(token), m = strlen(given);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(token[i] ^ (i < m ? given[i] : 0));
    return diff == 0;
}

static const char *field_id(json_t *body, const char *name, char *err, size_t errlen) {
    const char *s = json_string_value(json_object_get(body, name));
    if (s && vd_id_valid(s)) return s;
    snprintf(err, errlen, "%s: %s", name,
             s ? "not an ID (1-64 of A-Z a-z 0-9 . _ : -)" : "missing, or not a string");
    return NULL;
}

static void serve_assign(struct vd_desk *d, struct vd_http_request *req) {
    if (!d->cfg->desk_token[0]) {
        d->stats.refused++;
        respond_error(req, 403, "the desk is read-only: http.desk_token is not set");
        return;
    }
    const char *auth = req->authorization;
    if (strncmp(auth, "Bearer ", 7) != 0 || !token_ok(auth + 7, d->cfg->desk_token)) {
        d->stats.refused++;
        respond_error(req, 401, "a valid desk token is needed (Authorization: Bearer <token>)");
        return;
    }
    json_error_t je;
    json_t *body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &je);
    char err[300];
    const char *rid = NULL, *vid = NULL, *by = NULL;
    if (!json_is_object(body)) {
        snprintf(err, sizeof err, "body: a JSON object is needed%s%s", body ? "" : ": ",
                 body ? "" : je.text);
    } else if ((rid = field_id(body, "request_id", err, sizeof err)) &&
               (vid = field_id(body, "volunteer_id", err, sizeof err)) &&
               (by = field_id(body, "coordinator_id", err, sizeof err))) {
        err[0] = '\0';
    }
    if (!rid || !vid || !by) {
        json_decref(body);
        d->stats.refused++;
        respond_error(req, 400, err);
        return;
    }
    struct send *s = calloc(1, sizeof *s);
    if (!s) {
        json_decref(body);
        vd_http_respond(req, 500, NULL, NULL, "out of memory\n", 14);
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    int64_t now = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    snprintf(s->id, sizeof s->id, "desk/%s/%d/%lld/%u", d->host, (int)getpid(), (long long)now,
             ++d->seq);
    char source[300];
    snprintf(source, sizeof source, "%s/desk", d->cfg->event_source);
    json_t *data = json_pack("{s:s, s:s, s:s}", "request_id", rid, "volunteer_id", vid,
                             "coordinator_id", by);
    char *ev = vd_event_encode_from(source, "vd.request.assign", s->id, now, 0, data);
    char key[VD_ID_MAX + 1];
    snprintf(key, sizeof key, "%s", rid);
    if (!ev) {
        json_decref(body);
        free(s);
        vd_http_respond(req, 500, NULL, NULL, "out of memory\n", 14);
        return;
    }
    s->d = d;
    s->req = req;
    s->next = d->sends;
    if (d->sends) d->sends->prev = s;
    d->sends = s;
    d->stats.assigns++;
    vd_info("desk: assignment of volunteer %s to request %s by coordinator %s sent as %s", vid,
            key, by, s->id);
    json_decref(body); /* rid, vid and by were its strings */
    /* Kafka takes the payload; it is retried until acknowledged, like every output. */
    vd_kafka_produce(d->kafka, VD_OUT_REQUESTS, key, strlen(key), ev, strlen(ev), s);
}

int vd_desk_delivered(struct vd_desk *d, void *opaque) {
    struct send *s = d->sends;
    while (s && s != opaque) s = s->next;
    if (!s) return 0;
    if (s->prev) s->prev->next = s->next;
    else d->sends = s->next;
    if (s->next) s->next->prev = s->prev;
    respond_json(s->req, 202, json_pack("{s:s, s:s}", "event_id", s->id, "result",
                                        "sent: the daemon applies it and tells the coordinator"));
    free(s);
    return 1;
}

/* ---- routes ---- */

int vd_desk_route(struct vd_desk *d, struct vd_http_request *req) {
    int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    int post = strcmp(req->method, "POST") == 0;
    int is_post_path = path_is(req, "/desk/assign");
    if (!(path_is(req, "/desk") || path_is(req, "/desk/") || path_is(req, "/desk/desk.js") ||
          path_is(req, "/desk/desk.css") || path_is(req, "/desk/state") ||
          path_is(req, "/desk/near") || is_post_path))
        return -1;
    if (is_post_path ? !post : !get) {
        vd_http_respond(req, 405, NULL, is_post_path ? "Allow: POST\r\n" : "Allow: GET, HEAD\r\n",
                        "method not allowed\n", 19);
        return 0;
    }
    if (path_is(req, "/desk") || path_is(req, "/desk/"))
        serve_file(d, req, "text/html; charset=utf-8", vd_desk_html, sizeof vd_desk_html - 1);
    else if (path_is(req, "/desk/desk.js"))
        serve_file(d, req, "text/javascript; charset=utf-8", vd_desk_js, sizeof vd_desk_js - 1);
    else if (path_is(req, "/desk/desk.css"))
        serve_file(d, req, "text/css; charset=utf-8", vd_desk_css, sizeof vd_desk_css - 1);
    else if (path_is(req, "/desk/state"))
        serve_state(d, req);
    else if (path_is(req, "/desk/near"))
        serve_near(d, req);
    else
        serve_assign(d, req);
    return 0;
}

struct vd_desk *vd_desk_new(uv_loop_t *loop, const struct vd_config *cfg, struct vd_redis *redis,
                            struct vd_kafka *kafka) {
    struct vd_desk *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->loop = loop;
    d->cfg = cfg;
    d->redis = redis;
    d->kafka = kafka;
    if (gethostname(d->host, sizeof d->host - 1) != 0 || !d->host[0]) snprintf(d->host, sizeof d->host, "host");
    for (char *p = d->host; *p; p++)
        if (*p == '/' || *p <= ' ' || *p > '~') *p = '_';
    return d;
}

const struct vd_desk_stats *vd_desk_stats(const struct vd_desk *d) { return &d->stats; }

/* ---- the city's gauges ---- */

static void on_gauges(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_desk *d = arg;
    d->gauges_in_flight = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
    for (size_t i = 0; i < 3; i++)
        if (reply->element[i]->type != REDIS_REPLY_INTEGER) return;
    d->unstaffed = reply->element[0]->integer;
    d->due = reply->element[1]->integer;
    d->volunteers = reply->element[2]->integer;
    d->npools = 0;
    for (size_t i = 3; i + 1 < reply->elements && d->npools < MAX_POOLS; i += 2) {
        const redisReply *n = reply->element[i], *v = reply->element[i + 1];
        if (n->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_INTEGER) continue;
        snprintf(d->pool_name[d->npools], sizeof d->pool_name[0], "%s", n->str);
        d->pool_size[d->npools++] = v->integer;
    }
    d->have_gauges = 1;
}

void vd_desk_cron(struct vd_desk *d) {
    uint64_t now = uv_now(d->loop);
    if (d->gauges_in_flight || (d->gauges_ms && now - d->gauges_ms < GAUGES_EVERY_MS) ||
        !vd_redis_is_ready(d->redis))
        return;
    d->gauges_ms = now;
    const char *pfx = d->cfg->redis_key_prefix;
    struct vd_args a;
    vd_args_fcall(&a, VD_FN("gauges"), 3, 1);
    vd_argf(&a, "%sunstaffed", pfx);
    vd_argf(&a, "%sdue", pfx);
    vd_argf(&a, "%svols", pfx);
    vd_arg(&a, pfx);
    if (vd_redis_command(d->redis, on_gauges, d, a.n, a.v, a.l) == 0) d->gauges_in_flight = 1;
}

void vd_desk_metrics(const struct vd_desk *d, struct vd_metrics_buf *out) {
    vd_metrics_counter(out, "vd_desk_assignments_total",
                       "Assignments sent from the desk (published as vd.request.assign).",
                       d->stats.assigns);
    vd_metrics_counter(out, "vd_desk_refused_total",
                       "Desk actions refused: no or a wrong token, read-only desk, bad body.",
                       d->stats.refused);
    vd_metrics_counter(out, "vd_desk_state_reads_total",
                       "Desk state snapshots served (one Redis read a second at most).",
                       d->stats.states);
    if (!d->have_gauges) return;
    vd_metrics_gauge(out, "vd_requests_unstaffed",
                     "Requests that ended unmatched or expired with volunteers missing: a "
                     "coordinator must staff or cancel them (vdispatchctl open).",
                     (double)d->unstaffed);
    vd_metrics_gauge(out, "vd_requests_due",
                     "Requests with a deadline ahead (scheduled, offered, searching, tasks running).",
                     (double)d->due);
    vd_metrics_gauge(out, "vd_volunteers_registered", "Volunteers with a record in Redis.",
                     (double)d->volunteers);
    vd_metrics_header(out, "vd_pool_available",
                      "Volunteers available and free now, per pool (the city, each event).",
                      VD_METRICS_GAUGE);
    for (int i = 0; i < d->npools; i++) {
        struct vd_metrics_label l = {"pool", d->pool_name[i]};
        vd_metrics_sample_double(out, "vd_pool_available", &l, 1, (double)d->pool_size[i]);
    }
}

void vd_desk_free(struct vd_desk *d) {
    if (!d) return;
    /* Sends Kafka never acknowledged (the process is stopping): their POSTs are answered. */
    while (d->sends) {
        struct send *s = d->sends;
        d->sends = s->next;
        respond_error(s->req, 503, "the daemon stopped before Kafka took the assignment");
        free(s);
    }
    free(d->state);
    free(d);
}
