/* Unit tests for vd_event: CloudEvents decoding and validation, time parsing and formatting,
 * the ID charset and output encoding.
 *
 * Most decoding cases are files under tests/data/events (see the README there): every valid
 * case must decode on its topic and be refused on the other two, every invalid case must be
 * refused with an error containing the expected text. Inputs too big or too regular to keep
 * as files (size limit, deep nesting) are built here. Case files are read into buffers of
 * exactly their size, so a decoder that reads past len trips AddressSanitizer. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vd_event.h"

#define EVENTS_DIR VD_TEST_DATA "/events"
#define MAX_CASES 512

/* ---- helpers ----------------------------------------------------------------------------- */

/* Reads a whole file into a buffer of exactly its size (at least 1 byte allocated). */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n > 0 ? (size_t)n : 0;
    return buf;
}

/* Reads the two lines of a .expect file, without line ends. Returns 0 or -1. */
static int read_expect(const char *path, char *line1, char *line2, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(line1, (int)cap, f) && fgets(line2, (int)cap, f);
    fclose(f);
    if (!ok) return -1;
    line1[strcspn(line1, "\r\n")] = '\0';
    line2[strcspn(line2, "\r\n")] = '\0';
    return line1[0] && line2[0] ? 0 : -1;
}

static int topic_kind(const char *s, enum vd_topic_kind *k) {
    if (strcmp(s, "requests") == 0) *k = VD_TOPIC_REQUESTS;
    else if (strcmp(s, "volunteers") == 0) *k = VD_TOPIC_VOLUNTEERS;
    else if (strcmp(s, "responses") == 0) *k = VD_TOPIC_RESPONSES;
    else return -1;
    return 0;
}

static const char *topic_str(enum vd_topic_kind k) {
    return k == VD_TOPIC_REQUESTS ? "requests" : k == VD_TOPIC_VOLUNTEERS ? "volunteers"
                                                                           : "responses";
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the case names (file names without ".json") in dir, sorted. Returns the count. */
static int list_cases(const char *dir, char **names) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len <= 5 || strcmp(de->d_name + len - 5, ".json") != 0) continue;
        assert_true(n < MAX_CASES);
        names[n] = strndup(de->d_name, len - 5);
        assert_non_null(names[n]);
        n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    return n;
}

/* 1 when s is valid UTF-8 without control characters. */
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

static int decode_str(const char *s, enum vd_topic_kind k, struct vd_event *ev, char *err,
                      size_t errlen) {
    /* Copy without the NUL so that reading past len is caught. */
    size_t len = strlen(s);
    char *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    memcpy(buf, s, len);
    int rc = vd_event_decode(buf, len, k, ev, err, errlen);
    free(buf);
    return rc;
}

static const char *MIN_REQUEST =
    "{\"specversion\":\"1.0\",\"type\":\"vd.request.created\",\"source\":\"/t\",\"id\":\"e1\","
    "\"time\":\"2026-11-29T08:00:00Z\",\"datacontenttype\":\"application/json\","
    "\"data\":{\"request_id\":\"r1\",\"location\":{\"lat\":1,\"lon\":2},\"service\":\"escort\"";

/* MIN_REQUEST's data with `extra` appended inside data, closed. Caller frees. */
static char *request_with(const char *extra) {
    size_t n = strlen(MIN_REQUEST) + strlen(extra) + 8;
    char *s = malloc(n);
    assert_non_null(s);
    snprintf(s, n, "%s%s}}", MIN_REQUEST, extra);
    return s;
}

/* ---- data-driven cases ------------------------------------------------------------------- */

static void test_valid_cases(void **state) {
    char *names[MAX_CASES];
    int n = list_cases(EVENTS_DIR "/valid", names);
    int failures = 0;
    assert_true(n >= 12);
    for (int i = 0; i < n; i++) {
        char path[512], topic[128], type[128], err[512];
        struct vd_event ev;
        enum vd_topic_kind k;
        size_t len;

        snprintf(path, sizeof path, EVENTS_DIR "/valid/%s.expect", names[i]);
        if (read_expect(path, topic, type, sizeof topic) < 0 || topic_kind(topic, &k) < 0) {
            print_error("valid/%s: missing or bad .expect\n", names[i]);
            failures++;
            goto next;
        }
        snprintf(path, sizeof path, EVENTS_DIR "/valid/%s.json", names[i]);
        char *buf = read_file(path, &len);
        assert_non_null(buf);
        strcpy(err, "unchanged");
        if (vd_event_decode(buf, len, k, &ev, err, sizeof err) != 0) {
            print_error("valid/%s: rejected: %s\n", names[i], err);
            failures++;
        } else if (strcmp(vd_event_type_name(ev.type), type) != 0 || err[0] != '\0') {
            print_error("valid/%s: decoded as %s, expected %s\n", names[i],
                        vd_event_type_name(ev.type), type);
            failures++;
        }
        /* The same bytes on either other topic are refused because of the type. */
        for (int other = 0; other < 3; other++) {
            char want[128];
            if ((enum vd_topic_kind)other == k) continue;
            snprintf(want, sizeof want, "does not belong on the %s topic",
                     topic_str((enum vd_topic_kind)other));
            if (vd_event_decode(buf, len, (enum vd_topic_kind)other, &ev, err, sizeof err) == 0 ||
                strncmp(err, "type: ", 6) != 0 || !strstr(err, want)) {
                print_error("valid/%s on %s: got \"%s\"\n", names[i],
                            topic_str((enum vd_topic_kind)other), err);
                failures++;
            }
        }
        free(buf);
    next:
        free(names[i]);
    }
    assert_int_equal(failures, 0);
}

