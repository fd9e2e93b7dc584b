/* vd_redis: a Redis client on the daemon's libuv loop that survives Redis going away or
 * refusing work.
 *
 * Wraps a hiredis async context (libuv adapter) in an object with an explicit state:
 *   DOWN -> CONNECTING -> HANDSHAKE (AUTH, SELECT, the Function library) -> READY
 *   READY -> REFUSING (Redis is up but refuses: OOM, MISCONF, READONLY, NOREPLICAS, LOADING,
 *            BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN, or the library is gone) -> READY
 * hiredis 0.14 has no connect timeout (its libuv adapter never reports a failed connect), no
 * command timeout and no reconnect, so this object runs a connect timer, a per-command
 * deadline (a command unanswered past redis.command_timeout_ms drops the connection, which
 * fails every pending command) and reconnects with exponential backoff.
 *
 * The library: its name carries its version (vdispatch_7). At every connect the client lists
 * the vdispatch libraries Redis holds; it loads its own when missing, uses it when the code is
 * the same, and never replaces or deletes another: other versions run side by side (a rolling
 * upgrade), and a library of the same version with other code is a deployment error that
 * stops the daemon (on_fatal). A "Function not found" later (FUNCTION FLUSH) loads it again.
 *
 * Every error reply is classified (vd_reply.h) before its callback runs: an outage moves READY
 * to REFUSING, logged once, and a probe (a tiny write Function) runs every VD_REDIS_PROBE_MS
 * until Redis takes writes again, when the client is READY again and on_ready runs; a fatal
 * one (an ACL that forbids the daemon's commands or keys, a wrong password) calls on_fatal
 * once. Every callback given to vd_redis_command runs exactly once: with the reply, or with
 * NULL if the command failed. */
#ifndef VD_REDIS_H
#define VD_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "vd_reply.h"

#define VD_REDIS_PROBE_MS 250

struct vd_config;
struct vd_redis;

/* reply is NULL when the command failed (no connection, timeout, connection lost); it may be
 * a REDIS_REPLY_ERROR. The reply is valid only during the callback. */
typedef void vd_redis_cb(struct vd_redis *r, redisReply *reply, void *arg);
/* Called each time the client becomes READY (after the first connect, every reconnect and
 * every refusal that ended). */
typedef void vd_redis_ready_cb(struct vd_redis *r, void *arg);
/* Called once when the daemon cannot go on with this Redis (why: one sentence). */
typedef void vd_redis_fatal_cb(struct vd_redis *r, const char *why, void *arg);

enum vd_redis_state {
    VD_REDIS_DOWN,
    VD_REDIS_CONNECTING,
    VD_REDIS_HANDSHAKE,
    VD_REDIS_REFUSING,
    VD_REDIS_READY
};

struct vd_redis_library {
    const char *name;  /* "vdispatch_7" */
    const char *code;  /* the library's text, "#!lua name=vdispatch_7 ..." */
    const char *probe; /* the library's probe function, "vd7_probe" */
};

struct vd_redis_stats {
    uint64_t commands, replies, failures, timeouts, reconnects;
    uint64_t refusals[VD_CODE__COUNT]; /* refusal episodes, by the code that began them */
    uint64_t library_loads;            /* FUNCTION LOADs of the library (first one included) */
    uint64_t refusing_ms;              /* time spent refusing, episodes that ended */
};

/* Creates the client and starts connecting. lib is copied. Returns NULL on allocation
 * failure. The client is owned by the caller and freed with vd_redis_free(). */
struct vd_redis *vd_redis_new(uv_loop_t *loop, const struct vd_config *cfg,
                              const struct vd_redis_library *lib, vd_redis_ready_cb *on_ready,
                              vd_redis_fatal_cb *on_fatal, void *arg);

/* Sends a command. Returns 0 when queued (cb will run later, exactly once) or -1 when the
 * client is not READY (cb is NOT called). */
int vd_redis_command(struct vd_redis *r, vd_redis_cb *cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen);

/* Writes the commands queued so far to Redis now. hiredis writes them when the loop next finds
 * the socket writable, after the running callback returns: a callback that has more to do
 * after a command (a round's solve after its claim) calls this so that Redis runs the command
 * meanwhile. A failed write is hiredis's to report: its next write event drops the connection
 * and fails every pending command. */
void vd_redis_send_now(struct vd_redis *r);

/* The class of a reply as a command's callback sees it: -1 for a reply that is not an error. */
int vd_redis_reply_class(const redisReply *reply);

int vd_redis_is_ready(const struct vd_redis *r);
enum vd_redis_state vd_redis_state(const struct vd_redis *r);
/* Why the client is not READY, one line ("connecting", "refusing: NOREPLICAS Not enough ...");
 * "" when READY. */
const char *vd_redis_status(const struct vd_redis *r);
const struct vd_redis_stats *vd_redis_stats(const struct vd_redis *r);
/* Commands sent and not yet answered. */
size_t vd_redis_pending(const struct vd_redis *r);

/* Fails every pending command (their callbacks run with NULL), closes the connection and
 * the timers; the memory is released once libuv has closed the handles. */
void vd_redis_free(struct vd_redis *r);

#endif
