/* vd_reply: what a Redis error reply means for the work that got it.
 *
 * An error reply is not a verdict on the input. Most are server states that pass (out of
 * memory, a failed snapshot, a read-only replica, too few replicas, loading, a busy script, a
 * cluster slot moving or down): the work waits and is retried once Redis takes writes again.
 * A missing Function library is such a state too (it is loaded again). Some mean the process
 * cannot go on as configured (an ACL that forbids the daemon's commands or keys, a wrong
 * password, keys that a cluster serves elsewhere): the daemon stops with exit status 1. Only
 * "VDINPUT", which the Function library answers when an argument is bad, says the input itself
 * is at fault. Anything else is unexpected (a bug, a foreign key of the wrong type). Pure: no
 * I/O. */
#ifndef VD_REPLY_H
#define VD_REPLY_H

#include <stddef.h>

enum vd_reply_class {
    VD_REPLY_OUTAGE = 0, /* a server state that passes: wait, retry */
    VD_REPLY_NO_LIBRARY, /* the Function library is missing: load it again, retry */
    VD_REPLY_FATAL,      /* cannot go on with this configuration: stop, exit 1 */
    VD_REPLY_INPUT,      /* the input is at fault (VDINPUT): dead letter */
    VD_REPLY_OTHER,      /* unexpected: retry a few times, then dead letter */
    VD_REPLY__COUNT
};

/* Which state an outage (or a missing library) is, for logs and metric labels. */
enum vd_reply_code {
    VD_CODE_OOM = 0,
    VD_CODE_MISCONF,
    VD_CODE_READONLY,
    VD_CODE_NOREPLICAS,
    VD_CODE_LOADING,
    VD_CODE_BUSY,
    VD_CODE_MASTERDOWN,
    VD_CODE_TRYAGAIN,
    VD_CODE_CLUSTERDOWN,
    VD_CODE_ASK,
    VD_CODE_NO_LIBRARY,
    VD_CODE_OTHER,
    VD_CODE__COUNT
};

/* Classifies the text of an error reply (as Redis sends it, without the leading '-');
 * *code receives the outage code (VD_CODE_OTHER for classes other than outage and no-library).
 * code may be NULL. */
enum vd_reply_class vd_reply_classify(const char *err, size_t len, enum vd_reply_code *code);

/* "oom", "misconf", ... "no_library", "other": metric label values. */
const char *vd_reply_code_name(enum vd_reply_code c);
/* "outage", "no_library", "fatal", "input", "other". */
const char *vd_reply_class_name(enum vd_reply_class c);

#endif
