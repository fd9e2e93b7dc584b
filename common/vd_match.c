/* vd_match: need and cost, the matching rule's two numbers (see vd_match.h). */
#include "vd_match.h"

#include <string.h>

static const char *filter_names[VD_FILTER__COUNT] = {"skills", "languages", "fatigue",
                                                     "already_tried", "lost_to_greater_need"};

const char *vd_filter_name(enum vd_filter f) {
    return (f >= 0 && f < VD_FILTER__COUNT) ? filter_names[f] : NULL;
}

int vd_filter_parse(const char *s, size_t len) {
    for (int i = 0; i < VD_FILTER__COUNT; i++)
        if (strlen(filter_names[i]) == len && memcmp(filter_names[i], s, len) == 0) return i;
    return -1;
}

int vd_match_need(const struct vd_event *req, const struct vd_need_weights *w) {
    int p = req->priority >= VD_PRIO_URGENT && req->priority <= VD_PRIO_LOW ? (int)req->priority
                                                                          : VD_PRIO_NORMAL;
    int need = w->priority[p];
    if (req->has_vulnerability) {
        const struct vd_vulnerability *v = &req->vulnerability;
        if (v->age > 60) need += w->per_decade_over_60 * ((v->age - 60) / 10);
        if (v->lives_alone) need += w->lives_alone;
        if (v->low_income) need += w->low_income;
        if (v->disability) need += w->disability;
    }
    return need > 0 ? need : 0;
}
