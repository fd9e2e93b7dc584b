/* vd_round: matching rounds, per pool (the city, each event).
 *
 * A request that needs volunteers (new, its scheduled start reached, a place reopened by a
 * decline or a timeout) joins its pool's next round. A round starts when the previous one of
 * its pool has sent its claim (the two calls are ordered on the one connection: the next round
 * sees what the claim took, while the daemon publishes the previous round's outcomes; when
 * the previous round found its pool empty, as soon as its search came back, and while the
 * pool stays empty, two rounds' calls may be in Redis at once) and
 * matching.batch_window_ms has passed since its oldest request joined
 * (0: at once, so a lone request is matched without waiting and rounds grow by themselves
 * under load); a round holding an urgent request waits matching.urgent_window_ms at most. A
 * round takes a few Redis calls, whatever its size (up to matching.max_round requests):
 *   vd7_round  admits its new requests and returns every request's candidate edges (the
 *              nearest eligible volunteers, with distance and load), its need, and how far it
 *              saw every volunteer;
 *   (here)     the assignment is solved (common/vd_assign.c): the most need served first,
 *              then the least cost. The solve also says, per request, how cheap an edge it
 *              has not seen would have to be to change the answer; the requests that did not
 *              see that far are searched again, wider (vd7_round, "widen" calls, at most
 *              MAX_WIDENINGS), and the round solved again: so a round's answer is the optimum
 *              over every volunteer of the pool, not only over the candidates first fetched
 *              (unless the widenings ran out: vd_rounds_uncertain_total);
 *   vd7_claim  offers or confirms the chosen pairs, each re-checked atomically, and ends
 *              unmatched the requests nobody can serve.
 * A request whose chosen volunteer was taken meanwhile, or that lost its candidates to
 * requests in greater need while more may lie further out, joins the next round; after
 * MAX_EMPTY_ROUNDS rounds that gave it nobody it ends unmatched, saying why.
 *
 * The jobs of a round are parked: they keep their key's place in their partition's order, but
 * not its concurrency, so a burst makes rounds of hundreds. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "vd_assign.h"
#include "vd_config.h"
#include "vd_job.h"
#include "vd_json.h"
#include "vd_log.h"
#include "vd_lua.h"
#include "vd_redis.h"

#define MAX_EMPTY_ROUNDS 4 /* rounds in a row that gave a request nobody before it ends */
#define MAX_WIDENINGS 3    /* times a round widens searches that saw too little (count x2, x4, x8) */

struct vd_round {
    struct vd_dispatch *d;
    struct vd_pool *pool;
    struct vd_job **jobs;
    int n;
    struct vd_job **rows;    /* the jobs that want volunteers: the assignment's rows */
    int nrows;
    struct vd_job **wide;    /* rows whose candidates are being widened, in the call's order */
    int nwide;
    int widenings;           /* how many times the losers' candidates were widened */
    long long pool_size;     /* volunteers in the pool, as the last call saw it */
    int gathering;           /* its round call is not answered yet */
    struct vd_job **claimed; /* the jobs in the claim call, in its order */
    int nclaimed;
};

static uint64_t now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* ---- a growable argument list (a round's calls have thousands of arguments) ---- */

struct argv {
    int n, cap;
    size_t *off, *len;
    char *buf;
    size_t used, bufcap;
    int failed;
    const char **v; /* built by argv_ready() */
};

static void argv_addn(struct argv *a, const char *s, size_t len) {
    if (a->failed) return;
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 256;
        size_t *off = realloc(a->off, (size_t)cap * sizeof *off);
        if (off) a->off = off;
        size_t *l = off ? realloc(a->len, (size_t)cap * sizeof *l) : NULL;
        if (l) a->len = l;
        if (!off || !l) {
            a->failed = 1;
            return;
        }
        a->cap = cap;
    }
    if (a->used + len + 1 > a->bufcap) {
        size_t cap = a->bufcap ? a->bufcap : 8192;
        while (cap < a->used + len + 1) cap *= 2;
        char *b = realloc(a->buf, cap);
        if (!b) {
            a->failed = 1;
            return;
        }
        a->buf = b;
        a->bufcap = cap;
    }
    memcpy(a->buf + a->used, s, len);
    a->buf[a->used + len] = '\0';
    a->off[a->n] = a->used;
    a->len[a->n++] = len;
    a->used += len + 1;
}

static void argv_add(struct argv *a, const char *s) { argv_addn(a, s, strlen(s)); }

static void argv_addf(struct argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void argv_addf(struct argv *a, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= sizeof buf) {
        a->failed = 1;
        return;
    }
    argv_addn(a, buf, (size_t)w);
}

static const char **argv_ready(struct argv *a) {
    if (a->failed) return NULL;
    a->v = malloc(((size_t)a->n + 1) * sizeof *a->v);
    if (!a->v) return NULL;
    for (int i = 0; i < a->n; i++) a->v[i] = a->buf + a->off[i];
    return a->v;
}

static void argv_free(struct argv *a) {
    free(a->off);
    free(a->len);
    free(a->buf);
    free(a->v);
    memset(a, 0, sizeof *a);
}

