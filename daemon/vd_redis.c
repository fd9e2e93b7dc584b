/* vd_redis: hiredis async on libuv with connect timeout, command deadline, reconnect, the
 * Function library's life and Redis' refusals.
 *
 * One uv_timer_t (`timer`) serves four purposes, told apart by the state when it fires:
 * CONNECTING/HANDSHAKE means the connect (or the handshake after it) took too long, or a
 * handshake reply was an error and the drop was deferred out of hiredis' callback; DOWN means
 * the backoff has passed and it is time to connect again; REFUSING means it is time to probe.
 * A second timer (`tick`) checks the oldest pending command against its deadline: hiredis
 * answers in order, so the head of the pending list is always the oldest. Dropping a
 * connection calls redisAsyncFree(), which runs every pending callback with a NULL reply;
 * callers treat that as "try again later".
 *
 * The library step (list, then load if missing) runs in the handshake and again whenever a
 * reply says "Function not found"; `lib_busy` keeps one at a time.
 *
 * The context is attached to the loop by this file's own small adapter rather than hiredis'
 * adapters/libuv.h: that one returns early when libuv reports a poll error (a failed connect,
 * a connection reset while commands are unread), so hiredis never learns that the socket died
 * and the client would sit "ready" until a command deadline passed. Here a poll error makes
 * hiredis read the socket, which reports the error and disconnects at once. */
#include "vd_redis.h"

#include <hiredis/async.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vd_config.h"
#include "vd_log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define TICK_MS 100
#define STATUS_MAX 300
/* A refusal that comes back within FLAP_MS of the probe passing is the same episode (a probe
 * can pass while real work still fails, e.g. TRYAGAIN on keys the probe does not touch): not
 * said again, and the probe slows down, up to PROBE_MAX_MS. */
#define FLAP_MS 2000
#define PROBE_MAX_MS 4000

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
    char *lib_name, *lib_code, *lib_probe;
    char *probe_key;
    redisAsyncContext *ac;
    enum vd_redis_state state;
    uv_timer_t timer;
    uv_timer_t tick;
    int open_handles;
    int closing;
    int backoff_ms;
    int ever_ready;
    int lib_busy;      /* a library step (list/load) is in flight */
    int probe_busy;    /* a probe is in flight */
    int fatal;         /* on_fatal ran */
    uint64_t refusing_since; /* start of the current (or last) refusal episode */
    uint64_t ready_since;
    int probe_ms;            /* probe interval: VD_REDIS_PROBE_MS, doubling while flapping */
    int episode_open;        /* READY after a refusal, not yet FLAP_MS: the end is not said yet */
    char status[STATUS_MAX];
    char last_warning[STATUS_MAX]; /* the last connect/handshake warning, said once */
    struct cmd *head, *tail;
    size_t npending;
    struct vd_redis_stats stats;
    vd_redis_ready_cb *on_ready;
    vd_redis_fatal_cb *on_fatal;
    void *arg;
};

static void connect_now(struct vd_redis *r);
static void on_timer(uv_timer_t *t);
static void library_step(struct vd_redis *r);

static const char *where(const struct vd_redis *r, char *buf, size_t len) {
    if (r->cfg->redis_unix_socket[0])
        snprintf(buf, len, "unix:%s", r->cfg->redis_unix_socket);
    else
        snprintf(buf, len, "%s:%d", r->cfg->redis_host, r->cfg->redis_port);
    return buf;
}

static void set_status(struct vd_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_status(struct vd_redis *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->status, sizeof r->status, fmt, ap);
    va_end(ap);
}

/* Logs a connect or handshake warning unless it is the one said last (a Redis that stays
 * away is reported once, not at every retry). */