static void test_invalid_cases(void **state) {
    char *names[MAX_CASES];
    int n = list_cases(EVENTS_DIR "/invalid", names);
    int failures = 0;
    assert_true(n >= 35);
    for (int i = 0; i < n; i++) {
        char path[512], topic[256], want[256], err[512];
        struct vd_event ev;
        enum vd_topic_kind k;
        size_t len;

        snprintf(path, sizeof path, EVENTS_DIR "/invalid/%s.expect", names[i]);
        if (read_expect(path, topic, want, sizeof topic) < 0 || topic_kind(topic, &k) < 0) {
            print_error("invalid/%s: missing or bad .expect\n", names[i]);
            failures++;
            goto next;
        }
        snprintf(path, sizeof path, EVENTS_DIR "/invalid/%s.json", names[i]);
        char *buf = read_file(path, &len);
        assert_non_null(buf);
        err[0] = '\0';
        int rc = vd_event_decode(buf, len, k, &ev, err, sizeof err);
        if (rc != -1) {
            print_error("invalid/%s: accepted\n", names[i]);
            failures++;
        } else if (!strstr(err, want)) {
            print_error("invalid/%s: error \"%s\" lacks \"%s\"\n", names[i], err, want);
            failures++;
        } else if (!printable_utf8(err) || !strstr(err, ": ") || strlen(err) > 400) {
            print_error("invalid/%s: error not one printable line: \"%s\"\n", names[i], err);
            failures++;
        }
        free(buf);
    next:
        free(names[i]);
    }
    assert_int_equal(failures, 0);
}

/* ---- decoded values ---------------------------------------------------------------------- */

static void decode_case(const char *name, enum vd_topic_kind k, struct vd_event *ev) {
    char path[512], err[512];
    size_t len;
    snprintf(path, sizeof path, EVENTS_DIR "/valid/%s.json", name);
    char *buf = read_file(path, &len);
    assert_non_null(buf);
    int rc = vd_event_decode(buf, len, k, ev, err, sizeof err);
    free(buf);
    if (rc != 0) print_error("%s: %s\n", name, err);
    assert_int_equal(rc, 0);
}

static void test_request_created_full(void **state) {
    struct vd_event ev;
    decode_case("request_created_full", VD_TOPIC_REQUESTS, &ev);
    assert_int_equal(ev.type, VD_EV_REQUEST_CREATED);
    assert_string_equal(ev.id, "req-1002/created");
    assert_string_equal(ev.source, "/呼和浩特/社区服务中心");
    assert_int_equal(ev.time_ms, 1795910400123LL);
    assert_string_equal(ev.request_id, "req-1002");
    assert_true(ev.has_location);
    assert_true(ev.location.lat == 40.8 && ev.location.lon == 111.7);
    assert_string_equal(ev.service, "health_check");
    assert_int_equal(vd_event_skills(&ev).n, 2);
    assert_string_equal(vd_event_skills(&ev).v[0], "first_aid");
    assert_string_equal(vd_event_skills(&ev).v[1], "driving");
    assert_int_equal(vd_event_languages(&ev).n, 2);
    assert_string_equal(vd_event_languages(&ev).v[1], "mn");
    assert_int_equal(ev.priority, VD_PRIO_URGENT);
    assert_true(ev.has_vulnerability);
    assert_int_equal(ev.vulnerability.age, 84);
    assert_int_equal(ev.vulnerability.lives_alone, 1);
    assert_int_equal(ev.vulnerability.low_income, 0);
    assert_int_equal(ev.vulnerability.disability, 1);
    assert_int_equal(ev.volunteers_needed, 2);
    assert_int_equal(ev.not_before_ms, 1795914000000LL);  /* 01:00Z */
    assert_int_equal(ev.expires_at_ms, 1795926600250LL);  /* 04:30:00.250Z */
    assert_int_equal(ev.max_distance_m, 3000);
    assert_string_equal(ev.event_id, "expo-2026");
    assert_string_equal(ev.preferred_volunteer_id, "vol-17");
    assert_string_equal(ev.resident_id, "res:42");
    assert_string_equal(ev.volunteer_id, "");
    assert_string_equal(ev.offer_id, "");
}

