/* libFuzzer target for vd_event: feeds arbitrary bytes to the decoder on every topic kind and
 * to the timestamp parser, and checks what comes back.
 *
 * Besides crashes, leaks and undefined behaviour (caught by the sanitizers), it traps when a
 * result breaks the decoder's promises: an error that is empty, not one printable UTF-8 line
 * or not "<field>: <text>"; an accepted event whose IDs, ranges or counts are out of bounds;
 * a timestamp that does not survive format -> parse. And it holds the JSON writer the
 * outputs are encoded with (vd_json) to jansson's own json_dumps(): whatever the bytes parse
 * to, both must write the same text. Build and run: see README.md here. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vd_event.h"
#include "vd_json.h"

#define check(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) __builtin_trap();                                                         \
    } while (0)

static int printable_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
                                                      : (*p & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0 || (n == 1 && (*p < 0x20 || *p == 0x7f))) return 0;
        for (int i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80) return 0;
        p += n;
    }
    return 1;
}

static int id_or_empty(const char *s) {
    return s[0] == '\0' || vd_id_valid(s);
}

static void check_tags(struct vd_tags t) {
    check(t.n >= 0 && t.n <= VD_MAX_TAGS);
    for (int i = 0; i < t.n; i++) check(vd_id_valid(t.v[i]));
}

static void check_event(const struct vd_event *ev, enum vd_topic_kind topic) {
    check(ev->type >= 0 && ev->type < VD_EV__COUNT);
    check(ev->id[0] && strlen(ev->id) <= VD_EVENT_ID_MAX);
    for (const char *p = ev->id; *p; p++) check(*p >= 0x20 && *p <= 0x7e);
    check(ev->source[0] && strlen(ev->source) <= VD_SOURCE_MAX);
    check(id_or_empty(ev->request_id) && id_or_empty(ev->volunteer_id) &&
          id_or_empty(ev->offer_id) && id_or_empty(ev->event_id) && id_or_empty(ev->team) &&
          id_or_empty(ev->service) && id_or_empty(ev->preferred_volunteer_id) &&
          id_or_empty(ev->resident_id));
    if (ev->has_location) {
        check(ev->location.lat >= -90 && ev->location.lat <= 90);
        check(ev->location.lon >= -180 && ev->location.lon <= 180);
    }
    check_tags(vd_event_skills(ev));
    check_tags(vd_event_languages(ev));
    /* A copy holds every field in its own size (the daemon's jobs keep such copies). */
    struct vd_event *c = vd_event_copy(ev);
    check(c && vd_event_size(c) == vd_event_size(ev));
    check(memcmp(c, ev, vd_event_size(ev)) == 0);
    check_tags(vd_event_skills(c));
    check_tags(vd_event_languages(c));
    free(c);
    check(ev->max_tasks_per_day >= 0 && ev->max_tasks_per_day <= 100);
    check(ev->priority >= VD_PRIO_URGENT && ev->priority <= VD_PRIO_LOW);
    check(ev->volunteers_needed >= 1 && ev->volunteers_needed <= VD_MAX_NEEDED);
    check(ev->vulnerability.age >= -1 && ev->vulnerability.age <= 150);
    check(ev->max_distance_m >= 0 && ev->max_distance_m <= 100000);
    if (ev->not_before_ms && ev->expires_at_ms) check(ev->expires_at_ms > ev->not_before_ms);

    switch (ev->type) {
    case VD_EV_VOLUNTEER_AVAILABLE:
    case VD_EV_VOLUNTEER_LOCATION:
        check(topic == VD_TOPIC_VOLUNTEERS && ev->volunteer_id[0] && ev->has_location);
        break;
    case VD_EV_VOLUNTEER_UNAVAILABLE:
        check(topic == VD_TOPIC_VOLUNTEERS && ev->volunteer_id[0]);
        break;
    case VD_EV_REQUEST_CREATED:
        check(topic == VD_TOPIC_REQUESTS && ev->request_id[0] && ev->service[0] &&
              ev->has_location);
        break;
    case VD_EV_REQUEST_CANCELLED:
        check(topic == VD_TOPIC_REQUESTS && ev->request_id[0]);
        break;
    case VD_EV_OFFER_ACCEPTED:
    case VD_EV_OFFER_DECLINED:
        check(topic == VD_TOPIC_RESPONSES && ev->offer_id[0]);
        /* fall through */
    case VD_EV_TASK_COMPLETED:
        check(topic == VD_TOPIC_RESPONSES && ev->request_id[0] && ev->volunteer_id[0]);
        break;
    case VD_EV_REQUEST_ASSIGN:
        check(topic == VD_TOPIC_REQUESTS && ev->request_id[0] && ev->volunteer_id[0] &&
              vd_id_valid(ev->coordinator_id));
        break;
    case VD_EV__COUNT:
        check(0);
    }
}