static void warn_once(struct vd_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn_once(struct vd_redis *r, const char *fmt, ...) {
    char msg[STATUS_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (strcmp(msg, r->last_warning) == 0) return;
    snprintf(r->last_warning, sizeof r->last_warning, "%s", msg);
    vd_warn("%s", msg);
}

static void unlink_cmd(struct vd_redis *r, struct cmd *c) {
    if (c->prev) c->prev->next = c->next; else r->head = c->next;
    if (c->next) c->next->prev = c->prev; else r->tail = c->prev;
    r->npending--;
}

static void arm_reconnect(struct vd_redis *r) {
    if (r->closing || r->fatal) return;
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
    r->lib_busy = r->probe_busy = 0;
    set_status(r, "connection lost; reconnecting");
    if (ac) redisAsyncFree(ac);
}

static void raise_fatal(struct vd_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void raise_fatal(struct vd_redis *r, const char *fmt, ...) {
    if (r->fatal) return;
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    r->fatal = 1;
    set_status(r, "fatal: %.280s", why);
    uv_timer_stop(&r->timer);
    if (r->on_fatal) r->on_fatal(r, why, r->arg);
}

static void become_ready(struct vd_redis *r) {
    char w[300];
    int was = r->state;
    uv_timer_stop(&r->timer);
    r->state = VD_REDIS_READY;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->status[0] = '\0';
    r->last_warning[0] = '\0';
    r->ready_since = uv_now(r->loop);
    if (was == VD_REDIS_REFUSING) {
        /* Said once it holds (on_tick), so that a flapping refusal is one episode. */
        r->episode_open = 1;
    } else {
        vd_info("redis %s: ready (library %s)%s", where(r, w, sizeof w), r->lib_name,
                r->ever_ready ? " after reconnect" : "");
    }
    r->ever_ready = 1;
    if (r->on_ready) r->on_ready(r, r->arg);
}

/* Redis is up but refuses (or lost the library): work waits, a probe runs until it passes.
 * Said once per episode. */
static void enter_refusing(struct vd_redis *r, const char *err, size_t len, enum vd_reply_code code) {
    char w[300];
    if (r->fatal || !r->ac) return;
    int shown = (int)(len < 200 ? len : 200);
    set_status(r, "refusing: %.*s", shown, err);
    if (r->state == VD_REDIS_REFUSING) return;
    uint64_t now = uv_now(r->loop);
    int flap = r->state == VD_REDIS_READY && r->episode_open && now - r->ready_since < FLAP_MS;
    r->state = VD_REDIS_REFUSING;
    r->episode_open = 0;
    if (flap) {
        r->probe_ms = r->probe_ms * 2 > PROBE_MAX_MS ? PROBE_MAX_MS : r->probe_ms * 2;
    } else {
        r->probe_ms = VD_REDIS_PROBE_MS;
        r->refusing_since = now;
        r->stats.refusals[code]++;
        vd_warn("redis %s: refuses work (%s: %.*s); jobs wait, intake pauses, probing every %d ms",
                where(r, w, sizeof w), vd_reply_code_name(code), shown, err, VD_REDIS_PROBE_MS);
    }
    uv_timer_start(&r->timer, on_timer, (uint64_t)r->probe_ms, (uint64_t)r->probe_ms);
}

/* Looks at an error reply before its callback runs: outages and a missing library move the
 * client to REFUSING, fatal ones end it. Returns the class, or -1 for a reply that is not an
 * error. */
static int note_reply(struct vd_redis *r, const redisReply *reply) {
    if (!reply || reply->type != REDIS_REPLY_ERROR) return -1;
    enum vd_reply_code code;
    enum vd_reply_class cls = vd_reply_classify(reply->str, reply->len, &code);
    if (cls == VD_REPLY_OUTAGE || cls == VD_REPLY_NO_LIBRARY) {
        enter_refusing(r, reply->str, reply->len, code);
        if (cls == VD_REPLY_NO_LIBRARY) library_step(r);
    } else if (cls == VD_REPLY_FATAL) {
        raise_fatal(r, "redis refuses the daemon's commands: %.*s (check redis.user's ACL, "
                    "redis.password and redis.key_prefix)", (int)(reply->len < 300 ? reply->len : 300),
                    reply->str);
    }
    return (int)cls;
}

int vd_redis_reply_class(const redisReply *reply) {
    if (!reply || reply->type != REDIS_REPLY_ERROR) return -1;
    return (int)vd_reply_classify(reply->str, reply->len, NULL);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    struct cmd *c = privdata;
    struct vd_redis *r = c->r;
    unlink_cmd(r, c);
    if (reply) r->stats.replies++; else r->stats.failures++;
    /* Before the callback: a job put back for an outage must find the client refusing. */
    note_reply(r, reply);
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

/* A handshake step failed. Fatal replies end the client and refusals (outages, a missing
 * library) make it probe; anything else drops the connection and retries (deferred out of
 * hiredis' callback through the timer). */
static void handshake_failed(struct vd_redis *r, const char *step, redisReply *reply) {
    char w[300];
    int cls = vd_redis_reply_class(reply);
    if (cls == VD_REPLY_FATAL || cls == VD_REPLY_OUTAGE || cls == VD_REPLY_NO_LIBRARY) return;
    warn_once(r, "redis %s: %s failed: %s", where(r, w, sizeof w), step,
              reply ? (reply->str ? reply->str : "unexpected reply") : "connection lost");
    if (r->state == VD_REDIS_HANDSHAKE) uv_timer_start(&r->timer, on_timer, 0, 0);
}

static void on_auth_or_select(struct vd_redis *r, redisReply *reply, void *arg) {
    if (!reply || reply->type == REDIS_REPLY_ERROR) handshake_failed(r, arg, reply);
}

/* ---- the Function library ---- */

/* A field of a FUNCTION LIST entry (an array of name/value pairs), or NULL. */
static const redisReply *lib_field(const redisReply *lib, const char *name) {
    if (!lib || lib->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < lib->elements; i += 2) {
        const redisReply *k = lib->element[i];
        if (k->type == REDIS_REPLY_STRING && strlen(name) == k->len && memcmp(k->str, name, k->len) == 0)
            return lib->element[i + 1];
    }
    return NULL;
}

/* A library step failed: while refusing the probe goes on; in the handshake, as any step. */
static void library_step_failed(struct vd_redis *r, const char *step, redisReply *reply) {
    r->lib_busy = 0;
    if (r->state == VD_REDIS_HANDSHAKE) handshake_failed(r, step, reply);
}

static void on_library_load(struct vd_redis *r, redisReply *reply, void *arg) {
    char w[300];
    if (reply && reply->type == REDIS_REPLY_ERROR && strstr(reply->str, "already exists")) {
        /* Another instance loaded it meanwhile: look again. */
        r->lib_busy = 0;
        library_step(r);
        return;
    }
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        library_step_failed(r, "FUNCTION LOAD", reply);
        return;
    }
    r->lib_busy = 0;
    r->stats.library_loads++;
    vd_info("redis %s: Function library %s loaded", where(r, w, sizeof w), r->lib_name);
    if (r->state == VD_REDIS_HANDSHAKE) become_ready(r);
    /* While refusing, the next probe says whether Redis takes writes now. */
}

static void on_library_list(struct vd_redis *r, redisReply *reply, void *arg) {
    char w[300];
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        library_step_failed(r, "FUNCTION LIST", reply);
        return;
    }
    const redisReply *ours = NULL;
    char others[200] = "";
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *name = lib_field(reply->element[i], "library_name");
        if (!name || name->type != REDIS_REPLY_STRING) continue;
        if (strlen(r->lib_name) == name->len && memcmp(name->str, r->lib_name, name->len) == 0) {
            ours = reply->element[i];
        } else {
            size_t o = strlen(others);
            snprintf(others + o, sizeof others - o, "%s%.*s", o ? ", " : "", (int)name->len, name->str);
        }
    }
    if (others[0] && r->state == VD_REDIS_HANDSHAKE)
        vd_info("redis %s: other vdispatch libraries loaded (left alone): %s", where(r, w, sizeof w), others);
    if (!ours) {
        const char *argv[] = {"FUNCTION", "LOAD", r->lib_code};
        if (send_cmd(r, on_library_load, NULL, 3, argv, NULL) < 0) r->lib_busy = 0;
        return;
    }
    r->lib_busy = 0;
    const redisReply *code = lib_field(ours, "library_code");
    if (!code || code->type != REDIS_REPLY_STRING || code->len != strlen(r->lib_code) ||
        memcmp(code->str, r->lib_code, code->len) != 0) {
        raise_fatal(r, "redis %s holds a Function library %s whose code differs from this "
                    "build's; a library version is never replaced: run the build that loaded "
                    "it, or delete it (FUNCTION DELETE %s) once no instance uses it",
                    where(r, w, sizeof w), r->lib_name, r->lib_name);
        return;
    }
    if (r->state == VD_REDIS_HANDSHAKE) become_ready(r);
}

/* Lists the vdispatch libraries Redis holds and loads this build's when it is missing. */
static void library_step(struct vd_redis *r) {
    if (r->lib_busy || !r->ac || r->fatal) return;
    r->lib_busy = 1;
    const char *argv[] = {"FUNCTION", "LIST", "LIBRARYNAME", "vdispatch_*", "WITHCODE"};
    if (send_cmd(r, on_library_list, NULL, 5, argv, NULL) < 0) r->lib_busy = 0;
}

/* ---- refusals: the probe ---- */

static void on_probe(struct vd_redis *r, redisReply *reply, void *arg) {
    r->probe_busy = 0;
    if (!reply) return; /* the connection dropped: the reconnect takes over */
    if (reply->type == REDIS_REPLY_ERROR) return; /* note_reply has dealt with it */
    if (r->state == VD_REDIS_REFUSING && !r->lib_busy) become_ready(r);
}

static void probe(struct vd_redis *r) {
    if (r->probe_busy || r->lib_busy || !r->ac || r->fatal) return;
    const char *argv[] = {"FCALL", r->lib_probe, "1", r->probe_key};
    r->probe_busy = 1;
    if (send_cmd(r, on_probe, NULL, 4, argv, NULL) < 0) r->probe_busy = 0;
}

static void on_timer(uv_timer_t *t) {
    struct vd_redis *r = t->data;
    char w[300];
    if (r->state == VD_REDIS_REFUSING) {
        probe(r);
        return;
    }
    if (r->state == VD_REDIS_CONNECTING || r->state == VD_REDIS_HANDSHAKE) {
        if (r->state == VD_REDIS_CONNECTING || !r->last_warning[0])
            warn_once(r, "redis %s: %s failed or timed out after %d ms; retrying",
                      where(r, w, sizeof w), r->state == VD_REDIS_CONNECTING ? "connect" : "handshake",
                      r->cfg->redis_connect_timeout_ms);
        drop(r);
        arm_reconnect(r);
        return;
    }
    if (r->state == VD_REDIS_DOWN) connect_now(r);
}

static void on_connect(const redisAsyncContext *ac, int status) {
    struct vd_redis *r = ac->data;
    char w[300];
    if (r->ac != ac) return;
    if (status != REDIS_OK) {
        warn_once(r, "redis %s: connect failed: %s", where(r, w, sizeof w), ac->errstr);
        r->ac = NULL; /* hiredis frees the context after this callback */
        r->state = VD_REDIS_DOWN;
        set_status(r, "connect failed: %.200s", ac->errstr);
        arm_reconnect(r);
        return;
    }
    r->state = VD_REDIS_HANDSHAKE;
    set_status(r, "handshake");
    const struct vd_config *cfg = r->cfg;
    if (cfg->redis_password[0]) {
        if (cfg->redis_user[0]) {
            const char *argv[] = {"AUTH", cfg->redis_user, cfg->redis_password};
            send_cmd(r, on_auth_or_select, "AUTH", 3, argv, NULL);
        } else {
            const char *argv[] = {"AUTH", cfg->redis_password};
            send_cmd(r, on_auth_or_select, "AUTH", 2, argv, NULL);
        }
    }
    if (cfg->redis_db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", cfg->redis_db);
        const char *sel[] = {"SELECT", db};
        send_cmd(r, on_auth_or_select, "SELECT", 2, sel, NULL);
    }
    library_step(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    struct vd_redis *r = ac->data;
    char w[300];
    if (r->ac != ac) return; /* we dropped it ourselves */
    r->ac = NULL;
    r->state = VD_REDIS_DOWN;
    r->lib_busy = r->probe_busy = 0;
    set_status(r, "connection lost; reconnecting");
    warn_once(r, "redis %s: connection lost%s%s", where(r, w, sizeof w), status == REDIS_OK ? "" : ": ",
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
        warn_once(r, "redis %s: connect failed: %s", where(r, w, sizeof w), ac ? ac->errstr : "out of memory");
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
    set_status(r, "connecting");
    uv_timer_start(&r->timer, on_timer, (uint64_t)r->cfg->redis_connect_timeout_ms, 0);
}

static void on_tick(uv_timer_t *t) {
    struct vd_redis *r = t->data;
    char w[300];
    uint64_t now = uv_now(r->loop);
    if (r->episode_open && r->state == VD_REDIS_READY && now - r->ready_since >= FLAP_MS) {
        r->episode_open = 0;
        uint64_t ms = r->ready_since - r->refusing_since;
        r->stats.refusing_ms += ms;
        vd_info("redis %s: takes work again after refusing for %llu ms; resumed",
                where(r, w, sizeof w), (unsigned long long)ms);
    }
    if (r->state < VD_REDIS_HANDSHAKE || !r->head) return;
    uint64_t age = now - r->head->sent_ms;
    if (age <= (uint64_t)r->cfg->redis_command_timeout_ms) return;
    r->stats.timeouts++;
    vd_warn("redis %s: no reply for %llu ms (%zu commands pending); reconnecting",
            where(r, w, sizeof w), (unsigned long long)age, r->npending);
    drop(r);
    arm_reconnect(r);
}

struct vd_redis *vd_redis_new(uv_loop_t *loop, const struct vd_config *cfg,
                              const struct vd_redis_library *lib, vd_redis_ready_cb *on_ready,
                              vd_redis_fatal_cb *on_fatal, void *arg) {
    struct vd_redis *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    size_t klen = strlen(cfg->redis_key_prefix) + sizeof "probe";
    r->lib_name = strdup(lib->name);
    r->lib_code = strdup(lib->code);
    r->lib_probe = strdup(lib->probe);
    r->probe_key = malloc(klen);
    if (!r->lib_name || !r->lib_code || !r->lib_probe || !r->probe_key) {
        free(r->lib_name);
        free(r->lib_code);
        free(r->lib_probe);
        free(r->probe_key);
        free(r);
        return NULL;
    }
    snprintf(r->probe_key, klen, "%sprobe", cfg->redis_key_prefix);
    r->loop = loop;
    r->cfg = cfg;
    r->on_ready = on_ready;
    r->on_fatal = on_fatal;
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

void vd_redis_send_now(struct vd_redis *r) {
    if (r->state != VD_REDIS_READY || !r->ac) return;
    /* A write event stays registered until a write finds the buffer empty: hiredis writes the
     * rest, if the socket took only part, or sees an error set here. */
    int done = 0;
    (void)redisBufferWrite(&r->ac->c, &done);
}

int vd_redis_is_ready(const struct vd_redis *r) { return r->state == VD_REDIS_READY; }
enum vd_redis_state vd_redis_state(const struct vd_redis *r) { return r->state; }
const char *vd_redis_status(const struct vd_redis *r) { return r->status; }
const struct vd_redis_stats *vd_redis_stats(const struct vd_redis *r) { return &r->stats; }
size_t vd_redis_pending(const struct vd_redis *r) { return r->npending; }

static void on_closed(uv_handle_t *h) {
    struct vd_redis *r = h->data;
    if (--r->open_handles == 0) {
        free(r->lib_name);
        free(r->lib_code);
        free(r->lib_probe);
        free(r->probe_key);
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