static void test_request_defaults(void **state) {
    const char *names[] = {"request_created_minimal", "request_created_optional_nulls"};
    for (size_t i = 0; i < 2; i++) {
        struct vd_event ev;
        decode_case(names[i], VD_TOPIC_REQUESTS, &ev);
        assert_int_equal(ev.priority, VD_PRIO_NORMAL);
        assert_int_equal(ev.volunteers_needed, 1);
        assert_false(ev.has_vulnerability);
        assert_int_equal(ev.vulnerability.age, -1);
        assert_int_equal(vd_event_skills(&ev).n, 0);
        assert_int_equal(vd_event_languages(&ev).n, 0);
        assert_int_equal(ev.not_before_ms, 0);
        assert_int_equal(ev.expires_at_ms, 0);
        assert_int_equal(ev.max_distance_m, 0);
        assert_string_equal(ev.event_id, "");
        assert_string_equal(ev.preferred_volunteer_id, "");
        assert_string_equal(ev.resident_id, "");
        assert_string_equal(ev.service, "home_visit");
    }
}

static void test_request_bounds(void **state) {
    struct vd_event ev;
    decode_case("request_created_bounds", VD_TOPIC_REQUESTS, &ev);
    assert_int_equal(strlen(ev.request_id), 64);
    assert_int_equal(strlen(ev.id), 256);
    assert_int_equal(strlen(ev.source), 256);
    assert_true(ev.location.lat == -VD_GEO_LAT_MAX && ev.location.lon == 180.0);
    assert_int_equal(vd_event_skills(&ev).n, 32);
    assert_string_equal(vd_event_skills(&ev).v[31], "s31");
    assert_int_equal(ev.volunteers_needed, 10);
    assert_int_equal(ev.max_distance_m, 100000);
    assert_int_equal(ev.priority, VD_PRIO_LOW);
    assert_true(ev.has_vulnerability);
    assert_int_equal(ev.vulnerability.age, 0);
    assert_int_equal(ev.vulnerability.lives_alone, 0);
}

static void test_request_time_forms(void **state) {
    struct vd_event ev;
    decode_case("request_created_time_forms", VD_TOPIC_REQUESTS, &ev);
    /* 2026-12-31T23:59:59.999999-12:00 = 2027-01-01T11:59:59.999Z */
    assert_int_equal(ev.time_ms, 1798804799999LL);
    /* 2028-02-29T23:59:60Z counts as :59 */
    assert_int_equal(ev.not_before_ms, 1835481599000LL);
    assert_int_equal(ev.expires_at_ms, 1835481600500LL);
}

static void test_volunteer_available_full(void **state) {
    struct vd_event ev;
    decode_case("volunteer_available_full", VD_TOPIC_VOLUNTEERS, &ev);
    assert_int_equal(ev.type, VD_EV_VOLUNTEER_AVAILABLE);
    assert_string_equal(ev.volunteer_id, "vol-18");
    assert_string_equal(ev.source, "/ᠬᠥᠬᠡᠬᠣᠲᠠ/volunteer-app");
    assert_true(ev.location.lat == 40.8421 && ev.location.lon == 111.749);
    assert_int_equal(vd_event_skills(&ev).n, 3);
    assert_string_equal(vd_event_skills(&ev).v[2], "sign.language");
    assert_int_equal(vd_event_languages(&ev).n, 3);
    assert_string_equal(vd_event_languages(&ev).v[0], "zh");
    assert_int_equal(ev.max_tasks_per_day, 100);
    assert_string_equal(ev.team, "team_red");
    assert_string_equal(ev.event_id, "concert:2026-07");

    decode_case("volunteer_available_minimal", VD_TOPIC_VOLUNTEERS, &ev);
    assert_int_equal(ev.max_tasks_per_day, 0);
    assert_string_equal(ev.team, "");
    assert_int_equal(vd_event_skills(&ev).n, 0);

    decode_case("unicode_escapes_and_whitespace", VD_TOPIC_VOLUNTEERS, &ev);
    assert_string_equal(ev.source, "/蒙古/ᠮᠣᠩᠭᠣᠯ");
    assert_string_equal(ev.id, "e-A");
    assert_string_equal(ev.volunteer_id, "vol-1");
    assert_true(ev.location.lat == 40.8421 && ev.location.lon == -110.0);
}

static void test_responses(void **state) {
    struct vd_event ev;
    decode_case("offer_accepted", VD_TOPIC_RESPONSES, &ev);
    assert_int_equal(ev.type, VD_EV_OFFER_ACCEPTED);
    assert_string_equal(ev.request_id, "req-1001");
    assert_string_equal(ev.volunteer_id, "vol-17");
    assert_string_equal(ev.offer_id, "req-1001:1");
    assert_false(ev.has_location);

    decode_case("task_completed", VD_TOPIC_RESPONSES, &ev);
    assert_int_equal(ev.type, VD_EV_TASK_COMPLETED);
    assert_string_equal(ev.offer_id, "");

    decode_case("volunteer_location_integers", VD_TOPIC_VOLUNTEERS, &ev);
    assert_true(ev.has_location);
    assert_true(ev.location.lat == 40.0 && ev.location.lon == -111.0);
}

/* ---- generated inputs -------------------------------------------------------------------- */

