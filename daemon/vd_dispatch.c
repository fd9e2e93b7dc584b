/* vd_dispatch: how a job runs, the partitions and their queues between Kafka and Redis.
 *
 * Every consumed message becomes a job in its partition's queue. Jobs of one partition
 * overlap (daemon.partition_concurrency), except that jobs about the same request or
 * volunteer run one after another in offset order. What a job does is in vd_request.c, what
 * it says on Kafka in vd_publish.c; this file starts jobs, carries their Redis calls, and
 * finishes them once Kafka acknowledged every output, when their offset may move the
 * partition's commit watermark (vd_offsets).
 *
 * Redis replies are sorted by what they mean (vd_reply.h): an outage (Redis up but refusing,
 * or its library gone) and a lost connection put the job back at the head of its partition
 * to run again once Redis takes writes (the client probes meanwhile, vd_redis.c); nothing is
 * dead-lettered for it and no offset moves. Only an input that is itself at fault becomes a
 * dead letter. Intake pauses while Redis cannot take work, and is held (no message taken from
 * librdkafka's queue, none fetched twice) while daemon.max_inflight inputs are in memory.
 *
 * Due runs (a request whose deadline came) are internal jobs in a part of their own, taken
 * from Redis' due set every cron tick whatever the intake does. Published facts are settled
 * in batches (vd7_settle), and stale volunteer records swept (vd7_sweep) once a second. */
#include "vd_dispatch.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vd_config.h"
#include "vd_job.h"
#include "vd_log.h"
#include "vd_lua.h"
#include "vd_redis.h"

#define MAX_REDIS_ERRORS 5 /* unexpected error replies before a job is dead-lettered */
#define DUE_BATCH 64       /* requests taken per vd7_due call */
#define MAX_TIMER_JOBS 256 /* due runs in memory before vd7_due waits */
#define SWEEP_EVERY_MS 1000
#define SWEEP_BATCH 256
#define KICK_SCAN 64 /* queued jobs looked at per start, past those blocked by a running key */

const char *vd_unmatched_reason_name(enum vd_unmatched_reason r) {
    static const char *const names[VD_UNMATCHED__COUNT] = {
        "no_volunteer_in_range", "no_eligible_volunteer", "contention", "expired", "all_declined",
        "lost_to_greater_need"};
    return names[r];
}

const char *vd_offer_result_name(enum vd_offer_result r) {
    static const char *const names[VD_OFFER__COUNT] = {"made", "accepted", "declined",
                                                       "timed_out", "expired"};
    return names[r];
}

const char *vd_call_kind_name(enum vd_call_kind k) {
    static const char *const names[VD_CALL__COUNT] = {"step", "round", "widen", "claim", "settle", "due", "sweep"};
    return names[k];
}

/* Counts a Redis call about to be made. */
static void count_call(struct vd_dispatch *d, enum vd_call_kind k) {
    d->stats.redis_calls++;
    d->stats.calls[k]++;
}

/* ---- building commands ---- */

void vd_args_fcall(struct vd_args *a, const char *fn, int nkeys, int ro) {
    a->n = 0;
    a->used = 0;
    a->overflow = 0;
    vd_arg(a, ro ? "FCALL_RO" : "FCALL");
    vd_arg(a, fn);
    vd_argf(a, "%d", nkeys);
}

void vd_argn(struct vd_args *a, const char *s, size_t len) {
    if (a->n >= VD_ARGS_MAX) {
        a->overflow = 1;
        return;
    }
    a->v[a->n] = s;
    a->l[a->n++] = len;
}

void vd_arg(struct vd_args *a, const char *s) { vd_argn(a, s, strlen(s)); }

