/* vd_event: CloudEvents 1.0 (structured JSON) decoding, validation and encoding.
 *
 * Decoding is strict, because every byte comes from outside: the message must be exactly one
 * JSON object of at most VD_EVENT_MAX_BYTES, without duplicate keys, nested at most
 * VD_EVENT_MAX_DEPTH deep, with every envelope attribute present and typed, a known `type`
 * that belongs to the topic it arrived on, and `data` valid for that type (required fields,
 * JSON types, the ID charset [A-Za-z0-9._:-]{1,64}, lat in [-85.05112878, 85.05112878] (what
 * Redis GEO can index), lon in [-180,180],
 * finite numbers, enum values, array sizes). On failure the error is one sentence that names
 * the field, e.g. "data.location.lat: 91 is out of range [-85.05112878, 85.05112878]"; it goes to the dead-letter
 * topic unchanged. Unknown extra fields are ignored (forward compatible). Decoding never
 * allocates into the result: struct vd_event is plain data the caller owns. */
#ifndef VD_EVENT_H
#define VD_EVENT_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define VD_EVENT_MAX_BYTES (64 * 1024)
#define VD_EVENT_MAX_DEPTH 8
#define VD_ID_MAX 64      /* IDs are 1..64 chars of [A-Za-z0-9._:-] */
#define VD_MAX_TAGS 32    /* entries in skills / languages */
#define VD_MAX_NEEDED 10  /* volunteers_needed upper bound */
#define VD_EVENT_ID_MAX 256
#define VD_SOURCE_MAX 256
/* The latitudes Redis GEO can index (and the contract accepts): within +-85.05112878. */
#define VD_GEO_LAT_MAX 85.05112878

/* Input topics, as configured in [kafka] topic.*. */
enum vd_topic_kind {
    VD_TOPIC_REQUESTS = 0,
    VD_TOPIC_VOLUNTEERS = 1,
    VD_TOPIC_RESPONSES = 2,
};

enum vd_event_type {
    VD_EV_VOLUNTEER_AVAILABLE = 0, /* vd.volunteer.available   (volunteers) */
    VD_EV_VOLUNTEER_LOCATION,      /* vd.volunteer.location    (volunteers) */
    VD_EV_VOLUNTEER_UNAVAILABLE,   /* vd.volunteer.unavailable (volunteers) */
    VD_EV_REQUEST_CREATED,         /* vd.request.created       (requests) */
    VD_EV_REQUEST_CANCELLED,       /* vd.request.cancelled     (requests) */
    VD_EV_OFFER_ACCEPTED,          /* vd.offer.accepted        (responses) */
    VD_EV_OFFER_DECLINED,          /* vd.offer.declined        (responses) */
    VD_EV_TASK_COMPLETED,          /* vd.task.completed        (responses) */
    VD_EV_REQUEST_ASSIGN,          /* vd.request.assign        (requests): a coordinator's choice */
    VD_EV__COUNT
};

enum vd_priority { VD_PRIO_URGENT = 0, VD_PRIO_HIGH, VD_PRIO_NORMAL, VD_PRIO_LOW };

struct vd_location {
    double lat, lon;
};

/* A view of an event's skills or languages (vd_event_skills(), vd_event_languages()). */
struct vd_tags {
    int n;
    const char (*v)[VD_ID_MAX + 1];
};

struct vd_vulnerability {
    int age;         /* -1 = not given; else 0..150 */
    int lives_alone; /* 0/1 */
    int low_income;  /* 0/1 */
    int disability;  /* 0/1 */
};

/* One decoded, valid input event. Fields that the type does not carry stay zero/empty.
 * Optional strings absent = "" ; optional numbers absent = 0 unless noted. */
struct vd_event {
    enum vd_event_type type;
    char id[VD_EVENT_ID_MAX + 1];     /* CloudEvents id: 1..256 printable ASCII chars */
    char source[VD_SOURCE_MAX + 1];   /* CloudEvents source: non-empty, <= 256 chars */
    int64_t time_ms;                  /* CloudEvents time, ms since the epoch */

    char request_id[VD_ID_MAX + 1];
    char volunteer_id[VD_ID_MAX + 1];
    char offer_id[VD_ID_MAX + 1];
    char event_id[VD_ID_MAX + 1];     /* event scope (concert, expo); "" = city pool */
    char team[VD_ID_MAX + 1];
    char service[VD_ID_MAX + 1];
    char preferred_volunteer_id[VD_ID_MAX + 1];
    char resident_id[VD_ID_MAX + 1];
    char coordinator_id[VD_ID_MAX + 1]; /* vd.request.assign: who chose the volunteer */

    struct vd_location location;      /* valid when has_location */
    int has_location;
    int max_tasks_per_day;            /* volunteer's own cap, 1..100; 0 = not given */