static int depth(const json_t *v) {
    int most = 0;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            int d = depth(json_array_get(v, i));
            if (d > most) most = d;
        }
        return most + 1;
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child) {
            int d = depth(child);
            if (d > most) most = d;
        }
        return most + 1;
    }
    return 0;
}

/* vd_json writes what json_dumps() writes, or refuses a value nested too deep: for the bytes
 * parsed as JSON, and for the bytes as one string (when they are UTF-8). */
static void check_writer(const uint8_t *data, size_t size, int as_string) {
    json_t *v = as_string ? json_stringn((const char *)data, size)
                          : json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                                       NULL);
    if (!v) return;
    for (int precision = 0; precision <= 12; precision += 12) {
        char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(precision));
        char *got = vd_json_dumps(v, precision);
        if (got) check(want && strcmp(got, want) == 0);
        else check(depth(v) > VD_JSON_MAX_DEPTH);
        free(want);
        free(got);
    }
    json_decref(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct vd_event ev;
    char err[512];

    for (int k = VD_TOPIC_REQUESTS; k <= VD_TOPIC_RESPONSES; k++) {
        memset(err, 'Z', sizeof err);
        int rc = vd_event_decode((const char *)data, size, (enum vd_topic_kind)k, &ev, err,
                                 sizeof err);
        check(rc == 0 || rc == -1);
        check(memchr(err, '\0', sizeof err) != NULL);
        if (rc == 0) {
            check(err[0] == '\0');
            check_event(&ev, (enum vd_topic_kind)k);
        } else {
            check(err[0] != '\0' && printable_utf8(err) && strstr(err, ": ") != NULL);
        }
    }

    /* The same bytes in binary mode: headers taken from the input (up to the first 0xff:
     * "name=value" lines), the rest as the value. */
    struct vd_event_header h[VD_EVENT_MAX_HEADERS + 2];
    char names[VD_EVENT_MAX_HEADERS + 2][64];
    size_t nh = 0, pos = 0;
    const uint8_t *split = memchr(data, 0xff, size);
    size_t hlen = split ? (size_t)(split - data) : 0;
    while (pos < hlen && nh < VD_EVENT_MAX_HEADERS + 2) {
        const uint8_t *nl = memchr(data + pos, '\n', hlen - pos);
        size_t line = nl ? (size_t)(nl - data) - pos : hlen - pos;
        const uint8_t *eq = memchr(data + pos, '=', line);
        size_t nlen = eq ? (size_t)(eq - data) - pos : line;
        if (nlen >= sizeof names[0]) nlen = sizeof names[0] - 1;
        memcpy(names[nh], data + pos, nlen);
        names[nh][nlen] = '\0';
        h[nh].name = names[nh];
        h[nh].value = eq ? (const void *)(eq + 1) : NULL;
        h[nh].len = eq ? line - nlen - 1 : 0;
        nh++;
        pos += line + 1;
    }
    const char *value = split ? (const char *)split + 1 : (const char *)data;
    size_t vlen = split ? size - hlen - 1 : size;
    memset(err, 'Z', sizeof err);
    int rc = vd_event_decode_binary(h, nh, value, vlen, VD_TOPIC_REQUESTS, &ev, err, sizeof err);
    check(rc == 0 || rc == -1);
    check(memchr(err, '\0', sizeof err) != NULL);
    if (rc == 0) check_event(&ev, VD_TOPIC_REQUESTS);
    else check(err[0] != '\0' && printable_utf8(err));

    check_writer(data, size, 0);
    check_writer(data, size, 1);

    /* The same bytes as a timestamp (and as an ID). */
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    int64_t ms = 0, back = -1;
    if (vd_time_parse(s, &ms) == 0) {
        char buf[32];
        vd_time_format(ms, buf, sizeof buf);
        check(vd_time_parse(buf, &back) == 0 && back == ms);
    }
    if (vd_id_valid(s)) check(strlen(s) <= VD_ID_MAX && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                                  "abcdefghijklmnopqrstuvwxyz"
                                                                  "0123456789._:-") == strlen(s));
    free(s);
    return 0;
}