void vd_argf(struct vd_args *a, const char *fmt, ...) {
    if (a->n >= VD_ARGS_MAX || a->used >= sizeof a->buf) {
        a->overflow = 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(a->buf + a->used, sizeof a->buf - a->used, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= sizeof a->buf - a->used) {
        a->overflow = 1;
        return;
    }
    vd_argn(a, a->buf + a->used, (size_t)w);
    a->used += (size_t)w + 1;
}

/* ---- job life ---- */

static void apply_backpressure(struct vd_dispatch *d);

static void job_free(struct vd_job *j) {
    struct vd_dispatch *d = j->d;
    if (j->all_prev) j->all_prev->all_next = j->all_next; else d->all = j->all_next;
    if (j->all_next) j->all_next->all_prev = j->all_prev;
    d->stats.jobs_in_memory--;
    if (j->tick) {
        if (j->tprev) j->tprev->tnext = j->tnext; else d->ticks = j->tnext;
        if (j->tnext) j->tnext->tprev = j->tprev;
        d->timer_jobs--;
    } else {
        d->stats.inputs_in_memory--;
        /* Back-pressure: below the limit, intake takes messages again at once. */
        if (d->full && !d->stopping) apply_backpressure(d);
    }
    free(j->payload);
    free(j->error);
    free(j->cands);
    free(j->req_own);
    free(j);
}

/* A job of partition p with a copy of the input's event ev, in as many bytes as the copy needs
 * (the event is the job's last member; vd_event_size()), or, for ev NULL, a whole job with an
 * empty event (a due run: few at a time). */
static struct vd_job *job_new(struct vd_dispatch *d, struct vd_part *p, const struct vd_event *ev) {
    size_t evsize = ev ? vd_event_size(ev) : 0;
    struct vd_job *j = ev ? calloc(1, offsetof(struct vd_job, ev) + evsize) : calloc(1, sizeof *j);
    if (!j) abort();
    if (ev) memcpy(&j->ev, ev, evsize);
    j->d = d;
    j->part = p;
    j->gen = p->gen;
    j->req = &j->ev;
    return j;
}

/* A new job joins the live list and the tail of its partition's queue. */
static void job_enqueue(struct vd_part *p, struct vd_job *j) {
    struct vd_dispatch *d = j->d;
    d->stats.jobs_in_memory++;
    if (j->tick) {
        j->tnext = d->ticks;
        if (d->ticks) d->ticks->tprev = j;
        d->ticks = j;
        d->timer_jobs++;
    } else if (++d->stats.inputs_in_memory > d->stats.inputs_high_water) {
        d->stats.inputs_high_water = d->stats.inputs_in_memory;
    }
    j->all_next = d->all;
    if (d->all) d->all->all_prev = j;
    d->all = j;
    if (p->tail) p->tail->next = j; else p->head = j;
    p->tail = j;
}

/* ---- settling facts, taking due requests, sweeping volunteers ---- */

static void on_settled(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_dispatch *d = arg;
    (void)r;
    d->settles_in_flight--;
    /* Lost (Redis down or refusing): the facts are published again when the lease lapses. */
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        vd_debug("settling facts failed: %s", reply && reply->str ? reply->str : "no reply");
}

/* Tells Redis, in calls of up to VD_SETTLE_BATCH requests, which facts reached Kafka. */
static void flush_settles(struct vd_dispatch *d) {
    const struct vd_config *cfg = d->cfg;
    const char *pfx = cfg->redis_key_prefix;
    int from = 0;
    while (from < d->nsettles && vd_redis_is_ready(d->redis)) {
        int n = d->nsettles - from < VD_SETTLE_BATCH ? d->nsettles - from : VD_SETTLE_BATCH;
        const struct vd_settle *s = d->settles + from;
        struct vd_args a;
        vd_args_fcall(&a, VD_FN("settle"), 1 + n, 0);
        vd_argf(&a, "%sdue", pfx);
        for (int i = 0; i < n; i++) vd_argf(&a, "%sreq/%s", pfx, s[i].rid);
        vd_arg(&a, pfx);
        vd_argf(&a, "%d", VD_LEASE_MS);
        vd_argf(&a, "%lld", (long long)cfg->task_timeout_s * 1000);
        for (int i = 0; i < n; i++) {
            vd_arg(&a, s[i].rid);
            vd_argf(&a, "%lld", s[i].seq);
        }
        if (a.overflow) { /* cannot be sent, now or later: the lease covers its facts */
            from += n;
            continue;
        }
        d->settles_in_flight++;
        if (vd_redis_command(d->redis, on_settled, d, a.n, a.v, a.l) < 0) {
            d->settles_in_flight--;
            break;
        }
        from += n;
        count_call(d, VD_CALL_SETTLE);
    }
    /* What Redis could not take yet waits for the cron (its facts are published again should
     * the lease lapse first). */
    memmove(d->settles, d->settles + from, (size_t)(d->nsettles - from) * sizeof *d->settles);
    d->nsettles -= from;
}

/* Settles go at once when none is in flight (fewer facts published twice). Under load they
 * batch up behind the one in flight, and while a round's call is in Redis they wait for its
 * answer: vd_dispatch_round_answered() sends them before the daemon solves the round, so Redis
 * settles while it would otherwise wait for the round's claim. The cron sends what is left. */
static void settle_later(struct vd_dispatch *d, const char *rid, long long seq) {
    if (d->nsettles == VD_SETTLE_HOLD) flush_settles(d);
    if (d->nsettles == VD_SETTLE_HOLD) return; /* Redis is down: the lease covers it */
    snprintf(d->settles[d->nsettles].rid, sizeof d->settles[0].rid, "%s", rid);
    d->settles[d->nsettles++].seq = seq;
    if (d->round_calls) {
        if (d->nsettles < VD_SETTLE_HOLD) return;
    } else if (d->settles_in_flight && d->nsettles < VD_SETTLE_BATCH) {
        return;
    }
    flush_settles(d);
}

void vd_dispatch_round_answered(struct vd_dispatch *d) {
    if (!d->nsettles) return;
    flush_settles(d);
    vd_redis_send_now(d->redis);
}

static void kick(struct vd_part *p);

/* 1 when a due run of the request is still in memory: queued, running, or waiting for Kafka
 * to acknowledge its outputs (a slow Kafka must not multiply them lease after lease). Looks
 * only at due runs (at most MAX_TIMER_JOBS), never at every job. */
static int tick_for(const struct vd_dispatch *d, const char *rid) {
    for (const struct vd_job *j = d->ticks; j; j = j->tnext)
        if (strcmp(j->key, rid) == 0) return 1;
    return 0;
}

static void on_due(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_dispatch *d = arg;
    (void)r;
    d->due_in_flight = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || d->stopping) return;
    struct vd_part *p = d->timers;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len > VD_ID_MAX) continue;
        char rid[VD_ID_MAX + 1];
        snprintf(rid, sizeof rid, "%.*s", (int)e->len, e->str);
        if (!vd_id_valid(rid) || tick_for(d, rid) || vd_round_holds(d, rid)) continue;
        struct vd_job *j = job_new(d, p, NULL);
        j->offset = -1;
        j->tick = 1;
        snprintf(j->ev.request_id, sizeof j->ev.request_id, "%s", rid);
        snprintf(j->key, sizeof j->key, "%s", rid);
        job_enqueue(p, j);
    }
    kick(p);
}

