/* vd_request: what a job does, the steps of a request or a volunteer.
 *
 * A request's state (enum vd_state, common/vd_state.h) lives in Redis and only the Redis
 * Functions of daemon/vdispatch.lua move it; a job walks it one step, one Function call, at a
 * time:
 *   created   -> admit: the record (scheduled, or searching with the first search page)
 *   searching -> more pages / a wider radius (search), then offer with the ranked
 *                candidates: offered (or confirmed at once in direct mode)
 *             -> nobody left: finish (unmatched, or wait while offers are out)
 *   answers   -> respond: confirmed, or declined and a search for the next one
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

#define MAX_CLAIM 32       /* candidates offered to one vd_offer call */
#define MAX_CLAIM_ROUNDS 4 /* lost races before a request is declared unmatched: contention */
/* Skills or languages as stored: up to VD_MAX_TAGS IDs, comma-joined. */
#define TAGS_CSV_MAX (VD_MAX_TAGS * (VD_ID_MAX + 1))

static uint64_t now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static void tags_csv(const struct vd_tags *t, char *out, size_t cap) {
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < t->n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", t->v[i]);
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

/* Element i of an array reply as a comma-joined list of IDs, whole IDs only: a list too long
 * for buf loses its last entries, never the end of one (a cut "first_aid_lead" must not read
 * as "first_aid"). */
static void el_list(const redisReply *r, size_t i, char *buf, size_t cap) {
    buf[0] = '\0';
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements) return;
    const redisReply *e = r->element[i];
    if (e->type != REDIS_REPLY_STRING) return;
    size_t n = e->len;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && e->str[n] != ',') n--;
    }
    memcpy(buf, e->str, n);
    buf[n] = '\0';
}

/* ---- keys and common arguments ---- */

static void req_key(const struct vd_job *j, struct vd_args *a) {
    vd_argf(a, "%sreq/%s", j->d->cfg->redis_key_prefix, j->ev.request_id);
}

static void pool_key(const struct vd_job *j, char *out, size_t cap) {
    if (j->req->event_id[0])
        snprintf(out, cap, "%spool/ev/%s", j->d->cfg->redis_key_prefix, j->req->event_id);
    else
        snprintf(out, cap, "%spool/city", j->d->cfg->redis_key_prefix);
}

/* Skill sets to search (the pool's set per required skill): KEYS after the pool. */
static void skill_keys(const struct vd_job *j, struct vd_args *a, const char *pool) {
    for (int i = 0; i < j->req->skills.n; i++) vd_argf(a, "%s/s/%s", pool, j->req->skills.v[i]);
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
}

/* The search's own arguments: lat lon radius count max_points. Only a widened search is
 * bounded (the first radius is the operator's). */
static void search_args(const struct vd_job *j, struct vd_args *a, int radius) {
    const struct vd_config *cfg = j->d->cfg;
    vd_argf(a, "%.7f", j->req->location.lat);
    vd_argf(a, "%.7f", j->req->location.lon);
    vd_argf(a, "%d", radius);
    vd_argf(a, "%d", cfg->candidates);
    vd_argf(a, "%d", radius > cfg->radius_start_m ? cfg->max_search_points : 0);
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
        tags_csv(&ev->skills, skills, sizeof skills);
        tags_csv(&ev->languages, langs, sizeof langs);
        vd_arg(&a, skills);
        vd_arg(&a, langs);
        vd_argf(&a, "%d", ev->max_tasks_per_day);
        vd_arg(&a, ev->team);
        vd_arg(&a, ev->event_id);
    }
    vd_job_call(j, &a, on_volunteer_reply);
}

/* ---- requests: admit, search, offer, finish, respond, tick ---- */

static void search(struct vd_job *j);
static void offer(struct vd_job *j);
static void finish_unmatched(struct vd_job *j, enum vd_unmatched_reason reason);

static void match_done(struct vd_job *j) {
    struct vd_dispatch *d = j->d;
    if (j->matching) {
        uint64_t us = now_us() - j->started_us;
        d->stats.matches++;
        d->stats.match_latency_us_sum += us;
        vd_histogram_observe(&d->stats.match_seconds, (double)us / 1e6);
    }
    vd_job_redis_done(j);
}

static int excluded(const struct vd_job *j, const char *vid) {
    return j->exclude && vd_match_list_has(j->exclude, vid);
}

/* Appends the candidates of a search page, filters and ranks them with those still untried
 * from earlier pages. Volunteers this request already tried are dropped here. */
