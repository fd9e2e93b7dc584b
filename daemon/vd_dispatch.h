/* vd_dispatch: the request life cycle that ties Kafka input, Redis state and Kafka output.
 *
 * Every consumed message becomes a job. Jobs of one partition overlap, except that jobs about
 * the same request or volunteer run in offset order. A job decodes its event (invalid: one
 * dead letter), runs its Redis Functions (a request is matched in its pool's rounds,
 * vd_round.c: vd7_round, then vd7_claim, for many requests at once), then produces its outputs. It is finished once Kafka acknowledged every
 * output; only then does its offset count toward the partition's commit watermark
 * (vd_offsets). A Redis outage (connection lost, or Redis up but refusing) puts the job back
 * at the head of its partition to run again once Redis takes writes; every Function is
 * idempotent by request_id, so running a job twice yields the same outcome and the same output
 * event ids. The files: vd_dispatch.c (queues, calls, back-pressure), vd_request.c (the steps),
 * vd_publish.c (the outputs); vd_job.h is what they share. */
#ifndef VD_DISPATCH_H
#define VD_DISPATCH_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <uv.h>

#include "vd_event.h"
#include "vd_match.h"
#include "vd_metrics.h"

struct vd_config;
struct vd_redis;
struct vd_kafka;
struct vd_dispatch;

/* Outcome reasons of vd.request.unmatched. */
enum vd_unmatched_reason {
    VD_UNMATCHED_NO_VOLUNTEER_IN_RANGE = 0, /* nobody available within the widest radius */
    VD_UNMATCHED_NO_ELIGIBLE_VOLUNTEER,     /* volunteers in range, all filtered out */
    VD_UNMATCHED_CONTENTION,                /* eligible volunteers kept being taken by others */
    VD_UNMATCHED_EXPIRED,                   /* expires_at passed before a match */
    VD_UNMATCHED_ALL_DECLINED,              /* offers declined or unanswered until none was left
                                               to make (max_offers, or nobody else in range) */
    VD_UNMATCHED_LOST_TO_GREATER_NEED,      /* eligible volunteers in range all went to requests
                                               in greater need */
    VD_UNMATCHED__COUNT
};

/* How offers ended (vd_offers_total{result}); "made" counts every offer. */
enum vd_offer_result {
    VD_OFFER_MADE = 0,
    VD_OFFER_ACCEPTED,
    VD_OFFER_DECLINED,
    VD_OFFER_TIMED_OUT,
    VD_OFFER_EXPIRED, /* the request expired while the offer was out */
    VD_OFFER__COUNT
};

/* What a Redis call was for (vd_redis_calls_by_kind_total{kind}). */
enum vd_call_kind {
    VD_CALL_STEP = 0, /* an input's or a due run's step: a volunteer event, an answer, a cancel... */
    VD_CALL_ROUND,    /* a matching round's first half (vd7_round) */
    VD_CALL_WIDEN,    /* more candidates for some of its requests (vd7_round again) */
    VD_CALL_CLAIM,    /* its second half (vd7_claim) */
    VD_CALL_SETTLE,   /* facts acknowledged by Kafka (batched) */
    VD_CALL_DUE,      /* taking due requests */
    VD_CALL_SWEEP,    /* sweeping silent volunteers */
    VD_CALL__COUNT
};

/* How long a running step may hold a request before any instance takes it up again: a
 * search in progress, or facts waiting for Kafka (see vd7_settle in vdispatch.lua). */
#define VD_LEASE_MS 5000