/* Takes the requests whose due time came (at most one call outstanding). Deadlines keep their
 * time whatever the intake does: this runs while intake is paused too. */
static void poll_due(struct vd_dispatch *d) {
    if (d->due_in_flight || d->stopping || !vd_redis_is_ready(d->redis) ||
        d->timer_jobs >= MAX_TIMER_JOBS)
        return;
    struct vd_args a;
    vd_args_fcall(&a, VD_FN("due"), 1, 0);
    vd_argf(&a, "%sdue", d->cfg->redis_key_prefix);
    vd_arg(&a, d->cfg->redis_key_prefix);
    vd_argf(&a, "%d", VD_LEASE_MS);
    vd_argf(&a, "%d", DUE_BATCH);
    d->due_in_flight = 1;
    count_call(d, VD_CALL_DUE);
    if (vd_redis_command(d->redis, on_due, d, a.n, a.v, a.l) < 0) d->due_in_flight = 0;
}

static void on_swept(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_dispatch *d = arg;
    (void)r;
    d->sweep_in_flight = 0;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        d->stats.volunteers_swept += (uint64_t)reply->integer;
        vd_info("swept %lld volunteer record(s) no event refreshed for redis.volunteer_ttl_s (%d s)",
                reply->integer, d->cfg->redis_volunteer_ttl_s);
    }
}