/* A valid request padded with an ignored string field to exactly total bytes. */
static char *padded_request(size_t total) {
    const char *head = MIN_REQUEST;
    const char *pad_open = ",\"pad\":\"";
    const char *tail = "\"}}";
    size_t fixed = strlen(head) + strlen(pad_open) + strlen(tail);
    assert_true(total > fixed);
    char *s = malloc(total + 1);
    assert_non_null(s);
    char *p = s;
    p = stpcpy(p, head);
    p = stpcpy(p, pad_open);
    memset(p, 'x', total - fixed);
    p += total - fixed;
    strcpy(p, tail);
    assert_int_equal(strlen(s), total);
    return s;
}

static void test_size_limit(void **state) {
    struct vd_event ev;
    char err[256];

    char *s = padded_request(VD_EVENT_MAX_BYTES);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), 0);
    free(s);

    s = padded_request(VD_EVENT_MAX_BYTES + 1);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "message: 65537 bytes exceeds the 65536-byte limit");
    free(s);

    s = padded_request(70 * 1024);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "message: 71680 bytes exceeds the 65536-byte limit");
    free(s);

    /* Checked before parsing: 70000 bytes of garbage report the size, not the syntax. */
    s = malloc(70001);
    assert_non_null(s);
    memset(s, '{', 70000);
    s[70000] = '\0';
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "message: 70000 bytes exceeds the 65536-byte limit");
    free(s);
}

/* MIN_REQUEST with data.x holding `levels` nested containers (arrays, or objects when
 * objects is set). data.x at one level puts the innermost container at depth 2 + levels. */
static char *nested_request(int levels, int objects) {
    size_t n = (size_t)levels * 8 + 16;
    char *extra = malloc(n);
    assert_non_null(extra);
    char *p = stpcpy(extra, ",\"x\":");
    for (int i = 0; i < levels; i++) p = stpcpy(p, objects && i < levels - 1 ? "{\"k\":" : "[");
    for (int i = levels - 1; i >= 0; i--) p = stpcpy(p, objects && i < levels - 1 ? "}" : "]");
    *p = '\0';
    char *s = request_with(extra);
    free(extra);
    return s;
}

static void test_depth_limit(void **state) {
    struct vd_event ev;
    char err[256];
    for (int objects = 0; objects <= 1; objects++) {
        char *s = nested_request(6, objects); /* innermost at depth 8 */
        assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), 0);
        free(s);
        int deeper[] = {7, 100, 2047, 2100, 9000}; /* jansson itself stops at 2048 */
        for (size_t i = 0; i < sizeof deeper / sizeof deeper[0]; i++) {
            s = nested_request(deeper[i], objects);
            assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
            assert_string_equal(err, "message: nesting deeper than 8");
            free(s);
        }
    }
    /* The location object counts too: 8 containers around it push it to depth 9... */
    char *s = request_with(",\"y\":[[[[[[{}]]]]]]");
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "message: nesting deeper than 8");
    free(s);
}

static void test_length_is_respected(void **state) {
    /* Valid JSON followed by junk the decoder must not look at. */
    struct vd_event ev;
    char err[256];
    char *s = request_with("");
    size_t len = strlen(s);
    char *buf = malloc(len + 10);
    assert_non_null(buf);
    memcpy(buf, s, len);
    memcpy(buf + len, "garbage!!!", 10);
    assert_int_equal(vd_event_decode(buf, len, VD_TOPIC_REQUESTS, &ev, err, sizeof err), 0);
    assert_int_equal(vd_event_decode(buf, len + 10, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "message: not valid JSON: end of file expected"));
    assert_non_null(strstr(err, "at line 1 column"));
    assert_int_equal(vd_event_decode(buf, 0, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "message: empty");
    assert_int_equal(vd_event_decode(NULL, 0, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "message: empty");
    free(buf);
    free(s);
}

static void test_error_buffer(void **state) {
    struct vd_event ev;
    char err[8];
    char *s = request_with(",\"priority\":\"asap\"");
    memset(err, 'Z', sizeof err);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "data.pr");
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, NULL, 0), -1);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, 1), -1);
    assert_string_equal(err, "");
    free(s);

    /* Cut in the middle of a multi-byte character: still valid UTF-8. */
    char small[30];
    s = request_with(",\"skills\":[\"技能技能技能技能技能技能\"]");
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, small, sizeof small), -1);
    assert_true(printable_utf8(small));
    assert_int_equal(strncmp(small, "data.skills[0]: \"", 17), 0);
    free(s);

    assert_int_equal(vd_event_decode("{}", 2, (enum vd_topic_kind)7, &ev, err, sizeof err), -1);
}

