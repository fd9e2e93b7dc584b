/* vd_event: turns untrusted Kafka message bytes into a validated struct vd_event, and wraps
 * output data in a CloudEvents envelope.
 *
 * Design notes:
 * - Checks run from the outside in, and the first failure wins: size (before any parsing),
 *   JSON syntax (jansson, duplicate keys rejected, trailing bytes rejected), top-level object,
 *   nesting depth, envelope attributes in a fixed order (specversion, type, source, id, time,
 *   datacontenttype, data), then the data fields of the type in the order the contract lists
 *   them. A given bad message therefore always yields the same error.
 * - Every error is one sentence that starts with the dotted path of the field it is about:
 *   "data.skills[3]: ...". Errors about the bytes as a whole use "message". A missing field is
 *   reported on its parent: 'data: missing required field "request_id"', and for the envelope
 *   'message: missing required attribute "id"'.
 * - A JSON null counts as absent everywhere: for an optional field it means "not given", for a
 *   required one it is reported as missing.
 * - Values quoted back in an error are cut to a few dozen characters and escaped, and the final
 *   error text is forced to printable UTF-8, because it travels on to the dead-letter topic as a
 *   JSON string and into logs.
 * - The depth walk never descends below VD_EVENT_MAX_DEPTH + 1, so its recursion is bounded no
 *   matter what jansson accepted. jansson's own depth limit (2048) reports as the same error.
 * - Time math is done on the proleptic Gregorian calendar by hand, so neither the process time
 *   zone nor timegm() matters. vd_time_parse() accepts instants from 1970-01-01T00:00:00Z to
 *   9999-12-31T23:59:59.999Z only (also after applying the offset), so that whatever it
 *   accepts, vd_time_format() writes back in a form it accepts again. */
#include "vd_event.h"
#include "vd_json.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How many characters of an offending value an error message quotes. */
#define QUOTE_CHARS 40
#define QUOTE_BUF (QUOTE_CHARS * 6 + 8)
#define PATH_MAX_LEN 64
/* 9999-12-31T23:59:59Z, the last second vd_time_parse() accepts. */
#define MAX_EPOCH_SECS 253402300799LL

static const char *type_names[VD_EV__COUNT] = {
    [VD_EV_VOLUNTEER_AVAILABLE] = "vd.volunteer.available",
    [VD_EV_VOLUNTEER_LOCATION] = "vd.volunteer.location",
    [VD_EV_VOLUNTEER_UNAVAILABLE] = "vd.volunteer.unavailable",
    [VD_EV_REQUEST_CREATED] = "vd.request.created",
    [VD_EV_REQUEST_CANCELLED] = "vd.request.cancelled",
    [VD_EV_OFFER_ACCEPTED] = "vd.offer.accepted",
    [VD_EV_OFFER_DECLINED] = "vd.offer.declined",
    [VD_EV_TASK_COMPLETED] = "vd.task.completed",
    [VD_EV_REQUEST_ASSIGN] = "vd.request.assign",
};

static const enum vd_topic_kind type_topics[VD_EV__COUNT] = {
    [VD_EV_VOLUNTEER_AVAILABLE] = VD_TOPIC_VOLUNTEERS,
    [VD_EV_VOLUNTEER_LOCATION] = VD_TOPIC_VOLUNTEERS,
    [VD_EV_VOLUNTEER_UNAVAILABLE] = VD_TOPIC_VOLUNTEERS,
    [VD_EV_REQUEST_CREATED] = VD_TOPIC_REQUESTS,
    [VD_EV_REQUEST_CANCELLED] = VD_TOPIC_REQUESTS,
    [VD_EV_OFFER_ACCEPTED] = VD_TOPIC_RESPONSES,
    [VD_EV_OFFER_DECLINED] = VD_TOPIC_RESPONSES,
    [VD_EV_TASK_COMPLETED] = VD_TOPIC_RESPONSES,
    [VD_EV_REQUEST_ASSIGN] = VD_TOPIC_REQUESTS,
};

static const char *priority_names[] = {
    [VD_PRIO_URGENT] = "urgent",
    [VD_PRIO_HIGH] = "high",
    [VD_PRIO_NORMAL] = "normal",
    [VD_PRIO_LOW] = "low",
};

static const char *topic_name(enum vd_topic_kind k) {
    switch (k) {
    case VD_TOPIC_REQUESTS: return "requests";
    case VD_TOPIC_VOLUNTEERS: return "volunteers";
    case VD_TOPIC_RESPONSES: return "responses";
    }
    return "unknown";
}

const char *vd_event_type_name(enum vd_event_type t) {
    if ((int)t < 0 || t >= VD_EV__COUNT) return "unknown";
    return type_names[t];
}

