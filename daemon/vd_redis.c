/* vd_redis: hiredis async on libuv with connect timeout, command deadline and reconnect.
 *
 * One uv_timer_t (`timer`) serves three purposes, told apart by the state when it fires:
 * CONNECTING/HANDSHAKE means the connect (or the handshake after it) took too long, or a
 * handshake reply was an error and the drop was deferred out of hiredis' callback; DOWN means
 * the backoff has passed and it is time to connect again. A second timer (`tick`) checks the
 * oldest pending command against its deadline: hiredis answers in order, so the head of the
 * pending list is always the oldest. Dropping a connection calls redisAsyncFree(), which runs
 * every pending callback with a NULL reply; callers treat that as "try again later".
 *
 * The context is attached to the loop by this file's own small adapter rather than hiredis'
 * adapters/libuv.h: that one returns early when libuv reports a poll error (a failed connect,
 * a connection reset while commands are unread), so hiredis never learns that the socket died
 * and the client would sit "ready" until a command deadline passed. Here a poll error makes
 * hiredis read the socket, which reports the error and disconnects at once. */
#include "vd_redis.h"

#include <hiredis/async.h>
#include <stdlib.h>
#include <string.h>

#include "vd_config.h"
#include "vd_log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define TICK_MS 100

struct cmd {
    struct vd_redis *r;
    vd_redis_cb *cb;
    void *arg;
    uint64_t sent_ms;
    struct cmd *prev, *next;
};

struct vd_redis {
    uv_loop_t *loop;
    const struct vd_config *cfg;
    char *library;
    redisAsyncContext *ac;
    enum vd_redis_state state;
    uv_timer_t timer;
    uv_timer_t tick;
    int open_handles;
    int closing;
    int backoff_ms;
    int ever_ready;
    struct cmd *head, *tail;
    size_t npending;
    struct vd_redis_stats stats;
    vd_redis_ready_cb *on_ready;
    void *arg;
};

static void connect_now(struct vd_redis *r);
static void on_timer(uv_timer_t *t);

static const char *where(const struct vd_redis *r, char *buf, size_t len) {
    if (r->cfg->redis_unix_socket[0])
        snprintf(buf, len, "unix:%s", r->cfg->redis_unix_socket);
    else
        snprintf(buf, len, "%s:%d", r->cfg->redis_host, r->cfg->redis_port);
    return buf;
}

static void unlink_cmd(struct vd_redis *r, struct cmd *c) {
    if (c->prev) c->prev->next = c->next; else r->head = c->next;
    if (c->next) c->next->prev = c->prev; else r->tail = c->prev;
    r->npending--;
}

static void arm_reconnect(struct vd_redis *r) {
    if (r->closing) return;
    int jitter = rand() % (r->backoff_ms / 4 + 1);
    uv_timer_start(&r->timer, on_timer, (uint64_t)(r->backoff_ms + jitter), 0);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Closes the connection now; pending callbacks run with NULL. Not for use inside a hiredis
 * callback (defer through the timer instead). */
static void drop(struct vd_redis *r) {
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->state = VD_REDIS_DOWN;
    if (ac) redisAsyncFree(ac);
}

static void on_timer(uv_timer_t *t) {
    struct vd_redis *r = t->data;
    char w[300];
    if (r->state == VD_REDIS_CONNECTING || r->state == VD_REDIS_HANDSHAKE) {
        vd_warn("redis %s: %s failed or timed out after %d ms; retrying", where(r, w, sizeof w),
                r->state == VD_REDIS_CONNECTING ? "connect" : "handshake",
                r->cfg->redis_connect_timeout_ms);
        drop(r);
        arm_reconnect(r);
        return;
    }
    if (r->state == VD_REDIS_DOWN) connect_now(r);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    struct cmd *c = privdata;
    struct vd_redis *r = c->r;
    unlink_cmd(r, c);
    if (reply) r->stats.replies++; else r->stats.failures++;
    if (c->cb) c->cb(r, reply, c->arg);
    free(c);
}

static int send_cmd(struct vd_redis *r, vd_redis_cb *cb, void *arg, int argc, const char **argv,
                    const size_t *lens) {
    struct cmd *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    c->sent_ms = uv_now(r->loop);
    c->prev = r->tail;
    if (r->tail) r->tail->next = c; else r->head = c;
    r->tail = c;
    r->npending++;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, lens) != REDIS_OK) {
        unlink_cmd(r, c);
        free(c);
        return -1;
    }
    r->stats.commands++;
    return 0;
}

