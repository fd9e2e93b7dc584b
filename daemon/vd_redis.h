/* vd_redis: a Redis client on the daemon's libuv loop that survives Redis going away.
 *
 * Wraps a hiredis async context (libuv adapter) in an object with an explicit state:
 * DOWN -> CONNECTING -> HANDSHAKE (AUTH, SELECT, FUNCTION LOAD REPLACE) -> READY. hiredis 0.14
 * has no connect timeout (its libuv adapter never reports a failed connect), no command
 * timeout and no reconnect, so this object runs a connect timer, a per-command deadline (a
 * command unanswered past redis.command_timeout_ms drops the connection, which fails every
 * pending command) and reconnects with exponential backoff. Every callback given to
 * vd_redis_command runs exactly once: with the reply, or with NULL if the command failed. */
#ifndef VD_REDIS_H
#define VD_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct vd_config;
struct vd_redis;

/* reply is NULL when the command failed (no connection, timeout, connection lost); it may be
 * a REDIS_REPLY_ERROR. The reply is valid only during the callback. */
typedef void vd_redis_cb(struct vd_redis *r, redisReply *reply, void *arg);
/* Called each time the client becomes READY (after the first connect and every reconnect). */
typedef void vd_redis_ready_cb(struct vd_redis *r, void *arg);

enum vd_redis_state { VD_REDIS_DOWN, VD_REDIS_CONNECTING, VD_REDIS_HANDSHAKE, VD_REDIS_READY };

struct vd_redis_stats {
    uint64_t commands, replies, failures, timeouts, reconnects;
};

/* Creates the client and starts connecting. The library text (Lua) is loaded on every
 * connect. Returns NULL on allocation failure. The client is owned by the caller and freed
 * with vd_redis_free(). */
struct vd_redis *vd_redis_new(uv_loop_t *loop, const struct vd_config *cfg, const char *library,
                              vd_redis_ready_cb *on_ready, void *arg);

/* Sends a command. Returns 0 when queued (cb will run later, exactly once) or -1 when the
 * client is not READY (cb is NOT called). */
int vd_redis_command(struct vd_redis *r, vd_redis_cb *cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen);

int vd_redis_is_ready(const struct vd_redis *r);
enum vd_redis_state vd_redis_state(const struct vd_redis *r);
const struct vd_redis_stats *vd_redis_stats(const struct vd_redis *r);
/* Commands sent and not yet answered. */
size_t vd_redis_pending(const struct vd_redis *r);

/* Fails every pending command (their callbacks run with NULL), closes the connection and
 * the timers; the memory is released once libuv has closed the handles. */
void vd_redis_free(struct vd_redis *r);

#endif