const char *vd_priority_name(enum vd_priority p) {
    if ((int)p < 0 || p > VD_PRIO_LOW) return "unknown";
    return priority_names[p];
}

int vd_id_valid(const char *s) {
    size_t n = 0;
    if (!s) return 0;
    for (; s[n]; n++) {
        unsigned char ch = (unsigned char)s[n];
        if (n >= VD_ID_MAX) return 0;
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return 0;
    }
    return n > 0;
}

/* ---- Time ------------------------------------------------------------------------------ */

static int is_leap(int64_t y) {
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m) {
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Days in the months before month m (1..12) of a common year. */
static const int days_before_month[12] = {0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* Leap years in 1..y (y >= 0). */
static int64_t leaps_through(int64_t y) {
    return y / 4 - y / 100 + y / 400;
}

/* Days from 1970-01-01 to y-m-d, for y >= 1. */
static int64_t days_from_civil(int64_t y, int m, int d) {
    int64_t days = 365 * (y - 1970) + leaps_through(y - 1) - leaps_through(1969);
    days += days_before_month[m - 1] + (m > 2 && is_leap(y)) + (d - 1);
    return days;
}

/* The inverse: the civil date of a day count relative to 1970-01-01 (any sign). */
static void civil_from_days(int64_t days, int64_t *yp, int *mp, int *dp) {
    /* Count from 0001-01-01, which starts a 400-year cycle of 146097 days. */
    int64_t n = days + 719162;
    int64_t cycles = floor_div(n, 146097);
    int64_t y = 1 + cycles * 400;
    n -= cycles * 146097;
    int64_t centuries = n / 36524; /* the fourth century of a cycle is one day longer */
    if (centuries == 4) centuries = 3;
    n -= centuries * 36524;
    y += centuries * 100;
    int64_t quads = n / 1461; /* groups of four years ending in a leap year */
    n -= quads * 1461;
    y += quads * 4;
    int64_t years = n / 365; /* the fourth year of a group is one day longer */
    if (years == 4) years = 3;
    n -= years * 365;
    y += years;
    int m = 1;
    while (m < 12 && n >= days_in_month(y, m)) {
        n -= days_in_month(y, m);
        m++;
    }
    *yp = y;
    *mp = m;
    *dp = (int)n + 1;
}

/* Reads exactly n decimal digits. Returns the value or -1. */
static int digits(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int vd_time_parse(const char *s, int64_t *ms) {
    if (!s) return -1;
    /* YYYY-MM-DDTHH:MM:SS is 19 characters; check each before reading past it. */
    int y = digits(s, 4);
    if (y < 0 || s[4] != '-') return -1;
    int mo = digits(s + 5, 2);
    if (mo < 0 || s[7] != '-') return -1;
    int d = digits(s + 8, 2);
    if (d < 0 || (s[10] != 'T' && s[10] != 't')) return -1;
    int h = digits(s + 11, 2);
    if (h < 0 || s[13] != ':') return -1;
    int mi = digits(s + 14, 2);
    if (mi < 0 || s[16] != ':') return -1;
    int sec = digits(s + 17, 2);
    if (sec < 0) return -1;
    if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) ||
        h > 23 || mi > 59 || sec > 60)
        return -1;
    if (sec == 60) sec = 59; /* a leap second counts as the second before it */

    const char *p = s + 19;
    int frac_ms = 0;
    if (*p == '.') {
        int n = 0;
        p++;
        for (; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 3) frac_ms = frac_ms * 10 + (*p - '0');
        if (n == 0) return -1;
        for (; n < 3; n++) frac_ms *= 10;
    }

    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        int oh = digits(p + 1, 2);
        if (oh < 0 || p[3] != ':') return -1;
        int om = digits(p + 4, 2);
        if (om < 0 || oh > 23 || om > 59) return -1;
        offset_min = sign * (oh * 60 + om);
        p += 6;
    } else {
        return -1;
    }
    if (*p != '\0') return -1;

    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
    secs -= (int64_t)offset_min * 60;
    /* The offset can push the instant out of 1970..9999 UTC; such times would not survive
     * vd_time_format() and mean nothing here. */
    if (secs < 0 || secs > MAX_EPOCH_SECS) return -1;
    if (ms) *ms = secs * 1000 + frac_ms;
    return 0;
}