struct vd_dispatch_stats {
    uint64_t inputs[VD_EV__COUNT];
    uint64_t rejected;
    uint64_t confirmed;              /* volunteers confirmed */
    uint64_t unmatched[VD_UNMATCHED__COUNT];
    uint64_t replays;                /* requests that already had an outcome */
    uint64_t ignored_responses;      /* late, duplicate or mismatched responses */
    uint64_t cancelled, completed;
    uint64_t assigned, assign_refused; /* coordinators' assignments applied and refused */
    uint64_t offers[VD_OFFER__COUNT];
    uint64_t scheduled;              /* requests that waited for their not_before */
    uint64_t due_runs;               /* requests taken up because their due time came */
    uint64_t redis_calls;            /* every Redis call the dispatcher made */
    uint64_t calls[VD_CALL__COUNT];  /* the same, by kind */
    uint64_t redis_retries;          /* jobs retried after an unexpected Redis error */
    uint64_t redis_waits;            /* jobs put back to wait for Redis (down or refusing) */
    uint64_t jobs_in_memory;         /* input jobs and due runs */
    uint64_t inputs_in_memory;       /* input jobs: what daemon.max_inflight bounds */
    uint64_t inputs_high_water;      /* the most input jobs ever in memory at once */
    uint64_t task_timeouts;          /* volunteers released after matching.task_timeout_s */
    uint64_t stale;                  /* requests older than their record's TTL, not matched */
    uint64_t horizon_rejected;       /* not_before beyond matching.schedule_horizon_s */
    uint64_t dense_searches;         /* widened searches bounded by matching.max_search_points */
    uint64_t rounds_uncertain;       /* rounds claimed before every request saw far enough */
    uint64_t rounds;                 /* matching rounds started */
    uint64_t round_requests;         /* requests in them (a request may be in several) */
    uint64_t solve_us;               /* time spent solving rounds' assignments */
    uint64_t volunteers_swept;       /* volunteer records gone after redis.volunteer_ttl_s */
    uint64_t match_latency_us_sum, matches;
    struct vd_histogram match_seconds;
    struct vd_histogram request_to_confirmed; /* seconds, request's time to confirmation */
};

struct vd_dispatch *vd_dispatch_new(uv_loop_t *loop, const struct vd_config *cfg);
/* The Redis client and Kafka edge are created after the dispatcher (their callbacks lead
 * here); attach them before the loop runs. */
void vd_dispatch_attach(struct vd_dispatch *d, struct vd_redis *redis, struct vd_kafka *kafka);

/* Kafka edge callbacks (see struct vd_kafka_handler). */
void vd_dispatch_on_message(void *d, rd_kafka_message_t *m, enum vd_topic_kind kind);
void vd_dispatch_on_assign(void *d, const char *topic, int32_t partition, enum vd_topic_kind kind);
void vd_dispatch_on_revoke(void *d, const char *topic, int32_t partition, enum vd_topic_kind kind);
void vd_dispatch_on_delivered(void *d, void *opaque);
/* Redis client callback: Redis is (again) ready, start what waits. */
void vd_dispatch_on_redis_ready(struct vd_redis *r, void *d);

/* Periodic work from the daemon's cron: start waiting jobs, settle, take due requests, sweep
 * volunteers, apply back-pressure. */
void vd_dispatch_cron(struct vd_dispatch *d);
/* 1 while intake is paused because daemon.max_inflight inputs are in memory. */
int vd_dispatch_intake_full(const struct vd_dispatch *d);

/* Graceful stop: start no new job (queued ones stay uncommitted for the next owner). */
void vd_dispatch_stop(struct vd_dispatch *d);
/* While stopping: sends what is left to tell Redis (facts that reached Kafka). */
void vd_dispatch_flush(struct vd_dispatch *d);
/* 1 when no job is running and no output is waiting for its acknowledgement. */
int vd_dispatch_idle(const struct vd_dispatch *d);

const struct vd_dispatch_stats *vd_dispatch_stats(const struct vd_dispatch *d);

/* Where the jobs in memory are: queued in their partition, running an input's own Redis call,
 * waiting for their pool's next matching round, in a round, or done with Redis and waiting
 * for Kafka to acknowledge their outputs. */
enum vd_job_where {
    VD_WHERE_QUEUED = 0,
    VD_WHERE_RUNNING,
    VD_WHERE_ROUND_WAIT,
    VD_WHERE_ROUND,
    VD_WHERE_ACKS,
    VD_WHERE__COUNT
};
const char *vd_job_where_name(enum vd_job_where w);
/* Counts the jobs in memory by where they are (one walk of them: for a scrape, not a loop). */
void vd_dispatch_where(const struct vd_dispatch *d, uint64_t counts[VD_WHERE__COUNT]);
const char *vd_unmatched_reason_name(enum vd_unmatched_reason r);
const char *vd_offer_result_name(enum vd_offer_result r);
const char *vd_call_kind_name(enum vd_call_kind k);

void vd_dispatch_free(struct vd_dispatch *d);

#endif
