/* vd_job: what the dispatcher's three files share (private to daemon/).
 *
 *   vd_dispatch.c  how a job runs: partitions and their queues (order per key, concurrency),
 *                  Redis calls and their retries, back-pressure, offsets, settles, due polling
 *   vd_request.c   what a job does: the steps of a request or a volunteer, each one Redis
 *                  Function call (admit, search, offer, finish, respond, tick, cancel, complete)
 *   vd_publish.c   what a job says: facts of a request's log and dead letters as Kafka outputs
 *
 * A job is one consumed input message (or an internal due run of a request). It is created
 * and freed in vd_dispatch.c; vd_request.c drives its steps through vd_job_call() and ends
 * its Redis work with vd_job_redis_done(); vd_publish.c produces its outputs, each counted in
 * `pending` until Kafka acknowledges it. */
#ifndef VD_JOB_H
#define VD_JOB_H

#include <hiredis/hiredis.h>
#include <stdint.h>

#include "vd_dispatch.h"
#include "vd_event.h"
#include "vd_kafka.h"
#include "vd_match.h"
#include "vd_offsets.h"

struct vd_config;
struct vd_redis;

enum vd_job_stage {
    VD_STAGE_QUEUED = 0, /* waiting in its partition's queue */
    VD_STAGE_REDIS,      /* running: a Redis call is outstanding */
    VD_STAGE_PUBLISHED,  /* Redis work done; waiting for Kafka to acknowledge the outputs */
};

struct vd_part {
    char *topic;
    int32_t partition;
    enum vd_topic_kind kind;
    int assigned;
    uint32_t gen;
    struct vd_offsets offs;
    struct vd_job *head, *tail; /* queued jobs, offset order */
    struct vd_job *running;     /* jobs started and not yet through their Redis work (rnext list) */
    int nrunning;
    int in_kick;
    int internal;      /* the timers part: jobs without an input offset */
    uint64_t retry_at; /* loop time before which no job starts (after an unexpected error) */
    struct vd_part *next;
};

struct vd_job {
    struct vd_dispatch *d;
    struct vd_part *part;
    uint32_t gen;
    int64_t offset;
    char *payload;
    size_t len;
    enum vd_job_stage stage;
    int pending;      /* outputs produced, not yet acknowledged */
    int redis_errors; /* unexpected error replies so far */
    char *error;      /* why the message is invalid (it becomes a dead letter), or NULL */
    struct vd_event ev;
    uint64_t started_us;
    int tick;      /* an internal job: the request's due time came (no input) */
    int abandoned; /* will not run here again; lives on only for Kafka's acks */
    /* The request being matched: &ev for its own vd.request.created, else decoded from the
     * record stored with it (req_own). */
    struct vd_event *req, *req_own;
    int open;             /* volunteers the request still needs (neither held nor offered) */
    char *exclude;        /* comma-joined volunteers never to offer it again */
    long long settle_seq; /* the last fact published: settled once Kafka acknowledged it */
    /* matching state */
    int matching, radius, rmax, seen, claim_rounds, exhausted, dense;
    int lacking_skill; /* in range but without the rare skill searched (never candidates) */
    double page_far_m; /* distance of the farthest candidate of the last page */
    struct vd_match_stats mstats;
    struct vd_candidate *cands; /* eligible, ranked, not yet tried */
    size_t ncands;
    char key[VD_ID_MAX + 1]; /* request or volunteer the event is about; "" if undecodable */
    struct vd_job *next;
    struct vd_job *rprev, *rnext;       /* the partition's running list */
    struct vd_job *all_prev, *all_next; /* every live job, for teardown */
    struct vd_job *tprev, *tnext;       /* every live due run (tick), to find one by request */
};

#define VD_SETTLE_BATCH 16 /* settled requests per vd_settle call */

struct vd_dispatch {
    uv_loop_t *loop;
    const struct vd_config *cfg;
    struct vd_redis *redis;
    struct vd_kafka *kafka;
    struct vd_part *parts;
    struct vd_job *all;
    struct vd_job *ticks; /* live due runs */
    int stopping;
    uint64_t running;
    int full;               /* daemon.max_inflight inputs in memory: intake paused */
    struct vd_part *timers;    /* internal jobs: requests whose due time came */
    int timer_jobs;
    int due_in_flight, sweep_in_flight;
    uint64_t last_sweep_ms;
    struct vd_settle {
        char rid[VD_ID_MAX + 1];
        long long seq;
    } settles[VD_SETTLE_BATCH];
    int nsettles, settles_in_flight;
    struct vd_dispatch_stats stats;
};

/* ---- building a Redis command (FCALL and its arguments) ---- */

#define VD_ARGS_MAX 96

struct vd_args {
    int n;
    int overflow; /* an argument did not fit: the command must not be sent */
    const char *v[VD_ARGS_MAX];
    size_t l[VD_ARGS_MAX];
    char buf[16384];
    size_t used;
};

/* Starts "FCALL <library's fn> nkeys" (ro: FCALL_RO). */
void vd_args_fcall(struct vd_args *a, const char *fn, int nkeys, int ro);
/* Appends s, which must outlive the call (not copied). */
void vd_arg(struct vd_args *a, const char *s);
void vd_argn(struct vd_args *a, const char *s, size_t len);
/* Appends a formatted argument (copied into the args' buffer). */
void vd_argf(struct vd_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- vd_dispatch.c ---- */

typedef void vd_job_reply_fn(struct vd_job *j, redisReply *r);

/* Sends one command for job j; fn runs with a reply that is not an error. Error replies and
 * lost connections are handled here: the job waits and runs again (a Redis outage), becomes
 * a dead letter (its input is at fault), or is retried a few times (unexpected). */
void vd_job_call(struct vd_job *j, struct vd_args *a, vd_job_reply_fn *fn);
/* The Redis part of job j is over: it waits for its outputs' acknowledgements. */
void vd_job_redis_done(struct vd_job *j);

/* ---- vd_request.c ---- */

/* Runs a job: its input event's steps, or the due run of a request. */
void vd_request_run(struct vd_job *j);

/* ---- vd_publish.c ---- */

/* Publishes one fact of the request's log, "[+]n|kind|field|...": the outputs it stands for,
 * with ids that depend on the fact alone and `sequence` n. "+" marks news (counted in the
 * metrics); a fact without it is published again (a replay, or its first publication was not
 * settled). Facts this job published already are skipped. */
void vd_publish_fact(struct vd_job *j, const char *line, size_t len);
/* Publishes the job's input to the dead-letter topic with error, one sentence. */
void vd_publish_dead_letter(struct vd_job *j, const char *error);
/* Counts an unmatched outcome by its reason. */
void vd_publish_count_reason(struct vd_dispatch *d, const char *reason);

#endif