char *vd_time_format(int64_t ms, char *buf, size_t buflen) {
    if (!buf || buflen == 0) return buf;
    int64_t days = floor_div(ms, 86400000);
    int64_t rest = ms % 86400000; /* 0 .. 86399999 after the fix-up; no overflow at INT64_MIN */
    if (rest < 0) rest += 86400000;
    int64_t y;
    int mo, d;
    civil_from_days(days, &y, &mo, &d);
    if (y < 0 || y > 9999 || buflen < 25) {
        snprintf(buf, buflen, "%04lld-%02d-%02dT%02d:%02d:%02d.%03dZ", (long long)y, mo, d,
                 (int)(rest / 3600000), (int)(rest / 60000 % 60), (int)(rest / 1000 % 60),
                 (int)(rest % 1000));
        return buf;
    }
    /* Every output carries a time: written digit by digit, not through printf. */
    int f[7] = {(int)y, mo, d, (int)(rest / 3600000), (int)(rest / 60000 % 60),
                (int)(rest / 1000 % 60), (int)(rest % 1000)};
    static const int width[7] = {4, 2, 2, 2, 2, 2, 3};
    static const char after[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    char *o = buf;
    for (int i = 0; i < 7; i++) {
        for (int k = width[i] - 1, v = f[i]; k >= 0; k--, v /= 10) o[k] = (char)('0' + v % 10);
        o += width[i];
        *o++ = after[i];
    }
    *o = '\0';
    return buf;
}

/* ---- Error text ------------------------------------------------------------------------ */

struct ctx {
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static int fail(struct ctx *c, const char *fmt, ...) {
    if (c->err && c->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when the bytes there are not one. */
static int utf8_seq_len(const unsigned char *s) {
    unsigned char b = s[0];
    int n;
    if (b < 0x80) return 1;
    if (b >= 0xc2 && b <= 0xdf) n = 2;
    else if (b >= 0xe0 && b <= 0xef) n = 3;
    else if (b >= 0xf0 && b <= 0xf4) n = 4;
    else return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0; /* also stops at the terminating NUL */
    if (b == 0xe0 && s[1] < 0xa0) return 0;  /* overlong */
    if (b == 0xed && s[1] > 0x9f) return 0;  /* surrogate */
    if (b == 0xf0 && s[1] < 0x90) return 0;  /* overlong */
    if (b == 0xf4 && s[1] > 0x8f) return 0;  /* beyond U+10FFFF */
    return n;
}

/* Rewrites s in place so that it is valid UTF-8 without control characters: anything else
 * becomes '?'. Used on the finished error, which may hold jansson's text or have been cut by
 * snprintf in the middle of a character. */
static void make_printable(char *s) {
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = utf8_seq_len(p);
        if (n == 0 || (n == 1 && (*p < 0x20 || *p == 0x7f))) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

/* Writes s double-quoted into buf for an error message: at most QUOTE_CHARS characters
 * (then "..."), with quotes, backslashes and control characters escaped. Returns buf. */
static const char *quote(const char *s, char *buf) {
    const unsigned char *p = (const unsigned char *)s;
    char *o = buf;
    int chars = 0;
    *o++ = '"';
    while (*p && chars < QUOTE_CHARS) {
        int n = utf8_seq_len(p);
        if (n == 0) {
            *o++ = '?';
            p++;
        } else if (n > 1) {
            memcpy(o, p, (size_t)n);
            o += n;
            p += n;
        } else if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            o += sprintf(o, "\\u%04x", *p++);
        } else {
            *o++ = (char)*p++;
        }
        chars++;
    }
    *o++ = '"';
    if (*p) {
        memcpy(o, "...", 3);
        o += 3;
    }
    *o = '\0';
    return buf;
}

/* Writes a JSON number for an error message: integers exactly, reals in the shortest form
 * that reads back as the same double. Returns buf. */
static const char *number_text(const json_t *v, char *buf, size_t buflen) {
    if (json_is_integer(v)) {
        snprintf(buf, buflen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    double d = json_number_value(v);
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, buflen, "%.*g", prec, d);
        if (strtod(buf, NULL) == d) break;
    }
    return buf;
}

/* ---- Field helpers --------------------------------------------------------------------- */

/* Member key of obj, with JSON null treated as absent. */
static json_t *member(const json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

/* Looks up a member. Returns -1 (error set) when it is required and absent, else 0 with *out
 * set to the value or NULL. */
static int lookup(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                  int required, json_t **out) {
    *out = member(obj, key);
    if (!*out && required) return fail(c, "%s: missing required field \"%s\"", parent, key);
    return 0;
}

static int get_string(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                      int required, const char **out) {
    json_t *v;
    *out = NULL;
    if (lookup(c, obj, parent, key, required, &v) < 0) return -1;
    if (!v) return 0;
    if (!json_is_string(v)) return fail(c, "%s.%s: must be a string", parent, key);
    *out = json_string_value(v);
    return 0;
}

static int check_id(struct ctx *c, const char *path, const json_t *v, char out[VD_ID_MAX + 1]) {
    char q[QUOTE_BUF];
    if (!json_is_string(v)) return fail(c, "%s: must be a string", path);
    const char *s = json_string_value(v);
    if (!vd_id_valid(s))
        return fail(c, "%s: %s is not a valid ID (1-64 chars of [A-Za-z0-9._:-])", path,
                    quote(s, q));
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

/* An ID field; out stays "" when an optional one is absent. */
static int get_id(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                  int required, char out[VD_ID_MAX + 1]) {
    char path[PATH_MAX_LEN];
    json_t *v;
    if (lookup(c, obj, parent, key, required, &v) < 0) return -1;
    if (!v) return 0;
    snprintf(path, sizeof path, "%s.%s", parent, key);
    return check_id(c, path, v, out);
}

/* An integer field within [min, max]; *out is untouched when an optional one is absent. */
static int get_int(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                   int required, int min, int max, int *out) {
    json_t *v;
    if (lookup(c, obj, parent, key, required, &v) < 0) return -1;
    if (!v) return 0;
    if (!json_is_integer(v)) return fail(c, "%s.%s: must be an integer", parent, key);
    json_int_t n = json_integer_value(v);
    if (n < min || n > max)
        return fail(c, "%s.%s: %" JSON_INTEGER_FORMAT " is out of range [%d, %d]", parent, key,
                    n, min, max);
    *out = (int)n;
    return 0;
}

static int get_bool(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                    int *out) {
    json_t *v = member(obj, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return fail(c, "%s.%s: must be true or false", parent, key);
    *out = json_is_true(v);
    return 0;
}

static int get_time(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                    int64_t *out) {
    const char *s;
    char q[QUOTE_BUF];
    if (get_string(c, obj, parent, key, 0, &s) < 0) return -1;
    if (!s) return 0;
    if (vd_time_parse(s, out) < 0)
        return fail(c, "%s.%s: %s is not an RFC 3339 timestamp", parent, key, quote(s, q));
    return 0;
}

/* A number within [min, max], integer or real. */
static int get_coord(struct ctx *c, const json_t *obj, const char *parent, const char *key,
                     double min, double max, double *out) {
    char num[40];
    json_t *v;
    if (lookup(c, obj, parent, key, 1, &v) < 0) return -1;
    if (!json_is_number(v)) return fail(c, "%s.%s: must be a number", parent, key);
    double d = json_number_value(v);
    if (!isfinite(d)) return fail(c, "%s.%s: must be a finite number", parent, key);
    if (d < min || d > max)
        return fail(c, "%s.%s: %s is out of range [%.10g, %.10g]", parent, key,
                    number_text(v, num, sizeof num), min, max);
    *out = d;
    return 0;
}

static int get_location(struct ctx *c, const json_t *obj, struct vd_event *ev) {
    json_t *v;
    if (lookup(c, obj, "data", "location", 1, &v) < 0) return -1;
    if (!json_is_object(v)) return fail(c, "data.location: must be an object");
    if (get_coord(c, v, "data.location", "lat", -VD_GEO_LAT_MAX, VD_GEO_LAT_MAX,
                  &ev->location.lat) < 0 ||
        get_coord(c, v, "data.location", "lon", -180, 180, &ev->location.lon) < 0)
        return -1;
    ev->has_location = 1;
    return 0;
}

/* An array of at most VD_MAX_TAGS IDs, into ev's tags after those already there (the skills
 * are decoded before the languages); *n stays 0 when an optional one is absent. */
static int get_tags(struct ctx *c, const json_t *obj, const char *key, int required,
                    struct vd_event *ev, int *n) {
    char path[PATH_MAX_LEN];
    char(*t)[VD_ID_MAX + 1] = ev->tags + ev->nskills + ev->nlanguages;
    json_t *v;
    if (lookup(c, obj, "data", key, required, &v) < 0) return -1;
    if (!v) return 0;
    if (!json_is_array(v)) return fail(c, "data.%s: must be an array", key);
    size_t len = json_array_size(v);
    if (len > VD_MAX_TAGS)
        return fail(c, "data.%s: %zu entries exceed the limit of %d", key, len, VD_MAX_TAGS);
    for (size_t i = 0; i < len; i++) {
        snprintf(path, sizeof path, "data.%s[%zu]", key, i);
        if (check_id(c, path, json_array_get(v, i), t[i]) < 0) return -1;
    }
    *n = (int)len;
    return 0;
}

size_t vd_event_size(const struct vd_event *ev) {
    return offsetof(struct vd_event, tags) +
           (size_t)(ev->nskills + ev->nlanguages) * sizeof ev->tags[0];
}

struct vd_event *vd_event_copy(const struct vd_event *ev) {
    size_t n = vd_event_size(ev);
    struct vd_event *c = malloc(n);
    if (c) memcpy(c, ev, n);
    return c;
}

void vd_tags_csv(struct vd_tags t, char *out, size_t cap) {
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < t.n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? "," : "", t.v[i]);
}

static int get_priority(struct ctx *c, const json_t *obj, enum vd_priority *out) {
    const char *s;
    char q[QUOTE_BUF];
    if (get_string(c, obj, "data", "priority", 0, &s) < 0) return -1;
    if (!s) return 0;
    for (int p = VD_PRIO_URGENT; p <= VD_PRIO_LOW; p++) {
        if (strcmp(s, priority_names[p]) == 0) {
            *out = (enum vd_priority)p;
            return 0;
        }
    }
    return fail(c, "data.priority: %s is not one of urgent, high, normal, low", quote(s, q));
}

static int get_vulnerability(struct ctx *c, const json_t *obj, struct vd_event *ev) {
    static const char *path = "data.vulnerability";
    struct vd_vulnerability *vu = &ev->vulnerability;
    json_t *v = member(obj, "vulnerability");
    if (!v) return 0;
    if (!json_is_object(v)) return fail(c, "%s: must be an object", path);
    if (get_int(c, v, path, "age", 0, 0, 150, &vu->age) < 0 ||
        get_bool(c, v, path, "lives_alone", &vu->lives_alone) < 0 ||
        get_bool(c, v, path, "low_income", &vu->low_income) < 0 ||
        get_bool(c, v, path, "disability", &vu->disability) < 0)
        return -1;
    ev->has_vulnerability = 1;
    return 0;
}

/* ---- Data per type --------------------------------------------------------------------- */

enum { OPTIONAL = 0, REQUIRED = 1 };

static int decode_request_created(struct ctx *c, const json_t *d, struct vd_event *ev) {
    if (get_id(c, d, "data", "request_id", REQUIRED, ev->request_id) < 0 ||
        get_location(c, d, ev) < 0 ||
        get_id(c, d, "data", "service", REQUIRED, ev->service) < 0 ||
        get_tags(c, d, "skills", OPTIONAL, ev, &ev->nskills) < 0 ||
        get_tags(c, d, "languages", OPTIONAL, ev, &ev->nlanguages) < 0 ||
        get_priority(c, d, &ev->priority) < 0 || get_vulnerability(c, d, ev) < 0 ||
        get_int(c, d, "data", "volunteers_needed", OPTIONAL, 1, VD_MAX_NEEDED,
                &ev->volunteers_needed) < 0 ||
        get_time(c, d, "data", "not_before", &ev->not_before_ms) < 0 ||
        get_time(c, d, "data", "expires_at", &ev->expires_at_ms) < 0)
        return -1;
    if (member(d, "not_before") && member(d, "expires_at") &&
        ev->expires_at_ms <= ev->not_before_ms)
        return fail(c, "data.expires_at: must be later than data.not_before");
    if (get_int(c, d, "data", "max_distance_m", OPTIONAL, 1, 100000, &ev->max_distance_m) < 0 ||
        get_id(c, d, "data", "event_id", OPTIONAL, ev->event_id) < 0 ||
        get_id(c, d, "data", "preferred_volunteer_id", OPTIONAL, ev->preferred_volunteer_id) <
            0 ||
        get_id(c, d, "data", "resident_id", OPTIONAL, ev->resident_id) < 0)
        return -1;
    return 0;
}

static int decode_data(struct ctx *c, const json_t *d, struct vd_event *ev) {
    switch (ev->type) {
    case VD_EV_VOLUNTEER_AVAILABLE:
        if (get_id(c, d, "data", "volunteer_id", REQUIRED, ev->volunteer_id) < 0 ||
            get_location(c, d, ev) < 0 || get_tags(c, d, "skills", REQUIRED, ev, &ev->nskills) < 0 ||
            get_tags(c, d, "languages", REQUIRED, ev, &ev->nlanguages) < 0 ||
            get_int(c, d, "data", "max_tasks_per_day", OPTIONAL, 1, 100,
                    &ev->max_tasks_per_day) < 0 ||
            get_id(c, d, "data", "team", OPTIONAL, ev->team) < 0 ||
            get_id(c, d, "data", "event_id", OPTIONAL, ev->event_id) < 0)
            return -1;
        return 0;
    case VD_EV_VOLUNTEER_LOCATION:
        if (get_id(c, d, "data", "volunteer_id", REQUIRED, ev->volunteer_id) < 0 ||
            get_location(c, d, ev) < 0)
            return -1;
        return 0;
    case VD_EV_VOLUNTEER_UNAVAILABLE:
        return get_id(c, d, "data", "volunteer_id", REQUIRED, ev->volunteer_id);
    case VD_EV_REQUEST_CREATED:
        return decode_request_created(c, d, ev);
    case VD_EV_REQUEST_CANCELLED:
        return get_id(c, d, "data", "request_id", REQUIRED, ev->request_id);
    case VD_EV_OFFER_ACCEPTED:
    case VD_EV_OFFER_DECLINED:
        if (get_id(c, d, "data", "request_id", REQUIRED, ev->request_id) < 0 ||
            get_id(c, d, "data", "volunteer_id", REQUIRED, ev->volunteer_id) < 0 ||
            get_id(c, d, "data", "offer_id", REQUIRED, ev->offer_id) < 0)
            return -1;
        return 0;
    case VD_EV_TASK_COMPLETED:
        if (get_id(c, d, "data", "request_id", REQUIRED, ev->request_id) < 0 ||
            get_id(c, d, "data", "volunteer_id", REQUIRED, ev->volunteer_id) < 0)
            return -1;
        return 0;
    case VD_EV_REQUEST_ASSIGN:
        if (get_id(c, d, "data", "request_id", REQUIRED, ev->request_id) < 0 ||
            get_id(c, d, "data", "volunteer_id", REQUIRED, ev->volunteer_id) < 0 ||
            get_id(c, d, "data", "coordinator_id", REQUIRED, ev->coordinator_id) < 0)
            return -1;
        return 0;
    case VD_EV__COUNT:
        break;
    }
    return fail(c, "type: unknown event type");
}

/* ---- Envelope -------------------------------------------------------------------------- */

/* Returns 1 when no array or object inside v (at depth `depth`) lies deeper than the limit.
 * Stops descending as soon as the limit is passed. */
static int depth_ok(const json_t *v, int depth) {
    if (depth > VD_EVENT_MAX_DEPTH) return 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child) {
            if ((json_is_object(child) || json_is_array(child)) && !depth_ok(child, depth + 1))
                return 0;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) {
            if ((json_is_object(child) || json_is_array(child)) && !depth_ok(child, depth + 1))
                return 0;
        }
    }
    return 1;
}

static json_t *attribute(struct ctx *c, const json_t *root, const char *key) {
    json_t *v = member(root, key);
    if (!v) fail(c, "message: missing required attribute \"%s\"", key);
    return v;
}

/* A string attribute of 1..max bytes. */
static int get_attr_string(struct ctx *c, const json_t *root, const char *key, size_t max,
                           const char **out) {
    json_t *v = attribute(c, root, key);
    if (!v) return -1;
    if (!json_is_string(v)) return fail(c, "%s: must be a string", key);
    size_t n = json_string_length(v);
    if (n == 0) return fail(c, "%s: must not be empty", key);
    if (n > max) return fail(c, "%s: %zu bytes exceeds the %zu-byte limit", key, n, max);
    *out = json_string_value(v);
    return 0;
}

static int decode_envelope(struct ctx *c, const json_t *root, enum vd_topic_kind topic,
                           struct vd_event *ev) {
    char q[QUOTE_BUF];
    const char *s;
    json_t *v;

    if (!(v = attribute(c, root, "specversion"))) return -1;
    if (!json_is_string(v) || strcmp(json_string_value(v), "1.0") != 0)
        return fail(c, "specversion: must be \"1.0\"");

    if (!(v = attribute(c, root, "type"))) return -1;
    if (!json_is_string(v)) return fail(c, "type: must be a string");
    s = json_string_value(v);
    int t;
    for (t = 0; t < VD_EV__COUNT; t++)
        if (strcmp(s, type_names[t]) == 0) break;
    if (t == VD_EV__COUNT) return fail(c, "type: unknown event type %s", quote(s, q));
    if (type_topics[t] != topic)
        return fail(c, "type: \"%s\" does not belong on the %s topic", type_names[t],
                    topic_name(topic));
    ev->type = (enum vd_event_type)t;

    if (get_attr_string(c, root, "source", VD_SOURCE_MAX, &s) < 0) return -1;
    memcpy(ev->source, s, strlen(s) + 1);

    if (get_attr_string(c, root, "id", VD_EVENT_ID_MAX, &s) < 0) return -1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p > 0x7e) return fail(c, "id: must be printable ASCII");
    memcpy(ev->id, s, strlen(s) + 1);

    if (!(v = attribute(c, root, "time"))) return -1;
    if (!json_is_string(v)) return fail(c, "time: must be a string");
    if (vd_time_parse(json_string_value(v), &ev->time_ms) < 0)
        return fail(c, "time: %s is not an RFC 3339 timestamp", quote(json_string_value(v), q));

    if (!(v = attribute(c, root, "datacontenttype"))) return -1;
    if (!json_is_string(v) || strcmp(json_string_value(v), "application/json") != 0)
        return fail(c, "datacontenttype: must be \"application/json\"");

    if (!(v = attribute(c, root, "data"))) return -1;
    if (!json_is_object(v)) return fail(c, "data: must be an object");
    return decode_data(c, v, ev);
}

/* The checks after parsing, common to both modes: one object, not too deep, the envelope and
 * the data. */
static int decode_root(struct ctx *c, json_t *root, enum vd_topic_kind topic, struct vd_event *ev) {
    if (topic != VD_TOPIC_REQUESTS && topic != VD_TOPIC_VOLUNTEERS &&
        topic != VD_TOPIC_RESPONSES)
        return fail(c, "topic: unknown topic kind %d", (int)topic);
    if (!json_is_object(root)) return fail(c, "message: must be a JSON object");
    if (!depth_ok(root, 1)) return fail(c, "message: nesting deeper than %d", VD_EVENT_MAX_DEPTH);
    return decode_envelope(c, root, topic, ev);
}

/* An event before decoding: every field empty, the defaults of the optional ones set. */
static void event_init(struct vd_event *ev) {
    memset(ev, 0, sizeof *ev);
    ev->priority = VD_PRIO_NORMAL;
    ev->volunteers_needed = 1;
    ev->vulnerability.age = -1;
}

/* Parses len bytes as JSON, without duplicate keys; NULL after fail() says why. An empty
 * buffer is an error too (what names it: empty_why). */
static json_t *load_json(struct ctx *c, const char *buf, size_t len, const char *empty_why) {
    json_error_t jerr;
    if (len > VD_EVENT_MAX_BYTES) {
        fail(c, "message: %zu bytes exceeds the %d-byte limit", len, VD_EVENT_MAX_BYTES);
        return NULL;
    }
    if (!buf || len == 0) {
        fail(c, "message: %s", empty_why);
        return NULL;
    }
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_stack_overflow)
            fail(c, "message: nesting deeper than %d", VD_EVENT_MAX_DEPTH);
        else
            fail(c, "message: not valid JSON: %s at line %d column %d", jerr.text, jerr.line,
                 jerr.column);
    }
    return root;
}

int vd_event_decode(const char *buf, size_t len, enum vd_topic_kind topic, struct vd_event *ev,
                    char *err, size_t errlen) {
    struct ctx c = {err, errlen};
    json_t *root = NULL;
    int rc = -1;

    if (err && errlen) err[0] = '\0';
    event_init(ev);
    if (topic != VD_TOPIC_REQUESTS && topic != VD_TOPIC_VOLUNTEERS &&
        topic != VD_TOPIC_RESPONSES) {
        fail(&c, "topic: unknown topic kind %d", (int)topic);
        goto out;
    }
    root = load_json(&c, buf, len, "empty");
    if (root) rc = decode_root(&c, root, topic, ev);

out:
    json_decref(root);
    if (rc < 0 && err && errlen) make_printable(err);
    return rc;
}

static int has_prefix_nocase(const char *s, size_t n, const char *prefix) {
    size_t m = strlen(prefix);
    if (n < m) return 0;
    for (size_t i = 0; i < m; i++)
        if (tolower((unsigned char)s[i]) != prefix[i]) return 0;
    return 1;
}

int vd_event_decode_binary(const struct vd_event_header *h, size_t nh, const char *value,
                           size_t len, enum vd_topic_kind topic, struct vd_event *ev, char *err,
                           size_t errlen) {
    struct ctx c = {err, errlen};
    json_t *root = NULL, *data = NULL;
    int rc = -1;

    if (err && errlen) err[0] = '\0';
    event_init(ev);
    if (nh > VD_EVENT_MAX_HEADERS) {
        fail(&c, "headers: %zu exceed the limit of %d", nh, VD_EVENT_MAX_HEADERS);
        goto out;
    }
    root = json_object();
    if (!root) goto oom;
    for (size_t i = 0; i < nh; i++) {
        const char *name = h[i].name;
        size_t nlen = strlen(name);
        const char *attr = NULL;
        if (has_prefix_nocase(name, nlen, "ce_")) {
            attr = name + 3;
            if (!*attr || strcmp(attr, "data") == 0) {
                fail(&c, "header %.64s: names no attribute (the data is the message value)", name);
                goto out;
            }
        } else if (nlen == 12 && has_prefix_nocase(name, nlen, "content-type")) {
            attr = "datacontenttype";
        } else {
            continue; /* other headers (tracing, ...) are not the event's */
        }
        if (json_object_get(root, attr)) {
            fail(&c, "header %.64s: appears twice", name);
            goto out;
        }
        json_t *s = h[i].value ? json_stringn(h[i].value, h[i].len) : NULL;
        if (!s) {
            fail(&c, "header %.64s: %s", name, h[i].value ? "not UTF-8 text" : "no value");
            goto out;
        }
        if (json_object_set_new(root, attr, s) < 0) goto oom;
    }
    data = load_json(&c, value, len, "empty (binary mode: the value is the event's data)");
    if (!data) goto out;
    if (json_object_set_new(root, "data", data) < 0) goto oom;
    rc = decode_root(&c, root, topic, ev);
    goto out;
oom:
    fail(&c, "message: out of memory");
out:
    json_decref(root);
    if (rc < 0 && err && errlen) make_printable(err);
    return rc;
}

/* ---- Encoding -------------------------------------------------------------------------- */

/* Whether s is all UTF-8, as jansson requires of a string (json_string() checks it). */
static int utf8_text(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = utf8_seq_len(p);
        if (!n) return 0;
        p += n;
    }
    return 1;
}

