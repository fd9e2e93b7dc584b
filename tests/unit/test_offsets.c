/* Unit tests of the per-partition commit watermark (common/vd_offsets.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "vd_offsets.h"

static void test_in_order(void **state) {
    struct vd_offsets t;
    vd_offsets_init(&t);
    for (int64_t o = 10; o < 15; o++) assert_int_equal(vd_offsets_add(&t, o), 0);
    assert_int_equal(vd_offsets_done(&t, 10), 1);
    assert_int_equal(t.next, 11);
    assert_int_equal(vd_offsets_done(&t, 11), 1);
    assert_int_equal(t.next, 12);
    assert_int_equal(vd_offsets_pending(&t), 3);
    vd_offsets_free(&t);
}

/* Delivery reports out of order never move the watermark past an unfinished input. */
static void test_out_of_order(void **state) {
    struct vd_offsets t;
    vd_offsets_init(&t);
    for (int64_t o = 0; o < 5; o++) vd_offsets_add(&t, o);
    assert_int_equal(vd_offsets_done(&t, 3), 0);
    assert_int_equal(vd_offsets_done(&t, 1), 0);
    assert_int_equal(vd_offsets_done(&t, 4), 0);
    assert_int_equal(t.next, -1);
    assert_int_equal(vd_offsets_done(&t, 0), 1);
    assert_int_equal(t.next, 2); /* 0 and 1 done, 2 not */
    assert_int_equal(vd_offsets_done(&t, 2), 1);
    assert_int_equal(t.next, 5);
    assert_int_equal(vd_offsets_pending(&t), 0);
    vd_offsets_free(&t);
}

/* Gaps in offsets (compaction, transaction markers) are fine. */
static void test_gaps(void **state) {
    struct vd_offsets t;
    vd_offsets_init(&t);
    vd_offsets_add(&t, 100);
    vd_offsets_add(&t, 105);
    vd_offsets_add(&t, 230);
    assert_int_equal(vd_offsets_done(&t, 105), 0);
    assert_int_equal(vd_offsets_done(&t, 100), 1);
    assert_int_equal(t.next, 106);
    assert_int_equal(vd_offsets_done(&t, 104), -1);
    assert_int_equal(vd_offsets_done(&t, 230), 1);
    assert_int_equal(t.next, 231);
    vd_offsets_free(&t);
}

static void test_rejects_non_increasing(void **state) {
    struct vd_offsets t;
    vd_offsets_init(&t);
    assert_int_equal(vd_offsets_add(&t, 5), 0);
    assert_int_equal(vd_offsets_add(&t, 5), -1);
    assert_int_equal(vd_offsets_add(&t, 4), -1);
    vd_offsets_done(&t, 5);
    assert_int_equal(vd_offsets_add(&t, 3), -1); /* below the watermark */
    assert_int_equal(vd_offsets_add(&t, 6), 0);
    assert_int_equal(vd_offsets_done(&t, 99), -1);
    vd_offsets_reset(&t);
    assert_int_equal(vd_offsets_add(&t, 0), 0); /* reassigned partition starts anew */
    vd_offsets_free(&t);
}

/* Many entries, the ring wraps and grows; a random completion order against a model. */
static void test_random_against_model(void **state) {
    enum { N = 5000 };
    struct vd_offsets t;
    vd_offsets_init(&t);
    static int64_t order[N];
    static unsigned char done[N];
    srand(42);
    int64_t added = 0, expect_next = -1;
    size_t ndone = 0;
    for (int round = 0; round < 20; round++) {
        int64_t from = added;
        for (int i = 0; i < N / 20; i++) assert_int_equal(vd_offsets_add(&t, added++), 0);
        for (int64_t o = from; o < added; o++) order[o - from] = o;
        size_t n = (size_t)(added - from);
        for (size_t i = n - 1; i > 0; i--) {
            size_t k = (size_t)rand() % (i + 1);
            int64_t tmp = order[i];
            order[i] = order[k];
            order[k] = tmp;
        }
        for (size_t i = 0; i < n; i++) {
            done[order[i]] = 1;
            ndone++;
            int moved = vd_offsets_done(&t, order[i]);
            int64_t m = expect_next < 0 ? 0 : expect_next;
            while (m < added && done[m]) m++;
            int64_t want = m == 0 ? -1 : m;
            assert_int_equal(moved, want != expect_next);
            expect_next = want;
            assert_int_equal(t.next, expect_next);
        }
    }
    assert_int_equal(ndone, N);
    assert_int_equal(t.next, N);
    vd_offsets_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_gaps),
        cmocka_unit_test(test_rejects_non_increasing),
        cmocka_unit_test(test_random_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
