/* vd_assign: who serves which request in a matching round, solved exactly.
 *
 * The problem: requests (rows), each with `slots` open places and a `value` (its need, at
 * least 1: higher is served first); volunteers (columns), each usable once; edges saying a
 * volunteer may serve a request, at a cost (metres of travel, shaded; never negative). A
 * solution picks edges so that no request gets more volunteers than its slots and no volunteer
 * serves twice. The best solution serves the most need (the sum, over the places filled, of
 * their request's value) and, among those, costs the least; ties are broken by the order of
 * the rows and edges, so the same input always gives the same answer.
 *
 * The method: a rectangular linear assignment problem with one row per open place and, beside
 * the volunteers, a private "unserved" column per row at cost 0, solved by successive shortest
 * augmenting paths (Dijkstra on reduced costs with column potentials, as in Jonker and
 * Volgenant's augmentation phase) on the sparse graph. The two criteria are kept apart: a cost
 * is the pair (minus the need served, travel), compared need first, so any solution serving
 * more need is better, exactly. Pure: no I/O, no clock, no globals. */
#ifndef VD_ASSIGN_H
#define VD_ASSIGN_H

#include <stddef.h>
#include <stdint.h>

#define VD_ASSIGN_MAX_COST 100000000LL /* an edge's cost, at most (100,000 km) */
#define VD_ASSIGN_MAX_VALUE 1000000LL  /* a request's value, at most */
#define VD_ASSIGN_MAX_PLACES 10000000L /* open places in one round, at most */

struct vd_assign_edge {
    int row;      /* request, 0 .. nrows-1 */
    int col;      /* volunteer, 0 .. ncols-1 */
    int64_t cost; /* 0 .. VD_ASSIGN_MAX_COST */
};

struct vd_assign_stats {
    int places;     /* open places (rows of the assignment problem) */
    int filled;     /* places given a volunteer */
    int64_t value;  /* need served: the sum of the value of the places filled */
    int64_t cost;   /* the cost of the edges chosen */
    long scanned;   /* columns scanned by all searches (work done) */
};

/* A row's bound when one of its places is unserved: any further edge might serve it. */
#define VD_ASSIGN_UNBOUNDED (VD_ASSIGN_MAX_COST + 1)

/* Solves one round. slots[r] (0..) and value[r] (1..VD_ASSIGN_MAX_VALUE) per request; edges
 * as above (a request may list a volunteer once; a repeated pair keeps its cheapest edge).
 * On return chosen[e] is 1 for the edges of the solution, else 0.
 *
 * bound (NULL, or nrows entries) certifies the solution against edges left out of the input:
 * the solution stays optimal when any edge is added to request r whose cost is at least
 * bound[r], to a volunteer already in the input or, unless closed is 1, to a new one (closed:
 * the input's columns are every volunteer there is). A caller that gives each request only
 * its cheapest edges, and knows that every edge it left out of request r costs at least
 * seen[r], has the optimum of the whole graph when bound[r] <= seen[r] for every r; else it
 * may add request r's edges up to bound[r] and solve again. bound[r] comes from the price
 * others would pay for a place's volunteer (the column's dual): the largest over the
 * request's places, 0 when nothing left out could matter, VD_ASSIGN_UNBOUNDED when an edge of
 * any cost might serve more need (a place unserved while a volunteer may be free).
 *
 * Returns 0, or -1 when an argument is out of range or memory runs out (chosen is then all 0).
 * stats may be NULL. */
int vd_assign_solve(int nrows, const int *slots, const int64_t *value, int ncols,
                    const struct vd_assign_edge *edges, int nedges, unsigned char *chosen,
                    int closed, int64_t *bound, struct vd_assign_stats *stats);

#endif