/* A string literal's JSON syntax, as it is. */
#define RAW(o, lit) vd_json_raw((o), (lit), sizeof(lit) - 1)

static void attr(struct vd_json_out *o, const char *name, const char *value) {
    vd_json_raw(o, name, strlen(name));
    vd_json_string(o, value, strlen(value));
}

char *vd_event_encode(const char *type, const char *id, int64_t time_ms, long long sequence,
                      json_t *data) {
    return vd_event_encode_from("vdispatchd", type, id, time_ms, sequence, data);
}

/* The envelope is written as text around data's (vd_json), in the order the members always
 * had: building it as a jansson object first would cost an allocation per attribute. */
char *vd_event_encode_from(const char *source, const char *type, const char *id, int64_t time_ms,
                           long long sequence, json_t *data) {
    char ts[32], seq[24];
    char *out = NULL;
    struct vd_json_out o;

    if (!source || !type || !id || !data) goto out;
    if (!utf8_text(source) || !utf8_text(type) || !utf8_text(id)) goto out;
    vd_time_format(time_ms, ts, sizeof ts);
    vd_json_begin(&o);
    attr(&o, "{\"specversion\":\"1.0\",\"type\":", type);
    attr(&o, ",\"source\":", source);
    attr(&o, ",\"id\":", id);
    attr(&o, ",\"time\":", ts);
    RAW(&o, ",\"datacontenttype\":\"application/json\"");
    if (sequence > 0) {
        snprintf(seq, sizeof seq, "%0*lld", VD_SEQUENCE_DIGITS, sequence);
        attr(&o, ",\"sequence\":", seq);
    }
    RAW(&o, ",\"data\":");
    vd_json_value(&o, data, 12);
    RAW(&o, "}");
    out = vd_json_end(&o, NULL);

out:
    json_decref(data);
    return out;
}

