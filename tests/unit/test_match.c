/* Unit tests of the matching rule's need (common/vd_match.c), and the filter names of
 * vd.request.unmatched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "vd_match.h"

/* The defaults of [matching] need_*. */
static const struct vd_need_weights W = {{300, 200, 100, 0}, 10, 20, 15, 25};

static struct vd_event request(enum vd_priority p, int age, int alone, int poor, int disabled) {
    struct vd_event ev;
    memset(&ev, 0, sizeof ev);
    ev.priority = p;
    if (age >= 0) {
        ev.has_vulnerability = 1;
        ev.vulnerability = (struct vd_vulnerability){age, alone, poor, disabled};
    }
    return ev;
}

static void test_need_priority_classes(void **state) {
    (void)state;
    struct vd_event u = request(VD_PRIO_URGENT, -1, 0, 0, 0), h = request(VD_PRIO_HIGH, -1, 0, 0, 0),
                    n = request(VD_PRIO_NORMAL, -1, 0, 0, 0), l = request(VD_PRIO_LOW, -1, 0, 0, 0);
    assert_int_equal(vd_match_need(&u, &W), 300);
    assert_int_equal(vd_match_need(&h, &W), 200);
    assert_int_equal(vd_match_need(&n, &W), 100);
    assert_int_equal(vd_match_need(&l, &W), 0);
}

static void test_need_vulnerability(void **state) {
    (void)state;
    /* 90, alone, low income, disabled: 3 decades over 60 (30) + 20 + 15 + 25 = 90. */
    struct vd_event v = request(VD_PRIO_NORMAL, 90, 1, 1, 1);
    assert_int_equal(vd_match_need(&v, &W), 190);
    /* Only full decades over 60 count. */
    struct vd_event a69 = request(VD_PRIO_NORMAL, 69, 0, 0, 0), a70 = request(VD_PRIO_NORMAL, 70, 0, 0, 0),
                    a30 = request(VD_PRIO_NORMAL, 30, 0, 0, 0);
    assert_int_equal(vd_match_need(&a69, &W), 100);
    assert_int_equal(vd_match_need(&a70, &W), 110);
    assert_int_equal(vd_match_need(&a30, &W), 100);
    /* Vulnerability never outweighs a whole priority class below 100 years. */
    struct vd_event frail = request(VD_PRIO_NORMAL, 99, 1, 1, 1), high = request(VD_PRIO_HIGH, -1, 0, 0, 0);
    assert_true(vd_match_need(&frail, &W) < vd_match_need(&high, &W));
    /* The low-priority request of a vulnerable resident still counts. */
    struct vd_event low = request(VD_PRIO_LOW, 85, 1, 0, 0);
    assert_int_equal(vd_match_need(&low, &W), 40);
}

static void test_filter_names(void **state) {
    (void)state;
    assert_string_equal(vd_filter_name(VD_FILTER_SKILLS), "skills");
    assert_string_equal(vd_filter_name(VD_FILTER_TRIED), "already_tried");
    assert_string_equal(vd_filter_name(VD_FILTER_LOST), "lost_to_greater_need");
    assert_null(vd_filter_name(VD_FILTER__COUNT));
    for (int f = 0; f < VD_FILTER__COUNT; f++)
        assert_int_equal(vd_filter_parse(vd_filter_name(f), strlen(vd_filter_name(f))), f);
    assert_int_equal(vd_filter_parse("skill", 5), -1);
    assert_int_equal(vd_filter_parse("skillsx", 7), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_need_priority_classes),
        cmocka_unit_test(test_need_vulnerability),
        cmocka_unit_test(test_filter_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