static void handshake_failed(struct vd_redis *r, const char *step, redisReply *reply) {
    char w[300];
    vd_error("redis %s: %s failed: %s", where(r, w, sizeof w), step,
             reply ? (reply->str ? reply->str : "unexpected reply") : "connection lost");
    if (r->state == VD_REDIS_HANDSHAKE) uv_timer_start(&r->timer, on_timer, 0, 0);
}

static void on_handshake(struct vd_redis *r, redisReply *reply, void *arg) {
    const char *step = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        handshake_failed(r, step, reply);
        return;
    }
    if (strcmp(step, "FUNCTION LOAD") != 0 || r->state != VD_REDIS_HANDSHAKE) return;
    char w[300];
    uv_timer_stop(&r->timer);
    r->state = VD_REDIS_READY;
    r->backoff_ms = BACKOFF_MIN_MS;
    vd_info("redis %s: ready (functions loaded)%s", where(r, w, sizeof w),
            r->ever_ready ? " after reconnect" : "");
    r->ever_ready = 1;
    if (r->on_ready) r->on_ready(r, r->arg);
}

static void on_connect(const redisAsyncContext *ac, int status) {
    struct vd_redis *r = ac->data;
    char w[300];
    if (r->ac != ac) return;
    if (status != REDIS_OK) {
        vd_warn("redis %s: connect failed: %s", where(r, w, sizeof w), ac->errstr);
        r->ac = NULL; /* hiredis frees the context after this callback */
        r->state = VD_REDIS_DOWN;
        arm_reconnect(r);
        return;
    }
    r->state = VD_REDIS_HANDSHAKE;
    const struct vd_config *cfg = r->cfg;
    if (cfg->redis_password[0]) {
        if (cfg->redis_user[0]) {
            const char *argv[] = {"AUTH", cfg->redis_user, cfg->redis_password};
            send_cmd(r, on_handshake, "AUTH", 3, argv, NULL);
        } else {
            const char *argv[] = {"AUTH", cfg->redis_password};
            send_cmd(r, on_handshake, "AUTH", 2, argv, NULL);
        }
    }
    char db[16];
    snprintf(db, sizeof db, "%d", cfg->redis_db);
    const char *sel[] = {"SELECT", db};
    send_cmd(r, on_handshake, "SELECT", 2, sel, NULL);
    const char *load[] = {"FUNCTION", "LOAD", "REPLACE", r->library};
    send_cmd(r, on_handshake, "FUNCTION LOAD", 4, load, NULL);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    struct vd_redis *r = ac->data;
    char w[300];
    if (r->ac != ac) return; /* we dropped it ourselves */
    r->ac = NULL;
    r->state = VD_REDIS_DOWN;
    vd_warn("redis %s: connection lost%s%s", where(r, w, sizeof w), status == REDIS_OK ? "" : ": ",
            status == REDIS_OK ? "" : ac->errstr);
    arm_reconnect(r);
}

/* ---- the libuv adapter: hiredis asks for read/write interest, libuv reports readiness ---- */

struct uvio {
    redisAsyncContext *ac; /* NULL once hiredis has cleaned up */
    uv_poll_t poll;
    int events;
};