/* ---- reading replies ---- */

static const redisReply *item(const redisReply *r, size_t i) {
    return r && r->type == REDIS_REPLY_ARRAY && i < r->elements ? r->element[i] : NULL;
}

static long long num(const redisReply *r, size_t i) {
    const redisReply *e = item(r, i);
    if (!e) return 0;
    if (e->type == REDIS_REPLY_INTEGER) return e->integer;
    if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) return atoll(e->str);
    return 0;
}

static const char *str(const redisReply *r, size_t i, char *buf, size_t cap) {
    const redisReply *e = item(r, i);
    buf[0] = '\0';
    if (e && (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)) {
        size_t n = e->len < cap ? e->len : cap - 1;
        memcpy(buf, e->str, n);
        buf[n] = '\0';
    }
    return buf;
}

/* ---- pools ---- */

static struct vd_pool *pool_of(struct vd_dispatch *d, const char *event_id) {
    for (struct vd_pool *p = d->pools; p; p = p->next)
        if (strcmp(p->event_id, event_id) == 0) return p;
    struct vd_pool *p = calloc(1, sizeof *p);
    if (!p) abort();
    snprintf(p->event_id, sizeof p->event_id, "%s", event_id);
    p->next = d->pools;
    d->pools = p;
    return p;
}

static void pool_key(const struct vd_dispatch *d, const struct vd_pool *p, char *out, size_t cap) {
    if (p->event_id[0])
        snprintf(out, cap, "%spool/ev/%s", d->cfg->redis_key_prefix, p->event_id);
    else
        snprintf(out, cap, "%spool/city", d->cfg->redis_key_prefix);
}

static void start_round(struct vd_dispatch *d, struct vd_pool *p);

/* When the pool's next round may start, in loop ms: its oldest request's join plus the
 * window (the urgent window when an urgent request waits); at once when a full round waits
 * (waiting longer would weigh no more requests together, only delay them). */
static uint64_t due_at(const struct vd_dispatch *d, const struct vd_pool *p) {
    if (p->nwaiting >= d->cfg->max_round) return 0;
    uint64_t window = (uint64_t)d->cfg->batch_window_ms;
    for (const struct vd_job *j = p->head; j && window > (uint64_t)d->cfg->urgent_window_ms; j = j->pnext)
        if (j->req->priority == VD_PRIO_URGENT) window = (uint64_t)d->cfg->urgent_window_ms;
    return p->head->joined_ms + window;
}

static void on_round_timer(uv_timer_t *t) { vd_round_kick(t->data); }

void vd_round_kick(struct vd_dispatch *d) {
    uint64_t now = uv_now(d->loop), next = 0;
    if (d->stopping) return;
    for (struct vd_pool *p = d->pools; p; p = p->next) {
        /* More than one round when the pool is empty (start_round()). */
        while (!p->round && p->head && !d->stopping) {
            uint64_t at = due_at(d, p);
            if (at > now) {
                if (!next || at < next) next = at;
                break;
            }
            if (!vd_redis_is_ready(d->redis)) break;
            start_round(d, p);
        }
    }
    if (!d->round_timer_inited) {
        uv_timer_init(d->loop, &d->round_timer);
        d->round_timer.data = d;
        d->round_timer_inited = 1;
    }
    if (next) uv_timer_start(&d->round_timer, on_round_timer, next - now, 0);
}

/* ---- the matching set: the jobs in pools, by request (a request is matched by one job) ---- */

int vd_round_holds(const struct vd_dispatch *d, const char *request_id) {
    return vd_index_find(&d->matching, request_id) != NULL;
}

/* Adds the job; returns 0, or -1 when another job of its request is there. */
static int matching_add(struct vd_dispatch *d, struct vd_job *j) {
    if (vd_index_find(&d->matching, j->ev.request_id)) return -1;
    vd_index_add(&d->matching, j);
    return 0;
}

static void matching_del(struct vd_dispatch *d, struct vd_job *j) { vd_index_del(&d->matching, j); }

void vd_round_join(struct vd_job *j) {
    struct vd_dispatch *d = j->d;
    if (!j->matching) {
        j->started_us = now_us();
        j->matching = 1;
    }
    if (!j->pool && d->stopping) {
        /* Stopping: a request already admitted stays under its lease (whichever instance runs
         * next takes it up); a new one was never admitted: its input comes back. */
        if (j->round_new)
            vd_job_redis_failed(j, NULL);
        else
            vd_request_matched(j);
        return;
    }
    if (!j->pool) {
        if (matching_add(d, j) < 0) {
            /* Another job of the request waits for a round or is in one (a due run that came
             * while an input's search was pending, or the reverse): that one searches. */
            vd_debug("request %s: already in a matching round", j->ev.request_id);
            vd_request_matched(j);
            return;
        }
        vd_job_park(j);
    }
    struct vd_pool *p = pool_of(d, j->req->event_id);
    j->pool = p;
    j->stage = VD_STAGE_QUEUED; /* waiting for the round (vd_jobs_by_stage tells it apart) */
    j->pnext = NULL;
    j->joined_ms = uv_now(d->loop);
    if (p->tail) p->tail->pnext = j; else p->head = j;
    p->tail = j;
    p->nwaiting++;
    if (!p->round) vd_round_kick(d);
}

