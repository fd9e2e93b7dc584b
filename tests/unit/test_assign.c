/* Unit tests of the round's assignment solver (common/vd_assign.c): against brute force on
 * thousands of small random instances (ties, requests nobody can serve, several volunteers per
 * request, needs that compete), and the cases the matching rule is written for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "vd_assign.h"

#define MAXR 6
#define MAXC 7
#define MAXE (MAXR * MAXC)

struct instance {
    int nrows, ncols, nedges;
    int slots[MAXR];
    int64_t value[MAXR];
    struct vd_assign_edge edges[MAXE];
};

/* The best (value, cost) by trying every choice: requests in turn, each a subset of its free
 * volunteers of at most its slots. */
struct best {
    int64_t value, cost;
};

static void brute(const struct instance *in, int r, unsigned used, int64_t value, int64_t cost,
                  struct best *b) {
    if (r == in->nrows) {
        if (value > b->value || (value == b->value && cost < b->cost)) {
            b->value = value;
            b->cost = cost;
        }
        return;
    }
    /* The edges of request r. */
    int mine[MAXE], n = 0;
    for (int e = 0; e < in->nedges; e++)
        if (in->edges[e].row == r) mine[n++] = e;
    for (unsigned mask = 0; mask < (1u << n); mask++) {
        int k = __builtin_popcount(mask);
        if (k > in->slots[r]) continue;
        unsigned u = used;
        int64_t c = cost;
        int ok = 1;
        for (int q = 0; q < n && ok; q++) {
            if (!(mask & (1u << q))) continue;
            const struct vd_assign_edge *ed = &in->edges[mine[q]];
            if (u & (1u << ed->col)) ok = 0;
            u |= 1u << ed->col;
            c += ed->cost;
        }
        if (ok) brute(in, r + 1, u, value + k * in->value[r], c, b);
    }
}

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static void random_instance(struct instance *in, unsigned *seed) {
    memset(in, 0, sizeof *in);
    in->nrows = 1 + (int)(rnd(seed) % MAXR);
    in->ncols = 1 + (int)(rnd(seed) % MAXC);
    int costs = rnd(seed) % 3; /* 0: many ties, 1: some, 2: few */
    for (int r = 0; r < in->nrows; r++) {
        in->slots[r] = (int)(rnd(seed) % 4) == 0 ? 1 + (int)(rnd(seed) % 3) : 1;
        if (rnd(seed) % 10 == 0) in->slots[r] = 0;
        in->value[r] = 1 + (int64_t)(rnd(seed) % 4);
        for (int c = 0; c < in->ncols; c++) {
            if (rnd(seed) % 100 < 45) continue; /* sparse: some requests get no edge */
            int64_t cost = costs == 0 ? (int64_t)(rnd(seed) % 3) : costs == 1 ? (int64_t)(rnd(seed) % 20)
                                                                               : (int64_t)(rnd(seed) % 5000);
            in->edges[in->nedges++] = (struct vd_assign_edge){r, c, cost};
        }
    }
    /* Shuffle the edges: the answer must not depend on their order. */
    for (int e = in->nedges - 1; e > 0; e--) {
        int k = (int)(rnd(seed) % (unsigned)(e + 1));
        struct vd_assign_edge t = in->edges[e];
        in->edges[e] = in->edges[k];
        in->edges[k] = t;
    }
}

/* The solver's answer is feasible; returns its (value, cost). */
static struct best check_feasible(const struct instance *in, const unsigned char *chosen) {
    int per_row[MAXR] = {0}, per_col[MAXC] = {0};
    struct best b = {0, 0};
    for (int e = 0; e < in->nedges; e++) {
        if (!chosen[e]) continue;
        const struct vd_assign_edge *ed = &in->edges[e];
        per_row[ed->row]++;
        per_col[ed->col]++;
        b.value += in->value[ed->row];
        b.cost += ed->cost;
    }
    for (int r = 0; r < in->nrows; r++) assert_true(per_row[r] <= in->slots[r]);
    for (int c = 0; c < in->ncols; c++) assert_true(per_col[c] <= 1);
    return b;
}

