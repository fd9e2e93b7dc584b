/* vd_assign: the round's assignment by successive shortest augmenting paths (see vd_assign.h).
 *
 * Design notes for a newcomer:
 * - Places: a request with k open slots is k rows ("places") sharing the request's edges.
 *   Columns are the volunteers, then one "unserved" column per place (cost 0), so that every
 *   place is always assigned (to a volunteer or to its own unserved column) and the problem is
 *   a rectangular linear assignment problem (every row assigned, a column at most once).
 * - Costs are pairs compared in order, (need, travel): an edge of a request of value w costs
 *   (-w, cost), an unserved column (0, 0). Sums and differences are taken part by part, so one
 *   more unit of need served outweighs any travel, exactly, whatever the costs (no big-M to
 *   overflow or to guess). The shortest-path method needs only an ordered group, which pairs
 *   under this order are.
 * - The search (Jonker-Volgenant's augmentation): column potentials v; for an assigned place
 *   i its row potential is u_i = c(i, x_i) - v(x_i), and every c(i, k) - v(k) - u_i >= 0. From a
 *   free place, Dijkstra labels columns by reduced distance until it takes a free column; the
 *   columns scanned before it get v(k) += d(k) - d(end), which keeps the reduced costs
 *   non-negative, and the path is flipped. Only the columns a search touches are reset, so a
 *   search costs what it explores, not the size of the round. Potentials only fall, and a
 *   column never taken keeps 0: that is what the rows' bounds rest on.
 * - Places are searched from in order of falling value (the request order breaks ties), which
 *   changes nothing in the optimum's value and cost but settles the most needed first. */
#define _GNU_SOURCE /* qsort_r */
#include "vd_assign.h"

#include <stdlib.h>
#include <string.h>

/* A cost: need first (lower is better: minus the value served), then travel. */
struct lex {
    int64_t need;
    int64_t cost;
};

static struct lex lex_add(struct lex a, struct lex b) { return (struct lex){a.need + b.need, a.cost + b.cost}; }
static struct lex lex_sub(struct lex a, struct lex b) { return (struct lex){a.need - b.need, a.cost - b.cost}; }
static int lex_lt(struct lex a, struct lex b) { return a.need < b.need || (a.need == b.need && a.cost < b.cost); }

struct adj {
    int col;
    int edge; /* index into the caller's edges */
    int64_t cost;
};

struct heap_item {
    struct lex d;
    int col;
};

struct solver {
    int nplaces, ncols; /* ncols: volunteers + one unserved column per place */
    int nvols;
    const int64_t *value;
    int *place_row;     /* request of each place */
    int *row_start;     /* CSR over requests: row_start[r] .. row_start[r+1] in adjv */
    struct adj *adjv;
    struct lex *v;      /* column potentials */
    int *x;             /* column of each place */
    int *xe;            /* adjv entry of each place's column, -1 for its unserved column */
    int *y;             /* place of each column, -1 when free */
    struct lex *d;      /* labels of the current search */
    int *pred, *pred_e;
    unsigned char *state; /* 0 untouched, 1 labelled, 2 scanned */
    int *touched, ntouched;
    int *scanned, nscanned;
    struct heap_item *heap;
    int nheap, heap_cap;
    long work;
};

/* The cost of place i taking an edge. */
static struct lex edge_cost(const struct solver *s, int place, int64_t cost) {
    return (struct lex){-s->value[s->place_row[place]], cost};
}

static int heap_less(const struct heap_item *a, const struct heap_item *b) {
    return lex_lt(a->d, b->d) || (!lex_lt(b->d, a->d) && a->col < b->col);
}