/* Removes volunteer records nobody refreshed for redis.volunteer_ttl_s, and unstaffed
 * requests whose record expired, a batch a second. */
static void sweep(struct vd_dispatch *d) {
    uint64_t now = uv_now(d->loop);
    if (d->sweep_in_flight || d->stopping || !vd_redis_is_ready(d->redis) ||
        now - d->last_sweep_ms < SWEEP_EVERY_MS)
        return;
    d->last_sweep_ms = now;
    struct vd_args a;
    vd_args_fcall(&a, VD_FN("sweep"), 2, 0);
    vd_argf(&a, "%svols", d->cfg->redis_key_prefix);
    vd_argf(&a, "%sunstaffed", d->cfg->redis_key_prefix);
    vd_arg(&a, d->cfg->redis_key_prefix);
    vd_argf(&a, "%lld", (long long)d->cfg->redis_volunteer_ttl_s * 1000);
    vd_argf(&a, "%d", SWEEP_BATCH);
    vd_argf(&a, "%lld", (long long)d->cfg->redis_request_ttl_s * 1000);
    d->sweep_in_flight = 1;
    count_call(d, VD_CALL_SWEEP);
    if (vd_redis_command(d->redis, on_swept, d, a.n, a.v, a.l) < 0) d->sweep_in_flight = 0;
}

/* A job whose Redis work is done and whose outputs are all acknowledged leaves; its offset
 * may move the partition's watermark. */
static void maybe_finish(struct vd_job *j) {
    if (j->stage != VD_STAGE_PUBLISHED || j->pending > 0) return;
    struct vd_part *p = j->part;
    if (!j->abandoned) {
        if (!p->internal && j->gen == p->gen && p->assigned &&
            vd_offsets_done(&p->offs, j->offset) == 1)
            vd_kafka_store_offset(j->d->kafka, p->topic, p->partition, p->offs.next);
        if (j->settle_seq > 0) settle_later(j->d, j->ev.request_id, j->settle_seq);
    }
    job_free(j);
}

/* Drops a job that will not run here again (revoked, stopping, given up). One that published
 * facts before its next step failed still has delivery reports to come: it lives until the
 * last one, moving no offset and settling nothing (its input is redelivered to whoever owns
 * it next; its facts are published again under the lease). */
static void job_abandon(struct vd_job *j) {
    j->next = NULL;
    if (j->pending > 0) {
        j->abandoned = 1;
        j->stage = VD_STAGE_PUBLISHED;
        return;
    }
    job_free(j);
}

static int same_key(const struct vd_job *a, const struct vd_job *b) {
    return a->key[0] && strcmp(a->key, b->key) == 0;
}

/* A job may start unless an earlier job about the same request or volunteer is running or
 * still waits ahead of it: one key's events are applied in offset order. */
static int blocked(const struct vd_part *p, const struct vd_job *j, struct vd_job *const *skipped,
                   size_t nskipped) {
    if (j->key[0] && vd_index_find(&p->running, j->key)) return 1;
    for (size_t i = 0; i < nskipped; i++)
        if (same_key(skipped[i], j)) return 1;
    return 0;
}

static void running_remove(struct vd_part *p, struct vd_job *j) {
    if (j->key[0]) vd_index_del(&p->running, j);
    p->nrunning--;
    j->d->running--;
}

