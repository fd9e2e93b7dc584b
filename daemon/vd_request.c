/* vd_request: what a job does, the steps of a request or a volunteer.
 *
 * A request's state (enum vd_state, common/vd_state.h) lives in Redis and only the Redis
 * Functions of daemon/vdispatch.lua move it; a job walks it one step, one Function call, at a
 * time:
 *   created   -> its pool's next matching round (vd_round.c), which admits it (the record:
 *                scheduled, or searching) and offers or confirms volunteers, or ends it
 *                unmatched
 *   answers   -> respond: confirmed, or declined and the next round for the open place
 *   due       -> tick, for a request whose time came (start, offer deadline, expiry, task
 *                timeout, a lapsed lease), taken from the due set by any instance
 *   cancel, complete
 * Every Function returns the facts to publish (the request's event log in Redis), which
 * vd_publish.c turns into outputs. The time every decision uses is Redis' own. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "vd_config.h"
#include "vd_job.h"
#include "vd_log.h"
#include "vd_lua.h"

/* Skills or languages as stored: up to VD_MAX_TAGS IDs, comma-joined. */
#define TAGS_CSV_MAX (VD_MAX_TAGS * (VD_ID_MAX + 1))

static uint64_t now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* Copies element i of an array reply as a string ("" when absent). */
static const char *el(const redisReply *r, size_t i, char *buf, size_t cap) {
    buf[0] = '\0';
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements) return buf;
    const redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
        snprintf(buf, cap, "%.*s", (int)e->len, e->str);
    else if (e->type == REDIS_REPLY_INTEGER)
        snprintf(buf, cap, "%lld", e->integer);
    return buf;
}


/* ---- keys and common arguments ---- */

static void req_key(const struct vd_job *j, struct vd_args *a) {
    vd_argf(a, "%sreq/%s", j->d->cfg->redis_key_prefix, j->ev.request_id);
}



/* FCALL fn with the request's hash and the due set as its first keys; the caller adds any
 * further keys, then request_args(). */
static void request_call(const struct vd_job *j, struct vd_args *a, const char *fn, int nkeys) {
    vd_args_fcall(a, fn, nkeys, 0);
    req_key(j, a);
    vd_argf(a, "%sdue", j->d->cfg->redis_key_prefix);
}

/* The ARGV every request function starts with (see context() in vdispatch.lua). A job that
 * is not the request's own vd.request.created asks for the request's stored description. */
static void request_args(const struct vd_job *j, struct vd_args *a) {
    const struct vd_config *cfg = j->d->cfg;
    vd_arg(a, cfg->redis_key_prefix);
    vd_arg(a, j->ev.request_id);
    vd_argf(a, "%d", cfg->redis_request_ttl_s);
    vd_argf(a, "%d", VD_LEASE_MS);
    vd_argf(a, "%d", cfg->max_offers);
    vd_argf(a, "%d", cfg->offer_timeout_ms);
    vd_argf(a, "%lld", (long long)cfg->task_timeout_s * 1000);
    vd_arg(a, j->ev.type == VD_EV_REQUEST_CREATED && !j->tick ? "0" : "1");
    vd_argf(a, "%d", cfg->radius_max_m);
}


/* ---- volunteers ---- */

static void on_volunteer_reply(struct vd_job *j, redisReply *r) {
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        vd_debug("volunteer %s: %s", j->ev.volunteer_id, r->str);
    vd_job_redis_done(j);
}

static void run_volunteer(struct vd_job *j) {
    const struct vd_event *ev = &j->ev;
    const char *pfx = j->d->cfg->redis_key_prefix;
    struct vd_args a;
    char skills[TAGS_CSV_MAX], langs[TAGS_CSV_MAX];
    const char *fn = ev->type == VD_EV_VOLUNTEER_AVAILABLE  ? VD_FN("vol_available")
                     : ev->type == VD_EV_VOLUNTEER_LOCATION ? VD_FN("vol_location")
                                                            : VD_FN("vol_unavailable");
    vd_args_fcall(&a, fn, 2, 0);
    vd_argf(&a, "%svol/%s", pfx, ev->volunteer_id);
    vd_argf(&a, "%svols", pfx);
    vd_arg(&a, pfx);
    vd_arg(&a, ev->volunteer_id);
    if (ev->type != VD_EV_VOLUNTEER_UNAVAILABLE) {
        vd_argf(&a, "%.7f", ev->location.lat);
        vd_argf(&a, "%.7f", ev->location.lon);
    }
    if (ev->type == VD_EV_VOLUNTEER_AVAILABLE) {
        vd_tags_csv(vd_event_skills(ev), skills, sizeof skills);
        vd_tags_csv(vd_event_languages(ev), langs, sizeof langs);
        vd_arg(&a, skills);
        vd_arg(&a, langs);
        vd_argf(&a, "%d", ev->max_tasks_per_day);
        vd_arg(&a, ev->team);
        vd_arg(&a, ev->event_id);
    }
    if (ev->type != VD_EV_VOLUNTEER_UNAVAILABLE) vd_argf(&a, "%d", j->d->cfg->radius_max_m);
    vd_job_call(j, &a, on_volunteer_reply);
}

