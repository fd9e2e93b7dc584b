/* vd_publish: what a job says on Kafka, the facts of a request's log and dead letters.
 *
 * Every output about a request comes from a fact of its log in Redis (see fact() in
 * vdispatch.lua): offered, confirmed, withdrawn, unmatched, cancelled, completed, released.
 * An output's id depends on the fact alone and it carries the fact's number as the
 * CloudEvents `sequence` attribute, so a fact published again (a replay, or a publication
 * not yet settled) is the same event, and a consumer that keeps the highest sequence per
 * request never sees an ended request come back. Each output is counted in the job's
 * `pending` until Kafka acknowledges it. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "vd_config.h"
#include "vd_job.h"
#include "vd_log.h"

#define DEADLETTER_PAYLOAD_MAX 4096

static int64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void produce(struct vd_job *j, enum vd_output_topic topic, const char *key, const char *type,
                    const char *id, long long seq, json_t *data) {
    char *s = vd_event_encode_from(j->d->cfg->event_source, type, id, wall_ms(), seq, data);
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
    if (!out) abort();
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

void vd_publish_dead_letter(struct vd_job *j, const char *error) {
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
    produce(j, VD_OUT_DEADLETTER, id, "vd.input.rejected", id, 0, data);
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

static void publish_offered(struct vd_job *j, long long seq, const char *vid, const char *oid,
                            int attempt, int64_t deadline_ms, struct match_note note) {
    const char *rid = j->ev.request_id;
    char id[200], when[40];
    vd_time_format(deadline_ms, when, sizeof when);
    json_t *data = json_pack("{s:s, s:s, s:s, s:f, s:i, s:s, s:i, s:i}", "request_id", rid,
                             "volunteer_id", vid, "offer_id", oid, "distance_m", note.distance_m,
                             "attempt", attempt, "expires_at", when, "radius_m", note.radius_m,
                             "candidates_considered", note.considered);
    add_request_fields(j->req, data);
    snprintf(id, sizeof id, "%s/offered/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.offered", id, seq, data);
    json_t *n = json_pack("{s:s, s:s, s:s, s:s, s:i, s:s}", "kind", "offer", "volunteer_id", vid,
                          "request_id", rid, "offer_id", oid, "attempt", attempt, "expires_at", when);
    if (j->req->service[0]) json_object_set_new(n, "service", json_string(j->req->service));
    snprintf(id, sizeof id, "%s/notify-offer/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id, seq, n);
}

/* by: the coordinator who assigned the volunteer (vd.request.assign), or NULL. */
static void publish_confirmed(struct vd_job *j, long long seq, const char *vid, const char *oid,
                              int attempt, struct match_note note, const char *by) {
    const char *rid = j->ev.request_id;
    const struct vd_event *req = j->req;
    char id[200];
    json_t *data = json_pack("{s:s, s:s, s:s, s:f, s:i, s:i, s:i}", "request_id", rid,
                             "volunteer_id", vid, "offer_id", oid, "distance_m", note.distance_m,
                             "attempt", attempt, "radius_m", note.radius_m,
                             "candidates_considered", note.considered);
    if (by) json_object_set_new(data, "assigned_by", json_string(by));
    add_request_fields(req, data);
    snprintf(id, sizeof id, "%s/confirmed/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.confirmed", id, seq, data);

    json_t *n = json_pack("{s:s, s:s, s:s, s:s}", "kind", "assigned", "volunteer_id", vid,
                          "request_id", rid, "offer_id", oid);
    if (by) json_object_set_new(n, "assigned_by", json_string(by));
    if (req->service[0]) json_object_set_new(n, "service", json_string(req->service));
    snprintf(id, sizeof id, "%s/notify-volunteer/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id, seq, n);
    json_t *res = json_pack("{s:s, s:s, s:s}", "kind", "volunteer_confirmed", "request_id", rid,
                            "volunteer_id", vid);
    if (req->resident_id[0]) json_object_set_new(res, "resident_id", json_string(req->resident_id));
    snprintf(id, sizeof id, "%s/notify-resident/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.resident", id, seq, res);
}

/* An offer ended without a confirmation: declined, timed out, or the request expired. The
 * volunteer is told, unless they declined it themselves. */
static void publish_withdrawn(struct vd_job *j, long long seq, const char *vid, const char *oid,
                              const char *why) {
    const char *rid = j->ev.request_id;
    char id[200];
    snprintf(id, sizeof id, "%s/withdrawn/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.withdrawn", id, seq,
            json_pack("{s:s, s:s, s:s, s:s}", "request_id", rid, "volunteer_id", vid, "offer_id",
                      oid, "reason", why));
    if (strcmp(why, "declined") == 0) return;
    snprintf(id, sizeof id, "%s/notify-withdrawn/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id, seq,
            json_pack("{s:s, s:s, s:s, s:s, s:s}", "kind", "offer_withdrawn", "volunteer_id", vid,
                      "request_id", rid, "offer_id", oid, "reason", why));
}

void vd_publish_count_reason(struct vd_dispatch *d, const char *reason) {
    for (int i = 0; reason && i < VD_UNMATCHED__COUNT; i++)
        if (strcmp(reason, vd_unmatched_reason_name(i)) == 0) d->stats.unmatched[i]++;
}

/* vd.request.unmatched with the outcome document recorded in Redis, and the coordinator's
 * notification: a person must act. */
static void publish_unmatched(struct vd_job *j, long long seq, const char *doc_json, int count) {
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
    if (count) vd_publish_count_reason(j->d, reason);
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
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.unmatched", id, seq, data);
    snprintf(id, sizeof id, "%s/notify-coordinator", rid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.coordinator", id, seq, coord);
}

/* The request was cancelled: one event per volunteer released (who is told), or one without a
 * volunteer when nobody was held. */
static void publish_cancelled(struct vd_job *j, long long seq, const char *vid) {
    const char *rid = j->ev.request_id;
    char id[200];
    if (!vid[0]) {
        snprintf(id, sizeof id, "%s/cancelled", rid);
        produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.cancelled", id, seq,
                json_pack("{s:s}", "request_id", rid));
        return;
    }
    snprintf(id, sizeof id, "%s/cancelled/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.cancelled", id, seq,
            json_pack("{s:s, s:s}", "request_id", rid, "volunteer_id", vid));
    snprintf(id, sizeof id, "%s/notify-withdrawn/%s", rid, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.volunteer", id, seq,
            json_pack("{s:s, s:s, s:s}", "kind", "withdrawn", "volunteer_id", vid, "request_id", rid));
}

static void publish_completed(struct vd_job *j, long long seq, const char *vid, int all) {
    const char *rid = j->ev.request_id;
    char id[200];
    snprintf(id, sizeof id, "%s/completed/%s", rid, vid);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.request.completed", id, seq,
            json_pack("{s:s, s:s, s:b}", "request_id", rid, "volunteer_id", vid, "all_done", all));
}