/* The job leaves its round: its matching continues (or ends) as a running job again. */
static void leave(struct vd_job *j) {
    matching_del(j->d, j);
    j->pool = NULL;
    vd_job_unpark(j);
}

/* The job's places are still open after a round: the next round, unless the daemon stops
 * (the request stays under its lease; whichever instance runs next takes it up). */
static void rejoin(struct vd_job *j) {
    if (j->d->stopping) {
        leave(j);
        vd_request_matched(j);
        return;
    }
    vd_round_join(j);
}

/* ---- the round ---- */

static void round_free(struct vd_round *r) {
    free(r->jobs);
    free(r->rows);
    free(r->wide);
    free(r->claimed);
    free(r);
}

/* The pool's next round may start, unless it did already: once this round's claim was sent,
 * or its search found the pool empty. */
static void let_next_start(struct vd_round *r) {
    if (r->pool->round == r) r->pool->round = NULL;
    vd_round_kick(r->d);
}

/* The round is over. */
static void round_done(struct vd_round *r) {
    let_next_start(r);
    round_free(r);
}

/* A round's call failed: every job still in it waits for Redis as any failed call does. */
static void round_failed(struct vd_round *r, struct vd_job **jobs, int n, const redisReply *reply) {
    for (int i = 0; i < n; i++) {
        if (!jobs[i]) continue;
        leave(jobs[i]);
        vd_job_redis_failed(jobs[i], reply);
    }
}

/* The settings every round and claim call starts with (see settings() in vdispatch.lua). */
static void settings_args(struct vd_dispatch *d, struct vd_pool *p, struct argv *a, const char *fn) {
    const struct vd_config *cfg = d->cfg;
    char key[VD_ID_MAX + 80];
    argv_add(a, "FCALL");
    argv_add(a, fn);
    argv_add(a, "2");
    argv_addf(a, "%sdue", cfg->redis_key_prefix);
    pool_key(d, p, key, sizeof key);
    argv_add(a, key);
    argv_add(a, cfg->redis_key_prefix);
    argv_addf(a, "%d", cfg->redis_request_ttl_s);
    argv_addf(a, "%d", VD_LEASE_MS);
    argv_addf(a, "%d", cfg->max_offers);
    argv_addf(a, "%d", cfg->offer_timeout_ms);
    argv_addf(a, "%lld", (long long)cfg->task_timeout_s * 1000);
    argv_addf(a, "%d", cfg->max_tasks_per_day);
    argv_addf(a, "%d", cfg->radius_max_m);
}

/* Where the request is and whom it may have: lat lon rmax skills languages. */
static void where_args(struct vd_job *j, struct argv *a) {
    const struct vd_event *ev = j->req;
    char tags[VD_MAX_TAGS * (VD_ID_MAX + 1)];
    argv_addf(a, "%.7f", ev->location.lat);
    argv_addf(a, "%.7f", ev->location.lon);
    argv_addf(a, "%d", vd_request_rmax(j));
    vd_tags_csv(vd_event_skills(ev), tags, sizeof tags);
    argv_add(a, tags);
    vd_tags_csv(vd_event_languages(ev), tags, sizeof tags);
    argv_add(a, tags);
}

/* The request's place in a round call (RFIELDS in vdispatch.lua). */
static void request_args(struct vd_job *j, struct argv *a) {
    const struct vd_config *cfg = j->d->cfg;
    const struct vd_event *ev = j->req;
    argv_add(a, j->ev.request_id);
    argv_add(a, j->round_new ? "1" : "0");
    where_args(j, a);
    argv_addf(a, "%d", ev->volunteers_needed);
    int64_t at = ev->not_before_ms ? ev->not_before_ms - cfg->schedule_lead_ms : 0;
    argv_addf(a, "%lld", (long long)(at > 0 ? at : 0));
    argv_addf(a, "%lld", (long long)ev->expires_at_ms);
    argv_addf(a, "%lld", (long long)ev->time_ms);
    if (j->round_new) {
        char *rq = vd_event_request_record(ev);
        if (!rq) abort();
        argv_add(a, rq);
        free(rq);
        struct vd_need_weights w = {{cfg->need_urgent, cfg->need_high, cfg->need_normal, cfg->need_low},
                                    cfg->need_per_decade_over_60, cfg->need_lives_alone,
                                    cfg->need_low_income, cfg->need_disability};
        argv_addf(a, "%d", vd_match_need(ev, &w));
    } else {
        argv_add(a, "");
        argv_add(a, "0");
    }
    argv_add(a, ev->preferred_volunteer_id);
    argv_add(a, ev->resident_id);
    argv_addf(a, "%d", j->cover_m);
}

static void on_gathered(struct vd_redis *rc, redisReply *reply, void *arg);

