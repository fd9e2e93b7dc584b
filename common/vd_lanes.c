/* vd_lanes: which producer an output goes through (see vd_lanes.h). */
#include "vd_lanes.h"

#include <string.h>

void vd_lanes_init(struct vd_lanes *l, int prompt_on) {
    memset(l, 0, sizeof *l);
    l->prompt_on = prompt_on;
}

unsigned vd_lanes_slot(unsigned topic, const char *key, size_t keylen) {
    uint32_t h = 2166136261u ^ topic; /* FNV-1a */
    for (size_t i = 0; i < keylen; i++) h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h % VD_LANES_SLOTS;
}

enum vd_lane vd_lanes_take(struct vd_lanes *l, unsigned slot) {
    enum vd_lane lane = VD_LANE_BATCH;
    if (l->prompt_on) {
        enum vd_lane want = l->unacked[VD_LANE_BATCH] == 0 &&
                                    l->unacked[VD_LANE_PROMPT] < VD_LANES_PROMPT_MAX
                                ? VD_LANE_PROMPT
                                : VD_LANE_BATCH;
        enum vd_lane other = want == VD_LANE_PROMPT ? VD_LANE_BATCH : VD_LANE_PROMPT;
        lane = l->slot[other][slot] ? other : want;
    }
    l->unacked[lane]++;
    l->slot[lane][slot]++;
    return lane;
}

void vd_lanes_done(struct vd_lanes *l, enum vd_lane lane, unsigned slot) {
    l->unacked[lane]--;
    l->slot[lane][slot]--;
}
