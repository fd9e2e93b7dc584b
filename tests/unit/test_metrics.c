/* Unit tests of the Prometheus text renderer (common/vd_metrics.c): exact bytes out. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vd_metrics.h"

static void test_counter_and_gauge(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    assert_int_equal(vd_metrics_counter(&b, "vd_consumed_total", "Input messages consumed.", 42), 0);
    assert_int_equal(vd_metrics_counter(&b, "vd_big_total", NULL, UINT64_MAX), 0);
    assert_int_equal(vd_metrics_gauge(&b, "vd_jobs", "Jobs held in memory.", 3.0), 0);
    assert_int_equal(b.failed, 0);
    assert_string_equal(b.s,
                        "# HELP vd_consumed_total Input messages consumed.\n"
                        "# TYPE vd_consumed_total counter\n"
                        "vd_consumed_total 42\n"
                        "# TYPE vd_big_total counter\n"
                        "vd_big_total 18446744073709551615\n"
                        "# HELP vd_jobs Jobs held in memory.\n"
                        "# TYPE vd_jobs gauge\n"
                        "vd_jobs 3\n");
    assert_int_equal(b.len, strlen(b.s));
    vd_metrics_buf_free(&b);
    assert_null(b.s);
}

static void test_double_formatting(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    const double v[] = {0.5, 0.1, -2.25, 1e21, 123456789012.0, INFINITY, -INFINITY, NAN, 0.0};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        assert_int_equal(vd_metrics_sample_double(&b, "g", NULL, 0, v[i]), 0);
    assert_string_equal(b.s,
                        "g 0.5\n"
                        "g 0.10000000000000001\n"
                        "g -2.25\n"
                        "g 1e+21\n"
                        "g 123456789012\n"
                        "g +Inf\n"
                        "g -Inf\n"
                        "g NaN\n"
                        "g 0\n");
    vd_metrics_buf_free(&b);
}

static void test_help_escaping(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    /* HELP escapes backslash and newline but leaves double quotes as they are. */
    assert_int_equal(vd_metrics_header(&b, "x", "a \\ b\nsecond \"line\"", VD_METRICS_UNTYPED), 0);
    assert_string_equal(b.s, "# HELP x a \\\\ b\\nsecond \"line\"\n"
                             "# TYPE x untyped\n");
    vd_metrics_buf_free(&b);
}

static void test_label_escaping(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    struct vd_metrics_label l[] = {{"topic", "vd.requests"}, {"odd", "a\"b\\c\nd"}};
    assert_int_equal(vd_metrics_sample_u64(&b, "vd_in_total", l, 2, 7), 0);
    assert_int_equal(vd_metrics_sample_double(&b, "vd_lag", l, 1, 1.5), 0);
    assert_string_equal(b.s, "vd_in_total{topic=\"vd.requests\",odd=\"a\\\"b\\\\c\\nd\"} 7\n"
                             "vd_lag{topic=\"vd.requests\"} 1.5\n");
    vd_metrics_buf_free(&b);
}

static void test_counter_family(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    const char *const reasons[] = {"no_volunteer_in_range", "all_declined", "say \"hi\""};
    const uint64_t counts[] = {3, 0, 12};
    assert_int_equal(vd_metrics_counter_family(&b, "vd_unmatched_total", "Requests unmatched.",
                                               "reason", reasons, counts, 3),
                     0);
    assert_string_equal(b.s, "# HELP vd_unmatched_total Requests unmatched.\n"
                             "# TYPE vd_unmatched_total counter\n"
                             "vd_unmatched_total{reason=\"no_volunteer_in_range\"} 3\n"
                             "vd_unmatched_total{reason=\"all_declined\"} 0\n"
                             "vd_unmatched_total{reason=\"say \\\"hi\\\"\"} 12\n");
    vd_metrics_buf_free(&b);
}

static void test_histogram_cumulative(void **state) {
    struct vd_histogram h;
    const double bounds[] = {0.5, 1, 2.5, 10};
    assert_int_equal(vd_histogram_init(&h, bounds, 4), 0);
    /* 0.5 sits on a bound: "le" means less than or equal, so it counts in that bucket. */
    const double obs[] = {0.25, 0.5, 0.75, 3, 100, NAN};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) vd_histogram_observe(&h, obs[i]);
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    assert_int_equal(vd_histogram_render(&b, "vd_match_seconds", "Time to match.", &h), 0);
    assert_string_equal(b.s, "# HELP vd_match_seconds Time to match.\n"
                             "# TYPE vd_match_seconds histogram\n"
                             "vd_match_seconds_bucket{le=\"0.5\"} 2\n"
                             "vd_match_seconds_bucket{le=\"1\"} 3\n"
                             "vd_match_seconds_bucket{le=\"2.5\"} 3\n"
                             "vd_match_seconds_bucket{le=\"10\"} 4\n"
                             "vd_match_seconds_bucket{le=\"+Inf\"} 5\n"
                             "vd_match_seconds_sum 104.5\n"
                             "vd_match_seconds_count 5\n");
    vd_metrics_buf_free(&b);
}