/* Sends vd7_round for jobs[0..n): count candidates each; cb gets the reply. On a synchronous
 * failure the jobs wait for Redis and the round ends (freed): returns -1. */
static int gather(struct vd_round *r, struct vd_job **jobs, int n, int count, vd_redis_cb *cb) {
    struct vd_dispatch *d = r->d;
    const struct vd_config *cfg = d->cfg;
    struct argv a = {0};
    settings_args(d, r->pool, &a, VD_FN("round"));
    argv_addf(&a, "%d", cfg->radius_start_m);
    argv_addf(&a, "%d", count);
    argv_addf(&a, "%d", cfg->max_search_points);
    argv_addf(&a, "%d", cfg->load_cost_m);
    argv_addf(&a, "%d", cfg->continuity_bonus_m);
    /* A round of one (no widening, nothing given up on: see claim_args()) claims its certain
     * choice in the same call: a lone request takes one call and one round trip, not two. */
    argv_add(&a, cb == on_gathered && n == 1 && !jobs[0]->rounds_empty ? "1" : "0");
    argv_addf(&a, "%d", n);
    for (int i = 0; i < n; i++) request_args(jobs[i], &a);
    const char **argv = argv_ready(&a);
    d->stats.redis_calls++;
    d->stats.calls[cb == on_gathered ? VD_CALL_ROUND : VD_CALL_WIDEN]++;
    if (cb == on_gathered) r->pool->searching++;
    d->round_calls++;
    if (!argv || vd_redis_command(d->redis, cb, r, a.n, argv, a.len) < 0) {
        argv_free(&a);
        if (cb == on_gathered) r->pool->searching--;
        d->round_calls--;
        round_failed(r, r->rows ? r->rows : r->jobs, r->rows ? r->nrows : r->n, NULL);
        round_done(r);
        return -1;
    }
    argv_free(&a);
    return 0;
}

static void start_round(struct vd_dispatch *d, struct vd_pool *p) {
    const struct vd_config *cfg = d->cfg;
    struct vd_round *r = calloc(1, sizeof *r);
    int n = p->nwaiting < cfg->max_round ? p->nwaiting : cfg->max_round;
    if (!r || !(r->jobs = malloc((size_t)n * sizeof *r->jobs))) abort();
    r->d = d;
    r->pool = p;
    for (int i = 0; i < n; i++) {
        struct vd_job *j = p->head;
        p->head = j->pnext;
        if (!p->head) p->tail = NULL;
        p->nwaiting--;
        j->pnext = NULL;
        r->jobs[r->n++] = j;
    }
    p->round = r;
    d->stats.rounds++;
    d->stats.round_requests += (uint64_t)r->n;
    for (int i = 0; i < r->n; i++) {
        r->jobs[i]->stage = VD_STAGE_REDIS;
        r->jobs[i]->cover_m = 0;
    }
    r->gathering = 1;
    if (gather(r, r->jobs, r->n, cfg->candidates, on_gathered) < 0) return;
    /* The pool was empty at the last answer: this round will most likely end its requests
     * unmatched in its own call, so the next need not wait for its answer. Two round calls
     * queue in Redis, which runs the next while the daemon publishes this one's outcomes (a
     * surge that used the pool up ends at Redis's pace, not one round trip after another).
     * Should a volunteer join meanwhile, both rounds may choose them: the claims check again
     * in Redis, and the one that lost joins the next round. */
    if (p->empty && p->searching < 2 && p->round == r) p->round = NULL;
}

/* ---- after vd7_round: the edges, the solve ---- */

/* Reads one request's entry of the round's reply; returns 1 when it is a row of the
 * assignment (it wants volunteers and may have edges), 2 when the call claimed for it at once
 * and places are still open (it joins the next round, as after a claim), 0 when its matching
 * is over. */
