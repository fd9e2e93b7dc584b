/* vd_match: hard filters, score and ranking of candidates for one request (see vd_match.h).
 *
 * Filters are checked in a fixed order and a candidate is counted once, under the first
 * filter it fails, so the `filtered` counts of an unmatched request add up to the candidates
 * that were considered and dropped. */
#include "vd_match.h"

#include <stdlib.h>
#include <string.h>

static const char *filter_names[VD_FILTER__COUNT] = {"skills", "languages", "fatigue",
                                                     "event_scope", "distance", "already_tried"};

const char *vd_filter_name(enum vd_filter f) {
    return (f >= 0 && f < VD_FILTER__COUNT) ? filter_names[f] : "ok";
}

int vd_match_list_has(const char *list, const char *tag) {
    size_t n = strlen(tag);
    if (!n) return 0;
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, tag, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

enum vd_filter vd_match_filter(const struct vd_event *req, const struct vd_candidate *c,
                               int default_cap) {
    for (int i = 0; i < req->skills.n; i++)
        if (!vd_match_list_has(c->skills, req->skills.v[i])) return VD_FILTER_SKILLS;
    if (req->languages.n) {
        int any = 0;
        for (int i = 0; i < req->languages.n && !any; i++)
            any = vd_match_list_has(c->languages, req->languages.v[i]);
        if (!any) return VD_FILTER_LANGUAGES;
    }
    int cap = c->max_tasks > 0 ? c->max_tasks : default_cap;
    if (c->tasks_24h >= cap) return VD_FILTER_FATIGUE;
    if (req->max_distance_m > 0 && c->distance_m > req->max_distance_m) return VD_FILTER_DISTANCE;
    return VD_FILTER_OK;
}

double vd_match_score(const struct vd_event *req, const struct vd_candidate *c) {
    double s = c->distance_m + VD_SCORE_TASK_M * c->tasks_24h;
    if (req->preferred_volunteer_id[0] && strcmp(req->preferred_volunteer_id, c->id) == 0)
        s -= VD_SCORE_PREFERRED_M;
    return s;
}

size_t vd_match_rank(const struct vd_event *req, struct vd_candidate *cands, size_t n,
                     int default_cap, struct vd_match_stats *stats) {
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        stats->considered++;
        enum vd_filter f = vd_match_filter(req, &cands[i], default_cap);
        if (f != VD_FILTER_OK) {
            stats->filtered[f]++;
            continue;
        }
        cands[i].score = vd_match_score(req, &cands[i]);
        if (kept != i) cands[kept] = cands[i];
        kept++;
    }
    /* Insertion sort: n is the handful of nearest candidates, and it keeps ties stable. */
    for (size_t i = 1; i < kept; i++) {
        struct vd_candidate tmp = cands[i];
        size_t j = i;
        while (j > 0 && cands[j - 1].score > tmp.score) {
            cands[j] = cands[j - 1];
            j--;
        }
        cands[j] = tmp;
    }
    return kept;
}