/* Starts queued jobs of the partition, up to daemon.partition_concurrency at once. A job that
 * finishes without waiting (a dead letter, say) returns here instead of recursing, so a long
 * run of bad messages costs no stack. */
static void kick(struct vd_part *p) {
    if (p->in_kick || !p->head) return;
    struct vd_dispatch *d = p->head->d;
    p->in_kick = 1;
    int started = 1;
    while (started) {
        started = 0;
        struct vd_job *skipped[KICK_SCAN], *prev = NULL;
        size_t nskipped = 0;
        for (struct vd_job *j = p->head; j && nskipped < KICK_SCAN; prev = j, j = j->next) {
            if (p->nrunning - p->nparked >= d->cfg->partition_concurrency || d->stopping ||
                !vd_redis_is_ready(d->redis) || uv_now(d->loop) < p->retry_at)
                break;
            if (blocked(p, j, skipped, nskipped)) {
                skipped[nskipped++] = j;
                continue;
            }
            if (prev) prev->next = j->next; else p->head = j->next;
            if (p->tail == j) p->tail = prev;
            j->next = NULL;
            if (j->key[0]) vd_index_add(&p->running, j);
            p->nrunning++;
            d->running++;
            vd_request_run(j);
            started = 1; /* the queue may have changed under us: scan again from the head */
            break;
        }
    }
    p->in_kick = 0;
}

void vd_job_park(struct vd_job *j) {
    j->part->nparked++;
    /* Its place in the concurrency is free: the partition may start another job. */
    kick(j->part);
}

void vd_job_unpark(struct vd_job *j) { j->part->nparked--; }

void vd_job_redis_done(struct vd_job *j) {
    struct vd_part *p = j->part;
    j->stage = VD_STAGE_PUBLISHED;
    running_remove(p, j);
    maybe_finish(j);
    kick(p);
}

/* The job goes back to the head of its partition, to run again from its first step when Redis
 * takes work again (every Function is idempotent). delay_ms holds the whole partition back
 * (after an unexpected error). */
static void requeue(struct vd_job *j, uint64_t delay_ms) {
    struct vd_dispatch *d = j->d;
    struct vd_part *p = j->part;
    running_remove(p, j);
    j->stage = VD_STAGE_QUEUED;
    if (delay_ms) p->retry_at = uv_now(d->loop) + delay_ms;
    if (j->gen != p->gen || d->stopping) {
        /* Revoked or stopping: the next owner (or the next start) runs it again. */
        job_abandon(j);
        return;
    }
    j->next = p->head;
    p->head = j;
    if (!p->tail) p->tail = j;
}

void vd_job_redis_failed(struct vd_job *j, const redisReply *reply) {
    struct vd_dispatch *d = j->d;
    struct vd_part *p = j->part;
    int cls = vd_redis_reply_class(reply);
    if (!reply || cls == VD_REPLY_OUTAGE || cls == VD_REPLY_NO_LIBRARY || cls == VD_REPLY_FATAL) {
        /* Not the input's doing: it waits for Redis (which the client probes, or the daemon
         * stops on a fatal reply), and runs again. */
        d->stats.redis_waits++;
        requeue(j, 0);
        return;
    }
    char err[600];
    snprintf(err, sizeof err, "%.*s", (int)(reply->len < 500 ? reply->len : 500), reply->str);
    if (cls == VD_REPLY_INPUT || ++j->redis_errors >= MAX_REDIS_ERRORS) {
        if (j->tick) {
            /* No input to dead-letter: the due set keeps the request; the lease brings it back. */
            vd_error("request %s: due run given up after Redis refused it: %s", j->ev.request_id, err);
            running_remove(p, j);
            job_abandon(j);
            kick(p);
            return;
        }
        char why[700];
        if (cls == VD_REPLY_INPUT)
            snprintf(why, sizeof why, "redis refused the input: %s", err + strlen("VDINPUT "));
        else
            snprintf(why, sizeof why, "redis: %s (after %d attempts)", err, j->redis_errors);
        vd_error("%s[%d]@%lld: %s", p->topic, (int)p->partition, (long long)j->offset, why);
        vd_publish_dead_letter(j, why);
        vd_job_redis_done(j);
        return;
    }
    uint64_t delay = 100u << (j->redis_errors - 1); /* 100, 200, 400, 800 ms */
    vd_warn("%s[%d]@%lld: unexpected Redis error, retrying in %llu ms: %s", p->topic,
            (int)p->partition, (long long)j->offset, (unsigned long long)delay, err);
    d->stats.redis_retries++;
    requeue(j, delay);
}

