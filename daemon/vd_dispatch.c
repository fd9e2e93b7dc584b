/* vd_dispatch: jobs, partitions and the matching steps between Kafka and Redis.
 *
 * A request's state (enum vd_state, common/vd_state.h) lives in Redis and only Redis Functions
 * move it; a job walks it one step at a time:
 *   created   -> vd_admit: the record (scheduled, or searching with the first search page)
 *   searching -> more pages / a wider radius (vd_search), then vd_offer with the ranked
 *                candidates: offered (or confirmed at once in direct mode)
 *             -> nobody left: vd_finish (unmatched, or wait while offers are out)
 *   answers   -> vd_respond: confirmed, or declined and a search for the next one
 *   due       -> vd_tick, for a request whose time came (start, offer deadline, expiry,
 *                a lapsed lease), taken from the due set by any instance (poll_due)
 * Every Function returns the facts to publish (the request's event log in Redis); once Kafka
 * acknowledged them, vd_settle says so (batched). A job's own coarse stage is `enum stage`. */
#include "vd_dispatch.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "vd_config.h"
#include "vd_kafka.h"
#include "vd_log.h"
#include "vd_offsets.h"
#include "vd_redis.h"

#define MAX_ARGS 80
#define MAX_CLAIM 32          /* candidates offered to one vd_claim call */
#define MAX_CLAIM_ROUNDS 4    /* lost races before a request is declared unmatched: contention */
#define MAX_REDIS_ERRORS 5    /* error replies before a job is dead-lettered instead of stalling */
#define DEADLETTER_PAYLOAD_MAX 4096
#define SETTLE_BATCH 16       /* settled requests per vd_settle call */
#define DUE_BATCH 64          /* requests taken per vd_due call */
#define MAX_TIMER_JOBS 256    /* internal jobs in memory before vd_due waits */

enum stage {
    STAGE_QUEUED = 0, /* waiting in its partition's queue */
    STAGE_REDIS,      /* running: a Redis call is outstanding */
    STAGE_PUBLISHED,  /* Redis work done; waiting for Kafka to acknowledge the outputs */
};

struct part {
    char *topic;
    int32_t partition;
    enum vd_topic_kind kind;
    int assigned;
    uint32_t gen;
    struct vd_offsets offs;
    struct job *head, *tail; /* queued jobs, offset order */
    struct job *running; /* jobs started and not yet through their Redis work (rnext list) */
    int nrunning;
    int in_kick;
    int internal; /* the timers part: jobs without an input offset */
    uint64_t retry_at; /* loop time before which no job starts (after a Redis failure) */
    struct part *next;
};

struct job {
    struct vd_dispatch *d;
    struct part *part;
    uint32_t gen;
    int64_t offset;
    char *payload;
    size_t len;
    enum stage stage;
    int pending;      /* outputs produced, not yet acknowledged */
    int redis_errors;
    char *error; /* why the message is invalid (it becomes a dead letter), or NULL */
    struct vd_event ev;
    uint64_t started_us;
    int tick;                 /* an internal job: the request's due time came (no input) */
    int abandoned;            /* will not run here again; lives on only for Kafka's acks */
    /* The request being matched: &ev for its own vd.request.created, else decoded from the
     * event stored with its record (req_own). */
    struct vd_event *req, *req_own;
    int open;                 /* volunteers the request still needs (neither held nor offered) */
    char *exclude;            /* comma-joined volunteers never to offer it again */
    long long settle_seq;     /* the last fact published: settled once Kafka acknowledged it */
    /* matching state */
    int matching, radius, rmax, seen, claim_rounds, exhausted;
    int lacking_skill; /* in range but without the rare skill searched (never candidates) */
    double page_far_m; /* distance of the farthest candidate of the last page */
    struct vd_match_stats mstats;
    struct vd_candidate *cands; /* eligible, ranked, not yet tried */
    size_t ncands;
    char key[VD_ID_MAX + 1]; /* request or volunteer the event is about; "" if undecodable */
    struct job *next;
    struct job *rprev, *rnext;        /* the partition's running list */
    struct job *all_prev, *all_next; /* every live job, for teardown */
};

struct vd_dispatch {
    uv_loop_t *loop;
    const struct vd_config *cfg;
    struct vd_redis *redis;
    struct vd_kafka *kafka;
    struct part *parts;
    struct job *all;
    int stopping;
    uint64_t running;
    struct part *timers; /* internal jobs: requests whose due time came */
    int timer_jobs;
    int due_in_flight;
    struct settle {
        char rid[VD_ID_MAX + 1];
        long long seq;
    } settles[SETTLE_BATCH];
    int nsettles, settles_in_flight;
    struct vd_dispatch_stats stats;
};

static void run_job(struct job *j);

static const char *reason_names[VD_UNMATCHED__COUNT] = {
    "no_volunteer_in_range", "no_eligible_volunteer", "contention", "expired", "all_declined"};

const char *vd_unmatched_reason_name(enum vd_unmatched_reason r) { return reason_names[r]; }

const char *vd_offer_result_name(enum vd_offer_result r) {
    static const char *const names[VD_OFFER__COUNT] = {"made", "accepted", "declined",
                                                       "timed_out", "expired"};
    return names[r];
}

static uint64_t now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}
static int64_t now_ms(void) { return (int64_t)(now_us() / 1000); }

/* ---- Redis argument building ---- */

struct args {
    int n;
    const char *v[MAX_ARGS];
    size_t l[MAX_ARGS];
    char buf[8192];
    size_t used;
};

static void arg(struct args *a, const char *s) {
    if (a->n >= MAX_ARGS) return;
    a->v[a->n] = s;
    a->l[a->n++] = strlen(s);
}