/* Bounds print as typed (0.005, not 0.0050000000000000001); an empty histogram is all zeros. */
static void test_histogram_bounds_and_empty(void **state) {
    struct vd_histogram h;
    const double bounds[] = {0.005, 0.1, 1e-9};
    assert_int_equal(vd_histogram_init(&h, bounds, 2), 0);
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    assert_int_equal(vd_histogram_render(&b, "h", NULL, &h), 0);
    assert_string_equal(b.s, "# TYPE h histogram\n"
                             "h_bucket{le=\"0.005\"} 0\n"
                             "h_bucket{le=\"0.1\"} 0\n"
                             "h_bucket{le=\"+Inf\"} 0\n"
                             "h_sum 0\n"
                             "h_count 0\n");
    vd_metrics_buf_free(&b);
    /* Not increasing, not finite, too many: refused, leaving an empty histogram. */
    assert_int_equal(vd_histogram_init(&h, bounds, 3), -1);
    assert_int_equal(h.nbounds, 0);
    const double inf[] = {1, INFINITY};
    assert_int_equal(vd_histogram_init(&h, inf, 2), -1);
    const double same[] = {1, 1};
    assert_int_equal(vd_histogram_init(&h, same, 2), -1);
    double many[VD_HISTOGRAM_MAX_BUCKETS + 1];
    for (int i = 0; i <= VD_HISTOGRAM_MAX_BUCKETS; i++) many[i] = i;
    assert_int_equal(vd_histogram_init(&h, many, VD_HISTOGRAM_MAX_BUCKETS + 1), -1);
    assert_int_equal(vd_histogram_init(&h, many, VD_HISTOGRAM_MAX_BUCKETS), 0);
    vd_histogram_observe(&h, 1e9);
    assert_int_equal(h.counts[VD_HISTOGRAM_MAX_BUCKETS], 1);
}

/* A bad name fails the buffer for good: later valid calls append nothing. */
static void test_invalid_names_are_sticky(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    assert_int_equal(vd_metrics_counter(&b, "ok_total", NULL, 1), 0);
    size_t len = b.len;
    assert_int_equal(vd_metrics_counter(&b, "9lives", NULL, 1), -1);
    assert_int_equal(b.failed, 1);
    assert_int_equal(b.len, len);
    assert_int_equal(vd_metrics_counter(&b, "fine_total", NULL, 1), -1);
    assert_int_equal(b.len, len);
    vd_metrics_buf_free(&b);

    vd_metrics_buf_init(&b);
    struct vd_metrics_label bad = {"a:b", "x"}; /* colons are for metric names only */
    assert_int_equal(vd_metrics_sample_u64(&b, "m", &bad, 1, 1), -1);
    assert_null(b.s);
    vd_metrics_buf_free(&b);

    vd_metrics_buf_init(&b);
    assert_int_equal(vd_metrics_gauge(&b, "has space", NULL, 1), -1);
    vd_metrics_buf_free(&b);

    vd_metrics_buf_init(&b);
    assert_int_equal(vd_metrics_sample_u64(&b, "ns:sub_total", NULL, 0, 1), 0);
    assert_string_equal(b.s, "ns:sub_total 1\n");
    vd_metrics_buf_free(&b);
}

/* Many appends across several reallocations keep every byte. */
static void test_growth(void **state) {
    struct vd_metrics_buf b;
    vd_metrics_buf_init(&b);
    char want[64], name[32];
    size_t expect_len = 0;
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "m%d", i);
        assert_int_equal(vd_metrics_sample_u64(&b, name, NULL, 0, (uint64_t)i * 1000003u), 0);
        expect_len += (size_t)snprintf(want, sizeof want, "m%d %llu\n", i,
                                       (unsigned long long)i * 1000003u);
    }
    assert_int_equal(b.len, expect_len);
    assert_int_equal(strlen(b.s), b.len);
    assert_true(b.cap > b.len);
    assert_non_null(strstr(b.s, "\nm1999 1999005997\n"));
    assert_memory_equal(b.s, "m0 0\nm1 1000003\n", 16);
    /* One value longer than the initial capacity in a single appendf. */
    char longname[600];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    struct vd_metrics_buf c;
    vd_metrics_buf_init(&c);
    struct vd_metrics_label l = {"k", longname};
    assert_int_equal(vd_metrics_sample_u64(&c, longname, &l, 1, 5), 0);
    assert_int_equal(c.len, 599 + 4 + 599 + 3 + 2);
    assert_string_equal(c.s + c.len - 4, "} 5\n");
    vd_metrics_buf_free(&c);
    vd_metrics_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_gauge),
        cmocka_unit_test(test_double_formatting),
        cmocka_unit_test(test_help_escaping),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_counter_family),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_histogram_bounds_and_empty),
        cmocka_unit_test(test_invalid_names_are_sticky),
        cmocka_unit_test(test_growth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