static void test_error_quoting(void **state) {
    struct vd_event ev;
    char err[512], extra[2048];

    /* Long values are cut on a character boundary and marked with an ellipsis. */
    strcpy(extra, ",\"skills\":[\"");
    for (int i = 0; i < 200; i++) strcat(extra, "服");
    strcat(extra, "\"]");
    char *s = request_with(extra);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    free(s);
    assert_true(printable_utf8(err));
    assert_int_equal(strncmp(err, "data.skills[0]: \"服服", 22), 0);
    assert_non_null(strstr(err, "服\"... is not a valid ID"));
    assert_true(strlen(err) < 250);

    /* Control characters and quotes inside a value are escaped. */
    s = request_with(",\"resident_id\":\"a\\u0001\\\"b\"");
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    free(s);
    assert_string_equal(err, "data.resident_id: \"a\\u0001\\\"b\" is not a valid ID "
                             "(1-64 chars of [A-Za-z0-9._:-])");

    /* jansson's text about a raw control character is made printable. */
    const char *raw = "{\"a\":\"x\x01y\"}";
    assert_int_equal(decode_str(raw, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_true(printable_utf8(err));
    assert_int_equal(strncmp(err, "message: not valid JSON: ", 25), 0);

    /* Reals print in their shortest exact form. */
    const char *lat = "{\"specversion\":\"1.0\",\"type\":\"vd.volunteer.location\",\"source\":\"s\","
                      "\"id\":\"i\",\"time\":\"2026-01-01T00:00:00Z\",\"datacontenttype\":"
                      "\"application/json\",\"data\":{\"volunteer_id\":\"v\",\"location\":"
                      "{\"lat\":85.05112878000001,\"lon\":0}}}";
    assert_int_equal(decode_str(lat, VD_TOPIC_VOLUNTEERS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "data.location.lat: 85.05112878000001 is out of range [-85.05112878, 85.05112878]");
}

/* ---- time ---------------------------------------------------------------------------------- */

static void test_time_parse(void **state) {
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01T00:30:00+00:00", 1800000},
        {"1970-01-01T01:00:00+01:00", 0},
        {"2026-11-29T08:00:00+08:00", 1795910400000LL},
        {"2026-11-29T00:00:00Z", 1795910400000LL},
        {"2026-11-28T23:00:00-01:00", 1795910400000LL},
        {"2026-11-29t00:00:00z", 1795910400000LL},
        {"2026-11-29T00:00:00-00:00", 1795910400000LL},
        {"2000-02-29T12:34:56.789Z", 951827696789LL},
        {"2000-02-29T12:34:56.7Z", 951827696700LL},
        {"2000-02-29T12:34:56.78912345Z", 951827696789LL},
        {"2024-12-31T23:59:59Z", 1735689599000LL},
        {"1972-06-30T23:59:60Z", 78796799000LL},
        {"2100-03-01T00:00:00Z", 4107542400000LL},
        {"9999-12-31T23:59:59.999Z", 253402300799999LL},
        {"9999-12-31T23:59:60.999Z", 253402300799999LL},
        {"9999-12-31T23:59:59.999-00:00", 253402300799999LL},
        {"1970-01-01T00:00:00.000+00:00", 0},
        {"2026-11-29T08:00:00+23:59", 1795910400000LL - (23 * 60 + 59) * 60000LL + 28800000LL},
    };
    static const char *bad[] = {
        "", "yesterday", "2026-11-29", "2026-11-29T08:00:00", "2026-11-29T08:00Z",
        "2026-11-29 08:00:00Z", "2026-11-29T08:00:00ZZ", "2026-11-29T08:00:00Z ",
        " 2026-11-29T08:00:00Z", "2026-11-29T08:00:00.Z", "2026-11-29T08:00:00+0800",
        "2026-11-29T08:00:00+08", "2026-11-29T08:00:00+24:00", "2026-11-29T08:00:00+08:60",
        "2026-00-10T00:00:00Z", "2026-13-10T00:00:00Z", "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z", "2026-04-31T00:00:00Z", "2026-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z", "2026-01-01T00:00:61Z", "1969-12-31T23:59:59Z",
        "0000-01-01T00:00:00Z", "+2026-01-01T00:00:00Z", "2026-1-01T00:00:00Z",
        "2026-01-01T0:00:00Z", "２０２６-01-01T00:00:00Z", "2026-01-01T00:00:00.123",
        "2026/01/01T00:00:00Z", "20260101T000000Z", "2026-01-01T00:00:00+08:00:00",
        /* valid syntax, but the offset moves the instant outside 1970..9999 UTC */
        "1970-01-01T00:59:59+01:00", "9999-12-31T23:30:00-00:31",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t ms = -12345;
        if (vd_time_parse(good[i].s, &ms) != 0 || ms != good[i].ms)
            fail_msg("%s: got %lld, want %lld", good[i].s, (long long)ms, (long long)good[i].ms);
    }
    assert_int_equal(vd_time_parse("2000-02-29T00:00:00Z", NULL), 0);
    assert_int_equal(vd_time_parse(NULL, NULL), -1);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms;
        if (vd_time_parse(bad[i], &ms) != -1) fail_msg("accepted \"%s\"", bad[i]);
    }
}

static void test_time_format(void **state) {
    char buf[32];
    assert_string_equal(vd_time_format(0, buf, sizeof buf), "1970-01-01T00:00:00.000Z");
    assert_string_equal(vd_time_format(1795910400123LL, buf, sizeof buf),
                        "2026-11-29T00:00:00.123Z");
    assert_string_equal(vd_time_format(951827696789LL, buf, sizeof buf),
                        "2000-02-29T12:34:56.789Z");
    assert_string_equal(vd_time_format(951868800000LL, buf, sizeof buf),
                        "2000-03-01T00:00:00.000Z");
    assert_string_equal(vd_time_format(253402300799999LL, buf, sizeof buf),
                        "9999-12-31T23:59:59.999Z");
    assert_string_equal(vd_time_format(-1, buf, sizeof buf), "1969-12-31T23:59:59.999Z");
    assert_string_equal(vd_time_format(-62135596800000LL, buf, sizeof buf),
                        "0001-01-01T00:00:00.000Z");
    assert_string_equal(vd_time_format(4107542399999LL, buf, sizeof buf),
                        "2100-02-28T23:59:59.999Z");
    vd_time_format(INT64_MAX, buf, sizeof buf);
    vd_time_format(INT64_MIN, buf, sizeof buf);
    char tiny[5];
    assert_string_equal(vd_time_format(0, tiny, sizeof tiny), "1970");

    /* Every day of 1970..9999 (sampled with a stride) and random instants round-trip. */
    for (int64_t day = 0; day < 2932897; day += 7) {
        int64_t ms = day * 86400000 + (day * 7919 % 86400000), back = -1;
        vd_time_format(ms, buf, sizeof buf);
        if (vd_time_parse(buf, &back) != 0 || back != ms)
            fail_msg("%lld -> %s -> %lld", (long long)ms, buf, (long long)back);
    }
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t ms = (int64_t)(x % 253402300800000ULL), back = -1;
        vd_time_format(ms, buf, sizeof buf);
        if (vd_time_parse(buf, &back) != 0 || back != ms)
            fail_msg("%lld -> %s -> %lld", (long long)ms, buf, (long long)back);
    }
}