/* Adds an ID array of tags unless it is empty. */
static int set_tags(json_t *data, const char *key, struct vd_tags t) {
    if (!t.n) return 0;
    json_t *a = json_array();
    for (int i = 0; a && i < t.n; i++)
        if (json_array_append_new(a, json_string(t.v[i])) < 0) {
            json_decref(a);
            return -1;
        }
    return json_object_set_new(data, key, a);
}

static int set_id(json_t *data, const char *key, const char *v) {
    return v[0] ? json_object_set_new(data, key, json_string(v)) : 0;
}

static int set_time(json_t *data, const char *key, int64_t ms) {
    char ts[32];
    return ms ? json_object_set_new(data, key, json_string(vd_time_format(ms, ts, sizeof ts))) : 0;
}

char *vd_event_request_record(const struct vd_event *ev) {
    json_t *data = json_pack("{s:s, s:{s:f, s:f}, s:s, s:s, s:i}", "request_id", ev->request_id,
                             "location", "lat", ev->location.lat, "lon", ev->location.lon,
                             "service", ev->service, "priority", vd_priority_name(ev->priority),
                             "volunteers_needed", ev->volunteers_needed);
    if (!data) return NULL;
    if (set_tags(data, "skills", vd_event_skills(ev)) < 0 ||
        set_tags(data, "languages", vd_event_languages(ev)) < 0 ||
        set_id(data, "event_id", ev->event_id) < 0 ||
        set_id(data, "preferred_volunteer_id", ev->preferred_volunteer_id) < 0 ||
        set_id(data, "resident_id", ev->resident_id) < 0 ||
        set_time(data, "not_before", ev->not_before_ms) < 0 ||
        set_time(data, "expires_at", ev->expires_at_ms) < 0 ||
        (ev->max_distance_m &&
         json_object_set_new(data, "max_distance_m", json_integer(ev->max_distance_m)) < 0)) {
        json_decref(data);
        return NULL;
    }
    return vd_event_encode("vd.request.created", "record", ev->time_ms, 0, data);
}