struct call_ctx {
    struct vd_job *j;
    vd_job_reply_fn *fn;
};

static void on_reply(struct vd_redis *r, redisReply *reply, void *arg) {
    struct call_ctx *c = arg;
    struct vd_job *j = c->j;
    vd_job_reply_fn *fn = c->fn;
    free(c);
    (void)r;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        vd_job_redis_failed(j, reply);
        return;
    }
    fn(j, reply);
}

void vd_job_call(struct vd_job *j, struct vd_args *a, vd_job_reply_fn *fn) {
    if (a->overflow) {
        /* A bug, not the input's fault; but the input is kept where it can be replayed. */
        vd_error("%s[%d]@%lld: a %s call has too many arguments", j->part->topic,
                 (int)j->part->partition, (long long)j->offset, a->n > 1 ? a->v[1] : "?");
        vd_publish_dead_letter(j, "internal: the Redis call for this input did not fit");
        vd_job_redis_done(j);
        return;
    }
    struct call_ctx *c = malloc(sizeof *c);
    if (!c) abort();
    c->j = j;
    c->fn = fn;
    j->stage = VD_STAGE_REDIS;
    count_call(j->d, VD_CALL_STEP);
    if (vd_redis_command(j->d->redis, on_reply, c, a->n, a->v, a->l) < 0) {
        free(c);
        vd_job_redis_failed(j, NULL);
    }
}

/* ---- Kafka callbacks ---- */

static struct vd_part *find_part(struct vd_dispatch *d, const char *topic, int32_t partition,
                                 int create, enum vd_topic_kind kind) {
    for (struct vd_part *p = d->parts; p; p = p->next)
        if (p->partition == partition && strcmp(p->topic, topic) == 0) return p;
    if (!create) return NULL;
    struct vd_part *p = calloc(1, sizeof *p);
    if (!p || !(p->topic = strdup(topic))) abort();
    p->partition = partition;
    p->kind = kind;
    vd_offsets_init(&p->offs);
    vd_index_init(&p->running, offsetof(struct vd_job, key), offsetof(struct vd_job, knext));
    p->next = d->parts;
    d->parts = p;
    return p;
}

static void drop_queue(struct vd_part *p) {
    while (p->head) {
        struct vd_job *j = p->head;
        p->head = j->next;
        job_abandon(j);
    }
    p->tail = NULL;
}

void vd_dispatch_on_assign(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind) {
    struct vd_part *p = find_part(arg, topic, partition, 1, kind);
    p->assigned = 1;
    p->gen++;
    drop_queue(p);
    vd_offsets_reset(&p->offs);
}

void vd_dispatch_on_revoke(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind) {
    struct vd_part *p = find_part(arg, topic, partition, 0, kind);
    if (!p) return;
    p->assigned = 0;
    p->gen++;
    drop_queue(p);
    vd_offsets_reset(&p->offs);
}

/* Intake pauses while Redis cannot take work and while stopping; it is held while
 * daemon.max_inflight inputs are in memory (until one of them is done, see job_free). */
static void apply_backpressure(struct vd_dispatch *d) {
    d->full = d->stats.inputs_in_memory >= (uint64_t)d->cfg->max_inflight;
    vd_kafka_hold(d->kafka, d->full);
    vd_kafka_pause_all(d->kafka, d->stopping || !vd_redis_is_ready(d->redis));
}