/* ---- IDs, names, encoding ---------------------------------------------------------------- */

static void test_id_valid(void **state) {
    char id[80];
    assert_true(vd_id_valid("a"));
    assert_true(vd_id_valid("AZaz09._:-"));
    assert_true(vd_id_valid("req-2026-11-29:0001"));
    memset(id, 'x', 64);
    id[64] = '\0';
    assert_true(vd_id_valid(id));
    id[64] = 'x';
    id[65] = '\0';
    assert_false(vd_id_valid(id));
    assert_false(vd_id_valid(""));
    assert_false(vd_id_valid(NULL));
    const char *bad[] = {"a b", "a/b", "a\"b", "a\\b", "a+b", "é", "志愿者", "a\tb", "a\nb", "a@b",
                         "a#b", "a,b", "a;b", "a*b", "a~b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (vd_id_valid(bad[i])) fail_msg("accepted \"%s\"", bad[i]);
}

static void test_names(void **state) {
    static const char *want[VD_EV__COUNT] = {
        "vd.volunteer.available", "vd.volunteer.location", "vd.volunteer.unavailable",
        "vd.request.created",     "vd.request.cancelled",  "vd.offer.accepted",
        "vd.offer.declined",      "vd.task.completed",     "vd.request.assign",
    };
    for (int t = 0; t < VD_EV__COUNT; t++)
        assert_string_equal(vd_event_type_name((enum vd_event_type)t), want[t]);
    assert_string_equal(vd_event_type_name(VD_EV__COUNT), "unknown");
    assert_string_equal(vd_priority_name(VD_PRIO_URGENT), "urgent");
    assert_string_equal(vd_priority_name(VD_PRIO_HIGH), "high");
    assert_string_equal(vd_priority_name(VD_PRIO_NORMAL), "normal");
    assert_string_equal(vd_priority_name(VD_PRIO_LOW), "low");
    assert_string_equal(vd_priority_name((enum vd_priority)9), "unknown");
}

static void test_encode(void **state) {
    json_t *data = json_pack("{s:s, s:s, s:i}", "request_id", "req-1", "volunteer_id", "vol-2",
                             "distance_m", 420);
    assert_non_null(data);
    char *s = vd_event_encode("vd.assignment.confirmed", "req-1:confirmed:1", 1795910400123LL,
                              0, data);
    assert_non_null(s);
    assert_string_equal(
        s, "{\"specversion\":\"1.0\",\"type\":\"vd.assignment.confirmed\",\"source\":\"vdispatchd\","
           "\"id\":\"req-1:confirmed:1\",\"time\":\"2026-11-29T00:00:00.123Z\","
           "\"datacontenttype\":\"application/json\",\"data\":{\"request_id\":\"req-1\","
           "\"volunteer_id\":\"vol-2\",\"distance_m\":420}}");
    free(s);

    /* The data reference is consumed on failure too (LeakSanitizer checks). */
    assert_null(vd_event_encode(NULL, "id", 0, 0, json_object()));
    assert_null(vd_event_encode("vd.x", NULL, 0, 0, json_object()));
    assert_null(vd_event_encode("vd.x", "id", 0, 0, NULL));
    assert_null(vd_event_encode("vd.\xff", "id", 0, 0, json_pack("{s:i}", "a", 1)));
    /* A caller that keeps its own reference still has it afterwards. */
    data = json_object();
    json_incref(data);
    s = vd_event_encode("vd.x", "id", 0, 0, data);
    assert_non_null(s);
    assert_int_equal(data->refcount, 1);
    json_decref(data);
    free(s);
}

