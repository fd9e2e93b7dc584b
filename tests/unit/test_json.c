/* Unit tests of the JSON writer (common/vd_json.c): byte for byte the text jansson's own
 * json_dumps() writes with the same flags, on the cases that differ in how they are written
 * (escapes, control characters, multi-byte characters, reals of every magnitude, the integer
 * extremes, empty and nested containers, texts longer than the inline buffer) and on
 * thousands of random values; and what it refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vd_json.h"

/* json_dumps() with the flags the writer stands in for. */
static char *reference(const json_t *v, int precision) {
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(precision));
}

static void same(const json_t *v, int precision) {
    char *want = reference(v, precision);
    char *got = vd_json_dumps(v, precision);
    assert_non_null(want);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(want);
    free(got);
}

static void test_scalars(void **state) {
    (void)state;
    json_t *v[] = {json_null(), json_true(), json_false(), json_integer(0), json_integer(-1),
                   json_integer(420), json_integer(INT64_MAX), json_integer(INT64_MIN),
                   json_string(""), json_string("req-1"), json_string("a/b"),
                   json_string("\"quoted\" and \\back\\slashed\\"),
                   json_stringn("\b\f\n\r\t\x01\x1f\x7f nul:\0!", 15),
                   json_string("呼和浩特 新城区 \xf0\x9f\x98\x80")};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        assert_non_null(v[i]);
        same(v[i], 12);
        json_decref(v[i]);
    }
}

static void test_reals(void **state) {
    (void)state;
    const double d[] = {0.0, -0.0, 1.0, -1.0, 0.5, 40.8421, 111.749, 1e21, 1e22, 1.5e-7,
                        1e-300, 1e300, 123456789012.0, 1234567890123.0, 2.5e+100, -3.75e-100,
                        1.7976931348623157e308, 5e-324, 0.1, 1.0 / 3.0};
    for (int precision = 0; precision <= 17; precision += 6)
        for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
            json_t *r = json_real(d[i]);
            assert_non_null(r);
            same(r, precision);
            json_decref(r);
        }
}

static void test_containers(void **state) {
    (void)state;
    json_t *v = json_loads("{\"empty\":{},\"none\":[],\"nested\":[[],{},[1,[2,[3]]]],"
                           "\"deep\":{\"a\":{\"b\":{\"c\":\"d\"}}},\"km\":1.25}", 0, NULL);
    assert_non_null(v);
    /* Keys that need escaping, and members set after others were deleted (order of setting). */
    assert_int_equal(json_object_set_new(v, "k\"e\\y\n", json_integer(1)), 0);
    assert_int_equal(json_object_set_new(v, "later", json_integer(2)), 0);
    assert_int_equal(json_object_del(v, "none"), 0);
    assert_int_equal(json_object_set_new(v, "none", json_integer(3)), 0);
    same(v, 12);
    /* Longer than the inline buffer: the text moves to the heap, more than once. */
    json_t *a = json_array();
    for (int i = 0; i < 3000; i++) json_array_append_new(a, json_string("vol-0000123"));
    json_object_set_new(v, "many", a);
    same(v, 12);
    json_decref(v);
}

/* A random value: scalars of every kind, strings of any bytes jansson accepts, containers
 * up to a few levels deep. */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static unsigned next(unsigned n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static json_t *random_string(void) {
    static const char *const pieces[] = {"a", "Z", "0", "-", ":", " ", "\"", "\\", "/", "\n",
                                         "\t", "\x01", "\x1f", "\x7f", "\xc3\xa9", "\xe5\x91\xbc",
                                         "\xf0\x9f\x98\x80", "", "vol-42"};
    char buf[256];
    size_t n = 0, count = next(12);
    for (size_t i = 0; i < count; i++) {
        const char *p = pieces[next(sizeof pieces / sizeof pieces[0])];
        size_t len = strlen(p);
        memcpy(buf + n, p, len);
        n += len;
    }
    if (next(10) == 0) buf[n++] = '\0'; /* an embedded NUL */
    return json_stringn(buf, n);
}

static json_t *random_value(int depth) {
    switch (next(depth >= 4 ? 6 : 8)) {
    case 0: return json_null();
    case 1: return json_boolean(next(2));
    case 2: return json_integer((json_int_t)(rng >> next(64)) * (next(2) ? 1 : -1));
    case 3: {
        double m = (double)(rng >> 11) / 9007199254740992.0;
        return json_real(m * __builtin_powi(10.0, (int)next(80) - 40) * (next(2) ? 1 : -1));
    }
    case 4:
    case 5: return random_string();
    case 6: {
        json_t *a = json_array();
        for (unsigned i = next(5); i > 0; i--) json_array_append_new(a, random_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (unsigned i = next(5); i > 0; i--) {
            json_t *k = random_string();
            json_object_setn_new(o, json_string_value(k), json_string_length(k),
                                 random_value(depth + 1));
            json_decref(k);
        }
        return o;
    }
    }
}

static void test_random(void **state) {
    (void)state;
    for (int i = 0; i < 20000; i++) {
        json_t *v = random_value(0);
        assert_non_null(v);
        same(v, i % 3 == 0 ? 0 : 12);
        json_decref(v);
    }
}

/* What it refuses: containers deeper than the limit (which also ends a cycle), a NULL value,
 * anything after a failure. */
static void test_refuses(void **state) {
    (void)state;
    json_t *root = json_array(), *v = root;
    for (int i = 1; i < VD_JSON_MAX_DEPTH; i++) {
        json_t *inner = json_array();
        json_array_append_new(v, inner);
        v = inner;
    }
    char *s = vd_json_dumps(root, 0); /* exactly the limit */
    assert_non_null(s);
    free(s);
    json_array_append_new(v, json_array());
    assert_null(vd_json_dumps(root, 0));
    json_decref(root);

    json_t *a = json_array(), *b = json_array();
    json_array_append(a, b);
    json_array_append(b, a);
    assert_null(vd_json_dumps(a, 0));
    json_array_clear(a);
    json_decref(a);
    json_decref(b);

    assert_null(vd_json_dumps(NULL, 0));
    struct vd_json_out o;
    vd_json_begin(&o);
    vd_json_value(&o, NULL, 0);
    vd_json_raw(&o, "1", 1);
    assert_null(vd_json_end(&o, NULL));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),   cmocka_unit_test(test_reals),
        cmocka_unit_test(test_containers), cmocka_unit_test(test_random),
        cmocka_unit_test(test_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
