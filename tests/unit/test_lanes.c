/* Unit tests of the choice between the prompt and the batching producer (common/vd_lanes.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vd_lanes.h"

static unsigned slot_of(const char *key) { return vd_lanes_slot(0, key, strlen(key)); }

/* A lone output goes out at once; once the batching lane holds one, the stream batches until
 * it is acknowledged. */
static void test_prompt_then_batch(void **state) {
    struct vd_lanes l;
    vd_lanes_init(&l, 1);
    unsigned a = slot_of("r-a");
    assert_int_equal(vd_lanes_take(&l, a), VD_LANE_PROMPT);
    vd_lanes_done(&l, VD_LANE_PROMPT, a);
    /* A burst: the first VD_LANES_PROMPT_MAX prompt, the rest batched. */
    unsigned slots[100];
    enum vd_lane lanes[100];
    char key[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "r-%d", i);
        slots[i] = slot_of(key);
        lanes[i] = vd_lanes_take(&l, slots[i]);
    }
    for (int i = 0; i < VD_LANES_PROMPT_MAX; i++) assert_int_equal(lanes[i], VD_LANE_PROMPT);
    for (int i = VD_LANES_PROMPT_MAX; i < 100; i++) {
        /* Batched, unless its slot is one the prompt lane holds. */
        int held = 0;
        for (int j = 0; j < VD_LANES_PROMPT_MAX; j++) held |= slots[j] == slots[i];
        assert_int_equal(lanes[i], held ? VD_LANE_PROMPT : VD_LANE_BATCH);
    }
    /* The prompt lane's are acknowledged first: still batching while the batch lane holds any. */
    for (int i = 0; i < 100; i++)
        if (lanes[i] == VD_LANE_PROMPT) vd_lanes_done(&l, VD_LANE_PROMPT, slots[i]);
    assert_int_equal(vd_lanes_take(&l, slot_of("r-new")), VD_LANE_BATCH);
    vd_lanes_done(&l, VD_LANE_BATCH, slot_of("r-new"));
    for (int i = 0; i < 100; i++)
        if (lanes[i] == VD_LANE_BATCH) vd_lanes_done(&l, VD_LANE_BATCH, slots[i]);
    assert_int_equal(vd_lanes_take(&l, slot_of("r-next")), VD_LANE_PROMPT);
}

/* A key the batching lane holds stays there even when the prompt lane is preferred, and the
 * other way round. */
static void test_key_stays_in_its_lane(void **state) {
    struct vd_lanes l;
    vd_lanes_init(&l, 1);
    unsigned a = slot_of("r-a"), b = slot_of("r-b");
    assert_int_not_equal(a, b);
    for (int i = 0; i < VD_LANES_PROMPT_MAX; i++) assert_int_equal(vd_lanes_take(&l, a), VD_LANE_PROMPT);
    assert_int_equal(vd_lanes_take(&l, b), VD_LANE_BATCH);
    /* a is held by the prompt lane: it stays there although the batching lane is preferred. */
    assert_int_equal(vd_lanes_take(&l, a), VD_LANE_PROMPT);
    for (int i = 0; i < VD_LANES_PROMPT_MAX + 1; i++) vd_lanes_done(&l, VD_LANE_PROMPT, a);
    /* b is held by the batching lane; a is free to go prompt... but the batching lane holds
     * something, so a batches too. */
    assert_int_equal(vd_lanes_take(&l, a), VD_LANE_BATCH);
    vd_lanes_done(&l, VD_LANE_BATCH, a);
    vd_lanes_done(&l, VD_LANE_BATCH, b);
    assert_int_equal(l.unacked[VD_LANE_BATCH] + l.unacked[VD_LANE_PROMPT], 0);
}

/* Without a prompt lane everything batches. */
static void test_prompt_off(void **state) {
    struct vd_lanes l;
    vd_lanes_init(&l, 0);
    for (int i = 0; i < 10; i++) assert_int_equal(vd_lanes_take(&l, slot_of("r")), VD_LANE_BATCH);
}

/* Random takes and acknowledgements in any order: a slot is never held by both lanes, and the
 * counts always match a model. */
static void test_random_never_both(void **state) {
    enum { N = 200000, KEYS = 3000, LIVE = 4096 };
    struct vd_lanes l;
    vd_lanes_init(&l, 1);
    struct { unsigned slot; enum vd_lane lane; } live[LIVE];
    size_t nlive = 0, taken[VD_LANE__COUNT] = {0, 0};
    srand(12345);
    char key[32];
    for (int step = 0; step < N; step++) {
        int take = nlive == 0 || (nlive < LIVE && rand() % 100 < (step % 20000 < 10000 ? 55 : 45));
        if (take) {
            snprintf(key, sizeof key, "r-%d", rand() % KEYS);
            unsigned s = vd_lanes_slot((unsigned)(rand() % 3), key, strlen(key));
            assert_true(s < VD_LANES_SLOTS);
            enum vd_lane lane = vd_lanes_take(&l, s);
            live[nlive].slot = s;
            live[nlive].lane = lane;
            nlive++;
            taken[lane]++;
            assert_false(l.slot[VD_LANE_BATCH][s] && l.slot[VD_LANE_PROMPT][s]);
        } else {
            size_t i = (size_t)rand() % nlive;
            vd_lanes_done(&l, live[i].lane, live[i].slot);
            live[i] = live[--nlive];
        }
        size_t n[VD_LANE__COUNT] = {0, 0};
        if (step % 997 == 0) {
            for (size_t i = 0; i < nlive; i++) n[live[i].lane]++;
            assert_int_equal(n[VD_LANE_BATCH], l.unacked[VD_LANE_BATCH]);
            assert_int_equal(n[VD_LANE_PROMPT], l.unacked[VD_LANE_PROMPT]);
            for (unsigned s = 0; s < VD_LANES_SLOTS; s++)
                assert_false(l.slot[VD_LANE_BATCH][s] && l.slot[VD_LANE_PROMPT][s]);
        }
    }
    /* Both lanes were used. */
    assert_true(taken[VD_LANE_BATCH] > 1000 && taken[VD_LANE_PROMPT] > 1000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_then_batch),
        cmocka_unit_test(test_key_stays_in_its_lane),
        cmocka_unit_test(test_prompt_off),
        cmocka_unit_test(test_random_never_both),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