/* What we emit for an input type decodes back to the same values. */
static void test_encode_decode_round_trip(void **state) {
    struct vd_event ev;
    char err[256];
    json_t *data = json_pack("{s:s, s:{s:f, s:f}, s:s, s:[s, s], s:s, s:i}", "request_id", "req-9",
                             "location", "lat", 40.8421, "lon", 111.749, "service", "legal_aid",
                             "languages", "zh", "mn", "priority", "high", "volunteers_needed", 3);
    assert_non_null(data);
    char *s = vd_event_encode("vd.request.created", "req-9:created", 1795910400999LL, 0, data);
    assert_non_null(s);
    assert_int_equal(decode_str(s, VD_TOPIC_REQUESTS, &ev, err, sizeof err), 0);
    free(s);
    assert_string_equal(ev.source, "vdispatchd");
    assert_string_equal(ev.id, "req-9:created");
    assert_int_equal(ev.time_ms, 1795910400999LL);
    assert_true(ev.location.lat == 40.8421 && ev.location.lon == 111.749);
    assert_int_equal(vd_event_languages(&ev).n, 2);
    assert_int_equal(ev.priority, VD_PRIO_HIGH);
    assert_int_equal(ev.volunteers_needed, 3);
}

/* The sequence attribute: zero-padded text, ordered as text and as a number. */
static void test_encode_sequence(void **state) {
    char *s = vd_event_encode("vd.request.cancelled", "r/cancelled", 0, 12,
                              json_pack("{s:s}", "request_id", "r"));
    assert_non_null(s);
    assert_non_null(strstr(s, "\"sequence\":\"0000000012\""));
    free(s);
    s = vd_event_encode("vd.input.rejected", "d", 0, 0, json_object());
    assert_null(strstr(s, "sequence"));
    free(s);
}

/* The request record keeps what matching and the outputs need, and nothing of the resident. */
/* Binary mode (the CloudEvents Kafka binding): attributes in ce_ headers, the data in the
 * value; the same rules as structured mode, and the header-specific ones. */