static void argf(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void argf(struct args *a, const char *fmt, ...) {
    if (a->n >= MAX_ARGS || a->used >= sizeof a->buf) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(a->buf + a->used, sizeof a->buf - a->used, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= sizeof a->buf - a->used) return;
    a->v[a->n] = a->buf + a->used;
    a->l[a->n++] = (size_t)w;
    a->used += (size_t)w + 1;
}

static void fcall_begin(struct args *a, const char *fn, int nkeys) {
    a->n = 0;
    a->used = 0;
    arg(a, "FCALL");
    arg(a, fn);
    argf(a, "%d", nkeys);
}

static void tags_csv(const struct vd_tags *t, char *out, size_t cap) {
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < t->n; i++)
        o += (size_t)snprintf(out + o, o < cap ? cap - o : 0, "%s%s", i ? "," : "", t->v[i]);
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

/* ---- outputs ---- */

static void produce(struct job *j, enum vd_output_topic topic, const char *key, const char *type,
                    const char *id, json_t *data) {
    char *s = vd_event_encode(type, id, now_ms(), data);
    if (!s) {
        vd_error("out of memory encoding %s", type);
        abort();
    }
    j->pending++;
    vd_kafka_produce(j->d->kafka, topic, key, strlen(key), s, strlen(s), j);
}

/* Copies payload into a JSON string: at most DEADLETTER_PAYLOAD_MAX bytes, bytes that are not
 * UTF-8 replaced by '?', cut on a character boundary (NUL is kept: JSON escapes it). */
static json_t *payload_string(const char *p, size_t len) {
    size_t cap = len < DEADLETTER_PAYLOAD_MAX ? len : DEADLETTER_PAYLOAD_MAX;
    char *out = malloc(cap + 1);
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)p[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++) ok = ((unsigned char)p[i + k] >> 6) == 2;
        if (ok && n == 2 && c < 0xC2) ok = 0;
        if (ok && n == 3) {
            unsigned cp = ((c & 0x0Fu) << 12) | (((unsigned char)p[i + 1] & 0x3Fu) << 6) |
                          ((unsigned char)p[i + 2] & 0x3Fu);
            ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
        }
        if (ok && n == 4) {
            unsigned cp = ((c & 0x07u) << 18) | (((unsigned char)p[i + 1] & 0x3Fu) << 12) |
                          (((unsigned char)p[i + 2] & 0x3Fu) << 6) | ((unsigned char)p[i + 3] & 0x3Fu);
            ok = cp >= 0x10000 && cp <= 0x10FFFF;
        }
        if (!ok) n = 1;
        if (o + (ok ? n : 1) > cap) break;
        if (ok) {
            memcpy(out + o, p + i, n);
            o += n;
        } else {
            out[o++] = '?';
        }
        i += n;
    }
    json_t *s = json_stringn(out, o);
    free(out);
    return s;
}

static void dead_letter(struct job *j, const char *error) {
    struct vd_dispatch *d = j->d;
    const char *topic = j->part->topic;
    char id[400];
    snprintf(id, sizeof id, "deadletter/%s/%d/%lld", topic, (int)j->part->partition, (long long)j->offset);
    json_t *data = json_pack("{s:s, s:s, s:i, s:I, s:o, s:b}", "error", error, "topic", topic,
                             "partition", (int)j->part->partition, "offset", (json_int_t)j->offset,
                             "payload", payload_string(j->payload, j->len), "truncated",
                             j->len > DEADLETTER_PAYLOAD_MAX);
    d->stats.rejected++;
    /* The error may quote the offending value, which could be anything a resident typed: the
     * log names only the field; the full sentence goes to the dead-letter topic. */
    vd_info("rejected %s[%d]@%lld: bad %.*s", topic, (int)j->part->partition, (long long)j->offset,
            (int)strcspn(error, ":"), error);
    produce(j, VD_OUT_DEADLETTER, id, "vd.input.rejected", id, data);
}

/* What the search saw when a volunteer was offered the request ("distance/radius/considered"),
 * kept with the offer so that every event about it, and every replay, says the same. */
struct match_note {
    double distance_m;
    int radius_m;
    int considered;
};

static struct match_note parse_note(const char *s) {
    struct match_note n = {0, 0, 0};
    char *end;
    n.distance_m = strtod(s, &end);
    if (*end == '/') n.radius_m = (int)strtol(end + 1, &end, 10);
    if (*end == '/') n.considered = (int)strtol(end + 1, &end, 10);
    return n;
}

/* Request attributes every output about the request carries (service, priority, event). */
static void add_request_fields(const struct vd_event *req, json_t *data) {
    if (req->service[0]) json_object_set_new(data, "service", json_string(req->service));
    json_object_set_new(data, "priority", json_string(vd_priority_name(req->priority)));
    if (req->event_id[0]) json_object_set_new(data, "event_id", json_string(req->event_id));
}