/* ---- requests: matching (in rounds), respond, tick ---- */

void vd_request_matched(struct vd_job *j) {
    struct vd_dispatch *d = j->d;
    if (j->matching) {
        uint64_t us = now_us() - j->started_us;
        d->stats.matches++;
        d->stats.match_latency_us_sum += us;
        vd_histogram_observe(&d->stats.match_seconds, (double)us / 1e6);
    }
    vd_job_redis_done(j);
}

int vd_request_rmax(const struct vd_job *j) {
    int rmax = j->d->cfg->radius_max_m;
    if (j->req->max_distance_m && j->req->max_distance_m < rmax) rmax = j->req->max_distance_m;
    return rmax;
}

void vd_request_publish_facts(struct vd_job *j, const redisReply *facts) {
    for (size_t i = 0; facts && facts->type == REDIS_REPLY_ARRAY && i < facts->elements; i++)
        if (facts->element[i]->type == REDIS_REPLY_STRING)
            vd_publish_fact(j, facts->element[i]->str, facts->element[i]->len);
}

/* Reads the common head of a request function's reply (see reply() in vdispatch.lua),
 * publishes its facts and returns its search flag; tag receives the reply's tag. */
static int take_step(struct vd_job *j, const redisReply *r, char *tag, size_t tagcap) {
    char buf[32];
    el(r, 0, tag, tagcap);
    j->open = atoi(el(r, 2, buf, sizeof buf));
    int want = atoi(el(r, 3, buf, sizeof buf));
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 6) {
        const redisReply *rq = r->element[5];
        /* Jobs that are not the request's own event learn it from the record. */
        if (j->req == &j->ev && rq->type == REDIS_REPLY_STRING && rq->len) {
            char err[256];
            struct vd_event *req = j->d->scratch;
            if (vd_event_decode(rq->str, rq->len, VD_TOPIC_REQUESTS, req, err, sizeof err) == 0) {
                j->req_own = vd_event_copy(req);
                if (!j->req_own) abort();
                j->req = j->req_own;
            } else {
                vd_error("request %s: its stored record does not decode: %s", j->ev.request_id, err);
                want = 0;
            }
        }
        vd_request_publish_facts(j, r->element[6]);
    }
    if (want == 1 && j->req->type != VD_EV_REQUEST_CREATED) {
        vd_error("request %s: nothing to match with (no stored record)", j->ev.request_id);
        want = 0;
    }
    return want == 1;
}

/* After a step: the next matching round when the request wants volunteers, else the job's
 * Redis work is over. */
static void after_step(struct vd_job *j, int want) {
    if (want)
        vd_round_join(j);
    else
        vd_request_matched(j);
}

/* A not_before further ahead than matching.schedule_horizon_s is refused: a request must not
 * hold a record and a place in the due set for months. Returns 0, or -1 after the dead letter. */
static int check_horizon(struct vd_job *j) {
    const struct vd_event *ev = &j->ev;
    int64_t horizon_ms = (int64_t)j->d->cfg->schedule_horizon_s * 1000;
    if (!ev->not_before_ms || ev->not_before_ms <= (int64_t)(now_us() / 1000) + horizon_ms) return 0;
    char when[40], err[300];
    vd_time_format(ev->not_before_ms, when, sizeof when);
    snprintf(err, sizeof err,
             "data.not_before: %s is further ahead than matching.schedule_horizon_s (%d s); "
             "send the request closer to its time",
             when, j->d->cfg->schedule_horizon_s);
    j->d->stats.horizon_rejected++;
    vd_publish_dead_letter(j, err);
    vd_job_redis_done(j);
    return -1;
}

/* A new request: admitted and matched in its pool's next round. */
static void run_request(struct vd_job *j) {
    j->open = j->ev.volunteers_needed;
    if (check_horizon(j) < 0) return;
    j->round_new = 1;
    vd_round_join(j);
}

static void on_respond(struct vd_job *j, redisReply *r) {
    char tag[16], why[128];
    int want = take_step(j, r, tag, sizeof tag);
    if (strcmp(tag, "ignored") == 0) {
        j->d->stats.ignored_responses++;
        vd_info("offer %s of request %s to volunteer %s: %s ignored: %s", j->ev.offer_id,
                j->ev.request_id, j->ev.volunteer_id, vd_event_type_name(j->ev.type),
                el(r, 8, why, sizeof why));
    }
    after_step(j, want);
}

static void run_respond(struct vd_job *j) {
    struct vd_args a;
    request_call(j, &a, VD_FN("respond"), 2);
    request_args(j, &a);
    vd_arg(&a, j->ev.volunteer_id);
    vd_arg(&a, j->ev.offer_id);
    vd_arg(&a, j->ev.type == VD_EV_OFFER_ACCEPTED ? "accept" : "decline");
    vd_job_call(j, &a, on_respond);
}

static void on_tick(struct vd_job *j, redisReply *r) {
    char tag[16];
    int want = take_step(j, r, tag, sizeof tag);
    after_step(j, want);
}