static void test_binary_mode(void **state) {
    (void)state;
    const char *data = "{\"request_id\":\"rq-b1\",\"location\":{\"lat\":40.84,\"lon\":111.75},"
                       "\"service\":\"home_visit\"}";
    struct vd_event_header h[] = {
        {"ce_specversion", "1.0", 3},     {"ce_type", "vd.request.created", 18},
        {"ce_source", "/app", 4},         {"ce_id", "ev-b1", 5},
        {"ce_time", "2026-11-29T08:00:00Z", 20}, {"content-type", "application/json", 16},
        {"traceparent", "00-abc", 6},
    };
    size_t nh = sizeof h / sizeof h[0];
    struct vd_event ev;
    char err[512];
    assert_int_equal(vd_event_decode_binary(h, nh, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), 0);
    assert_int_equal(ev.type, VD_EV_REQUEST_CREATED);
    assert_string_equal(ev.request_id, "rq-b1");
    assert_string_equal(ev.id, "ev-b1");
    assert_string_equal(ev.source, "/app");

    /* Content-Type is datacontenttype, whatever its case; without it the event lacks one. */
    h[5].name = "Content-Type";
    assert_int_equal(vd_event_decode_binary(h, nh, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), 0);
    assert_int_equal(vd_event_decode_binary(h, 5, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "datacontenttype"));
    /* Missing type; the wrong topic. */
    struct vd_event_header no_type[] = {h[0], h[2], h[3], h[4], h[5]};
    assert_int_equal(vd_event_decode_binary(no_type, 5, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "type"));
    assert_int_equal(vd_event_decode_binary(h, nh, data, strlen(data), VD_TOPIC_VOLUNTEERS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "does not belong"));
    /* An attribute twice, ce_data, a header that is not UTF-8, a null one. */
    struct vd_event_header twice[] = {h[0], h[1], h[2], h[3], h[4], h[5], {"ce_id", "ev-b2", 5}};
    assert_int_equal(vd_event_decode_binary(twice, 7, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "header ce_id: appears twice");
    struct vd_event_header cedata[] = {h[0], h[1], h[2], h[3], h[4], h[5], {"ce_data", "{}", 2}};
    assert_int_equal(vd_event_decode_binary(cedata, 7, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "header ce_data"));
    struct vd_event_header bad[] = {h[0], h[1], {"ce_source", "\xff\xfe", 2}, h[3], h[4], h[5]};
    assert_int_equal(vd_event_decode_binary(bad, 6, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "header ce_source: not UTF-8 text");
    struct vd_event_header null_id[] = {h[0], h[1], h[2], {"ce_id", NULL, 0}, h[4], h[5]};
    assert_int_equal(vd_event_decode_binary(null_id, 6, data, strlen(data), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_string_equal(err, "header ce_id: no value");
    /* The value: the data, one JSON object, valid for the type. */
    assert_int_equal(vd_event_decode_binary(h, nh, "", 0, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "message: empty"));
    assert_int_equal(vd_event_decode_binary(h, nh, "{\"a\":1,\"a\":2}", 13, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "not valid JSON"));
    assert_int_equal(vd_event_decode_binary(h, nh, "[1]", 3, VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    const char *far = "{\"request_id\":\"rq-b1\",\"location\":{\"lat\":95,\"lon\":111.75},\"service\":\"x\"}";
    assert_int_equal(vd_event_decode_binary(h, nh, far, strlen(far), VD_TOPIC_REQUESTS, &ev, err, sizeof err), -1);
    assert_non_null(strstr(err, "data.location.lat"));
}

/* Skills and languages share the event's tail; a copy is as long as the IDs it holds. */
static void test_event_copy(void **state) {
    struct vd_event ev;
    decode_case("volunteer_available_full", VD_TOPIC_VOLUNTEERS, &ev);
    assert_int_equal(vd_event_size(&ev), offsetof(struct vd_event, tags) + 6 * sizeof ev.tags[0]);
    struct vd_event *c = vd_event_copy(&ev);
    assert_non_null(c);
    assert_string_equal(c->volunteer_id, "vol-18");
    assert_string_equal(vd_event_skills(c).v[2], "sign.language");
    assert_string_equal(vd_event_languages(c).v[0], "zh");
    char csv[256];
    vd_tags_csv(vd_event_languages(c), csv, sizeof csv);
    assert_string_equal(csv, "zh,mn,en");
    vd_tags_csv(vd_event_skills(c), csv, 12); /* cut short at the buffer's end */
    assert_int_equal(strlen(csv), 11);
    free(c);

    /* Both lists full: the copy is a whole event. */
    char msg[8192] =
        "{\"specversion\":\"1.0\",\"type\":\"vd.volunteer.available\",\"source\":\"/t\","
        "\"id\":\"e1\",\"time\":\"2026-11-29T08:00:00Z\",\"datacontenttype\":\"application/json\","
        "\"data\":{\"volunteer_id\":\"v1\","
        "\"location\":{\"lat\":40.8,\"lon\":111.7}";
    for (int list = 0; list < 2; list++) {
        strcat(msg, list ? "],\"languages\":[" : ",\"skills\":[");
        for (int i = 0; i < VD_MAX_TAGS; i++)
            sprintf(msg + strlen(msg), "%s\"%c%d\"", i ? "," : "", list ? 'l' : 's', i);
    }
    strcat(msg, "]}}");
    char err[256];
    if (decode_str(msg, VD_TOPIC_VOLUNTEERS, &ev, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(vd_event_size(&ev), offsetof(struct vd_event, tags) + sizeof ev.tags);
    c = vd_event_copy(&ev);
    assert_non_null(c);
    assert_string_equal(vd_event_skills(c).v[31], "s31");
    assert_string_equal(vd_event_languages(c).v[0], "l0");
    assert_string_equal(vd_event_languages(c).v[31], "l31");
    free(c);
}

static void test_request_record(void **state) {
    struct vd_event ev, back;
    char err[256];
    decode_case("request_created_full", VD_TOPIC_REQUESTS, &ev);
    assert_true(ev.has_vulnerability);
    char *rec = vd_event_request_record(&ev);
    assert_non_null(rec);
    assert_null(strstr(rec, "vulnerability"));
    assert_null(strstr(rec, "\"age\""));
    assert_null(strstr(rec, "note")); /* a field the producer added */
    assert_int_equal(decode_str(rec, VD_TOPIC_REQUESTS, &back, err, sizeof err), 0);
    free(rec);
    assert_string_equal(back.request_id, ev.request_id);
    assert_true(back.location.lat == ev.location.lat && back.location.lon == ev.location.lon);
    assert_string_equal(back.service, ev.service);
    assert_int_equal(vd_event_skills(&back).n, vd_event_skills(&ev).n);
    assert_int_equal(vd_event_languages(&back).n, vd_event_languages(&ev).n);
    assert_int_equal(back.priority, ev.priority);
    assert_int_equal(back.volunteers_needed, ev.volunteers_needed);
    assert_int_equal(back.not_before_ms, ev.not_before_ms);
    assert_int_equal(back.expires_at_ms, ev.expires_at_ms);
    assert_int_equal(back.max_distance_m, ev.max_distance_m);
    assert_string_equal(back.event_id, ev.event_id);
    assert_string_equal(back.preferred_volunteer_id, ev.preferred_volunteer_id);
    assert_string_equal(back.resident_id, ev.resident_id);
    assert_int_equal(back.has_vulnerability, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_cases),
        cmocka_unit_test(test_invalid_cases),
        cmocka_unit_test(test_request_created_full),
        cmocka_unit_test(test_request_defaults),
        cmocka_unit_test(test_request_bounds),
        cmocka_unit_test(test_request_time_forms),
        cmocka_unit_test(test_volunteer_available_full),
        cmocka_unit_test(test_responses),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_length_is_respected),
        cmocka_unit_test(test_error_buffer),
        cmocka_unit_test(test_error_quoting),
        cmocka_unit_test(test_time_parse),
        cmocka_unit_test(test_time_format),
        cmocka_unit_test(test_id_valid),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_encode_decode_round_trip),
        cmocka_unit_test(test_encode_sequence),
        cmocka_unit_test(test_event_copy),
        cmocka_unit_test(test_request_record),
        cmocka_unit_test(test_binary_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