/* Decodes a structured-mode event (the value is the whole event) or a binary-mode one (the
 * CloudEvents Kafka binding: attributes in ce_* headers, the value is the data) into ev.
 * Consumes m. */
static int decode_message(rd_kafka_message_t *m, const char *payload, size_t len,
                          enum vd_topic_kind kind, struct vd_event *ev, char *err, size_t errlen) {
    rd_kafka_headers_t *hdrs = NULL;
    const void *v;
    size_t vlen;
    int rc;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR || !hdrs ||
        rd_kafka_header_get_last(hdrs, "ce_specversion", &v, &vlen) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_message_destroy(m);
        return vd_event_decode(payload, len, kind, ev, err, errlen);
    }
    struct vd_event_header h[VD_EVENT_MAX_HEADERS + 1];
    size_t n = 0;
    const char *name;
    while (n <= VD_EVENT_MAX_HEADERS && rd_kafka_header_get_all(hdrs, n, &name, &v, &vlen) == 0) {
        h[n] = (struct vd_event_header){name, v, vlen};
        n++;
    }
    rc = vd_event_decode_binary(h, n, payload, len, kind, ev, err, errlen);
    if (rc < 0) {
        /* Say which mode: the attributes named are ce_ headers here. */
        size_t used = strlen(err);
        if (used + 1 < errlen) snprintf(err + used, errlen - used, " (binary mode: attributes are ce_ headers)");
    }
    rd_kafka_message_destroy(m);
    return rc;
}

void vd_dispatch_on_message(void *arg, rd_kafka_message_t *m, enum vd_topic_kind kind) {
    struct vd_dispatch *d = arg;
    struct vd_part *p = find_part(d, rd_kafka_topic_name(m->rkt), m->partition, 1, kind);
    if (d->stopping) {
        /* Fetched before the pause took hold: left uncommitted for the next start. */
        rd_kafka_message_destroy(m);
        return;
    }
    if (!p->assigned || vd_offsets_add(&p->offs, m->offset) < 0) {
        vd_debug("%s[%d]@%lld: not tracked (partition not assigned or offset repeated); skipped",
                 p->topic, (int)m->partition, (long long)m->offset);
        rd_kafka_message_destroy(m);
        return;
    }
    /* Decoded first into the dispatcher's whole event: the job keeps only what it holds. The
     * key that orders this job among its partition's is the request or volunteer it is about.
     * A message with a ce_specversion header is a binary-mode event. */
    size_t len = m->len;
    int64_t offset = m->offset;
    char *payload = malloc(len ? len : 1);
    if (!payload) abort();
    if (len) memcpy(payload, m->payload, len);
    char err[512];
    int rc = decode_message(m, payload, len, kind, d->scratch, err, sizeof err);
    struct vd_job *j = job_new(d, p, d->scratch);
    j->offset = offset;
    j->payload = payload;
    j->len = len;
    if (rc < 0) {
        j->error = strdup(err);
        if (!j->error) abort();
    } else {
        d->stats.inputs[j->ev.type]++;
        snprintf(j->key, sizeof j->key, "%s",
                 kind == VD_TOPIC_VOLUNTEERS ? j->ev.volunteer_id : j->ev.request_id);
    }
    job_enqueue(p, j);
    /* At the limit, fetching stops now, not at the next cron: memory stays where the config
     * says (librdkafka drops what it fetched for a paused partition, and fetches it again). */
    if (d->stats.inputs_in_memory >= (uint64_t)d->cfg->max_inflight) apply_backpressure(d);
    kick(p);
}

void vd_dispatch_on_delivered(void *arg, void *opaque) {
    struct vd_job *j = opaque;
    (void)arg;
    j->pending--;
    maybe_finish(j);
}

void vd_dispatch_on_redis_ready(struct vd_redis *r, void *arg) {
    struct vd_dispatch *d = arg;
    (void)r;
    for (struct vd_part *p = d->parts; p; p = p->next) kick(p);
    apply_backpressure(d);
}