static void uvio_cb(uv_poll_t *h, int status, int events) {
    struct uvio *io = h->data;
    if (status < 0) {
        /* The socket failed (libuv stopped watching it): let hiredis read the error. */
        events = UV_READABLE | (io->events & UV_WRITABLE);
    }
    if (io->ac && (events & UV_READABLE)) redisAsyncHandleRead(io->ac);
    if (io->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(io->ac);
    if (status < 0 && io->ac && io->events) uv_poll_start(&io->poll, io->events, uvio_cb);
}

static void uvio_update(struct uvio *io, int add, int flag) {
    io->events = add ? io->events | flag : io->events & ~flag;
    if (io->events)
        uv_poll_start(&io->poll, io->events, uvio_cb);
    else
        uv_poll_stop(&io->poll);
}

static void uvio_add_read(void *p) { uvio_update(p, 1, UV_READABLE); }
static void uvio_del_read(void *p) { uvio_update(p, 0, UV_READABLE); }
static void uvio_add_write(void *p) { uvio_update(p, 1, UV_WRITABLE); }
static void uvio_del_write(void *p) { uvio_update(p, 0, UV_WRITABLE); }

static void uvio_closed(uv_handle_t *h) { free(h->data); }

static void uvio_cleanup(void *p) {
    struct uvio *io = p;
    io->ac = NULL;
    uv_close((uv_handle_t *)&io->poll, uvio_closed);
}

/* Returns 0, or -1 if the poll handle could not be set up (the context is untouched). */
static int uvio_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    struct uvio *io = calloc(1, sizeof *io);
    if (!io) return -1;
    if (uv_poll_init_socket(loop, &io->poll, ac->c.fd) != 0) {
        free(io);
        return -1;
    }
    io->ac = ac;
    io->poll.data = io;
    ac->ev.data = io;
    ac->ev.addRead = uvio_add_read;
    ac->ev.delRead = uvio_del_read;
    ac->ev.addWrite = uvio_add_write;
    ac->ev.delWrite = uvio_del_write;
    ac->ev.cleanup = uvio_cleanup;
    return 0;
}

static void connect_now(struct vd_redis *r) {
    char w[300];
    redisAsyncContext *ac;
    if (r->cfg->redis_unix_socket[0])
        ac = redisAsyncConnectUnix(r->cfg->redis_unix_socket);
    else
        ac = redisAsyncConnect(r->cfg->redis_host, r->cfg->redis_port);
    if (!ac || ac->err) {
        vd_warn("redis %s: connect failed: %s", where(r, w, sizeof w), ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        arm_reconnect(r);
        return;
    }
    ac->data = r;
    if (uvio_attach(ac, r->loop) < 0) {
        redisAsyncFree(ac);
        arm_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (r->ever_ready) r->stats.reconnects++;
    r->ac = ac;
    r->state = VD_REDIS_CONNECTING;
    uv_timer_start(&r->timer, on_timer, (uint64_t)r->cfg->redis_connect_timeout_ms, 0);
}

static void on_tick(uv_timer_t *t) {
    struct vd_redis *r = t->data;
    char w[300];
    if (r->state < VD_REDIS_HANDSHAKE || !r->head) return;
    uint64_t age = uv_now(r->loop) - r->head->sent_ms;
    if (age <= (uint64_t)r->cfg->redis_command_timeout_ms) return;
    r->stats.timeouts++;
    vd_warn("redis %s: no reply for %llu ms (%zu commands pending); reconnecting",
            where(r, w, sizeof w), (unsigned long long)age, r->npending);
    drop(r);
    arm_reconnect(r);
}

struct vd_redis *vd_redis_new(uv_loop_t *loop, const struct vd_config *cfg, const char *library,
                              vd_redis_ready_cb *on_ready, void *arg) {
    struct vd_redis *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->library = strdup(library);
    if (!r->library) {
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->cfg = cfg;
    r->on_ready = on_ready;
    r->arg = arg;
    r->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->tick);
    r->timer.data = r->tick.data = r;
    r->open_handles = 2;
    uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
    connect_now(r);
    return r;
}

int vd_redis_command(struct vd_redis *r, vd_redis_cb *cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen) {
    if (r->state != VD_REDIS_READY || !r->ac) return -1;
    return send_cmd(r, cb, arg, argc, argv, argvlen);
}

int vd_redis_is_ready(const struct vd_redis *r) { return r->state == VD_REDIS_READY; }
enum vd_redis_state vd_redis_state(const struct vd_redis *r) { return r->state; }
const struct vd_redis_stats *vd_redis_stats(const struct vd_redis *r) { return &r->stats; }
size_t vd_redis_pending(const struct vd_redis *r) { return r->npending; }

static void on_closed(uv_handle_t *h) {
    struct vd_redis *r = h->data;
    if (--r->open_handles == 0) {
        free(r->library);
        free(r);
    }
}

void vd_redis_free(struct vd_redis *r) {
    if (!r) return;
    r->closing = 1;
    drop(r);
    uv_timer_stop(&r->timer);
    uv_timer_stop(&r->tick);
    uv_close((uv_handle_t *)&r->timer, on_closed);
    uv_close((uv_handle_t *)&r->tick, on_closed);
}
