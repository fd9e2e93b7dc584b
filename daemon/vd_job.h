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
#include "vd_index.h"
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

/* A candidate edge of a request in a round: a volunteer who may serve it. */
struct vd_cand {
    char id[VD_ID_MAX + 1];
    double distance_m;
    int continuity; /* the resident's preferred volunteer, or the last who served them */
    int64_t cost;   /* metres, shaded by load and continuity (vd7_round computes it) */
    int radius;     /* the radius of the search that found them */
    int col;        /* the volunteer's column in the round's problem */
    int chosen;
};

/* One pool's matching rounds (the city, or one event): requests wait for the next round while
 * one is in flight; see vd_round.c. */
struct vd_pool {
    char event_id[VD_ID_MAX + 1]; /* "" = the city */
    struct vd_job *head, *tail;   /* waiting for the next round */
    int nwaiting;
    struct vd_round *round;       /* the round the next one waits for, or NULL */
    int searching;                /* round calls sent and not yet answered */
    int empty;                    /* the last answer found nobody in the pool */
    struct vd_pool *next;
};

struct vd_part {
    char *topic;
    int32_t partition;
    enum vd_topic_kind kind;
    int assigned;
    uint32_t gen;
    struct vd_offsets offs;
    struct vd_job *head, *tail; /* queued jobs, offset order */
    struct vd_index running;    /* jobs started and not yet through their Redis work, by key */
    int nrunning;
    int in_kick;
    int nparked; /* running jobs waiting in a matching round: not counted against concurrency */
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
    uint64_t started_us;
    int tick;      /* an internal job: the request's due time came (no input) */
    int abandoned; /* will not run here again; lives on only for Kafka's acks */
    /* The request being matched: &ev for its own vd.request.created, else decoded from the
     * record stored with it (req_own). */
    struct vd_event *req, *req_own;
    int open;             /* volunteers the request still needs (neither held nor offered) */
    long long settle_seq; /* the last fact published: settled once Kafka acknowledged it */
    /* matching in rounds (vd_round.c) */
    int matching;         /* its matching began (started_us is set) */
    int round_new;        /* its request is still to be admitted (its first round) */
    int rounds_empty;     /* rounds in a row that gave it nobody */
    uint64_t joined_ms;   /* when it joined its pool's waiting list */
    struct vd_pool *pool; /* the pool whose round it waits for or runs in; NULL otherwise */
    struct vd_job *pnext; /* next in the pool's waiting list */
    void *mnext;          /* next in its bucket of the matching set (vd_dispatch.matching) */
    int need;             /* the request's need, as the round read it */
    int radius, considered, more; /* reported: widest radius, fullest view (all rounds) */
    int considered_now;           /* volunteers this round looked at */
    int seen_m;                   /* this round saw every volunteer nearer than this */
    long long bound;              /* the solve's bound for its edges (vd_assign.h) */
    int cover_m;                  /* a widened search must see this far (0: not widened) */
    int lost_now;                 /* candidates this round's solve gave to greater need */
    int filtered[VD_FILTER__COUNT];
    struct vd_cand *cands; /* the round's candidate edges of the request */
    int ncands;
    char key[VD_ID_MAX + 1]; /* request or volunteer the event is about; "" if undecodable */
    struct vd_job *next;
    void *knext;                        /* next in its bucket of the partition's running index */
    struct vd_job *all_prev, *all_next; /* every live job, for teardown */
    struct vd_job *tprev, *tnext;       /* every live due run (tick), to find one by request */
    /* The decoded event, last: a job is allocated with the bytes its event holds
     * (vd_event_size()), without the room for skills and languages it does not have (4 KiB
     * for a whole struct vd_event). */
    struct vd_event ev;
};

#define VD_SETTLE_BATCH 16 /* settled requests per vd_settle call */
#define VD_SETTLE_HOLD 512 /* settles held while a round's call is in Redis (flush_settles()) */