static int heap_push(struct solver *s, struct lex d, int col) {
    if (s->nheap == s->heap_cap) {
        int cap = s->heap_cap ? s->heap_cap * 2 : 64;
        struct heap_item *h = realloc(s->heap, (size_t)cap * sizeof *h);
        if (!h) return -1;
        s->heap = h;
        s->heap_cap = cap;
    }
    int i = s->nheap++;
    struct heap_item it = {d, col};
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!heap_less(&it, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = it;
    return 0;
}

static struct heap_item heap_pop(struct solver *s) {
    struct heap_item top = s->heap[0], last = s->heap[--s->nheap];
    int i = 0, n = s->nheap;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!heap_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

/* Labels column k with distance nd through place i (edge e, -1 for i's unserved column). */
static int relax(struct solver *s, int k, struct lex nd, int i, int e) {
    if (s->state[k] == 2) return 0;
    if (s->state[k] == 0) {
        s->state[k] = 1;
        s->touched[s->ntouched++] = k;
    } else if (!lex_lt(nd, s->d[k])) {
        return 0;
    }
    s->d[k] = nd;
    s->pred[k] = i;
    s->pred_e[k] = e;
    return heap_push(s, nd, k);
}

/* Labels every column of place i, whose row potential less the distance to it is h. */
static int relax_place(struct solver *s, int i, struct lex h) {
    int r = s->place_row[i];
    for (int a = s->row_start[r]; a < s->row_start[r + 1]; a++) {
        const struct adj *ad = &s->adjv[a];
        struct lex nd = lex_sub(lex_sub(edge_cost(s, i, ad->cost), s->v[ad->col]), h);
        if (relax(s, ad->col, nd, i, a) < 0) return -1;
    }
    int own = s->nvols + i; /* the place's unserved column, cost (0, 0) */
    return relax(s, own, lex_sub(lex_sub((struct lex){0, 0}, s->v[own]), h), i, -1);
}

/* One shortest augmenting path from the free place f. */
static int augment(struct solver *s, int f) {
    s->ntouched = s->nscanned = s->nheap = 0;
    if (relax_place(s, f, (struct lex){0, 0}) < 0) return -1;
    int end = -1;
    struct lex dend = {0, 0};
    while (s->nheap > 0) {
        struct heap_item it = heap_pop(s);
        int j = it.col;
        if (s->state[j] == 2 || lex_lt(it.d, s->d[j]) || lex_lt(s->d[j], it.d)) continue; /* stale */
        s->work++;
        if (s->y[j] < 0) {
            end = j;
            dend = it.d;
            break;
        }
        s->state[j] = 2;
        s->scanned[s->nscanned++] = j;
        int i = s->y[j];
        /* u_i = c(i, j) - v(j); distances through i are d(j) + c(i, k) - v(k) - u_i. */
        struct lex ci = s->xe[i] >= 0 ? edge_cost(s, i, s->adjv[s->xe[i]].cost) : (struct lex){0, 0};
        if (relax_place(s, i, lex_sub(lex_sub(ci, s->v[j]), it.d)) < 0) return -1;
    }
    if (end < 0) return -1; /* cannot happen: f's own unserved column is free or reachable */
    for (int q = 0; q < s->nscanned; q++) {
        int k = s->scanned[q];
        s->v[k] = lex_add(s->v[k], lex_sub(s->d[k], dend));
    }
    for (int col = end;;) {
        int i = s->pred[col], e = s->pred_e[col];
        int prev = s->x[i];
        s->y[col] = i;
        s->x[i] = col;
        s->xe[i] = e;
        if (i == f) break;
        col = prev;
    }
    for (int q = 0; q < s->ntouched; q++) s->state[s->touched[q]] = 0;
    return 0;
}

/* Sorting the edges by request, volunteer, cost and index: repeated pairs keep the cheapest. */
static int edge_cmp(const void *a, const void *b, void *arg) {
    const struct vd_assign_edge *edges = arg;
    int ia = *(const int *)a, ib = *(const int *)b;
    const struct vd_assign_edge *ea = &edges[ia], *eb = &edges[ib];
    if (ea->row != eb->row) return ea->row < eb->row ? -1 : 1;
    if (ea->col != eb->col) return ea->col < eb->col ? -1 : 1;
    if (ea->cost != eb->cost) return ea->cost < eb->cost ? -1 : 1;
    return ia < ib ? -1 : ia > ib;
}

/* Places in order of falling value, then request, then slot. */
static int place_cmp(const void *a, const void *b, void *arg) {
    const int64_t *value = arg;
    const int *pa = a, *pb = b; /* {row, slot} */
    if (value[pa[0]] != value[pb[0]]) return value[pa[0]] > value[pb[0]] ? -1 : 1;
    if (pa[0] != pb[0]) return pa[0] < pb[0] ? -1 : 1;
    return pa[1] < pb[1] ? -1 : pa[1] > pb[1];
}

static void solver_free(struct solver *s) {
    free(s->place_row);
    free(s->row_start);
    free(s->adjv);
    free(s->v);
    free(s->x);
    free(s->xe);
    free(s->y);
    free(s->d);
    free(s->pred);
    free(s->pred_e);
    free(s->state);
    free(s->touched);
    free(s->scanned);
    free(s->heap);
}

int vd_assign_solve(int nrows, const int *slots, const int64_t *value, int ncols,
                    const struct vd_assign_edge *edges, int nedges, unsigned char *chosen,
                    int closed, int64_t *bound, struct vd_assign_stats *stats) {
    struct solver s;
    memset(&s, 0, sizeof s);
    int *order = NULL, (*places)[2] = NULL;
    int rc = -1;
    if (chosen && nedges > 0) memset(chosen, 0, (size_t)nedges);
    if (bound)
        for (int r = 0; r < nrows; r++) bound[r] = 0;
    if (stats) memset(stats, 0, sizeof *stats);
    if (nrows < 0 || ncols < 0 || nedges < 0 || (nedges && (!edges || !chosen))) return -1;
    long nplaces = 0;
    for (int r = 0; r < nrows; r++) {
        if (slots[r] < 0 || value[r] < 1 || value[r] > VD_ASSIGN_MAX_VALUE) return -1;
        nplaces += slots[r];
    }
    for (int e = 0; e < nedges; e++) {
        const struct vd_assign_edge *ed = &edges[e];
        if (ed->row < 0 || ed->row >= nrows || ed->col < 0 || ed->col >= ncols || ed->cost < 0 ||
            ed->cost > VD_ASSIGN_MAX_COST)
            return -1;
    }
    /* Sums along a path stay far inside int64: places * VD_ASSIGN_MAX_COST <= 1e15. */
    if (nplaces > VD_ASSIGN_MAX_PLACES || (long)ncols + nplaces > 2L * VD_ASSIGN_MAX_PLACES) return -1;
    s.nplaces = (int)nplaces;
    s.nvols = ncols;
    s.ncols = ncols + s.nplaces;
    s.value = value;

    /* Edges grouped by request (CSR), a repeated pair once. */
    order = malloc(((size_t)nedges + 1) * sizeof *order);
    s.row_start = calloc((size_t)nrows + 1, sizeof *s.row_start);
    s.adjv = malloc(((size_t)nedges + 1) * sizeof *s.adjv);
    if (!order || !s.row_start || !s.adjv) goto out;
    for (int e = 0; e < nedges; e++) order[e] = e;
    qsort_r(order, (size_t)nedges, sizeof *order, edge_cmp, (void *)edges);
    int na = 0;
    for (int q = 0; q < nedges; q++) {
        const struct vd_assign_edge *ed = &edges[order[q]];
        if (na > 0 && edges[s.adjv[na - 1].edge].row == ed->row && s.adjv[na - 1].col == ed->col)
            continue;
        s.adjv[na].col = ed->col;
        s.adjv[na].edge = order[q];
        s.adjv[na].cost = ed->cost;
        s.row_start[ed->row + 1]++;
        na++;
    }
    for (int r = 0; r < nrows; r++) s.row_start[r + 1] += s.row_start[r];

    size_t np = (size_t)s.nplaces, nc = (size_t)s.ncols;
    places = malloc((np + 1) * sizeof *places);
    s.place_row = malloc((np + 1) * sizeof *s.place_row);
    s.x = malloc((np + 1) * sizeof *s.x);
    s.xe = malloc((np + 1) * sizeof *s.xe);
    s.v = calloc(nc + 1, sizeof *s.v);
    s.y = malloc((nc + 1) * sizeof *s.y);
    s.d = malloc((nc + 1) * sizeof *s.d);
    s.pred = malloc((nc + 1) * sizeof *s.pred);
    s.pred_e = malloc((nc + 1) * sizeof *s.pred_e);
    s.state = calloc(nc + 1, 1);
    s.touched = malloc((nc + 1) * sizeof *s.touched);
    s.scanned = malloc((nc + 1) * sizeof *s.scanned);
    if (!places || !s.place_row || !s.x || !s.xe || !s.v || !s.y || !s.d || !s.pred ||
        !s.pred_e || !s.state || !s.touched || !s.scanned)
        goto out;
    int p = 0;
    for (int r = 0; r < nrows; r++)
        for (int k = 0; k < slots[r]; k++) {
            places[p][0] = r;
            places[p][1] = k;
            p++;
        }
    qsort_r(places, np, sizeof *places, place_cmp, (void *)value);
    for (size_t q = 0; q < np; q++) {
        s.place_row[q] = places[q][0];
        s.x[q] = -1;
        s.xe[q] = -1;
    }
    for (size_t c = 0; c < nc; c++) s.y[c] = -1;
    for (int f = 0; f < s.nplaces; f++)
        if (augment(&s, f) < 0) goto out;
    /* The bounds. A left-out edge (r, k) of cost c keeps the solution optimal while its reduced
     * cost is not negative for each place f of r: (-w, c) - v(k) - u_f >= 0, w being r's value.
     * Write p(k) = -v(k), a volunteer's price (>= 0: potentials only fall), and T_f = u_f + (w, 0)
     * (for a served place (0, cost(f)) + p(x_f); for an unserved one (w, 0) + p(own)): the
     * condition is (0, c) + p(k) - T_f >= 0. The least price k may have is 0 (a free volunteer,
     * or one not in the input) unless the input is closed, when it is the least price of its
     * volunteers. With that least price q: when q.need > T_f.need any c will do, when less
     * none will (unbounded), else c >= T_f.cost - q.cost. */
    struct lex q = {0, 0};
    int any = !closed;
    for (int k = 0; closed && k < s.nvols; k++) {
        struct lex pk = lex_sub((struct lex){0, 0}, s.v[k]);
        if (!any || lex_lt(pk, q)) q = pk;
        any = 1;
    }
    for (int f = 0; f < s.nplaces; f++) {
        int r = s.place_row[f];
        if (bound && any && bound[r] != VD_ASSIGN_UNBOUNDED) {
            struct lex t = s.xe[f] >= 0 ? (struct lex){0, s.adjv[s.xe[f]].cost}
                                        : (struct lex){value[r], 0};
            t = lex_sub(t, s.v[s.x[f]]);
            int64_t b = q.need > t.need ? 0 : q.need < t.need ? VD_ASSIGN_UNBOUNDED : t.cost - q.cost;
            if (b < 0) b = 0;
            if (b > VD_ASSIGN_MAX_COST) b = VD_ASSIGN_UNBOUNDED;
            if (b > bound[r]) bound[r] = b;
        }
        if (s.xe[f] < 0) continue;
        const struct adj *ad = &s.adjv[s.xe[f]];
        chosen[ad->edge] = 1;
        if (stats) {
            stats->filled++;
            stats->value += value[s.place_row[f]];
            stats->cost += ad->cost;
        }
    }
    if (stats) {
        stats->places = s.nplaces;
        stats->scanned = s.work;
    }
    rc = 0;
out:
    if (rc < 0 && chosen && nedges > 0) memset(chosen, 0, (size_t)nedges);
    if (rc < 0 && bound)
        for (int r = 0; r < nrows; r++) bound[r] = VD_ASSIGN_UNBOUNDED;
    free(order);
    free(places);
    solver_free(&s);
    return rc;
}
