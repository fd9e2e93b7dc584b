/* Unit tests of the request state table (common/vd_state.c), and that the table says the same
 * as the two other places that state it: move() in daemon/vdispatch.lua (which enforces it in
 * Redis) and the diagram's source docs/states.dot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vd_state.h"

#define SRC VD_TEST_DATA "/../.."

/* An adjacency matrix read from a file: m[from][to] = 1. */
typedef int matrix[VD_STATE__COUNT][VD_STATE__COUNT];

static int state_of(const char *s, size_t n) {
    char buf[32];
    if (n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return vd_state_parse(buf);
}

static size_t word(const char *s) {
    size_t n = 0;
    while ((s[n] >= 'a' && s[n] <= 'z') || s[n] == '_') n++;
    return n;
}

/* docs/states.dot: lines "  from -> to [label=...];". */
static int read_dot(matrix m) {
    FILE *f = fopen(SRC "/docs/states.dot", "r");
    if (!f) return -1;
    char line[512];
    int edges = 0;
    while (fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " ");
        char *arrow = strstr(p, "->");
        if (!arrow || strncmp(p, "//", 2) == 0) continue;
        int from = state_of(p, word(p));
        char *q = arrow + 2 + strspn(arrow + 2, " ");
        int to = state_of(q, word(q));
        assert_true(from >= 0 && to >= 0);
        m[from][to] = 1;
        edges++;
    }
    fclose(f);
    return edges;
}

/* daemon/vdispatch.lua: the MOVES table, "  from = {to = true, to = true}," per line. */
static int read_lua(matrix m) {
    FILE *f = fopen(SRC "/daemon/vdispatch.lua", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, edges = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "local MOVES = {", 15) == 0) {
            in = 1;
            continue;
        }
        if (!in) continue;
        if (line[0] == '}') break;
        /* "  completed = {}, cancelled = {}, expired = {}," names several states at once. */
        char *p = line;
        while (*p) {
            p += strspn(p, " ,");
            size_t n = word(p);
            if (!n) break;
            int from = state_of(p, n);
            assert_true(from >= 0);
            p = strchr(p, '{');
            assert_non_null(p);
            char *end = strchr(p, '}');
            assert_non_null(end);
            for (char *q = p + 1; q < end;) {
                q += strspn(q, " ,");
                size_t k = word(q);
                if (!k) break;
                int to = state_of(q, k);
                assert_true(to >= 0);
                m[from][to] = 1;
                edges++;
                q = strchr(q, ',') ? strchr(q, ',') : end;
                if (q > end) q = end;
            }
            p = end + 1;
        }
    }
    fclose(f);
    return edges;
}

static void test_names(void **state) {
    for (int s = 0; s < VD_STATE__COUNT; s++) assert_int_equal(vd_state_parse(vd_state_name(s)), s);
    assert_int_equal(vd_state_parse("pending"), -1);
    assert_string_equal(vd_state_name(VD_STATE_OFFERED), "offered");
}

/* Ends have no way out, except that an unmatched or expired request may be cancelled to
 * release those it holds, or staffed by a coordinator (then confirmed); every state but received is reachable; every state
 * can end. */
static void test_shape(void **state) {
    for (int s = 0; s < VD_STATE__COUNT; s++) {
        int out = 0;
        for (int t = 0; t < VD_STATE__COUNT; t++) out += vd_state_can_move(s, t);
        if (vd_state_is_end(s) && s != VD_STATE_UNMATCHED && s != VD_STATE_EXPIRED)
            assert_int_equal(out, 0);
        if (!vd_state_is_end(s)) assert_true(out > 0);
        assert_false(vd_state_can_move(s, s));
        assert_false(vd_state_can_move(s, VD_STATE_RECEIVED));
    }
    assert_true(vd_state_can_move(VD_STATE_OFFERED, VD_STATE_SEARCHING));
    assert_false(vd_state_can_move(VD_STATE_CONFIRMED, VD_STATE_OFFERED));
    assert_false(vd_state_can_move(VD_STATE_SCHEDULED, VD_STATE_OFFERED));
    assert_true(vd_state_can_move(VD_STATE_UNMATCHED, VD_STATE_CONFIRMED));
    assert_false(vd_state_can_move(VD_STATE_COMPLETED, VD_STATE_CONFIRMED));
    assert_false(vd_state_can_move(VD_STATE__COUNT, VD_STATE_SEARCHING));
}

static void same_as_table(matrix m) {
    for (int s = 0; s < VD_STATE__COUNT; s++)
        for (int t = 0; t < VD_STATE__COUNT; t++) {
            if (m[s][t] != vd_state_can_move(s, t))
                fail_msg("%s -> %s: table says %d, file says %d", vd_state_name(s),
                         vd_state_name(t), vd_state_can_move(s, t), m[s][t]);
        }
}

static void test_dot_agrees(void **state) {
    matrix m = {{0}};
    assert_true(read_dot(m) > 10);
    same_as_table(m);
}

static void test_lua_agrees(void **state) {
    matrix m = {{0}};
    assert_true(read_lua(m) > 10);
    same_as_table(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_dot_agrees),
        cmocka_unit_test(test_lua_agrees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