static void test_against_brute_force(void **state) {
    (void)state;
    unsigned seed = 20261201u;
    int instances = 5000, multi = 0, unserved = 0, ties = 0;
    for (int t = 0; t < instances; t++) {
        struct instance in;
        random_instance(&in, &seed);
        unsigned char chosen[MAXE];
        struct vd_assign_stats st;
        assert_int_equal(vd_assign_solve(in.nrows, in.slots, in.value, in.ncols, in.edges,
                                         in.nedges, chosen, 0, NULL, &st), 0);
        struct best got = check_feasible(&in, chosen), want = {-1, 0};
        brute(&in, 0, 0, 0, 0, &want);
        if (got.value != want.value || got.cost != want.cost) {
            print_error("instance %d: solver value %lld cost %lld, brute force value %lld cost %lld\n",
                        t, (long long)got.value, (long long)got.cost, (long long)want.value,
                        (long long)want.cost);
            fail();
        }
        assert_true(st.value == got.value && st.cost == got.cost);
        for (int r = 0; r < in.nrows; r++) multi += in.slots[r] > 1;
        unserved += st.filled < st.places;
        ties += got.cost == 0 && got.value > 0;
    }
    print_message("%d instances: %d requests needing several, %d with places unserved, %d "
                  "all-zero-cost optima\n", instances, multi, unserved, ties);
    assert_true(multi > 500 && unserved > 500);
}

/* The rows' bounds certify a solution against left-out edges. As the daemon does: each request
 * first gets its k cheapest edges (k at random, 0 to all), and every edge left out of it costs
 * at least seen[r]. While some request's bound exceeds what it has seen, it gets its edges up
 * to the bound (all of them when unbounded) and the instance is solved again. The answer, once
 * every bound is within what was seen, is the optimum of the whole instance (brute force). */
static int by_row_cost(const void *a, const void *b) {
    const struct vd_assign_edge *x = a, *y = b;
    if (x->row != y->row) return x->row - y->row;
    return x->cost < y->cost ? -1 : x->cost > y->cost;
}

static int bound_certifies(int closed) {
    unsigned seed = 4242u + (unsigned)closed;
    int instances = 5000, first_certified = 0, first_short = 0, widened = 0, max_steps = 0;
    for (int t = 0; t < instances; t++) {
        struct instance full;
        random_instance(&full, &seed);
        qsort(full.edges, (size_t)full.nedges, sizeof *full.edges, by_row_cost);
        int start[MAXR + 1] = {0}, have[MAXR];
        for (int e = 0; e < full.nedges; e++) start[full.edges[e].row + 1]++;
        for (int r = 0; r < full.nrows; r++) start[r + 1] += start[r];
        for (int r = 0; r < full.nrows; r++) {
            int n = start[r + 1] - start[r];
            have[r] = n ? (int)(rnd(&seed) % (unsigned)(n + 1)) : 0;
        }
        int left_out = 0;
        for (int r = 0; r < full.nrows; r++) left_out += have[r] < start[r + 1] - start[r];
        struct best want = {-1, 0};
        brute(&full, 0, 0, 0, 0, &want);
        for (int step = 0;; step++) {
            struct instance in = full;
            int64_t seen[MAXR];
            in.nedges = 0;
            for (int r = 0; r < full.nrows; r++) {
                for (int k = 0; k < have[r]; k++) in.edges[in.nedges++] = full.edges[start[r] + k];
                seen[r] = have[r] < start[r + 1] - start[r] ? full.edges[start[r] + have[r]].cost
                                                            : VD_ASSIGN_UNBOUNDED; /* none left out */
            }
            unsigned char chosen[MAXE];
            int64_t bound[MAXR];
            assert_int_equal(vd_assign_solve(in.nrows, in.slots, in.value, in.ncols, in.edges,
                                             in.nedges, chosen, closed, bound, NULL), 0);
            struct best got = check_feasible(&in, chosen);
            int certified = 1;
            for (int r = 0; r < full.nrows; r++) {
                assert_true(bound[r] >= 0 && bound[r] <= VD_ASSIGN_UNBOUNDED);
                if (bound[r] > seen[r]) {
                    certified = 0;
                    /* Its edges up to the bound. */
                    while (have[r] < start[r + 1] - start[r] && full.edges[start[r] + have[r]].cost <= bound[r])
                        have[r]++;
                }
            }
            if (step == 0 && left_out) {
                first_certified += certified;
                first_short += got.value != want.value || got.cost != want.cost;
            }
            if (certified) {
                if (got.value != want.value || got.cost != want.cost) {
                    print_error("instance %d, step %d: certified value %lld cost %lld, the optimum "
                                "value %lld cost %lld\n", t, step, (long long)got.value,
                                (long long)got.cost, (long long)want.value, (long long)want.cost);
                    fail();
                }
                widened += step > 0;
                if (step > max_steps) max_steps = step;
                break;
            }
            assert_true(step < MAXE);
        }
    }
    print_message("%d instances (%s): %d certified with edges left out at once, %d short of the "
                  "optimum at once, %d widened to it (in %d steps at most)\n", instances,
                  closed ? "closed: no volunteer beyond the input's" : "open", first_certified,
                  first_short, widened, max_steps);
    /* The bound is not trivial: it certifies many partial inputs, and it catches the short ones. */
    assert_true(first_certified > 500 && first_short > 500 && widened >= first_short);
    return first_certified;
}

