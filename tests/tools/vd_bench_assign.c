/* vd-bench-assign: how long the round's assignment solver (common/vd_assign.c) takes, on seeded
 * rounds of the sizes a city and an event make: prints a table, asserts nothing.
 *
 * Usage: vd-bench-assign [--repeat N]   (default 20: each row is the best and the median of N)
 *
 * Each round places requests and volunteers at random in a disc; every request gets its
 * nearest K volunteers as edges (cost: the distance in metres), needs 1 (one in 20 needs 2)
 * and a need value from 1 to 5. The solver's own work counter (columns scanned) is printed
 * too: it does not depend on the machine. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vd_assign.h"

struct pt {
    double x, y;
};

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static double uni(unsigned *s) { return (rnd(s) * 32768.0 + rnd(s)) / (32768.0 * 32768.0); }

static struct pt in_disc(unsigned *s, double r) {
    double a = uni(s) * 2 * M_PI, d = r * sqrt(uni(s));
    return (struct pt){d * cos(a), d * sin(a)};
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct cand {
    double d;
    int v;
};

static int cmp_cand(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    return x->d < y->d ? -1 : x->d > y->d;
}

static void run(const char *label, int nreq, int nvol, int k, double radius_m, int repeat) {
    unsigned seed = (unsigned)(nreq * 7919 + nvol * 104729 + k);
    struct pt *req = malloc(nreq * sizeof *req), *vol = malloc(nvol * sizeof *vol);
    int *slots = malloc(nreq * sizeof *slots);
    int64_t *value = malloc(nreq * sizeof *value);
    struct vd_assign_edge *edges = malloc((size_t)nreq * k * sizeof *edges);
    unsigned char *chosen = malloc((size_t)nreq * k);
    struct cand *c = malloc(nvol * sizeof *c);
    double *times = malloc(repeat * sizeof *times);
    for (int i = 0; i < nreq; i++) {
        req[i] = in_disc(&seed, radius_m);
        slots[i] = rnd(&seed) % 20 == 0 ? 2 : 1;
        value[i] = 1 + rnd(&seed) % 5;
    }
    for (int j = 0; j < nvol; j++) vol[j] = in_disc(&seed, radius_m);
    int n = 0;
    for (int i = 0; i < nreq; i++) {
        for (int j = 0; j < nvol; j++)
            c[j] = (struct cand){hypot(req[i].x - vol[j].x, req[i].y - vol[j].y), j};
        qsort(c, nvol, sizeof *c, cmp_cand);
        for (int q = 0; q < k && q < nvol; q++)
            edges[n++] = (struct vd_assign_edge){i, c[q].v, (int64_t)llround(c[q].d)};
    }
    struct vd_assign_stats st;
    for (int r = 0; r < repeat; r++) {
        double t0 = now_ms();
        if (vd_assign_solve(nreq, slots, value, nvol, edges, n, chosen, 0, NULL, &st) < 0) {
            fprintf(stderr, "vd-bench-assign: %s: solve failed\n", label);
            exit(1);
        }
        times[r] = now_ms() - t0;
    }
    qsort(times, repeat, sizeof *times, cmp_double);
    printf("| %-28s | %5d | %5d | %2d | %6d | %7d / %-7d | %8.2f | %8.2f | %9ld |\n", label, nreq,
           nvol, k, n, st.filled, st.places, times[0], times[repeat / 2], st.scanned);
    free(req);
    free(vol);
    free(slots);
    free(value);
    free(edges);
    free(chosen);
    free(c);
    free(times);
}

int main(int argc, char **argv) {
    int repeat = 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            repeat = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: vd-bench-assign [--repeat N]\n");
            return strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0 ? 0 : 2;
        }
    }
    if (repeat < 1) repeat = 1;
    printf("vd-bench-assign: the round's assignment solver, best and median of %d runs\n\n", repeat);
    printf("| round                        | requests | volunteers | K | edges | places filled | best ms | median ms | columns scanned |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    run("city, plentiful", 256, 600, 8, 5000, repeat);
    run("600 x 600 (the target)", 600, 600, 8, 5000, repeat);
    run("concert surge, scarce", 2000, 600, 8, 600, repeat);
    run("expo, scarce", 400, 140, 8, 300, repeat);
    run("city, 100 x 120", 100, 120, 8, 5000, repeat);
    return 0;
}