/* ---- daemon-facing ---- */

struct vd_dispatch *vd_dispatch_new(uv_loop_t *loop, const struct vd_config *cfg) {
    struct vd_dispatch *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->scratch = malloc(sizeof *d->scratch);
    if (!d->scratch) {
        free(d);
        return NULL;
    }
    d->loop = loop;
    d->cfg = cfg;
    vd_index_init(&d->matching, offsetof(struct vd_job, ev.request_id), offsetof(struct vd_job, mnext));
    /* Internal jobs live in a part of their own; "(due)" can be no Kafka topic's name. */
    d->timers = find_part(d, "(due)", 0, 1, VD_TOPIC_REQUESTS);
    d->timers->assigned = 1;
    d->timers->internal = 1;
    static const double bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    vd_histogram_init(&d->stats.match_seconds, bounds, sizeof bounds / sizeof bounds[0]);
    static const double people[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400};
    vd_histogram_init(&d->stats.request_to_confirmed, people, sizeof people / sizeof people[0]);
    return d;
}

void vd_dispatch_attach(struct vd_dispatch *d, struct vd_redis *redis, struct vd_kafka *kafka) {
    d->redis = redis;
    d->kafka = kafka;
}

void vd_dispatch_cron(struct vd_dispatch *d) {
    for (struct vd_part *p = d->parts; p; p = p->next) kick(p);
    if (!d->round_calls) flush_settles(d); /* else the round's answer sends them */
    poll_due(d);
    sweep(d);
    vd_round_kick(d);
    apply_backpressure(d);
}

int vd_dispatch_intake_full(const struct vd_dispatch *d) { return d->full; }

void vd_dispatch_stop(struct vd_dispatch *d) {
    d->stopping = 1;
    for (struct vd_part *p = d->parts; p; p = p->next) drop_queue(p);
    vd_round_stop(d);
}

void vd_dispatch_flush(struct vd_dispatch *d) { flush_settles(d); }

int vd_dispatch_idle(const struct vd_dispatch *d) {
    /* Settles still to send count only while Redis can take them. */
    int settling = vd_redis_is_ready(d->redis) && (d->nsettles > 0 || d->settles_in_flight > 0);
    return d->running == 0 && d->stats.jobs_in_memory == 0 && !settling;
}

const struct vd_dispatch_stats *vd_dispatch_stats(const struct vd_dispatch *d) { return &d->stats; }

const char *vd_job_where_name(enum vd_job_where w) {
    static const char *const names[VD_WHERE__COUNT] = {"queued", "running", "round_wait", "round",
                                                       "acks"};
    return (unsigned)w < VD_WHERE__COUNT ? names[w] : "?";
}

void vd_dispatch_where(const struct vd_dispatch *d, uint64_t counts[VD_WHERE__COUNT]) {
    memset(counts, 0, VD_WHERE__COUNT * sizeof *counts);
    for (const struct vd_job *j = d->all; j; j = j->all_next) {
        enum vd_job_where w = j->stage == VD_STAGE_PUBLISHED ? VD_WHERE_ACKS
                              : j->pool ? (j->stage == VD_STAGE_QUEUED ? VD_WHERE_ROUND_WAIT : VD_WHERE_ROUND)
                              : j->stage == VD_STAGE_QUEUED ? VD_WHERE_QUEUED
                                                            : VD_WHERE_RUNNING;
        counts[w]++;
    }
}

void vd_dispatch_free(struct vd_dispatch *d) {
    if (!d) return;
    /* Jobs cut short by a late stop: their inputs stay uncommitted and come back. */
    while (d->all) job_free(d->all);
    vd_round_free(d);
    while (d->parts) {
        struct vd_part *p = d->parts;
        d->parts = p->next;
        drop_queue(p);
        vd_offsets_free(&p->offs);
        vd_index_free(&p->running);
        free(p->topic);
        free(p);
    }
    free(d->scratch);
    free(d);
}