static void test_bound_certifies(void **state) {
    (void)state;
    int open = bound_certifies(0), closed = bound_certifies(1);
    /* Knowing there is nobody else certifies more at once. */
    assert_true(closed > open);
}

/* The same input, the same answer; repeated pairs keep their cheapest edge. */
static void test_deterministic_and_repeats(void **state) {
    (void)state;
    int slots[2] = {1, 1};
    int64_t value[2] = {1, 1};
    struct vd_assign_edge e[5] = {{0, 0, 10}, {0, 0, 3}, {1, 0, 3}, {1, 1, 3}, {0, 1, 3}};
    unsigned char a[5], b[5];
    struct vd_assign_stats st;
    assert_int_equal(vd_assign_solve(2, slots, value, 2, e, 5, a, 0, NULL, &st), 0);
    assert_int_equal(vd_assign_solve(2, slots, value, 2, e, 5, b, 0, NULL, NULL), 0);
    assert_memory_equal(a, b, 5);
    assert_int_equal(st.filled, 2);
    assert_int_equal(st.cost, 6);
    assert_int_equal(a[0], 0); /* the dearer copy of (0, 0) is never chosen */
}

/* 10 volunteers, 30 requests: the 20 "low" ones nearer than the 10 in greatest need. The 10
 * in greatest need are served, each by one volunteer. */
static void test_greatest_need_first(void **state) {
    (void)state;
    enum { R = 30, C = 10 };
    int slots[R];
    int64_t value[R];
    struct vd_assign_edge edges[R * C];
    int n = 0;
    for (int r = 0; r < R; r++) {
        slots[r] = 1;
        value[r] = r < 20 ? 1 : 400; /* low, then urgent and vulnerable */
        for (int c = 0; c < C; c++)
            edges[n++] = (struct vd_assign_edge){r, c, (r < 20 ? 100 : 2000) + 10 * ((r + c) % C)};
    }
    unsigned char chosen[R * C];
    struct vd_assign_stats st;
    assert_int_equal(vd_assign_solve(R, slots, value, C, edges, n, chosen, 0, NULL, &st), 0);
    assert_int_equal(st.filled, 10);
    for (int e = 0; e < n; e++)
        if (chosen[e]) assert_true(edges[e].row >= 20);
    assert_int_equal(st.value, 4000);
}

/* With enough volunteers for all, the least total travel (not each request's nearest). */
static void test_least_travel(void **state) {
    (void)state;
    /* r0: v0 1, v1 2; r1: v0 1, v1 100. Greedy nearest-first gives r0 v0, r1 v1 (101); best
     * is r0 v1, r1 v0 (3). */
    int slots[2] = {1, 1};
    int64_t value[2] = {1, 1};
    struct vd_assign_edge e[4] = {{0, 0, 1}, {0, 1, 2}, {1, 0, 1}, {1, 1, 100}};
    unsigned char chosen[4];
    struct vd_assign_stats st;
    assert_int_equal(vd_assign_solve(2, slots, value, 2, e, 4, chosen, 0, NULL, &st), 0);
    assert_int_equal(st.cost, 3);
    assert_true(chosen[1] && chosen[2]);
}

