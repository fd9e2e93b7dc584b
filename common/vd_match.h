/* vd_match: the pure matching core — hard filters, the score and the ranking of candidates.
 *
 * The daemon fetches the nearest candidates of a pool from Redis (with their skills,
 * languages, daily cap and tasks in the last 24 h) and hands them here; this module decides
 * who may serve the request and in what order to try them. No I/O, no clock. */
#ifndef VD_MATCH_H
#define VD_MATCH_H

#include <stddef.h>

#include "vd_event.h"

/* Why a candidate was dropped; also the keys of the `filtered` object of vd.request.unmatched. */
enum vd_filter {
    VD_FILTER_OK = -1,
    VD_FILTER_SKILLS = 0,  /* lacks one of the request's skills */
    VD_FILTER_LANGUAGES,   /* speaks none of the request's languages */
    VD_FILTER_FATIGUE,     /* reached max_tasks_per_day in the last 24 h */
    VD_FILTER_EVENT,       /* event scope differs (defensive: pools are already split) */
    VD_FILTER_DISTANCE,    /* beyond the request's max_distance_m */
    VD_FILTER_TRIED,       /* already offered this request: declined or let it time out */
    VD_FILTER__COUNT
};

/* Score shading, in metres of distance: a task already done today costs as much as being
 * VD_SCORE_TASK_M farther away; the resident's preferred volunteer gets VD_SCORE_PREFERRED_M
 * off. Distance stays the first criterion. */
#define VD_SCORE_TASK_M 150.0
#define VD_SCORE_PREFERRED_M 300.0

struct vd_candidate {
    char id[VD_ID_MAX + 1];
    double distance_m;
    char skills[VD_MAX_TAGS * (VD_ID_MAX + 1)];    /* comma-joined, as stored in Redis */
    char languages[VD_MAX_TAGS * (VD_ID_MAX + 1)]; /* comma-joined */
    int max_tasks;         /* the volunteer's own cap; 0 = the configured default */
    int tasks_24h;
    double score;          /* set by vd_match_rank */
};

struct vd_match_stats {
    int considered;
    int filtered[VD_FILTER__COUNT];
};

/* Returns the JSON key of a filter reason ("skills", "languages", "fatigue", ...). */
const char *vd_filter_name(enum vd_filter f);

/* Returns VD_FILTER_OK or why req may not be served by c. default_cap is
 * [matching] max_tasks_per_day. */
enum vd_filter vd_match_filter(const struct vd_event *req, const struct vd_candidate *c,
                               int default_cap);

/* Score of an eligible candidate; lower is better. */
double vd_match_score(const struct vd_event *req, const struct vd_candidate *c);

/* Filters cands[0..n) in place, keeping the eligible ones ordered best first (stable on ties,
 * so the nearer of two equal scores wins). Adds to stats. Returns how many were kept. */
size_t vd_match_rank(const struct vd_event *req, struct vd_candidate *cands, size_t n,
                     int default_cap, struct vd_match_stats *stats);

/* Returns 1 when the comma-joined list contains tag exactly. */
int vd_match_list_has(const char *list, const char *tag);

#endif