/* A request whose due time came (scheduled start, offer deadline, expiry, task timeout, a
 * lapsed lease). */
static void run_tick(struct vd_job *j) {
    struct vd_args a;
    j->d->stats.due_runs++;
    request_call(j, &a, VD_FN("tick"), 2);
    request_args(j, &a);
    vd_job_call(j, &a, on_tick);
}

/* ---- a coordinator's assignment ---- */

static void on_assign(struct vd_job *j, redisReply *r) {
    char tag[16], why[160];
    int want = take_step(j, r, tag, sizeof tag);
    el(r, 8, why, sizeof why);
    if (strcmp(tag, "replay") == 0) {
        j->d->stats.replays++;
    } else if (strcmp(tag, "refused") == 0) {
        vd_info("request %s: assignment of volunteer %s by coordinator %s refused: %s",
                j->ev.request_id, j->ev.volunteer_id, j->ev.coordinator_id, why);
        /* An unknown request has no log to keep the refusal in: told here. */
        if (strcmp(why, "unknown request") == 0) {
            j->d->stats.assign_refused++;
            vd_publish_refused(j, 0, j->ev.volunteer_id, j->ev.coordinator_id, why);
        }
    } else {
        vd_info("request %s: volunteer %s assigned by coordinator %s", j->ev.request_id,
                j->ev.volunteer_id, j->ev.coordinator_id);
    }
    after_step(j, want);
}

static void run_assign(struct vd_job *j) {
    struct vd_args a;
    request_call(j, &a, VD_FN("assign"), 3);
    vd_argf(&a, "%sunstaffed", j->d->cfg->redis_key_prefix);
    request_args(j, &a);
    vd_arg(&a, j->ev.volunteer_id);
    vd_arg(&a, j->ev.coordinator_id);
    vd_arg(&a, j->ev.id); /* a redelivered assignment (the same event id) is a replay */
    vd_argf(&a, "%d", j->d->cfg->max_tasks_per_day);
    vd_job_call(j, &a, on_assign);
}

/* ---- cancel, complete ---- */

static void on_cancel(struct vd_job *j, redisReply *r) {
    char tag[16], state[32];
    take_step(j, r, tag, sizeof tag);
    if (strcmp(tag, "ended") == 0) {
        j->d->stats.ignored_responses++;
        vd_info("request %s: cancel ignored (already %s)", j->ev.request_id,
                el(r, 8, state, sizeof state));
    } else if (strcmp(tag, "replay") == 0) {
        /* Its outputs (the facts) are published again, with the same ids. */
        j->d->stats.replays++;
    } else {
        j->d->stats.cancelled++;
    }
    vd_job_redis_done(j);
}

static void run_cancel(struct vd_job *j) {
    struct vd_args a;
    request_call(j, &a, VD_FN("cancel"), 2);
    request_args(j, &a);
    vd_job_call(j, &a, on_cancel);
}

static void on_complete(struct vd_job *j, redisReply *r) {
    char tag[16], why[128];
    const char *rid = j->ev.request_id, *vid = j->ev.volunteer_id;
    take_step(j, r, tag, sizeof tag);
    if (strcmp(tag, "ignored") == 0) {
        j->d->stats.ignored_responses++;
        vd_info("task %s/%s: completion ignored: %s", rid, vid, el(r, 8, why, sizeof why));
    } else if (strcmp(tag, "gone") == 0) {
        j->d->stats.ignored_responses++;
        vd_info("task %s/%s: the request's record has expired; the volunteer is free", rid, vid);
    } else if (strcmp(tag, "replay") == 0) {
        j->d->stats.replays++;
    } else {
        j->d->stats.completed++;
    }
    vd_job_redis_done(j);
}

static void run_complete(struct vd_job *j) {
    struct vd_args a;
    request_call(j, &a, VD_FN("complete"), 2);
    request_args(j, &a);
    vd_arg(&a, j->ev.volunteer_id);
    vd_argf(&a, "%d", j->d->cfg->continuity_days * 86400);
    vd_job_call(j, &a, on_complete);
}

void vd_request_run(struct vd_job *j) {
    if (j->error) {
        vd_publish_dead_letter(j, j->error);
        vd_job_redis_done(j);
        return;
    }
    if (j->tick) {
        run_tick(j);
        return;
    }
    switch (j->ev.type) {
    case VD_EV_VOLUNTEER_AVAILABLE:
    case VD_EV_VOLUNTEER_LOCATION:
    case VD_EV_VOLUNTEER_UNAVAILABLE:
        run_volunteer(j);
        break;
    case VD_EV_REQUEST_CREATED:
        run_request(j);
        break;
    case VD_EV_REQUEST_CANCELLED:
        run_cancel(j);
        break;
    case VD_EV_TASK_COMPLETED:
        run_complete(j);
        break;
    case VD_EV_REQUEST_ASSIGN:
        run_assign(j);
        break;
    case VD_EV_OFFER_ACCEPTED:
    case VD_EV_OFFER_DECLINED:
    default:
        run_respond(j);
        break;
    }
}