/* One more place served wins over any saving in travel; equal need, less travel wins. */
static void test_need_before_travel(void **state) {
    (void)state;
    /* r0 (value 1) can take v0 (cheap) or v1 (far); r1 (value 1) only v0: both served means
     * r0 takes the far v1. */
    int slots[2] = {1, 1};
    int64_t value[2] = {1, 1};
    struct vd_assign_edge e[3] = {{0, 0, 0}, {0, 1, VD_ASSIGN_MAX_COST}, {1, 0, 5}};
    unsigned char chosen[3];
    struct vd_assign_stats st;
    assert_int_equal(vd_assign_solve(2, slots, value, 2, e, 3, chosen, 0, NULL, &st), 0);
    assert_int_equal(st.filled, 2);
    assert_true(chosen[1] && chosen[2]);
    /* A request needing two, one volunteer near and one far, and a competitor for the near
     * one with more need: the competitor gets it. */
    int slots2[2] = {2, 1};
    int64_t value2[2] = {1, 3};
    struct vd_assign_edge f[3] = {{0, 0, 1}, {0, 1, 9}, {1, 0, 50}};
    assert_int_equal(vd_assign_solve(2, slots2, value2, 2, f, 3, chosen, 0, NULL, &st), 0);
    assert_true(!chosen[0] && chosen[1] && chosen[2]);
    assert_int_equal(st.value, 4);
}

static void test_edge_cases(void **state) {
    (void)state;
    struct vd_assign_stats st;
    unsigned char chosen[2];
    /* Nothing to do. */
    assert_int_equal(vd_assign_solve(0, NULL, NULL, 0, NULL, 0, NULL, 0, NULL, &st), 0);
    assert_int_equal(st.places, 0);
    int slots[1] = {1};
    int64_t value[1] = {1}, bad_value[1] = {0};
    struct vd_assign_edge e[1] = {{0, 0, 1}};
    /* A request nobody can serve. */
    assert_int_equal(vd_assign_solve(1, slots, value, 0, NULL, 0, NULL, 0, NULL, &st), 0);
    assert_int_equal(st.places, 1);
    assert_int_equal(st.filled, 0);
    /* Out of range: refused, nothing chosen. */
    assert_int_equal(vd_assign_solve(1, slots, bad_value, 1, e, 1, chosen, 0, NULL, NULL), -1);
    struct vd_assign_edge neg[1] = {{0, 0, -1}}, col[1] = {{0, 3, 1}};
    assert_int_equal(vd_assign_solve(1, slots, value, 1, neg, 1, chosen, 0, NULL, NULL), -1);
    assert_int_equal(vd_assign_solve(1, slots, value, 1, col, 1, chosen, 0, NULL, NULL), -1);
    assert_int_equal(chosen[0], 0);
}

/* A larger round, checked for feasibility and against a greedy lower bound on need served. */
static void test_large_round(void **state) {
    (void)state;
    enum { R = 600, C = 600, K = 8 };
    int *slots = malloc(R * sizeof *slots);
    int64_t *value = malloc(R * sizeof *value);
    struct vd_assign_edge *edges = malloc(R * K * sizeof *edges);
    unsigned char *chosen = malloc(R * K);
    unsigned seed = 7;
    int n = 0;
    for (int r = 0; r < R; r++) {
        slots[r] = rnd(&seed) % 20 == 0 ? 2 : 1;
        value[r] = 1 + rnd(&seed) % 5;
        for (int k = 0; k < K; k++)
            edges[n++] = (struct vd_assign_edge){r, (int)((r + rnd(&seed) % 40) % C), (int64_t)(rnd(&seed) % 3000)};
    }
    struct vd_assign_stats st;
    assert_int_equal(vd_assign_solve(R, slots, value, C, edges, n, chosen, 0, NULL, &st), 0);
    int *used = calloc(C, sizeof *used), *per = calloc(R, sizeof *per);
    for (int e = 0; e < n; e++)
        if (chosen[e]) {
            assert_int_equal(used[edges[e].col]++, 0);
            assert_true(++per[edges[e].row] <= slots[edges[e].row]);
        }
    print_message("600 x 600, 8 candidates each: %d of %d places filled, need %lld, cost %lld, "
                  "%ld columns scanned\n", st.filled, st.places, (long long)st.value,
                  (long long)st.cost, st.scanned);
    assert_true(st.filled > 500);
    free(used);
    free(per);
    free(slots);
    free(value);
    free(edges);
    free(chosen);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_brute_force),
        cmocka_unit_test(test_bound_certifies),
        cmocka_unit_test(test_deterministic_and_repeats),
        cmocka_unit_test(test_greatest_need_first),
        cmocka_unit_test(test_least_travel),
        cmocka_unit_test(test_need_before_travel),
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_large_round),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