struct vd_dispatch {
    uv_loop_t *loop;
    struct vd_event *scratch; /* a whole event: inputs are decoded here, then copied (job_new) */
    const struct vd_config *cfg;
    struct vd_redis *redis;
    struct vd_kafka *kafka;
    struct vd_part *parts;
    struct vd_job *all;
    struct vd_job *ticks; /* live due runs */
    int stopping;
    uint64_t running;        /* jobs started, parked in rounds included */
    int full;               /* daemon.max_inflight inputs in memory: intake paused */
    struct vd_part *timers;    /* internal jobs: requests whose due time came */
    int timer_jobs;
    int due_in_flight, sweep_in_flight;
    uint64_t last_sweep_ms;
    struct vd_pool *pools;   /* matching rounds by pool */
    struct vd_index matching; /* the jobs in a pool (waiting or in a round), by request: one per request */
    uv_timer_t round_timer;  /* a batch window ends */
    int round_timer_inited;
    struct vd_settle {
        char rid[VD_ID_MAX + 1];
        long long seq;
    } settles[VD_SETTLE_HOLD];
    int nsettles, settles_in_flight;
    int round_calls; /* round and widen calls sent and not yet answered, every pool's */
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
/* A round's call was answered (d->round_calls already counts it off): the settles held while
 * it was in Redis go now, written at once, so that Redis runs them while the daemon solves. */
void vd_dispatch_round_answered(struct vd_dispatch *d);

/* The job's Redis call failed (reply NULL or an error): it waits for Redis and runs again,
 * becomes a dead letter, or is retried, as for any call. */
void vd_job_redis_failed(struct vd_job *j, const redisReply *reply);
/* A running job waits in a matching round: it keeps its place in its key's order but not its
 * share of the partition's concurrency; unpark gives it back. */
void vd_job_park(struct vd_job *j);
void vd_job_unpark(struct vd_job *j);

/* ---- vd_round.c ---- */

/* The request of job j wants volunteers: it joins its pool's next round (j->round_new: and is
 * admitted there). The job continues from the round: vd_request_after_round(). */
void vd_round_join(struct vd_job *j);
/* 1 when a job of the request waits for a round or is in one (a due run would be its twin). */
int vd_round_holds(const struct vd_dispatch *d, const char *request_id);
/* Starts the rounds whose window has passed (from the daemon's cron and the round timer). */
void vd_round_kick(struct vd_dispatch *d);
/* Stopping: the requests waiting for a round are dropped (their inputs come back). */
void vd_round_stop(struct vd_dispatch *d);
void vd_round_free(struct vd_dispatch *d);

/* ---- vd_request.c ---- */

/* Runs a job: its input event's steps, or the due run of a request. */
void vd_request_run(struct vd_job *j);
/* The job's matching is over (its round said so): its Redis work ends. */
void vd_request_matched(struct vd_job *j);
/* Publishes the facts of a reply's list (array of "[+]n|kind|..." strings). */
void vd_request_publish_facts(struct vd_job *j, const redisReply *facts);
/* The widest search for the job's request: its max_distance_m narrows matching.radius_max_m. */
int vd_request_rmax(const struct vd_job *j);


/* ---- vd_publish.c ---- */

/* Publishes one fact of the request's log, "[+]n|kind|field|...": the outputs it stands for,
 * with ids that depend on the fact alone and `sequence` n. "+" marks news (counted in the
 * metrics); a fact without it is published again (a replay, or its first publication was not
 * settled). Facts this job published already are skipped. */
void vd_publish_fact(struct vd_job *j, const char *line, size_t len);
/* Tells the coordinator why their assignment of vid was refused (vd.notify.coordinator): the
 * fact seq of the request's log, or 0 when the request has no log (unknown request). */
void vd_publish_refused(struct vd_job *j, long long seq, const char *vid, const char *by,
                        const char *why);
/* Publishes the job's input to the dead-letter topic with error, one sentence. */
void vd_publish_dead_letter(struct vd_job *j, const char *error);
/* Counts an unmatched outcome by its reason. */
void vd_publish_count_reason(struct vd_dispatch *d, const char *reason);

#endif
