/* vd_state: the request state table (see vd_state.h). */
#include "vd_state.h"

#include <string.h>

static const char *const names[VD_STATE__COUNT] = {
    "received", "scheduled", "searching", "offered", "confirmed",
    "completed", "unmatched", "cancelled", "expired",
};

#define B(s) (1u << (s))
/* moves[from] has bit `to` set when the move is allowed. */
static const unsigned moves[VD_STATE__COUNT] = {
    [VD_STATE_RECEIVED] = B(VD_STATE_SCHEDULED) | B(VD_STATE_SEARCHING) | B(VD_STATE_EXPIRED) |
                          B(VD_STATE_CANCELLED),
    [VD_STATE_SCHEDULED] = B(VD_STATE_SEARCHING) | B(VD_STATE_EXPIRED) | B(VD_STATE_CANCELLED),
    [VD_STATE_SEARCHING] = B(VD_STATE_OFFERED) | B(VD_STATE_CONFIRMED) | B(VD_STATE_UNMATCHED) |
                           B(VD_STATE_EXPIRED) | B(VD_STATE_CANCELLED),
    [VD_STATE_OFFERED] = B(VD_STATE_SEARCHING) | B(VD_STATE_CONFIRMED) | B(VD_STATE_UNMATCHED) |
                         B(VD_STATE_EXPIRED) | B(VD_STATE_CANCELLED),
    [VD_STATE_CONFIRMED] = B(VD_STATE_COMPLETED) | B(VD_STATE_CANCELLED),
    [VD_STATE_UNMATCHED] = B(VD_STATE_CONFIRMED) | B(VD_STATE_CANCELLED),
    [VD_STATE_EXPIRED] = B(VD_STATE_CONFIRMED) | B(VD_STATE_CANCELLED),
};

const char *vd_state_name(enum vd_state s) {
    return (unsigned)s < VD_STATE__COUNT ? names[s] : "?";
}

int vd_state_parse(const char *s) {
    for (int i = 0; i < VD_STATE__COUNT; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

int vd_state_can_move(enum vd_state from, enum vd_state to) {
    if ((unsigned)from >= VD_STATE__COUNT || (unsigned)to >= VD_STATE__COUNT) return 0;
    return (moves[from] & B(to)) != 0;
}

int vd_state_is_end(enum vd_state s) {
    return s == VD_STATE_COMPLETED || s == VD_STATE_UNMATCHED || s == VD_STATE_CANCELLED ||
           s == VD_STATE_EXPIRED;
}