/* A confirmed task nobody reported done within matching.task_timeout_s: the volunteer is free
 * again, and a coordinator is told (someone should check on the resident). */
static void publish_released(struct vd_job *j, long long seq, const char *vid, const char *why) {
    const char *rid = j->ev.request_id;
    char id[200];
    snprintf(id, sizeof id, "%s/released/%s", rid, vid);
    json_t *data = json_pack("{s:s, s:s, s:s}", "request_id", rid, "volunteer_id", vid, "reason", why);
    add_request_fields(j->req, data);
    produce(j, VD_OUT_ASSIGNMENTS, rid, "vd.assignment.released", id, seq, data);
    json_t *coord = json_pack("{s:s, s:s, s:s, s:s}", "kind", why, "request_id", rid,
                              "volunteer_id", vid, "priority", vd_priority_name(j->req->priority));
    if (j->req->service[0]) json_object_set_new(coord, "service", json_string(j->req->service));
    snprintf(id, sizeof id, "%s/notify-%s/%s", rid, why, vid);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.coordinator", id, seq, coord);
}

void vd_publish_refused(struct vd_job *j, long long seq, const char *vid, const char *by,
                        const char *why) {
    const char *rid = j->ev.request_id;
    char id[400];
    if (seq > 0)
        snprintf(id, sizeof id, "%s/refused/%lld", rid, seq);
    else /* no log: the input message itself names it */
        snprintf(id, sizeof id, "refused/%s/%d/%lld", j->part->topic, (int)j->part->partition,
                 (long long)j->offset);
    json_t *coord = json_pack("{s:s, s:s, s:s, s:s, s:s}", "kind", "assignment_refused",
                              "request_id", rid, "volunteer_id", vid, "coordinator_id", by,
                              "reason", why);
    produce(j, VD_OUT_NOTIFICATIONS, rid, "vd.notify.coordinator", id, seq, coord);
}

void vd_publish_fact(struct vd_job *j, const char *line, size_t len) {
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
        publish_offered(j, seq, f[2], f[3], atoi(f[4]), atoll(f[5]), parse_note(f[6]));
        if (count) d->stats.offers[VD_OFFER_MADE]++;
    } else if (strcmp(kind, "confirmed") == 0 && n >= 6) {
        const char *by = n >= 7 && f[6][0] ? f[6] : NULL;
        publish_confirmed(j, seq, f[2], f[3], atoi(f[4]), parse_note(f[5]), by);
        if (count && j->req->time_ms > 0)
            vd_histogram_observe(&d->stats.request_to_confirmed,
                                 (double)(wall_ms() - j->req->time_ms) / 1000.0);
        if (count && by) {
            d->stats.assigned++;
        } else if (count) {
            d->stats.confirmed++;
            if (d->cfg->offer_timeout_ms > 0) d->stats.offers[VD_OFFER_ACCEPTED]++;
        }
    } else if (strcmp(kind, "refused") == 0 && n >= 5) {
        vd_publish_refused(j, seq, f[2], f[3], f[4]);
        if (count) d->stats.assign_refused++;
    } else if (strcmp(kind, "withdrawn") == 0 && n >= 5) {
        publish_withdrawn(j, seq, f[2], f[3], f[4]);
        if (count)
            d->stats.offers[strcmp(f[4], "declined") == 0  ? VD_OFFER_DECLINED
                            : strcmp(f[4], "timeout") == 0 ? VD_OFFER_TIMED_OUT
                                                           : VD_OFFER_EXPIRED]++;
    } else if (strcmp(kind, "unmatched") == 0 && n >= 3) {
        publish_unmatched(j, seq, f[2], count);
    } else if (strcmp(kind, "cancelled") == 0 && n >= 3) {
        publish_cancelled(j, seq, f[2]);
    } else if (strcmp(kind, "completed") == 0 && n >= 4) {
        publish_completed(j, seq, f[2], strcmp(f[3], "1") == 0);
    } else if (strcmp(kind, "released") == 0 && n >= 4) {
        publish_released(j, seq, f[2], f[3]);
        if (count) {
            d->stats.task_timeouts++;
            vd_warn("request %s: volunteer %s released: the task outlived matching.task_timeout_s "
                    "(%d s) without a completion; coordinator told", j->ev.request_id, f[2],
                    d->cfg->task_timeout_s);
        }
    } else {
        vd_error("request %s: unknown fact %.*s", j->ev.request_id, (int)len, line);
        known = 0;
    }
    if (known) j->settle_seq = seq;
    free(buf);
}