static void take_candidates(struct vd_job *j, const redisReply *r, size_t *got, double *far_m) {
    size_t n = r->elements > 4 ? (r->elements - 4) / 6 : 0;
    *got = n;
    struct vd_candidate *c = realloc(j->cands, (j->ncands + n) * sizeof *c);
    if (!c && j->ncands + n) abort();
    j->cands = c;
    struct vd_candidate *fresh = c + j->ncands;
    char buf[32];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t b = 4 + i * 6;
        struct vd_candidate *f = &fresh[m];
        memset(f, 0, sizeof *f);
        el(r, b, f->id, sizeof f->id);
        f->distance_m = strtod(el(r, b + 1, buf, sizeof buf), NULL);
        if (f->distance_m > *far_m || i == 0) *far_m = f->distance_m;
        if (excluded(j, f->id)) {
            j->mstats.considered++;
            j->mstats.filtered[VD_FILTER_TRIED]++;
            continue;
        }
        el_list(r, b + 2, f->skills, sizeof f->skills);
        el_list(r, b + 3, f->languages, sizeof f->languages);
        f->max_tasks = atoi(el(r, b + 4, buf, sizeof buf));
        f->tasks_24h = atoi(el(r, b + 5, buf, sizeof buf));
        m++;
    }
    size_t kept = vd_match_rank(j->req, fresh, m, j->d->cfg->max_tasks_per_day, &j->mstats);
    j->ncands += kept;
    /* Merge the fresh ranked run into the earlier ranked run (both small). */
    size_t total = j->ncands;
    for (size_t i = total - kept; i < total; i++) {
        struct vd_candidate tmp = j->cands[i];
        size_t k = i;
        while (k > 0 && j->cands[k - 1].score > tmp.score) {
            j->cands[k] = j->cands[k - 1];
            k--;
        }
        j->cands[k] = tmp;
    }
}

/* Decides a request's next step after a search page or an offer round: offer, read the next
 * page, widen the radius, or give up. Nobody unseen can be nearer than `horizon` (the radius
 * once it is exhausted, else the farthest candidate of the last page), so nobody unseen can
 * score better than horizon minus the preferred-volunteer bonus: only then are the best
 * candidates known to be the best, and offered. */
static void next_step(struct vd_job *j) {
    const struct vd_event *ev = j->req;
    size_t need = (size_t)(j->open > 0 ? j->open : 1);
    double bonus = ev->preferred_volunteer_id[0] ? VD_SCORE_PREFERRED_M : 0;
    double horizon = j->exhausted ? j->radius : j->page_far_m;
    int more = j->mstats.considered < j->d->cfg->candidates * 8;
    int last = j->exhausted && j->radius >= j->rmax;
    if (j->ncands >= need && (j->cands[need - 1].score <= horizon - bonus || !more || last)) {
        offer(j);
    } else if (more && !j->exhausted) {
        search(j); /* the next page at this radius */
    } else if (more && j->radius < j->rmax) {
        j->radius = j->radius * 2 < j->rmax ? j->radius * 2 : j->rmax;
        search(j);
    } else if (j->ncands) {
        offer(j); /* not enough for all: offer who there is, report the rest */
    } else {
        /* Those who lack the rare skill were never candidates; count them as filtered. */
        j->mstats.considered += j->lacking_skill;
        j->mstats.filtered[VD_FILTER_SKILLS] += j->lacking_skill;
        j->lacking_skill = 0;
        finish_unmatched(j, j->mstats.considered ? VD_UNMATCHED_NO_ELIGIBLE_VOLUNTEER
                                                 : VD_UNMATCHED_NO_VOLUNTEER_IN_RANGE);
    }
}

/* A search page arrived (from admit or search). */
static void on_page(struct vd_job *j, const redisReply *r) {
    char buf[32];
    long total = atol(el(r, 1, buf, sizeof buf));
    int dense = atoi(el(r, 3, buf, sizeof buf));
    if (dense) j->d->stats.dense_searches++;
    /* The search asked for the nearest seen + candidates; fewer means the radius is exhausted.
     * A dense page holds what the bounded probe saw, never the whole area: not exhausted. */
    j->exhausted = !dense && total < (long)j->seen + j->d->cfg->candidates;
    size_t got = 0;
    take_candidates(j, r, &got, &j->page_far_m);
    if (!got) j->page_far_m = j->radius;
    j->seen += (int)got;
    int without = atoi(el(r, 2, buf, sizeof buf));
    if (without > j->lacking_skill) j->lacking_skill = without;
    next_step(j);
}

static void on_search(struct vd_job *j, redisReply *r) { on_page(j, r); }

static void search(struct vd_job *j) {
    struct vd_args a;
    char pool[VD_ID_MAX + 80];
    pool_key(j, pool, sizeof pool);
    vd_args_fcall(&a, VD_FN("search"), 1 + j->req->skills.n, 1);
    vd_arg(&a, pool);
    skill_keys(j, &a, pool);
    vd_arg(&a, j->d->cfg->redis_key_prefix);
    search_args(j, &a, j->radius);
    vd_argf(&a, "%d", j->seen);
    vd_job_call(j, &a, on_search);
}

