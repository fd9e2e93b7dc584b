/* vd_state: the states of a request and the moves between them.
 *
 * A request's state lives in Redis (the record vd:req:<id>), where the Redis Functions in
 * daemon/vdispatch.lua change it atomically; their one move() function refuses any move this
 * table does not allow. This header is the same table for C (metrics, logs, tests), and
 * docs/states.dot draws it; test_state checks that the three agree. */
#ifndef VD_STATE_H
#define VD_STATE_H

enum vd_state {
    VD_STATE_RECEIVED = 0, /* decoded and valid; no record in Redis yet */
    VD_STATE_SCHEDULED,    /* not_before (less the lead time) is still ahead: waits, holds nobody */
    VD_STATE_SEARCHING,    /* looking for volunteers; no offer is outstanding */
    VD_STATE_OFFERED,      /* at least one offer outstanding: its volunteer is held until an
                              answer or the deadline */
    VD_STATE_CONFIRMED,    /* every needed volunteer accepted (or was assigned: direct mode, or
                              a coordinator's vd.request.assign) */
    VD_STATE_COMPLETED,    /* end: every confirmed volunteer reported the task done */
    VD_STATE_UNMATCHED,    /* end: volunteers missing (nobody in range, none eligible, all
                              declined, contention); those confirmed keep their task, and a
                              cancel (only then) releases them; a coordinator may still
                              staff it (vd.request.assign), then it is confirmed */
    VD_STATE_CANCELLED,    /* end: the resident or a coordinator cancelled; everyone released */
    VD_STATE_EXPIRED,      /* end: expires_at passed before every volunteer was confirmed; as
                              for unmatched, a cancel releases those confirmed and a
                              coordinator may still staff it */
    VD_STATE__COUNT
};

/* "received", "scheduled", ... as stored in Redis. */
const char *vd_state_name(enum vd_state s);
/* The state named s, or -1. */
int vd_state_parse(const char *s);
/* 1 when a request may move from one state to the other (a state to itself is no move). */
int vd_state_can_move(enum vd_state from, enum vd_state to);
/* 1 for the end states: completed, unmatched, cancelled, expired. */
int vd_state_is_end(enum vd_state s);

#endif
