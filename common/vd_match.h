/* vd_match: a request's need, the first half of the matching rule.
 *
 * A matching round first serves as much need as possible, then travels as little as it can
 * (common/vd_assign.c solves it). Need is the request's priority class plus a vulnerability
 * score (age, living alone, low income, disability), with weights from [matching]; computed
 * once, when the request is admitted, and kept in its record (the resident's details are
 * not). The cost of a volunteer serving a request (the distance, plus load_cost_m per task in
 * the last 24 h, less continuity_bonus_m for the resident's preferred or last volunteer) and
 * the hard filters (skills, languages, daily cap, volunteers already tried) are applied in
 * Redis by the round's Function, vd7_round, which needs them to know how far to search.
 * No I/O, no clock. */
#ifndef VD_MATCH_H
#define VD_MATCH_H

#include "vd_event.h"

/* Why a candidate was not an edge; the keys of the `filtered` object of vd.request.unmatched
 * (vd7_round counts them by these names). */
enum vd_filter {
    VD_FILTER_SKILLS = 0,  /* lacks one of the request's skills */
    VD_FILTER_LANGUAGES,   /* speaks none of the request's languages */
    VD_FILTER_FATIGUE,     /* reached max_tasks_per_day in the last 24 h */
    VD_FILTER_TRIED,       /* already offered this request: declined or let it time out */
    VD_FILTER_LOST,        /* eligible, but went to a request in greater need */
    VD_FILTER__COUNT
};

/* Returns the JSON key of a filter ("skills", "languages", "fatigue", "already_tried",
 * "lost_to_greater_need"), or NULL. */
const char *vd_filter_name(enum vd_filter f);
/* The filter named s, or -1. */
int vd_filter_parse(const char *s, size_t len);

struct vd_need_weights {
    int priority[4];        /* by enum vd_priority: urgent, high, normal, low */
    int per_decade_over_60; /* age 70: 1 decade, 80: 2, ... */
    int lives_alone, low_income, disability;
};

/* A request's need: its priority class's weight plus its vulnerability score. >= 0. */
int vd_match_need(const struct vd_event *req, const struct vd_need_weights *w);

#endif