static int take_entry(struct vd_round *r, struct vd_job *j, const redisReply *e) {
    struct vd_dispatch *d = j->d;
    char tag[16], state[32];
    str(e, 0, tag, sizeof tag);
    str(e, 1, state, sizeof state);
    j->round_new = 0;
    if (strcmp(tag, "stale") == 0) {
        char err[300];
        d->stats.stale++;
        snprintf(err, sizeof err,
                 "time: the event is older than redis.request_ttl_s (%d s) and the request has "
                 "no record: it may have been served and its record expired, so it is not "
                 "matched again",
                 d->cfg->redis_request_ttl_s);
        vd_publish_dead_letter(j, err);
        return 0;
    }
    if (strcmp(tag, "replay") == 0) {
        d->stats.replays++;
        vd_info("request %s: already %s; publishing its recorded outcome again", j->ev.request_id, state);
    } else if (strcmp(tag, "resume") == 0) {
        vd_info("request %s: resuming a search an earlier run left unfinished", j->ev.request_id);
    } else if (strcmp(tag, "new") == 0 && strcmp(state, "scheduled") == 0) {
        d->stats.scheduled++;
        vd_info("request %s: scheduled", j->ev.request_id);
    }
    vd_request_publish_facts(j, item(e, 4));
    j->open = (int)num(e, 2);
    if (num(e, 3) != 1) return 0;
    j->considered_now = (int)num(e, 6);
    /* What an unmatched outcome reports: the widest radius reached, and the fullest view of
     * the candidates (a later round sees fewer: those the request holds left the pool). */
    if ((int)num(e, 5) > j->radius) j->radius = (int)num(e, 5);
    if ((int)num(e, 6) >= j->considered) {
        j->considered = (int)num(e, 6);
        int lost = j->filtered[VD_FILTER_LOST];
        memset(j->filtered, 0, sizeof j->filtered);
        j->filtered[VD_FILTER_LOST] = lost;
        const redisReply *fl = item(e, 7);
        for (size_t i = 0; fl && fl->type == REDIS_REPLY_ARRAY && i + 1 < fl->elements; i += 2) {
            const redisReply *name = fl->element[i];
            int f = name->type == REDIS_REPLY_STRING ? vd_filter_parse(name->str, name->len) : -1;
            if (f >= 0) j->filtered[f] += (int)num(fl, i + 1);
        }
    }
    j->need = (int)num(e, 8);
    j->more = (int)num(e, 9);
    j->seen_m = (int)num(e, 12);
    r->pool_size = num(e, 13);
    if (num(e, 11)) d->stats.dense_searches++;
    long long made = num(e, 14);
    if (made >= 0) { /* claimed at once; more places to fill */
        j->rounds_empty = made > 0 ? 0 : j->rounds_empty + 1;
        return 2;
    }
    const redisReply *ed = item(e, 10);
    int n = ed && ed->type == REDIS_REPLY_ARRAY ? (int)(ed->elements / 5) : 0;
    free(j->cands);
    j->cands = n ? calloc((size_t)n, sizeof *j->cands) : NULL;
    if (n && !j->cands) abort();
    j->ncands = n;
    char buf[64];
    for (int i = 0; i < n; i++) {
        struct vd_cand *c = &j->cands[i];
        size_t b = (size_t)i * 5;
        str(ed, b, c->id, sizeof c->id);
        c->distance_m = strtod(str(ed, b + 1, buf, sizeof buf), NULL);
        c->continuity = (int)num(ed, b + 2);
        long long cost = num(ed, b + 3);
        c->cost = cost < 0 ? 0 : cost > VD_ASSIGN_MAX_COST ? VD_ASSIGN_MAX_COST : cost;
        c->radius = (int)num(ed, b + 4);
    }
    return 1;
}

/* Volunteers by ID to columns: an open-addressing table sized for the round. */
struct cols {
    const char **id;
    int *col;
    size_t cap;
    int n;
};

static int col_of(struct cols *t, const char *id) {
    size_t i = (size_t)vd_index_hash(id) & (t->cap - 1);
    while (t->id[i]) {
        if (strcmp(t->id[i], id) == 0) return t->col[i];
        i = (i + 1) & (t->cap - 1);
    }
    t->id[i] = id;
    t->col[i] = t->n;
    return t->n++;
}

static int by_cost(const void *a, const void *b) {
    const struct vd_cand *x = a, *y = b;
    if (x->chosen != y->chosen) return y->chosen - x->chosen; /* chosen first */
    return x->cost < y->cost ? -1 : x->cost > y->cost;
}