static void publish_offered(struct job *j, const char *vid, const char *oid, int attempt,
                            int64_t deadline_ms, struct match_note note) {
    const char *rid = j->ev.request_id;
    char id[200], when[40];
    vd_time_format(deadline_ms, when, sizeof when);
    json_t *data = json_pack("{s:s, s:s, s:s, s:f, s:i, s:s, s:i, s:i}", "request_id", rid,
                             "volunteer_id", vid, "offer_id", oid, "distance_m", note.distance_m,
                             "attempt", attempt, "expires_at", when, "radius_m", note.radius_m,
                             "candidates_considered", note.considered);
    add_request_fields(j->req, data);
    snprintf(id, sizeof id, "%s/offered/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.offered", id, data);
    json_t *n = json_pack("{s:s, s:s, s:s, s:s, s:i, s:s}", "kind", "offer", "volunteer_id", vid,
                          "request_id", rid, "offer_id", oid, "attempt", attempt, "expires_at", when);
    if (j->req->service[0]) json_object_set_new(n, "service", json_string(j->req->service));
    snprintf(id, sizeof id, "%s/notify-offer/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id, n);
}

static void publish_confirmed(struct job *j, const char *vid, const char *oid, int attempt,
                              struct match_note note) {
    const char *rid = j->ev.request_id;
    const struct vd_event *req = j->req;
    char id[200];
    json_t *data = json_pack("{s:s, s:s, s:s, s:f, s:i, s:i, s:i}", "request_id", rid,
                             "volunteer_id", vid, "offer_id", oid, "distance_m", note.distance_m,
                             "attempt", attempt, "radius_m", note.radius_m,
                             "candidates_considered", note.considered);
    add_request_fields(req, data);
    snprintf(id, sizeof id, "%s/confirmed/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.confirmed", id, data);

    json_t *n = json_pack("{s:s, s:s, s:s, s:s}", "kind", "assigned", "volunteer_id", vid,
                          "request_id", rid, "offer_id", oid);
    if (req->service[0]) json_object_set_new(n, "service", json_string(req->service));
    snprintf(id, sizeof id, "%s/notify-volunteer/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id, n);
    json_t *res = json_pack("{s:s, s:s, s:s}", "kind", "volunteer_confirmed", "request_id", rid,
                            "volunteer_id", vid);
    if (req->resident_id[0]) json_object_set_new(res, "resident_id", json_string(req->resident_id));
    snprintf(id, sizeof id, "%s/notify-resident/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.resident", id, res);
}

/* An offer ended without a confirmation: declined, timed out, or the request expired. The
 * volunteer is told, unless they declined it themselves. */
static void publish_withdrawn(struct job *j, const char *vid, const char *oid, const char *why) {
    const char *rid = j->ev.request_id;
    char id[200];
    snprintf(id, sizeof id, "%s/withdrawn/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.withdrawn", id,
            json_pack("{s:s, s:s, s:s, s:s}", "request_id", rid, "volunteer_id", vid, "offer_id",
                      oid, "reason", why));
    if (strcmp(why, "declined") == 0) return;
    snprintf(id, sizeof id, "%s/notify-withdrawn/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id,
            json_pack("{s:s, s:s, s:s, s:s, s:s}", "kind", "offer_withdrawn", "volunteer_id", vid,
                      "request_id", rid, "offer_id", oid, "reason", why));
}

static void count_reason(struct vd_dispatch *d, const char *reason) {
    for (int i = 0; reason && i < VD_UNMATCHED__COUNT; i++)
        if (strcmp(reason, vd_unmatched_reason_name(i)) == 0) d->stats.unmatched[i]++;
}

/* vd.request.unmatched with the outcome document recorded in Redis, and the coordinator's
 * notification: a person must act. */
static void publish_unmatched(struct job *j, const char *doc_json, int count) {
    const char *rid = j->ev.request_id;
    char id[200];
    json_t *data = json_loads(doc_json, 0, NULL);
    if (!json_is_object(data)) {
        json_decref(data);
        data = json_pack("{s:s, s:s}", "request_id", rid, "reason", "unknown");
    }
    if (!json_object_get(data, "service") && j->req->service[0])
        json_object_set_new(data, "service", json_string(j->req->service));
    const char *reason = json_string_value(json_object_get(data, "reason"));
    if (count) count_reason(j->d, reason);
    json_t *missing = json_object_get(data, "volunteers_missing");
    json_t *prio = json_object_get(data, "priority");
    json_t *coord = json_pack("{s:s, s:s, s:s, s:s, s:I}", "kind", "unmatched", "request_id", rid,
                              "reason", reason ? reason : "unknown", "priority",
                              json_is_string(prio) ? json_string_value(prio)
                                                   : vd_priority_name(j->req->priority),
                              "volunteers_missing",
                              missing ? json_integer_value(missing) : (json_int_t)1);
    json_t *service = json_object_get(data, "service");
    if (json_is_string(service)) json_object_set(coord, "service", service);
    snprintf(id, sizeof id, "%s/unmatched", rid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.unmatched", id, data);
    snprintf(id, sizeof id, "%s/notify-coordinator", rid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.coordinator", id, coord);
}

/* Publishes one fact of the request's log, "[+]n|kind|field|...": the outputs it stands for,
 * with ids that depend on the fact alone. "+" marks news (counted in the metrics); a fact
 * without it is published again (a replay, or its first publication was not settled). */
static void publish_fact(struct job *j, const char *line, size_t len) {
    struct vd_dispatch *d = j->d;
    int count = len > 0 && line[0] == '+';
    if (count) {
        line++;
        len--;
    }
    char *buf = strndup(line, len);
    if (!buf) abort();
    char *f[8] = {0};
    int n = 0;
    char *s = buf;
    /* Fields up to the kind, then the kind's own: an unmatched fact's JSON is the rest. */
    while (n < 8) {
        f[n++] = s;
        if (n == 3 && strcmp(f[1], "unmatched") == 0) break;
        char *bar = strchr(s, '|');
        if (!bar) break;
        *bar = '\0';
        s = bar + 1;
    }
    long long seq = atoll(f[0]);
    if (seq <= j->settle_seq) {
        /* Published by this job already: a later step's reply lists it again until settled. */
        free(buf);
        return;
    }
    const char *kind = n > 1 ? f[1] : "";
    /* Only what was published may be settled: an unknown kind (a newer library's) is not. */
    int known = 1;
    if (strcmp(kind, "offered") == 0 && n >= 7) {
        publish_offered(j, f[2], f[3], atoi(f[4]), atoll(f[5]), parse_note(f[6]));
        if (count) d->stats.offers[VD_OFFER_MADE]++;
    } else if (strcmp(kind, "confirmed") == 0 && n >= 6) {
        publish_confirmed(j, f[2], f[3], atoi(f[4]), parse_note(f[5]));
        if (count) {
            d->stats.confirmed++;
            if (d->cfg->offer_timeout_ms > 0) d->stats.offers[VD_OFFER_ACCEPTED]++;
        }
    } else if (strcmp(kind, "withdrawn") == 0 && n >= 5) {
        publish_withdrawn(j, f[2], f[3], f[4]);
        if (count)
            d->stats.offers[strcmp(f[4], "declined") == 0  ? VD_OFFER_DECLINED
                            : strcmp(f[4], "timeout") == 0 ? VD_OFFER_TIMED_OUT
                                                           : VD_OFFER_EXPIRED]++;
    } else if (strcmp(kind, "unmatched") == 0 && n >= 3) {
        publish_unmatched(j, f[2], count);
    } else {
        vd_error("request %s: unknown fact %.*s", j->ev.request_id, (int)len, line);
        known = 0;
    }
    if (known) j->settle_seq = seq;
    free(buf);
}

/* ---- job life ---- */

static void job_free(struct job *j) {
    struct vd_dispatch *d = j->d;
    if (j->all_prev) j->all_prev->all_next = j->all_next; else d->all = j->all_next;
    if (j->all_next) j->all_next->all_prev = j->all_prev;
    d->stats.jobs_in_memory--;
    if (j->tick) d->timer_jobs--;
    free(j->payload);
    free(j->error);
    free(j->cands);
    free(j->exclude);
    free(j->req_own);
    free(j);
}

/* A new job joins the live list and the tail of its partition's queue. */
static void job_enqueue(struct part *p, struct job *j) {
    struct vd_dispatch *d = j->d;
    d->stats.jobs_in_memory++;
    j->all_next = d->all;
    if (d->all) d->all->all_prev = j;
    d->all = j;
    if (p->tail) p->tail->next = j; else p->head = j;
    p->tail = j;
}

/* ---- settling facts, taking due requests ---- */

static void on_settled(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_dispatch *d = arg;
    (void)r;
    d->settles_in_flight--;
    /* Lost (Redis down): the facts are published again when the lease lapses; harmless. */
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        vd_debug("settling facts failed: %s", reply && reply->str ? reply->str : "no reply");
}

/* Tells Redis, in one call for up to SETTLE_BATCH requests, which facts reached Kafka; the
 * cron sends what waited behind a call in flight. */
static void flush_settles(struct vd_dispatch *d) {
    if (!d->nsettles || !vd_redis_is_ready(d->redis)) return;
    const char *pfx = d->cfg->redis_key_prefix;
    struct args a;
    fcall_begin(&a, "vd_settle", 1 + d->nsettles);
    argf(&a, "%sdue", pfx);
    for (int i = 0; i < d->nsettles; i++) argf(&a, "%sreq:%s", pfx, d->settles[i].rid);
    arg(&a, pfx);
    argf(&a, "%lld", (long long)now_ms());
    argf(&a, "%d", VD_LEASE_MS);
    for (int i = 0; i < d->nsettles; i++) {
        arg(&a, d->settles[i].rid);
        argf(&a, "%lld", d->settles[i].seq);
    }
    d->nsettles = 0;
    d->settles_in_flight++;
    d->stats.redis_calls++;
    if (vd_redis_command(d->redis, on_settled, d, a.n, a.v, a.l) < 0) d->settles_in_flight--;
}

static void settle_later(struct vd_dispatch *d, const char *rid, long long seq) {
    if (d->nsettles == SETTLE_BATCH) flush_settles(d);
    if (d->nsettles == SETTLE_BATCH) return; /* Redis is down: the lease covers it */
    snprintf(d->settles[d->nsettles].rid, sizeof d->settles[0].rid, "%s", rid);
    d->settles[d->nsettles++].seq = seq;
    /* At once when none is in flight (fewer facts published twice); under load they batch
     * up behind the one in flight. */
    if (d->settles_in_flight == 0) flush_settles(d);
}

static void kick(struct part *p);

/* 1 when a due run of the request is still in memory: queued, running, or waiting for Kafka
 * to acknowledge its outputs (a slow Kafka must not multiply them lease after lease). */
static int timer_job_for(const struct vd_dispatch *d, const char *rid) {
    for (const struct job *j = d->all; j; j = j->all_next)
        if (j->tick && strcmp(j->key, rid) == 0) return 1;
    return 0;
}

static void on_due(struct vd_redis *r, redisReply *reply, void *arg) {
    struct vd_dispatch *d = arg;
    (void)r;
    d->due_in_flight = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || d->stopping) return;
    struct part *p = d->timers;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len > VD_ID_MAX) continue;
        char rid[VD_ID_MAX + 1];
        snprintf(rid, sizeof rid, "%.*s", (int)e->len, e->str);
        if (!vd_id_valid(rid) || timer_job_for(d, rid)) continue;
        struct job *j = calloc(1, sizeof *j);
        if (!j) abort();
        j->d = d;
        j->part = p;
        j->gen = p->gen;
        j->offset = -1;
        j->tick = 1;
        j->req = &j->ev;
        snprintf(j->ev.request_id, sizeof j->ev.request_id, "%s", rid);
        snprintf(j->key, sizeof j->key, "%s", rid);
        d->timer_jobs++;
        job_enqueue(p, j);
    }
    kick(p);
}

/* Takes the requests whose due time came (at most one call outstanding). Waits while Kafka
 * intake is paused for back-pressure: their outputs would only pile up. */
static void poll_due(struct vd_dispatch *d) {
    if (d->due_in_flight || d->stopping || !vd_redis_is_ready(d->redis) ||
        vd_kafka_is_paused(d->kafka) || d->timer_jobs >= MAX_TIMER_JOBS)
        return;
    struct args a;
    fcall_begin(&a, "vd_due", 1);
    argf(&a, "%sdue", d->cfg->redis_key_prefix);
    argf(&a, "%lld", (long long)now_ms());
    argf(&a, "%d", VD_LEASE_MS);
    argf(&a, "%d", DUE_BATCH);
    d->due_in_flight = 1;
    if (vd_redis_command(d->redis, on_due, d, a.n, a.v, a.l) < 0) d->due_in_flight = 0;
}

/* A job whose Redis work is done and whose outputs are all acknowledged leaves; its offset
 * may move the partition's watermark. */
static void maybe_finish(struct job *j) {
    if (j->stage != STAGE_PUBLISHED || j->pending > 0) return;
    struct part *p = j->part;
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
static void job_abandon(struct job *j) {
    j->next = NULL;
    if (j->pending > 0) {
        j->abandoned = 1;
        j->stage = STAGE_PUBLISHED;
        return;
    }
    job_free(j);
}

#define KICK_SCAN 64 /* queued jobs looked at per start, past those blocked by a running key */

static int same_key(const struct job *a, const struct job *b) {
    return a->key[0] && strcmp(a->key, b->key) == 0;
}

/* A job may start unless an earlier job about the same request or volunteer is running or
 * still waits ahead of it: one key's events are applied in offset order. */
static int blocked(const struct part *p, const struct job *j, struct job *const *skipped,
                   size_t nskipped) {
    for (const struct job *r = p->running; r; r = r->rnext)
        if (same_key(r, j)) return 1;
    for (size_t i = 0; i < nskipped; i++)
        if (same_key(skipped[i], j)) return 1;
    return 0;
}

static void running_remove(struct part *p, struct job *j) {
    if (j->rprev) j->rprev->rnext = j->rnext; else p->running = j->rnext;
    if (j->rnext) j->rnext->rprev = j->rprev;
    j->rprev = j->rnext = NULL;
    p->nrunning--;
    j->d->running--;
}

/* Starts queued jobs of the partition, up to daemon.partition_concurrency at once. A job that
 * finishes without waiting (a dead letter, say) returns here instead of recursing, so a long
 * run of bad messages costs no stack. */
static void kick(struct part *p) {
    if (p->in_kick || !p->head) return;
    struct vd_dispatch *d = p->head->d;
    p->in_kick = 1;
    int started = 1;
    while (started) {
        started = 0;
        struct job *skipped[KICK_SCAN], *prev = NULL;
        size_t nskipped = 0;
        for (struct job *j = p->head; j && nskipped < KICK_SCAN; prev = j, j = j->next) {
            if (p->nrunning >= d->cfg->partition_concurrency || d->stopping ||
                !vd_redis_is_ready(d->redis) || uv_now(d->loop) < p->retry_at)
                break;
            if (blocked(p, j, skipped, nskipped)) {
                skipped[nskipped++] = j;
                continue;
            }
            if (prev) prev->next = j->next; else p->head = j->next;
            if (p->tail == j) p->tail = prev;
            j->next = NULL;
            j->rnext = p->running;
            if (p->running) p->running->rprev = j;
            p->running = j;
            p->nrunning++;
            d->running++;
            run_job(j);
            started = 1; /* the queue may have changed under us: scan again from the head */
            break;
        }
    }
    p->in_kick = 0;
}

/* The Redis part of a job is over: the partition may start its next job. */
static void redis_done(struct job *j) {
    struct part *p = j->part;
    j->stage = STAGE_PUBLISHED;
    running_remove(p, j);
    maybe_finish(j);
    kick(p);
}

/* A Redis call failed. With no reply (connection lost, timeout) the job goes back to the head
 * of its partition and runs again once Redis is ready. An error reply is retried a few times,
 * then dead-lettered so a poison message cannot stall its partition. */
static void redis_failed(struct job *j, const redisReply *reply) {
    struct vd_dispatch *d = j->d;
    struct part *p = j->part;
    d->stats.redis_retries++;
    if (reply && j->tick && ++j->redis_errors >= MAX_REDIS_ERRORS) {
        /* No input to dead-letter: the due set keeps the request; the lease brings it back. */
        vd_error("request %s: giving up its due run after %d Redis errors: %.*s",
                 j->ev.request_id, j->redis_errors, (int)reply->len, reply->str ? reply->str : "");
        running_remove(p, j);
        job_abandon(j);
        kick(p);
        return;
    }
    if (reply && ++j->redis_errors >= MAX_REDIS_ERRORS) {
        char err[600];
        snprintf(err, sizeof err, "redis: %.*s", (int)reply->len, reply->str ? reply->str : "");
        vd_error("%s[%d]@%lld: giving up after %d Redis errors: %s", p->topic, (int)j->part->partition,
                 (long long)j->offset, j->redis_errors, err);
        dead_letter(j, err);
        redis_done(j);
        return;
    }
    if (reply)
        vd_warn("%s[%d]@%lld: Redis error, will retry: %.*s", p->topic, (int)j->part->partition,
                (long long)j->offset, (int)reply->len, reply->str ? reply->str : "");
    running_remove(p, j);
    j->stage = STAGE_QUEUED;
    p->retry_at = uv_now(d->loop) + 100;
    if (j->gen != p->gen || d->stopping) {
        /* Revoked or stopping: the next owner (or the next start) runs it again. */
        job_abandon(j);
        return;
    }
    j->next = p->head;
    p->head = j;
    if (!p->tail) p->tail = j;
}

typedef void reply_fn(struct job *j, redisReply *r);

struct call_ctx {
    struct job *j;
    reply_fn *fn;
};

static void on_reply(struct vd_redis *r, redisReply *reply, void *arg) {
    struct call_ctx *c = arg;
    struct job *j = c->j;
    reply_fn *fn = c->fn;
    free(c);
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        redis_failed(j, reply);
        return;
    }
    fn(j, reply);
}

/* Sends one FCALL for job j; fn runs with the reply. On a synchronous failure the job is
 * requeued as if the reply had been lost. */
static void fcall(struct job *j, struct args *a, reply_fn *fn) {
    struct call_ctx *c = malloc(sizeof *c);
    if (!c) abort();
    c->j = j;
    c->fn = fn;
    j->stage = STAGE_REDIS;
    j->d->stats.redis_calls++;
    if (vd_redis_command(j->d->redis, on_reply, c, a->n, a->v, a->l) < 0) {
        free(c);
        redis_failed(j, NULL);
    }
}

/* ---- volunteers ---- */

static void on_volunteer_reply(struct job *j, redisReply *r) {
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        vd_debug("volunteer %s: %s", j->ev.volunteer_id, r->str);
    redis_done(j);
}

static void run_volunteer(struct job *j) {
    const struct vd_event *ev = &j->ev;
    const char *pfx = j->d->cfg->redis_key_prefix;
    struct args a;
    char skills[VD_MAX_TAGS * (VD_ID_MAX + 1) + 1], langs[sizeof skills];
    switch (ev->type) {
    case VD_EV_VOLUNTEER_AVAILABLE:
        tags_csv(&ev->skills, skills, sizeof skills);
        tags_csv(&ev->languages, langs, sizeof langs);
        fcall_begin(&a, "vd_vol_available", 1);
        argf(&a, "%svol:%s", pfx, ev->volunteer_id);
        arg(&a, pfx);
        arg(&a, ev->volunteer_id);
        argf(&a, "%.7f", ev->location.lat);
        argf(&a, "%.7f", ev->location.lon);
        arg(&a, skills);
        arg(&a, langs);
        argf(&a, "%d", ev->max_tasks_per_day);
        arg(&a, ev->team);
        arg(&a, ev->event_id);
        break;
    case VD_EV_VOLUNTEER_LOCATION:
        fcall_begin(&a, "vd_vol_location", 1);
        argf(&a, "%svol:%s", pfx, ev->volunteer_id);
        arg(&a, pfx);
        arg(&a, ev->volunteer_id);
        argf(&a, "%.7f", ev->location.lat);
        argf(&a, "%.7f", ev->location.lon);
        break;
    default:
        fcall_begin(&a, "vd_vol_unavailable", 1);
        argf(&a, "%svol:%s", pfx, ev->volunteer_id);
        arg(&a, pfx);
        arg(&a, ev->volunteer_id);
        break;
    }
    fcall(j, &a, on_volunteer_reply);
}

/* ---- requests: admit, search, offer, finish, respond, tick ---- */

static void search(struct job *j);
static void offer(struct job *j);
static void finish_unmatched(struct job *j, enum vd_unmatched_reason reason);

static void req_key(const struct job *j, char *out, size_t cap) {
    snprintf(out, cap, "%sreq:%s", j->d->cfg->redis_key_prefix, j->ev.request_id);
}

static void pool_key(const struct job *j, char *out, size_t cap) {
    if (j->req->event_id[0])
        snprintf(out, cap, "%spool:ev:%s", j->d->cfg->redis_key_prefix, j->req->event_id);
    else
        snprintf(out, cap, "%spool:city", j->d->cfg->redis_key_prefix);
}

/* FCALL fn with the request's hash and the due set as its first keys; the caller adds any
 * further keys, then request_args(). */
static void request_call(struct job *j, struct args *a, const char *fn, int nkeys) {
    char key[VD_ID_MAX + 80];
    fcall_begin(a, fn, nkeys);
    req_key(j, key, sizeof key);
    argf(a, "%s", key);
    argf(a, "%sdue", j->d->cfg->redis_key_prefix);
}

/* The ARGV every request function starts with (see context() in vdispatch.lua). */
static void request_args(struct job *j, struct args *a) {
    const struct vd_config *cfg = j->d->cfg;
    arg(a, cfg->redis_key_prefix);
    arg(a, j->ev.request_id);
    argf(a, "%lld", (long long)now_ms());
    argf(a, "%d", cfg->redis_request_ttl_s);
    argf(a, "%d", VD_LEASE_MS);
    argf(a, "%d", cfg->max_offers);
    argf(a, "%d", cfg->offer_timeout_ms);
}

static void match_done(struct job *j) {
    struct vd_dispatch *d = j->d;
    if (j->matching) {
        uint64_t us = now_us() - j->started_us;
        d->stats.matches++;
        d->stats.match_latency_us_sum += us;
        vd_histogram_observe(&d->stats.match_seconds, (double)us / 1e6);
    }
    redis_done(j);
}

static int excluded(const struct job *j, const char *vid) {
    return j->exclude && vd_match_list_has(j->exclude, vid);
}

/* Appends the candidates of a search page, filters and ranks them with those still untried
 * from earlier pages. Volunteers this request already tried are dropped here. */
static void take_candidates(struct job *j, const redisReply *r, size_t *got, double *far_m) {
    size_t n = r->elements > 3 ? (r->elements - 3) / 6 : 0;
    *got = n;
    struct vd_candidate *c = realloc(j->cands, (j->ncands + n) * sizeof *c);
    if (!c && j->ncands + n) abort();
    j->cands = c;
    struct vd_candidate *fresh = c + j->ncands;
    char buf[32];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t b = 3 + i * 6;
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
        el(r, b + 2, f->skills, sizeof f->skills);
        el(r, b + 3, f->languages, sizeof f->languages);
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
static void next_step(struct job *j) {
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

/* A search page arrived (from vd_admit or vd_search). */
static void on_page(struct job *j, const redisReply *r) {
    char buf[32];
    long total = atol(el(r, 1, buf, sizeof buf));
    /* The search asked for the nearest seen + candidates; fewer means the radius is exhausted. */
    j->exhausted = total < (long)j->seen + j->d->cfg->candidates;
    size_t got = 0;
    take_candidates(j, r, &got, &j->page_far_m);
    if (!got) j->page_far_m = j->radius;
    j->seen += (int)got;
    int without = atoi(el(r, 2, buf, sizeof buf));
    if (without > j->lacking_skill) j->lacking_skill = without;
    next_step(j);
}

static void on_search(struct job *j, redisReply *r) { on_page(j, r); }

/* Skill sets to search (the pool's set per required skill): KEYS after the pool. */
static void skill_keys(struct job *j, struct args *a, const char *pool) {
    for (int i = 0; i < j->req->skills.n; i++) argf(a, "%s:s:%s", pool, j->req->skills.v[i]);
}

static void search(struct job *j) {
    const struct vd_event *ev = j->req;
    struct args a;
    char pool[VD_ID_MAX + 80];
    pool_key(j, pool, sizeof pool);
    fcall_begin(&a, "vd_search", 1 + ev->skills.n);
    arg(&a, pool);
    skill_keys(j, &a, pool);
    arg(&a, j->d->cfg->redis_key_prefix);
    argf(&a, "%.7f", ev->location.lat);
    argf(&a, "%.7f", ev->location.lon);
    argf(&a, "%d", j->radius);
    argf(&a, "%d", j->seen);
    argf(&a, "%d", j->d->cfg->candidates);
    argf(&a, "%lld", (long long)now_ms());
    a.v[0] = "FCALL_RO";
    a.l[0] = 8;
    fcall(j, &a, on_search);
}

/* Matching starts (again) from the first radius: after an admit, a decline or a timeout. */
static void start_matching(struct job *j) {
    const struct vd_config *cfg = j->d->cfg;
    j->rmax = j->req->max_distance_m ? j->req->max_distance_m : cfg->radius_max_m;
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
static int take_step(struct job *j, const redisReply *r, char *tag, size_t tagcap) {
    char buf[32];
    el(r, 0, tag, tagcap);
    j->open = atoi(el(r, 2, buf, sizeof buf));
    int want = atoi(el(r, 3, buf, sizeof buf));
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 6) {
        const redisReply *ex = r->element[4], *ev = r->element[5], *facts = r->element[6];
        free(j->exclude);
        j->exclude = ex->type == REDIS_REPLY_STRING ? strndup(ex->str, ex->len) : NULL;
        /* Jobs that are not the request's own event learn it from the record. */
        if (j->req == &j->ev && j->ev.type != VD_EV_REQUEST_CREATED &&
            ev->type == REDIS_REPLY_STRING && ev->len) {
            char err[256];
            struct vd_event *req = calloc(1, sizeof *req);
            if (!req) abort();
            if (vd_event_decode(ev->str, ev->len, VD_TOPIC_REQUESTS, req, err, sizeof err) == 0) {
                j->req_own = req;
                j->req = req;
            } else {
                vd_error("request %s: its stored event does not decode: %s", j->ev.request_id, err);
                free(req);
                want = 0;
            }
        }
        for (size_t i = 0; facts->type == REDIS_REPLY_ARRAY && i < facts->elements; i++)
            if (facts->element[i]->type == REDIS_REPLY_STRING)
                publish_fact(j, facts->element[i]->str, facts->element[i]->len);
    }
    if (want == 1 && j->req->type != VD_EV_REQUEST_CREATED) {
        vd_error("request %s: nothing to match with (no stored event)", j->ev.request_id);
        want = 0;
    }
    return want == 1;
}

/* After a step: search and offer when the request wants it, else the job's Redis work is
 * over. page is a search page that came with the reply, if any. */
static void after_step(struct job *j, int want, const redisReply *page) {
    if (!want) {
        match_done(j);
        return;
    }
    start_matching(j);
    if (page && page->type == REDIS_REPLY_ARRAY && page->elements >= 3)
        on_page(j, page);
    else
        search(j);
}

static void on_admit(struct job *j, redisReply *r) {
    char tag[16], state[32];
    int want = take_step(j, r, tag, sizeof tag);
    el(r, 1, state, sizeof state);
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

static void admit(struct job *j) {
    const struct vd_event *ev = j->req;
    const struct vd_config *cfg = j->d->cfg;
    struct args a;
    char pool[VD_ID_MAX + 80];
    pool_key(j, pool, sizeof pool);
    request_call(j, &a, "vd_admit", 3 + ev->skills.n);
    arg(&a, pool);
    skill_keys(j, &a, pool);
    request_args(j, &a);
    argf(&a, "%d", ev->volunteers_needed);
    int64_t at = ev->not_before_ms ? ev->not_before_ms - cfg->schedule_lead_ms : 0;
    argf(&a, "%lld", (long long)at);
    argf(&a, "%lld", (long long)ev->expires_at_ms);
    a.v[a.n] = j->payload;
    a.l[a.n++] = j->len;
    argf(&a, "%.7f", ev->location.lat);
    argf(&a, "%.7f", ev->location.lon);
    int rmax = ev->max_distance_m ? ev->max_distance_m : cfg->radius_max_m;
    argf(&a, "%d", cfg->radius_start_m < rmax ? cfg->radius_start_m : rmax);
    argf(&a, "%d", cfg->candidates);
    fcall(j, &a, on_admit);
}

static void on_offer(struct job *j, redisReply *r) {
    char tag[16], buf[32];
    int want = take_step(j, r, tag, sizeof tag);
    int made = atoi(el(r, 8, buf, sizeof buf));
    /* Whoever was not offered was taken meanwhile (or tired): never tried again here. Those
     * offered have left the pool, so the next page starts that much nearer. */
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

static void offer(struct job *j) {
    struct args a;
    request_call(j, &a, "vd_offer", 2);
    request_args(j, &a);
    argf(&a, "%d", j->d->cfg->max_tasks_per_day);
    for (size_t i = 0; i < j->ncands && i < MAX_CLAIM; i++) {
        arg(&a, j->cands[i].id);
        argf(&a, "%.1f/%d/%d", j->cands[i].distance_m, j->radius, j->mstats.considered);
    }
    fcall(j, &a, on_offer);
}

static void on_finish(struct job *j, redisReply *r) {
    char tag[16];
    take_step(j, r, tag, sizeof tag);
    if (strcmp(tag, "wait") == 0)
        vd_debug("request %s: nobody more to offer now; waiting for the outstanding answers",
                 j->ev.request_id);
    match_done(j);
}

static void finish_unmatched(struct job *j, enum vd_unmatched_reason reason) {
    const struct vd_event *ev = j->req;
    json_t *filtered = json_object();
    for (int i = 0; i < VD_FILTER__COUNT; i++)
        if (j->mstats.filtered[i])
            json_object_set_new(filtered, vd_filter_name(i), json_integer(j->mstats.filtered[i]));
    json_t *data = json_pack("{s:s, s:s, s:i, s:i, s:o, s:i, s:i, s:s}", "request_id",
                             j->ev.request_id, "reason", reason_names[reason], "radius_m", j->radius,
                             "candidates_considered", j->mstats.considered, "filtered", filtered,
                             "volunteers_needed", ev->volunteers_needed, "volunteers_missing",
                             j->open, "priority", vd_priority_name(ev->priority));
    if (ev->service[0]) json_object_set_new(data, "service", json_string(ev->service));
    char *doc = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(data);
    if (!doc) abort();
    struct args a;
    request_call(j, &a, "vd_finish", 2);
    request_args(j, &a);
    arg(&a, doc);
    argf(&a, "%d", ev->volunteers_needed);
    if (j->ev.type == VD_EV_REQUEST_CREATED) {
        a.v[a.n] = j->payload;
        a.l[a.n++] = j->len;
    } else {
        arg(&a, "");
    }
    fcall(j, &a, on_finish);
    free(doc);
}

static void run_request(struct job *j) {
    const struct vd_event *ev = j->req;
    j->open = ev->volunteers_needed;
    if (ev->expires_at_ms && now_ms() >= ev->expires_at_ms) {
        start_matching(j);
        finish_unmatched(j, VD_UNMATCHED_EXPIRED);
        return;
    }
    admit(j);
}

static void on_respond(struct job *j, redisReply *r) {
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

static void run_respond(struct job *j) {
    struct args a;
    request_call(j, &a, "vd_respond", 2);
    request_args(j, &a);
    arg(&a, j->ev.volunteer_id);
    arg(&a, j->ev.offer_id);
    arg(&a, j->ev.type == VD_EV_OFFER_ACCEPTED ? "accept" : "decline");
    fcall(j, &a, on_respond);
}

static void on_tick(struct job *j, redisReply *r) {
    char tag[16];
    int want = take_step(j, r, tag, sizeof tag);
    after_step(j, want, NULL);
}

/* A request whose due time came (scheduled start, offer deadline, expiry, a lapsed lease). */
static void run_tick(struct job *j) {
    struct args a;
    j->d->stats.due_runs++;
    request_call(j, &a, "vd_tick", 2);
    request_args(j, &a);
    fcall(j, &a, on_tick);
}

/* ---- cancel, complete, responses ---- */

static void on_cancel(struct job *j, redisReply *r) {
    char tag[16], released[VD_MAX_NEEDED * (VD_ID_MAX + 1) + 1], id[200];
    const char *rid = j->ev.request_id;
    char again[16];
    el(r, 0, tag, sizeof tag);
    el(r, 1, released, sizeof released);
    el(r, 2, again, sizeof again);
    if (strcmp(tag, "cancelled") != 0) {
        j->d->stats.ignored_responses++;
        vd_info("request %s: cancel ignored (already %s)", rid, released);
        redis_done(j);
        return;
    }
    /* A cancel seen again republishes what the first one released, with the same ids: its
     * outputs may never have reached Kafka. */
    if (strcmp(again, "replay") == 0)
        j->d->stats.replays++;
    else
        j->d->stats.cancelled++;
    if (!released[0]) {
        snprintf(id, sizeof id, "%s/cancelled", rid);
        produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.cancelled", id,
                json_pack("{s:s}", "request_id", rid));
    }
    for (const char *h = released; *h;) {
        char vid[VD_ID_MAX + 1];
        size_t len = strcspn(h, ",");
        snprintf(vid, sizeof vid, "%.*s", (int)len, h);
        snprintf(id, sizeof id, "%s/cancelled/%s", rid, vid);
        produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.cancelled", id,
                json_pack("{s:s, s:s}", "request_id", rid, "volunteer_id", vid));
        snprintf(id, sizeof id, "%s/notify-withdrawn/%s", rid, vid);
        produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id,
                json_pack("{s:s, s:s, s:s}", "kind", "withdrawn", "volunteer_id", vid,
                          "request_id", rid));
        h += len;
        if (*h) h++;
    }
    redis_done(j);
}

static void on_complete(struct job *j, redisReply *r) {
    char tag[16], id[200];
    const char *rid = j->ev.request_id, *vid = j->ev.volunteer_id;
    el(r, 0, tag, sizeof tag);
    char again[16];
    el(r, 2, again, sizeof again);
    if (strcmp(tag, "mismatch") == 0) {
        j->d->stats.ignored_responses++;
        vd_info("task %s/%s: completion ignored: the volunteer does not hold this request", rid, vid);
        redis_done(j);
        return;
    }
    if (strcmp(again, "replay") == 0)
        j->d->stats.replays++;
    else
        j->d->stats.completed++;
    snprintf(id, sizeof id, "%s/completed/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.completed", id,
            json_pack("{s:s, s:s, s:b}", "request_id", rid, "volunteer_id", vid, "all_done",
                      strcmp(tag, "completed") == 0));
    redis_done(j);
}

static void run_cancel(struct job *j) {
    struct args a;
    request_call(j, &a, "vd_cancel", 2);
    request_args(j, &a);
    fcall(j, &a, on_cancel);
}

static void run_complete(struct job *j) {
    struct args a;
    char req[VD_ID_MAX + 80];
    req_key(j, req, sizeof req);
    fcall_begin(&a, "vd_complete", 1);
    arg(&a, req);
    arg(&a, j->d->cfg->redis_key_prefix);
    arg(&a, j->ev.request_id);
    arg(&a, j->ev.volunteer_id);
    fcall(j, &a, on_complete);
}

static void run_job(struct job *j) {
    if (j->error) {
        dead_letter(j, j->error);
        redis_done(j);
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

/* ---- Kafka callbacks ---- */

static struct part *find_part(struct vd_dispatch *d, const char *topic, int32_t partition,
                              int create, enum vd_topic_kind kind) {
    for (struct part *p = d->parts; p; p = p->next)
        if (p->partition == partition && strcmp(p->topic, topic) == 0) return p;
    if (!create) return NULL;
    struct part *p = calloc(1, sizeof *p);
    if (!p || !(p->topic = strdup(topic))) abort();
    p->partition = partition;
    p->kind = kind;
    vd_offsets_init(&p->offs);
    p->next = d->parts;
    d->parts = p;
    return p;
}

static void drop_queue(struct part *p) {
    while (p->head) {
        struct job *j = p->head;
        p->head = j->next;
        job_abandon(j);
    }
    p->tail = NULL;
}

void vd_dispatch_on_assign(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind) {
    struct part *p = find_part(arg, topic, partition, 1, kind);
    p->assigned = 1;
    p->gen++;
    drop_queue(p);
    vd_offsets_reset(&p->offs);
}

void vd_dispatch_on_revoke(void *arg, const char *topic, int32_t partition, enum vd_topic_kind kind) {
    struct part *p = find_part(arg, topic, partition, 0, kind);
    if (!p) return;
    p->assigned = 0;
    p->gen++;
    drop_queue(p);
    vd_offsets_reset(&p->offs);
}

void vd_dispatch_on_message(void *arg, rd_kafka_message_t *m, enum vd_topic_kind kind) {
    struct vd_dispatch *d = arg;
    struct part *p = find_part(d, rd_kafka_topic_name(m->rkt), m->partition, 1, kind);
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
    struct job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->d = d;
    j->part = p;
    j->gen = p->gen;
    j->offset = m->offset;
    j->req = &j->ev;
    j->len = m->len;
    j->payload = malloc(m->len ? m->len : 1);
    if (!j->payload) abort();
    if (m->len) memcpy(j->payload, m->payload, m->len);
    rd_kafka_message_destroy(m);
    /* Decode now: the key that orders this job among its partition's is the request or
     * volunteer it is about. */
    char err[512];
    if (vd_event_decode(j->payload, j->len, kind, &j->ev, err, sizeof err) < 0) {
        j->error = strdup(err);
        if (!j->error) abort();
    } else {
        d->stats.inputs[j->ev.type]++;
        snprintf(j->key, sizeof j->key, "%s",
                 kind == VD_TOPIC_VOLUNTEERS ? j->ev.volunteer_id : j->ev.request_id);
    }
    job_enqueue(p, j);
    kick(p);
}

void vd_dispatch_on_delivered(void *arg, void *opaque) {
    struct job *j = opaque;
    (void)arg;
    j->pending--;
    maybe_finish(j);
}

void vd_dispatch_on_redis_ready(struct vd_redis *r, void *arg) {
    struct vd_dispatch *d = arg;
    for (struct part *p = d->parts; p; p = p->next) kick(p);
}

/* ---- daemon-facing ---- */

struct vd_dispatch *vd_dispatch_new(uv_loop_t *loop, const struct vd_config *cfg) {
    struct vd_dispatch *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->loop = loop;
    d->cfg = cfg;
    /* Internal jobs live in a part of their own; "(due)" can be no Kafka topic's name. */
    d->timers = find_part(d, "(due)", 0, 1, VD_TOPIC_REQUESTS);
    d->timers->assigned = 1;
    d->timers->internal = 1;
    static const double bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    vd_histogram_init(&d->stats.match_seconds, bounds, sizeof bounds / sizeof bounds[0]);
    return d;
}

void vd_dispatch_attach(struct vd_dispatch *d, struct vd_redis *redis, struct vd_kafka *kafka) {
    d->redis = redis;
    d->kafka = kafka;
}

void vd_dispatch_cron(struct vd_dispatch *d) {
    for (struct part *p = d->parts; p; p = p->next) kick(p);
    flush_settles(d);
    poll_due(d);
    /* Back-pressure: stop fetching while too much waits in memory (e.g. Redis is down). */
    uint64_t limit = (uint64_t)d->cfg->max_inflight;
    if (!vd_kafka_is_paused(d->kafka) && d->stats.jobs_in_memory >= limit)
        vd_kafka_pause_all(d->kafka, 1);
    else if (vd_kafka_is_paused(d->kafka) && d->stats.jobs_in_memory < limit / 2 && !d->stopping)
        vd_kafka_pause_all(d->kafka, 0);
}

void vd_dispatch_stop(struct vd_dispatch *d) {
    d->stopping = 1;
    for (struct part *p = d->parts; p; p = p->next) drop_queue(p);
}

void vd_dispatch_flush(struct vd_dispatch *d) { flush_settles(d); }

int vd_dispatch_idle(const struct vd_dispatch *d) {
    /* Settles still to send count only while Redis can take them. */
    int settling = vd_redis_is_ready(d->redis) && (d->nsettles > 0 || d->settles_in_flight > 0);
    return d->running == 0 && d->stats.jobs_in_memory == 0 && !settling;
}

const struct vd_dispatch_stats *vd_dispatch_stats(const struct vd_dispatch *d) { return &d->stats; }

void vd_dispatch_free(struct vd_dispatch *d) {
    if (!d) return;
    /* Jobs cut short by a late stop: their inputs stay uncommitted and come back. */
    while (d->all) job_free(d->all);
    while (d->parts) {
        struct part *p = d->parts;
        d->parts = p->next;
        drop_queue(p);
        vd_offsets_free(&p->offs);
        free(p->topic);
        free(p);
    }
    free(d);
}