/* The widest search for the request: its own max_distance_m narrows matching.radius_max_m,
 * never widens it (one request must not make a search cover the whole city). */
static int request_rmax(const struct vd_job *j) {
    int rmax = j->d->cfg->radius_max_m;
    if (j->req->max_distance_m && j->req->max_distance_m < rmax) rmax = j->req->max_distance_m;
    return rmax;
}

/* Matching starts (again) from the first radius: after an admit, a decline or a timeout. */
static void start_matching(struct vd_job *j) {
    const struct vd_config *cfg = j->d->cfg;
    j->rmax = request_rmax(j);
    j->radius = cfg->radius_start_m < j->rmax ? cfg->radius_start_m : j->rmax;
    j->seen = 0;
    j->claim_rounds = 0;
    j->ncands = 0;
    j->lacking_skill = 0;
    j->exhausted = 0;
    memset(&j->mstats, 0, sizeof j->mstats);
    if (!j->matching) j->started_us = now_us();
    j->matching = 1;
}

/* Reads the common head of a request function's reply (see reply() in vdispatch.lua),
 * publishes its facts and returns its search flag; tag receives the reply's tag. */
static int take_step(struct vd_job *j, const redisReply *r, char *tag, size_t tagcap) {
    char buf[32];
    el(r, 0, tag, tagcap);
    j->open = atoi(el(r, 2, buf, sizeof buf));
    int want = atoi(el(r, 3, buf, sizeof buf));
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 6) {
        const redisReply *ex = r->element[4], *rq = r->element[5], *facts = r->element[6];
        free(j->exclude);
        j->exclude = ex->type == REDIS_REPLY_STRING ? strndup(ex->str, ex->len) : NULL;
        /* Jobs that are not the request's own event learn it from the record. */
        if (j->req == &j->ev && rq->type == REDIS_REPLY_STRING && rq->len) {
            char err[256];
            struct vd_event *req = calloc(1, sizeof *req);
            if (!req) abort();
            if (vd_event_decode(rq->str, rq->len, VD_TOPIC_REQUESTS, req, err, sizeof err) == 0) {
                j->req_own = req;
                j->req = req;
            } else {
                vd_error("request %s: its stored record does not decode: %s", j->ev.request_id, err);
                free(req);
                want = 0;
            }
        }
        for (size_t i = 0; facts->type == REDIS_REPLY_ARRAY && i < facts->elements; i++)
            if (facts->element[i]->type == REDIS_REPLY_STRING)
                vd_publish_fact(j, facts->element[i]->str, facts->element[i]->len);
    }
    if (want == 1 && j->req->type != VD_EV_REQUEST_CREATED) {
        vd_error("request %s: nothing to match with (no stored record)", j->ev.request_id);
        want = 0;
    }
    return want == 1;
}

/* After a step: search and offer when the request wants it, else the job's Redis work is
 * over. page is a search page that came with the reply, if any. */
static void after_step(struct vd_job *j, int want, const redisReply *page) {
    if (!want) {
        match_done(j);
        return;
    }
    start_matching(j);
    if (page && page->type == REDIS_REPLY_ARRAY && page->elements >= 4)
        on_page(j, page);
    else
        search(j);
}

static void on_admit(struct vd_job *j, redisReply *r) {
    char tag[16], state[32];
    int want = take_step(j, r, tag, sizeof tag);
    el(r, 1, state, sizeof state);
    if (strcmp(tag, "stale") == 0) {
        char err[300];
        j->d->stats.stale++;
        snprintf(err, sizeof err,
                 "time: the event is older than redis.request_ttl_s (%d s) and the request has "
                 "no record: it may have been served and its record expired, so it is not "
                 "matched again",
                 j->d->cfg->redis_request_ttl_s);
        vd_publish_dead_letter(j, err);
        vd_job_redis_done(j);
        return;
    }
    if (strcmp(tag, "replay") == 0) {
        j->d->stats.replays++;
        vd_info("request %s: already %s; publishing its recorded outcome again", j->ev.request_id,
                state);
    } else if (strcmp(tag, "resume") == 0) {
        vd_info("request %s: resuming a search an earlier run left unfinished", j->ev.request_id);
    } else if (strcmp(state, "scheduled") == 0) {
        j->d->stats.scheduled++;
        vd_info("request %s: scheduled", j->ev.request_id);
    }
    after_step(j, want, r->elements > 7 ? r->element[7] : NULL);
}