/* Solves the round's assignment over the rows; marks each job's chosen candidates. */
static void solve(struct vd_round *r) {
    struct vd_dispatch *d = r->d;
    struct vd_job **rows = r->rows;
    int nrows = r->nrows;
    int nedges = 0;
    for (int i = 0; i < nrows; i++) nedges += rows[i]->ncands;
    size_t cap = 16;
    while (cap < (size_t)nedges * 2) cap *= 2;
    struct cols t = {calloc(cap, sizeof(char *)), calloc(cap, sizeof(int)), cap, 0};
    int *slots = malloc(((size_t)nrows + 1) * sizeof *slots);
    int64_t *value = malloc(((size_t)nrows + 1) * sizeof *value);
    struct vd_assign_edge *edges = malloc(((size_t)nedges + 1) * sizeof *edges);
    unsigned char *chosen = malloc((size_t)nedges + 1);
    int64_t *bound = malloc(((size_t)nrows + 1) * sizeof *bound);
    if (!t.id || !t.col || !slots || !value || !edges || !chosen || !bound) abort();
    int e = 0;
    for (int i = 0; i < nrows; i++) {
        struct vd_job *j = rows[i];
        slots[i] = j->open;
        value[i] = (int64_t)j->need + 1;
        if (value[i] > VD_ASSIGN_MAX_VALUE) value[i] = VD_ASSIGN_MAX_VALUE;
        for (int k = 0; k < j->ncands; k++) {
            j->cands[k].col = col_of(&t, j->cands[k].id);
            edges[e++] = (struct vd_assign_edge){i, j->cands[k].col, j->cands[k].cost};
        }
    }
    /* Closed: every volunteer of the pool is a column, so nobody unseen is free (by count:
     * the pool as the last call saw it; rows not widened then keep earlier edges, so a pool
     * that lost one volunteer and gained another between calls may pass for closed: at worst
     * a round less than optimal, never a wrong claim, which is checked again in Redis). */
    int closed = r->pool_size == t.n;
    uint64_t t0 = now_us();
    struct vd_assign_stats st;
    if (vd_assign_solve(nrows, slots, value, t.n, edges, nedges, chosen, closed, bound, &st) < 0)
        vd_error("round of %d requests: the assignment could not be solved (out of memory or "
                 "out of range); nobody is offered in it", nrows);
    uint64_t took = now_us() - t0;
    d->stats.solve_us += took;
    int open_rows = 0;
    for (int i = 0; i < nrows; i++) open_rows += rows[i]->more && bound[i] > rows[i]->seen_m;
    vd_debug("round of %d requests (solve %d): %d places, %d volunteers of %lld in the pool, %d "
             "edges: %d places filled, %d requests not certified; %.1f ms", nrows,
             r->widenings + 1, st.places, t.n, r->pool_size, nedges, st.filled, open_rows,
             took / 1000.0);
    e = 0;
    for (int i = 0; i < nrows; i++) {
        struct vd_job *j = rows[i];
        j->bound = bound[i];
        for (int k = 0; k < j->ncands; k++) j->cands[k].chosen = chosen[e++];
        if (j->ncands > 1) qsort(j->cands, (size_t)j->ncands, sizeof *j->cands, by_cost);
    }
    /* Who lost their candidates to a request in greater need: a column's winner by need. */
    int *winner_need = malloc(((size_t)t.n + 1) * sizeof *winner_need);
    if (!winner_need) abort();
    for (int c = 0; c < t.n; c++) winner_need[c] = -1;
    for (int i = 0; i < nrows; i++)
        for (int k = 0; k < rows[i]->ncands && rows[i]->cands[k].chosen; k++)
            winner_need[rows[i]->cands[k].col] = rows[i]->need;
    for (int i = 0; i < nrows; i++) {
        struct vd_job *j = rows[i];
        j->lost_now = 0;
        for (int k = 0; k < j->ncands; k++)
            if (!j->cands[k].chosen && winner_need[j->cands[k].col] > j->need) j->lost_now++;
    }
    free(winner_need);
    free(t.id);
    free(t.col);
    free(slots);
    free(value);
    free(edges);
    free(chosen);
    free(bound);
}

/* The outcome document of a request that ends unmatched (vd7_claim completes it). */
static char *unmatched_doc(struct vd_job *j, enum vd_unmatched_reason reason) {
    const struct vd_event *ev = j->req;
    json_t *filtered = json_object();
    for (int i = 0; i < VD_FILTER__COUNT; i++)
        if (j->filtered[i])
            json_object_set_new(filtered, vd_filter_name(i), json_integer(j->filtered[i]));
    json_t *data = json_pack("{s:s, s:s, s:i, s:i, s:o, s:i, s:i, s:s}", "request_id",
                             j->ev.request_id, "reason", vd_unmatched_reason_name(reason),
                             "radius_m", j->radius, "candidates_considered", j->considered,
                             "filtered", filtered, "volunteers_needed", ev->volunteers_needed,
                             "volunteers_missing", j->open, "priority", vd_priority_name(ev->priority));
    if (ev->service[0]) json_object_set_new(data, "service", json_string(ev->service));
    char *doc = vd_json_dumps(data, 0);
    json_decref(data);
    if (!doc) abort();
    return doc;
}

/* What a row of the assignment asks of vd7_claim: offers to its chosen volunteers, an
 * unmatched outcome, or nothing yet (it joins the next round). Returns 1 when it is in the
 * claim call. */
static int claim_args(struct vd_job *j, struct argv *a) {
    int chosen = 0;
    while (chosen < j->ncands && j->cands[chosen].chosen) chosen++;
    enum vd_unmatched_reason reason = VD_UNMATCHED__COUNT;
    if (!chosen && j->lost_now > j->filtered[VD_FILTER_LOST])
        j->filtered[VD_FILTER_LOST] = j->lost_now; /* the most a round gave to greater need */
    if (chosen && j->rounds_empty >= MAX_EMPTY_ROUNDS) {
        /* Chosen round after round, but taken each time before its offer: give up. */
        vd_warn("request %s: its chosen volunteers were taken before the offer %d rounds in a "
                "row; it ends unmatched", j->ev.request_id, j->rounds_empty);
        reason = VD_UNMATCHED_CONTENTION;
    } else if (!chosen) {
        if (!j->ncands)
            /* Nobody left: those it could have had went to greater need in an earlier round. */
            reason = j->filtered[VD_FILTER_LOST]   ? VD_UNMATCHED_LOST_TO_GREATER_NEED
                     : j->considered_now           ? VD_UNMATCHED_NO_ELIGIBLE_VOLUNTEER
                                                   : VD_UNMATCHED_NO_VOLUNTEER_IN_RANGE;
        else if (j->more && j->rounds_empty + 1 < MAX_EMPTY_ROUNDS)
            return 0; /* others were chosen now; more may lie further out: the next round */
        else
            reason = j->filtered[VD_FILTER_LOST] ? VD_UNMATCHED_LOST_TO_GREATER_NEED
                                                 : VD_UNMATCHED_CONTENTION;
    }
    argv_add(a, j->ev.request_id);
    where_args(j, a);
    if (reason != VD_UNMATCHED__COUNT) {
        char *doc = unmatched_doc(j, reason);
        argv_add(a, "finish");
        argv_add(a, "1");
        argv_add(a, doc);
        free(doc);
        return 1;
    }
    argv_add(a, "offer");
    argv_addf(a, "%d", chosen);
    for (int k = 0; k < chosen; k++) {
        argv_add(a, j->cands[k].id);
        argv_addf(a, "%.1f/%d/%d", j->cands[k].distance_m, j->cands[k].radius, j->considered);
    }
    return 1;
}