    enum vd_priority priority;        /* default normal */
    struct vd_vulnerability vulnerability; /* has_vulnerability says whether it was given */
    int has_vulnerability;
    int volunteers_needed;            /* 1..10, default 1 */
    int64_t not_before_ms;            /* 0 = not given */
    int64_t expires_at_ms;            /* 0 = not given */
    int max_distance_m;               /* 1..100000; 0 = not given */

    /* Last, so that a copy may end after the IDs it holds (vd_event_size()): the skills, then
     * the languages. Most events carry a few; room for all would be 4 KiB of each copy. */
    int nskills, nlanguages;
    char tags[2 * VD_MAX_TAGS][VD_ID_MAX + 1];
};

static inline struct vd_tags vd_event_skills(const struct vd_event *ev) {
    return (struct vd_tags){ev->nskills, ev->tags};
}
static inline struct vd_tags vd_event_languages(const struct vd_event *ev) {
    return (struct vd_tags){ev->nlanguages, ev->tags + ev->nskills};
}

/* The bytes of ev that hold something: up to its last skill or language. A struct vd_event
 * allocated with only this many bytes (vd_event_copy()) is complete; it must not be assigned
 * or copied whole (sizeof), only through vd_event_size(). */
size_t vd_event_size(const struct vd_event *ev);
/* A copy of ev in vd_event_size(ev) bytes (free()), or NULL on allocation failure. */
struct vd_event *vd_event_copy(const struct vd_event *ev);
/* Writes the IDs of t comma-separated into out (cap bytes; cut short there). */
void vd_tags_csv(struct vd_tags t, char *out, size_t cap);

/* Returns the CloudEvents type string ("vd.request.created") of t. */
const char *vd_event_type_name(enum vd_event_type t);
/* Returns "urgent" .. "low". */
const char *vd_priority_name(enum vd_priority p);

/* Decodes and validates one Kafka message value that arrived on a topic of the given kind.
 * Returns 0 with *ev filled, or -1 with a one-sentence reason naming the field in err.
 * buf need not be NUL-terminated. */
int vd_event_decode(const char *buf, size_t len, enum vd_topic_kind topic, struct vd_event *ev,
                    char *err, size_t errlen);

/* One Kafka message header (name NUL-terminated; value of len bytes, NULL for a null one). */
struct vd_event_header {
    const char *name;
    const void *value;
    size_t len;
};
#define VD_EVENT_MAX_HEADERS 64

/* Decodes a binary-mode event (the CloudEvents Kafka binding): the attributes in ce_<name>
 * headers, datacontenttype in content-type, the message value the data (one JSON object).
 * Other headers are ignored; an attribute twice, a header that is not UTF-8 text, ce_data, or
 * more than VD_EVENT_MAX_HEADERS headers are errors. Then every rule of vd_event_decode()
 * applies. Returns 0 or -1 with the reason in err. */
int vd_event_decode_binary(const struct vd_event_header *h, size_t nh, const char *value,
                           size_t len, enum vd_topic_kind topic, struct vd_event *ev, char *err,
                           size_t errlen);

/* Parses an RFC 3339 timestamp ("2026-11-29T08:00:00Z", "...+08:00", fractional seconds
 * allowed). Returns 0 and the instant in ms since the epoch, or -1. */
int vd_time_parse(const char *s, int64_t *ms);
/* Formats ms since the epoch as RFC 3339 UTC with milliseconds ("2026-11-29T08:00:00.000Z").
 * buf needs at least 32 bytes. Returns buf. */
char *vd_time_format(int64_t ms, char *buf, size_t buflen);

/* Returns 1 when s is a valid ID (1..64 chars of [A-Za-z0-9._:-]), else 0. */
int vd_id_valid(const char *s);

/* Digits of the `sequence` attribute: a zero-padded decimal, so that it orders the same as
 * text (the CloudEvents sequence extension asks for a lexicographically orderable string)
 * and as a number. */
#define VD_SEQUENCE_DIGITS 10

/* Builds an output CloudEvent around data (the reference to data is stolen). id must be
 * deterministic for the outcome it reports so that a replay yields the same event id.
 * sequence > 0 adds the CloudEvents `sequence` extension attribute (the fact's number in the
 * request's log). Returns a new JSON string the caller frees with free(), or NULL on
 * allocation failure. */
char *vd_event_encode(const char *type, const char *id, int64_t time_ms, long long sequence,
                      json_t *data);
/* The same with another CloudEvents `source` than "vdispatchd" (vdispatchctl's input events). */
char *vd_event_encode_from(const char *source, const char *type, const char *id, int64_t time_ms,
                           long long sequence, json_t *data);

/* What the daemon keeps of a request in Redis: a vd.request.created event with only what
 * matching and the outputs need (location, service, skills, languages, priority, volunteers
 * needed, times, distance limit, event, preferred volunteer, resident ID), never the
 * resident's own data (vulnerability details or any field the producer added). It decodes
 * with vd_event_decode() like the original. Returns a new JSON string (free()), or NULL on
 * allocation failure. */
char *vd_event_request_record(const struct vd_event *ev);

#endif