static void admit(struct vd_job *j) {
    const struct vd_event *ev = j->req;
    const struct vd_config *cfg = j->d->cfg;
    struct vd_args a;
    char pool[VD_ID_MAX + 80];
    char *rq = vd_event_request_record(ev);
    if (!rq) abort();
    pool_key(j, pool, sizeof pool);
    request_call(j, &a, VD_FN("admit"), 3 + ev->skills.n);
    vd_arg(&a, pool);
    skill_keys(j, &a, pool);
    request_args(j, &a);
    vd_argf(&a, "%d", ev->volunteers_needed);
    int64_t at = ev->not_before_ms ? ev->not_before_ms - cfg->schedule_lead_ms : 0;
    vd_argf(&a, "%lld", (long long)(at > 0 ? at : 0));
    vd_argf(&a, "%lld", (long long)ev->expires_at_ms);
    vd_argf(&a, "%lld", (long long)ev->time_ms);
    vd_arg(&a, rq);
    int rmax = request_rmax(j);
    search_args(j, &a, cfg->radius_start_m < rmax ? cfg->radius_start_m : rmax);
    vd_job_call(j, &a, on_admit);
    free(rq);
}

static void on_offer(struct vd_job *j, redisReply *r) {
    char tag[16], buf[32];
    int want = take_step(j, r, tag, sizeof tag);
    int made = atoi(el(r, 8, buf, sizeof buf));
    /* Whoever was not offered was taken meanwhile (or tired, or moved): never tried again
     * here. Those offered have left the pool, so the next page starts that much nearer. */
    size_t tried = j->ncands < MAX_CLAIM ? j->ncands : MAX_CLAIM;
    j->seen = (size_t)j->seen > tried ? j->seen - (int)tried : 0;
    j->ncands = 0;
    if (!want) {
        match_done(j);
        return;
    }
    if (made == 0 && ++j->claim_rounds >= MAX_CLAIM_ROUNDS) {
        finish_unmatched(j, VD_UNMATCHED_CONTENTION);
        return;
    }
    next_step(j);
}

static void offer(struct vd_job *j) {
    const struct vd_event *req = j->req;
    struct vd_args a;
    char pool[VD_ID_MAX + 80], skills[TAGS_CSV_MAX], langs[TAGS_CSV_MAX];
    pool_key(j, pool, sizeof pool);
    tags_csv(&req->skills, skills, sizeof skills);
    tags_csv(&req->languages, langs, sizeof langs);
    request_call(j, &a, VD_FN("offer"), 3);
    vd_arg(&a, pool);
    request_args(j, &a);
    vd_argf(&a, "%d", j->d->cfg->max_tasks_per_day);
    vd_argf(&a, "%.7f", req->location.lat);
    vd_argf(&a, "%.7f", req->location.lon);
    vd_argf(&a, "%d", j->rmax);
    vd_arg(&a, skills);
    vd_arg(&a, langs);
    for (size_t i = 0; i < j->ncands && i < MAX_CLAIM; i++) {
        vd_arg(&a, j->cands[i].id);
        vd_argf(&a, "%.1f/%d/%d", j->cands[i].distance_m, j->radius, j->mstats.considered);
    }
    vd_job_call(j, &a, on_offer);
}

static void on_finish(struct vd_job *j, redisReply *r) {
    char tag[16];
    take_step(j, r, tag, sizeof tag);
    if (strcmp(tag, "wait") == 0)
        vd_debug("request %s: nobody more to offer now; waiting for the outstanding answers",
                 j->ev.request_id);
    match_done(j);
}

static void finish_unmatched(struct vd_job *j, enum vd_unmatched_reason reason) {
    const struct vd_event *ev = j->req;
    json_t *filtered = json_object();
    for (int i = 0; i < VD_FILTER__COUNT; i++)
        if (j->mstats.filtered[i])
            json_object_set_new(filtered, vd_filter_name(i), json_integer(j->mstats.filtered[i]));
    json_t *data = json_pack("{s:s, s:s, s:i, s:i, s:o, s:i, s:i, s:s}", "request_id",
                             j->ev.request_id, "reason", vd_unmatched_reason_name(reason),
                             "radius_m", j->radius, "candidates_considered", j->mstats.considered,
                             "filtered", filtered, "volunteers_needed", ev->volunteers_needed,
                             "volunteers_missing", j->open, "priority", vd_priority_name(ev->priority));
    if (ev->service[0]) json_object_set_new(data, "service", json_string(ev->service));
    char *doc = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(data);
    if (!doc) abort();
    struct vd_args a;
    request_call(j, &a, VD_FN("finish"), 2);
    request_args(j, &a);
    vd_arg(&a, doc);
    vd_job_call(j, &a, on_finish);
    free(doc);
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

static void run_request(struct vd_job *j) {
    j->open = j->ev.volunteers_needed;
    if (check_horizon(j) < 0) return;
    admit(j);
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
    after_step(j, want, NULL);
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
    after_step(j, want, NULL);
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
    case VD_EV_OFFER_ACCEPTED:
    case VD_EV_OFFER_DECLINED:
    default:
        run_respond(j);
        break;
    }
}