static void on_claimed(struct vd_redis *rc, redisReply *reply, void *arg);

/* A row whose candidates may be too few for the best assignment: the solve's bound says an
 * edge it has not seen could still improve the round (vd_assign.h), and more lie beyond what
 * it saw. Its search is widened (the widening's count is twice the last) to cover the bound,
 * or, when a place is unserved and any volunteer might do, to its count nearest; and the
 * round is solved again, before anything is claimed. Returns 1 when it is. */
static int needs_wider(struct vd_job *j) {
    if (!j->more || j->bound <= j->seen_m) return 0;
    int rmax = vd_request_rmax(j);
    j->cover_m = j->bound >= VD_ASSIGN_UNBOUNDED ? 0 : j->bound < rmax ? (int)j->bound : rmax;
    return 1;
}

static void on_widened(struct vd_redis *rc, redisReply *reply, void *arg);
static void claim(struct vd_round *r);

/* Solves the round; widens the losers' candidates (MAX_WIDENINGS times at most), then claims. */
static void assign(struct vd_round *r) {
    struct vd_dispatch *d = r->d;
    solve(r);
    free(r->wide);
    r->wide = malloc(((size_t)r->nrows + 1) * sizeof *r->wide);
    if (!r->wide) abort();
    r->nwide = 0;
    for (int i = 0; i < r->nrows; i++)
        if (needs_wider(r->rows[i])) r->wide[r->nwide++] = r->rows[i];
    if (r->nwide && r->widenings < MAX_WIDENINGS && !d->stopping) {
        r->widenings++;
        gather(r, r->wide, r->nwide, d->cfg->candidates << r->widenings, on_widened);
        return;
    }
    if (r->nwide) d->stats.rounds_uncertain++;
    claim(r);
}

/* Takes the entries of a gather reply: rows stay rows, the others' matching is over. */
static void take_rows(struct vd_round *r, struct vd_job **jobs, int n, const redisReply *reply,
                      int first) {
    if (first) {
        r->rows = malloc(((size_t)r->n + 1) * sizeof *r->rows);
        if (!r->rows) abort();
        r->nrows = 0;
    }
    for (int i = 0; i < n; i++) {
        struct vd_job *j = jobs[i];
        int taken = take_entry(r, j, reply->element[i]);
        if (taken == 1) {
            if (first) r->rows[r->nrows++] = j;
            continue;
        }
        if (taken == 2) { /* first only: a widening never claims at once */
            rejoin(j);
            continue;
        }
        if (!first) /* no longer a row */
            for (int k = 0; k < r->nrows; k++)
                if (r->rows[k] == j) r->rows[k] = r->rows[--r->nrows];
        leave(j);
        vd_request_matched(j);
    }
}

/* A round or widening call was answered. Returns 1 for an answer to take (the settles held
 * while the call was in Redis go first); else every job in the round waits for Redis, the round
 * is over and r is freed. */
static int gather_reply_ok(struct vd_round *r, const redisReply *reply, int n, struct vd_job **jobs,
                           int njobs) {
    r->d->round_calls--;
    if (reply && reply->type == REDIS_REPLY_ARRAY && (int)reply->elements == n) {
        vd_dispatch_round_answered(r->d);
        return 1;
    }
    if (reply && reply->type != REDIS_REPLY_ERROR)
        vd_error("round of %d requests: unexpected reply from %s", n, VD_FN("round"));
    round_failed(r, jobs, njobs, reply && reply->type == REDIS_REPLY_ERROR ? reply : NULL);
    round_done(r);
    return 0;
}

static void on_gathered(struct vd_redis *rc, redisReply *reply, void *arg) {
    struct vd_round *r = arg;
    (void)rc;
    struct vd_pool *p = r->pool;
    p->searching--;
    r->gathering = 0;
    if (!gather_reply_ok(r, reply, r->n, r->jobs, r->n)) return;
    /* Nobody in the pool (a surge used it up; every entry carries the pool's size): this
     * round's claim takes nobody, so the next round need not wait for it, nor for this
     * reply's outcomes to be published: Redis runs it meanwhile. Nor need a round sent
     * after this one and not answered yet (it holds the pool because two were in Redis, see
     * start_round(), or because an older answer still showed volunteers): one more may go
     * now, and two are in Redis again at most. */
    p->empty = r->n && num(reply->element[0], 13) == 0;
    if (p->empty && p->round && p->round != r && p->round->gathering) p->round = NULL;
    if (p->empty) {
        let_next_start(r);
        vd_redis_send_now(r->d->redis); /* before the outcomes are published */
    }
    take_rows(r, r->jobs, r->n, reply, 1);
    if (!r->nrows) { /* nothing to solve: every request ended, or was claimed at once */
        round_done(r);
        return;
    }
    assign(r);
}

