/* Unit tests of the intrusive hash index (common/vd_index.c), checked against a plain scan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vd_index.h"

struct item {
    int in; /* in the index */
    char key[16];
    void *link;
};

static struct vd_index new_index(void) {
    struct vd_index x;
    vd_index_init(&x, offsetof(struct item, key), offsetof(struct item, link));
    return x;
}

static void test_empty(void **state) {
    (void)state;
    struct vd_index x = new_index();
    assert_null(vd_index_find(&x, "a"));
    struct item it = {0, "a", NULL};
    assert_int_equal(vd_index_del(&x, &it), 0);
    vd_index_free(&x);
}

/* Shared keys: each item is found until the last one with its key leaves. */
static void test_shared_keys(void **state) {
    (void)state;
    struct vd_index x = new_index();
    struct item a = {0, "r1", NULL}, b = {0, "r1", NULL}, c = {0, "r2", NULL};
    vd_index_add(&x, &a);
    vd_index_add(&x, &b);
    vd_index_add(&x, &c);
    assert_int_equal(x.n, 3);
    assert_non_null(vd_index_find(&x, "r1"));
    assert_int_equal(vd_index_del(&x, &a), 1);
    assert_ptr_equal(vd_index_find(&x, "r1"), &b);
    assert_int_equal(vd_index_del(&x, &a), 0);
    assert_int_equal(vd_index_del(&x, &b), 1);
    assert_null(vd_index_find(&x, "r1"));
    assert_ptr_equal(vd_index_find(&x, "r2"), &c);
    vd_index_free(&x);
}

/* Random adds and deletes over 20,000 items (through many growths) agree with a scan. */
static void test_random_against_scan(void **state) {
    (void)state;
    enum { N = 20000, KEYS = 5000 };
    struct item *items = calloc(N, sizeof *items);
    assert_non_null(items);
    for (int i = 0; i < N; i++) snprintf(items[i].key, sizeof items[i].key, "k%d", i % KEYS);
    struct vd_index x = new_index();
    srand(7);
    size_t in = 0;
    for (int step = 0; step < 200000; step++) {
        struct item *it = &items[rand() % N];
        if (it->in) {
            assert_int_equal(vd_index_del(&x, it), 1);
            it->in = 0;
            in--;
        } else {
            vd_index_add(&x, it);
            it->in = 1;
            in++;
        }
        if (step % 97 == 0) {
            char key[16];
            snprintf(key, sizeof key, "k%d", rand() % KEYS);
            int any = 0;
            for (int i = 0; i < N; i++) any |= items[i].in && strcmp(items[i].key, key) == 0;
            struct item *found = vd_index_find(&x, key);
            assert_int_equal(found != NULL, any);
            if (found) {
                assert_true(found->in);
                assert_string_equal(found->key, key);
            }
        }
        assert_int_equal(x.n, in);
    }
    vd_index_free(&x);
    free(items);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_shared_keys),
        cmocka_unit_test(test_random_against_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