static void on_widened(struct vd_redis *rc, redisReply *reply, void *arg) {
    struct vd_round *r = arg;
    (void)rc;
    if (!gather_reply_ok(r, reply, r->nwide, r->rows, r->nrows)) return;
    take_rows(r, r->wide, r->nwide, reply, 0);
    assign(r);
}

/* Claims the round's assignment: offers, confirmations, unmatched outcomes. */
static void claim(struct vd_round *r) {
    struct vd_dispatch *d = r->d;
    struct vd_job **rows = r->rows;
    int nrows = r->nrows;
    struct argv blocks = {0}, a = {0};
    r->claimed = malloc(((size_t)nrows + 1) * sizeof *r->claimed);
    if (!r->claimed) abort();
    for (int i = 0; i < nrows; i++) {
        if (claim_args(rows[i], &blocks)) {
            r->claimed[r->nclaimed++] = rows[i];
        } else {
            /* Not served this round, more may be further out: the next round. */
            rows[i]->rounds_empty++;
            rejoin(rows[i]);
        }
    }
    if (!r->nclaimed) {
        argv_free(&blocks);
        round_done(r);
        return;
    }
    settings_args(d, r->pool, &a, VD_FN("claim"));
    argv_addf(&a, "%d", r->nclaimed);
    for (int i = 0; i < blocks.n; i++) argv_addn(&a, blocks.buf + blocks.off[i], blocks.len[i]);
    a.failed |= blocks.failed;
    argv_free(&blocks);
    const char **argv = argv_ready(&a);
    d->stats.redis_calls++;
    d->stats.calls[VD_CALL_CLAIM]++;
    if (!argv || vd_redis_command(d->redis, on_claimed, r, a.n, argv, a.len) < 0) {
        argv_free(&a);
        round_failed(r, r->claimed, r->nclaimed, NULL);
        round_done(r);
        return;
    }
    argv_free(&a);
    /* Written now: building the next round's call takes a while, and Redis would wait. */
    vd_redis_send_now(d->redis);
    /* The claim is on its way: the pool's next round may start now. Its call goes behind the
     * claim on the one connection, so Redis runs it after the claim and it sees what the claim
     * took; meanwhile the daemon publishes this round's outcomes. */
    let_next_start(r);
}

static void on_claimed(struct vd_redis *rc, redisReply *reply, void *arg) {
    struct vd_round *r = arg;
    (void)rc;
    /* The jobs that rejoin wait for the pool's next round together (round_done() kicks it),
     * not each in a round of its own. */
    if (!r->pool->round) r->pool->round = r;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || (int)reply->elements != r->nclaimed) {
        if (reply && reply->type != REDIS_REPLY_ERROR)
            vd_error("round of %d requests: unexpected reply from %s", r->nclaimed, VD_FN("claim"));
        round_failed(r, r->claimed, r->nclaimed, reply && reply->type == REDIS_REPLY_ERROR ? reply : NULL);
        round_done(r);
        return;
    }
    for (int i = 0; i < r->nclaimed; i++) {
        struct vd_job *j = r->claimed[i];
        const redisReply *e = reply->element[i];
        char tag[16];
        str(e, 0, tag, sizeof tag);
        vd_request_publish_facts(j, item(e, 4));
        j->open = (int)num(e, 2);
        if (strcmp(tag, "wait") == 0)
            vd_debug("request %s: nobody more to offer now; waiting for the outstanding answers",
                     j->ev.request_id);
        if (num(e, 3) == 1) {
            /* Places still open: chosen volunteers were taken meanwhile, or more are needed. */
            j->rounds_empty = num(e, 5) > 0 ? 0 : j->rounds_empty + 1;
            rejoin(j);
        } else {
            leave(j);
            vd_request_matched(j);
        }
    }
    round_done(r);
}

void vd_round_stop(struct vd_dispatch *d) {
    for (struct vd_pool *p = d->pools; p; p = p->next)
        while (p->head) {
            struct vd_job *j = p->head;
            p->head = j->pnext;
            p->nwaiting--;
            leave(j);
            vd_job_redis_failed(j, NULL); /* stopping: dropped, its input comes back */
        }
    for (struct vd_pool *p = d->pools; p; p = p->next) p->tail = NULL;
    if (d->round_timer_inited) {
        uv_close((uv_handle_t *)&d->round_timer, NULL);
        d->round_timer_inited = 0;
    }
}

void vd_round_free(struct vd_dispatch *d) {
    vd_index_free(&d->matching);
    while (d->pools) {
        struct vd_pool *p = d->pools;
        d->pools = p->next;
        free(p);
    }
}
